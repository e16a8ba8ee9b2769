"""The lock file of llama.cpp sources (vendor/sources.yaml) and how to fetch each kind."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llamactl.core import locks, paths, pipdl
from llamactl.core import proc
from llamactl.core.console import Output
from llamactl.core.errors import LlamactlError
from llamactl.core.hashing import sha256_file


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    series: str | None = Field(default=None, description="patch series under patches/ applied to this source")


class PypiSdistSource(_Base):
    kind: Literal["pypi-sdist"]
    package: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    subdir: str
    commit: str | None = None


class GitSource(_Base):
    kind: Literal["git"]
    url: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")


class PathSource(_Base):
    kind: Literal["path"]
    path: Path
    rev: str = "HEAD"     # for git checkouts / bare git dirs: path:/dir@<commit-or-branch>

    def git_dir(self) -> Path | None:
        if (self.path / ".git").exists():
            return self.path / ".git"
        if (self.path / "HEAD").is_file() and (self.path / "objects").is_dir():
            return self.path
        return None


SourceSpec = Annotated[Union[PypiSdistSource, GitSource, PathSource], Field(discriminator="kind")]


class Lock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: str
    sources: dict[str, SourceSpec]


def lock_path() -> Path:
    return paths.vendor_dir() / "sources.yaml"


def load_lock(path: Path | None = None) -> Lock:
    path = path or lock_path()
    try:
        data = yaml.safe_load(path.read_text())
        return Lock.model_validate(data)
    except FileNotFoundError as exc:
        raise LlamactlError(f"lock file {path} not found") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise LlamactlError(f"{path}: invalid lock file: {' '.join(first[:3])}") from exc


def resolve(name: str | None, lock: Lock | None = None) -> tuple[str, SourceSpec]:
    """Map ``upstream`` / ``atomic-turboquant`` / ``path:/dir`` to a source spec."""
    lock = lock or load_lock()
    name = name or lock.default
    if name.startswith("path:"):
        raw, _, rev = name[5:].partition("@")
        p = Path(raw).expanduser().resolve()
        if not p.exists():
            raise LlamactlError(f"source path {p} does not exist")
        return name, PathSource(kind="path", path=p, rev=rev or "HEAD")
    if name not in lock.sources:
        known = ", ".join(sorted(lock.sources))
        raise LlamactlError(f"unknown source {name!r}", hint=f"known: {known}, or path:/some/dir")
    return name, lock.sources[name]


# --- fetching ---------------------------------------------------------------------------


def fetch_sdist(spec: PypiSdistSource, out: Output | None = None) -> Path:
    """The pinned sdist (hash-checked), cached by sha256; one download at a time per sha256.

    Raises LlamactlError on a sha256 mismatch or when it cannot be fetched.
    """
    cache = paths.downloads_dir() / spec.sha256
    with locks.hold(cache, f"the download of {spec.package}=={spec.version}", out.info if out else None):
        if cache.is_dir():
            for f in cache.iterdir():
                if f.name.endswith((".tar.gz", ".zip")) and sha256_file(f) == spec.sha256:
                    return f
        if out:
            out.info(f"downloading {spec.package}=={spec.version} (sdist, pinned sha256) ...")
        pin = pipdl.Pin(spec.package, spec.version, spec.sha256)
        return pipdl.download([pin], cache, "sdist", f"{spec.package}=={spec.version}",
                              info=out.info if out else None)[pin]


def extract_sdist_subtree(archive: Path, subdir: str, dest: Path) -> None:
    """Extract ``<top>/<subdir>/`` of an sdist into ``dest`` (safe extraction filter)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tf:
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
            raise LlamactlError(f"{archive.name} has no {subdir}/ subtree")
        tf.extractall(dest, members=members, filter="data")


def fetch_git(spec: GitSource, out: Output | None = None) -> Path:
    """Fetch one commit of a git source into a cached tarball keyed by the commit id."""
    cache = paths.downloads_dir() / f"git-{spec.commit}.tar"
    if cache.exists():
        return cache
    with locks.hold(cache, f"the fetch of {spec.commit[:12]}", out.info if out else None):
        if cache.exists():
            return cache
        return _fetch_git(spec, cache, out)


def _fetch_git(spec: GitSource, cache: Path, out: Output | None) -> Path:
    with tempfile.TemporaryDirectory(dir=paths.downloads_dir()) as tmp:
        if out:
            out.info(f"fetching {spec.url} at {spec.commit[:12]} ...")
        repo = Path(tmp) / "repo"
        repo.mkdir()
        for argv in (["git", "init", "-q"], ["git", "fetch", "-q", "--depth", "1", spec.url, spec.commit]):
            cp = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=1800,
                                env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
            if cp.returncode != 0:
                why = (cp.stderr or cp.stdout).strip().splitlines()
                raise LlamactlError(
                    f"cannot fetch {spec.url} at {spec.commit[:12]}: {why[-1] if why else 'git failed'}",
                    hint="no network? clone it elsewhere and use --source path:/that/checkout",
                )
        got = proc.run(["git", "rev-parse", "FETCH_HEAD"], cwd=repo).stdout.strip()
        if got != spec.commit:
            raise LlamactlError(f"fetched commit {got} but the lock pins {spec.commit}")
        part = cache.with_suffix(".part")
        proc.run(["git", "archive", "--format=tar", "-o", str(part), spec.commit], cwd=repo)
        part.rename(cache)
    return cache


def export_path_tree(spec: PathSource, dest: Path) -> str:
    """Copy a local tree; a git checkout (or bare git dir) exports ``spec.rev``. Returns its identity."""
    src = spec.path
    git_dir = spec.git_dir()
    dest.mkdir(parents=True, exist_ok=True)
    if git_dir is not None:
        commit = proc.run(["git", f"--git-dir={git_dir}", "rev-parse", f"{spec.rev}^{{commit}}"]).stdout.strip()
        with tempfile.TemporaryFile() as t:
            cp = subprocess.run(["git", f"--git-dir={git_dir}", "archive", "--format=tar", commit], stdout=t,
                                stderr=subprocess.PIPE)
            if cp.returncode != 0:
                raise LlamactlError(f"git archive failed in {src}: {cp.stderr.decode().strip()}")
            t.seek(0)
            with tarfile.open(fileobj=t) as tf:
                tf.extractall(dest, filter="data")
        return commit
    if spec.rev != "HEAD":
        raise LlamactlError(f"{src} is not a git checkout, so @{spec.rev} means nothing there")
    shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build", "build-*", "__pycache__"))
    return "worktree"
