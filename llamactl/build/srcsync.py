"""Keep one build's source directory in step with a git tree, file by file, keeping mtimes.

Ninja decides what to rebuild by comparing mtimes. A fresh snapshot per build gives every file a
new mtime, so everything rebuilds. ``sync_tree`` instead rewrites only the files whose content
differs from what the directory holds (they get the current time as mtime) and removes files the
tree no longer has; every other file keeps its mtime, so ninja recompiles only what changed.

What the directory holds is recorded in an index beside it: per path the git mode, blob id, size
and mtime. A file whose size or mtime no longer matches the index (edited by hand, half-written by
an interrupted sync) is rewritten, so the directory always ends up exactly the tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from llamactl.core.errors import LlamactlError
from llamactl.core.files import write_atomic

INDEX_VERSION = 1
_MODES = {"100644", "100755", "120000"}


@dataclass
class SyncResult:
    """What ``sync_tree`` did: paths relative to the synced directory."""

    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0


def tree_entries(repo: Path, rev: str) -> dict[str, tuple[str, str]]:
    """``{path: (mode, blob id)}`` of every file and symlink in ``rev`` (submodules skipped).

    Raises LlamactlError when git cannot list the tree.
    """
    cp = subprocess.run(["git", "ls-tree", "-r", "-z", "--full-tree", rev], cwd=repo, capture_output=True)
    if cp.returncode != 0:
        raise LlamactlError(f"git ls-tree {rev} failed in {repo}: {cp.stderr.decode(errors='replace').strip()}")
    out: dict[str, tuple[str, str]] = {}
    for rec in cp.stdout.split(b"\0"):
        if not rec:
            continue
        meta, path = rec.split(b"\t", 1)
        mode, kind, oid = meta.decode().split()
        if kind == "blob" and mode in _MODES:
            out[path.decode("utf-8", "surrogateescape")] = (mode, oid)
    return out


def load_index(index: Path) -> dict[str, list]:
    """The recorded state of a synced directory; empty when missing or unreadable."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _stat_key(p: Path | str) -> list[int] | None:
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def sync_tree(repo: Path, rev: str, dest: Path, index: Path) -> SyncResult:
    """Make ``dest`` hold exactly the files of ``rev`` in the git repo ``repo``.

    Files whose mode and blob id match the index, and whose size and mtime (ns) still match what
    the index recorded, are left alone. Everything else is written from git's object store (new
    mtime); files and empty directories not in the tree are removed. The index is rewritten at the
    end. Raises LlamactlError when git fails.
    """
    want = tree_entries(repo, rev)
    have = load_index(index)
    dest.mkdir(parents=True, exist_ok=True)
    res = SyncResult()
    root = str(dest)

    on_disk: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(dest):
        rel_dir = os.path.relpath(dirpath, dest)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            on_disk.add(name if rel_dir == "." else f"{rel_dir}/{name}")
    for rel in sorted(on_disk - want.keys()):
        (dest / rel).unlink()
        res.removed.append(rel)

    todo: list[str] = []
    files: dict[str, list] = {}
    for rel, (mode, oid) in want.items():
        old = have.get(rel)
        if rel in on_disk and old and old[0] == mode and old[1] == oid and _stat_key(os.path.join(root, rel)) == old[2:]:
            files[rel] = old
            res.unchanged += 1
        else:
            todo.append(rel)
    if todo:
        index.unlink(missing_ok=True)    # an interrupted sync must not leave a stale index behind
        with _CatFile(repo) as cat:
            for rel in todo:
                mode, oid = want[rel]
                _write(dest / rel, mode, cat.read(oid))
                files[rel] = [mode, oid, *(_stat_key(dest / rel) or [0, 0])]
                res.written.append(rel)
    if res.removed or not have:     # only a removal (or a first sync over old files) leaves empty dirs
        _prune_empty_dirs(dest, {os.path.dirname(p) for p in want})
    if todo or res.removed or not index.exists():
        write_atomic(index, json.dumps({"version": INDEX_VERSION, "rev_tree": _tree_id(repo, rev), "files": files}))
    return res


def _tree_id(repo: Path, rev: str) -> str:
    cp = subprocess.run(["git", "rev-parse", f"{rev}^{{tree}}"], cwd=repo, capture_output=True, text=True)
    return cp.stdout.strip()


def _write(p: Path, mode: str, data: bytes) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    if mode == "120000":
        os.symlink(os.fsdecode(data), p)
        return
    with open(p, "wb") as f:
        f.write(data)
    p.chmod(0o755 if mode == "100755" else 0o644)


def _prune_empty_dirs(dest: Path, keep: set[str]) -> None:
    keep_all = set()
    for d in keep:
        while d:
            keep_all.add(d)
            d = os.path.dirname(d)
    for dirpath, _dirnames, _files in sorted(os.walk(dest), key=lambda t: -len(t[0])):
        rel = os.path.relpath(dirpath, dest)
        if rel != "." and rel not in keep_all and not os.listdir(dirpath):
            os.rmdir(dirpath)


class _CatFile:
    """One ``git cat-file --batch`` process answering blob reads in turn."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.p: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "_CatFile":
        self.p = subprocess.Popen(["git", "cat-file", "--batch"], cwd=self.repo,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self

    def read(self, oid: str) -> bytes:
        assert self.p is not None and self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(oid.encode() + b"\n")
        self.p.stdin.flush()
        header = self.p.stdout.readline().split()
        if len(header) != 3:
            raise LlamactlError(f"git cat-file: object {oid} missing in {self.repo}")
        size = int(header[2])
        data = self.p.stdout.read(size)
        self.p.stdout.read(1)   # the newline after each object
        return data

    def __exit__(self, *exc: object) -> None:
        assert self.p is not None and self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait()

