"""One way to export a source tree: ``git archive`` of a commit, extracted with tarfile's safe filter.

Used for git sources (fetched commit -> cached tarball -> tree), local checkouts (``path:/dir@REV``)
and sdists (their ``<top>/<subdir>/`` subtree).
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from llamactl.core.errors import LlamactlError


def extract(archive: Path | IO[bytes], dest: Path, subdir: str | None = None) -> None:
    """Extract a tar archive (a path or an open file) into ``dest`` (created) with the ``data`` filter.

    ``subdir``: only ``<top>/<subdir>/`` (an sdist's top folder, then the subtree), moved up to ``dest``.
    Raises LlamactlError when the archive has no such subtree.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with (tarfile.open(archive) if isinstance(archive, Path) else tarfile.open(fileobj=archive)) as tf:
        if subdir is None:
            tf.extractall(dest, filter="data")
            return
        members = []
        for m in tf.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not (parts[1] == subdir or parts[1].startswith(subdir + "/")):
                continue
            rel = parts[1][len(subdir):].lstrip("/")
            if not rel:
                continue
            m.name = rel
            members.append(m)
        if not members:
            name = archive.name if isinstance(archive, Path) else "the archive"
            raise LlamactlError(f"{name} has no {subdir}/ subtree")
        tf.extractall(dest, members=members, filter="data")


def git_archive(git_dir: Path, commit: str, out: IO[bytes]) -> None:
    """Write ``git archive --format=tar COMMIT`` of the repository at ``git_dir`` (a .git dir or a bare
    repository) to ``out``. Raises LlamactlError with git's reason."""
    cp = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "--format=tar", commit], stdout=out,
                        stderr=subprocess.PIPE)
    if cp.returncode != 0:
        raise LlamactlError(f"git archive {commit[:12]} failed in {git_dir}: {cp.stderr.decode(errors='replace').strip()}")


def export_commit(git_dir: Path, commit: str, dest: Path) -> None:
    """The files of ``commit`` (no .git) into ``dest``: :func:`git_archive`, then :func:`extract`."""
    with tempfile.TemporaryFile() as t:
        git_archive(git_dir, commit, t)
        t.seek(0)
        extract(t, dest)
