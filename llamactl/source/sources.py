"""The lock file of llama.cpp sources (vendor/sources.yaml) and how to fetch each kind."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Annotated, Callable, Literal, Union

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llamactl.core import locks, paths, pipdl
from llamactl.core import proc
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.files import write_atomic
from llamactl.core.hashing import sha256_file
from llamactl.core.progress import ProgressFn
from llamactl.source import trees

log = logging.getLogger(__name__)


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


def resolve(name: str | None, lock: Lock | None = None, *, fetch: bool = True) -> tuple[str, SourceSpec]:
    """Map a source name to (canonical name, spec).

    Names: a lock name (``upstream``, ``atomic-turboquant``); ``NAME@VERSION`` for a pypi-sdist
    source (any version of its package on the index: the first use downloads it and records its
    sha256 and llama.cpp commit in vendor/upstream-versions.yaml, later uses are checked against
    that); ``NAME@COMMIT`` for a git source (a full 40-hex commit); ``path:/dir[@REV]``. A version
    or commit equal to the lock's pin is the plain lock name (same trees, same build keys).
    ``fetch=False`` raises instead of downloading a version that is not recorded yet.

    Raises:
        BadInput: unknown source, malformed ``@`` part.
        LlamactlError: a version that the index does not have, or cannot be fetched.
    """
    lock = lock or load_lock()
    name = name or lock.default
    if name.startswith("path:"):
        raw, _, rev = name[5:].partition("@")
        p = Path(raw).expanduser().resolve()
        if not p.exists():
            raise LlamactlError(f"source path {p} does not exist")
        return name, PathSource(kind="path", path=p, rev=rev or "HEAD")
    base, at, ref = name.partition("@")
    if base not in lock.sources:
        known = ", ".join(sorted(lock.sources))
        raise BadInput(f"unknown source {base!r}", hint=f"known: {known}, or path:/some/dir")
    spec = lock.sources[base]
    if not at:
        return name, spec
    if isinstance(spec, PypiSdistSource):
        if not _VERSION.match(ref):
            raise BadInput(f"source {name!r}: {ref!r} is not a version of {spec.package}", hint=f"e.g. {base}@{spec.version}")
        if ref == spec.version:
            return base, spec
        entry = locked_version(spec.package, ref)
        if entry is None:
            if not fetch:
                raise LlamactlError(f"{name} is not recorded in {versions_path().name} yet",
                                    hint=f"`llamactl vendor --source {name}` fetches and records it")
            entry = record_version(base, spec, ref)
        return name, versioned_spec(spec, ref, entry)
    if isinstance(spec, GitSource):
        if not _COMMIT.match(ref):
            raise BadInput(f"source {name!r}: a git source takes a full 40-hex commit after @",
                           hint=f"e.g. {base}@{spec.commit}; a local checkout takes any rev: path:/dir@REV")
        if ref == spec.commit:
            return base, spec
        return name, spec.model_copy(update={"commit": ref, "description": f"{base} at {ref[:12]}"})
    raise BadInput(f"source {name!r}: {base} takes no @")


def canonical(name: str | None, lock: Lock | None = None) -> str:
    """The name a source is known by in provenance and build keys (``upstream@<pinned>`` -> ``upstream``)."""
    lock = lock or load_lock()
    name = name or lock.default
    base, at, ref = name.partition("@")
    if at and not name.startswith("path:") and base in lock.sources:
        spec = lock.sources[base]
        if (isinstance(spec, PypiSdistSource) and ref == spec.version) or (isinstance(spec, GitSource) and ref == spec.commit):
            return base
    return name


# --- versions of a pypi-sdist source: the committed record (vendor/upstream-versions.yaml) ---------

_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
VERSIONS_HEADER = """\
# Versions of pypi-sdist sources (vendor/sources.yaml) used as NAME@VERSION, e.g. upstream@0.3.35.
# llamactl writes an entry on a version's first fetch (sha256 of the sdist, the llama.cpp commit it
# carries); every later fetch is checked against it. Commit this file. Keyed by package, then version.
"""


class LockedVersion(BaseModel):
    """One recorded sdist version: its ``sha256`` and the llama.cpp ``commit`` it carries (None: not found in it)."""

    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    commit: str | None = None
    file: str | None = None
    recorded: str | None = None


def versions_path() -> Path:
    return paths.vendor_dir() / "upstream-versions.yaml"


def load_versions(path: Path | None = None) -> dict[str, dict[str, LockedVersion]]:
    """package -> version -> record. Raises BadInput for a malformed file."""
    path = path or versions_path()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not YAML: {str(exc).splitlines()[0]}") from exc
    try:
        if not isinstance(data, dict):
            raise ValueError("expected package: {version: {sha256: ..., commit: ...}}")
        return {str(pkg): {str(v): LockedVersion.model_validate(e) for v, e in (vers or {}).items()} for pkg, vers in data.items()}
    except (ValidationError, ValueError, AttributeError) as exc:
        raise BadInput(f"{path}: invalid version record: {' '.join(str(exc).splitlines()[:2])}") from exc


def locked_version(package: str, version: str) -> LockedVersion | None:
    return load_versions().get(package, {}).get(version)


def versioned_spec(spec: PypiSdistSource, version: str, entry: LockedVersion) -> PypiSdistSource:
    """The lock's spec of a source moved to another recorded version."""
    commit = entry.commit[:9] if entry.commit else "an unknown commit"
    return spec.model_copy(update={"version": version, "sha256": entry.sha256, "commit": entry.commit,
                                   "description": f"upstream llama.cpp at {commit}, as vendored by {spec.package} {version}"})


def _write_versions(data: dict[str, dict[str, LockedVersion]]) -> None:
    path = versions_path()
    plain = {pkg: {v: {k: x for k, x in e.model_dump().items() if x is not None}
                   for v, e in sorted(vers.items(), key=lambda kv: version_key(kv[0]))}
             for pkg, vers in sorted(data.items())}
    write_atomic(path, VERSIONS_HEADER + yaml.safe_dump(plain, sort_keys=False, default_flow_style=False))


def record_version(name: str, spec: PypiSdistSource, version: str, info: Callable[[str], None] | None = None) -> LockedVersion:
    """First fetch of ``spec.package==version``: download the sdist, hash it, find the llama.cpp commit
    inside, and record both in vendor/upstream-versions.yaml (under its lock). Returns the record.

    The hash comes from the downloaded bytes: the index's JSON listing names the file (its own sha256
    is checked as it streams), else ``pip download`` fetches it without a pin.
    Raises LlamactlError when the index has no sdist of that version or it cannot be fetched.
    """
    path = versions_path()
    with locks.hold(path, f"the record of {spec.package} versions", info):
        found = locked_version(spec.package, version)
        if found is not None:
            return found
        log.info("%s@%s: first fetch of %s==%s, recording its sha256", name, version, spec.package, version)
        files = pipdl.index_files(spec.package)
        if files is not None:
            sdists = [f for f in files if f.kind == "sdist" and f.version == version and f.sha256]
            if not sdists:
                have = sorted({f.version for f in files if f.kind == "sdist"}, key=version_key)
                raise LlamactlError(f"{spec.package} {version} has no sdist on {pipdl.index_url()}",
                                    hint=f"newest: {', '.join(have[-5:]) or 'none'} (`llamactl source versions {name}`)")
            archive = fetch_sdist(spec.model_copy(update={"version": version, "sha256": sdists[0].sha256}))
        else:
            with tempfile.TemporaryDirectory(dir=paths.downloads_dir()) as tmp:
                got = pipdl.download_unpinned(spec.package, version, Path(tmp), "sdist", f"{spec.package}=={version}")
                digest = sha256_file(got)
                dest = paths.downloads_dir() / digest
                dest.mkdir(exist_ok=True)
                archive = dest / got.name
                shutil.move(str(got), archive)
        entry = LockedVersion(sha256=sha256_file(archive), commit=sdist_commit(archive, spec.subdir), file=archive.name,
                              recorded=time.strftime("%Y-%m-%d", time.gmtime()))
        data = load_versions()
        data.setdefault(spec.package, {})[version] = entry
        _write_versions(data)
        log.info("recorded %s %s: sha256 %s, llama.cpp %s", spec.package, version, entry.sha256[:16], entry.commit)
        return entry


def sdist_commit(archive: Path, subdir: str) -> str | None:
    """The llama.cpp commit an sdist carries: the git submodule metadata it ships
    (``<top>/.git/modules/<subdir>/HEAD``, a detached HEAD; llama-cpp-python's sdists have it).
    None when the sdist has no such metadata."""
    heads: dict[str, str] = {}
    want = f"/.git/modules/{subdir}/"
    with tarfile.open(archive, "r|*") as tf:
        for m in tf:
            name = m.name
            if want not in name or not m.isfile():
                continue
            rel = name.split(want, 1)[1]
            if rel in ("HEAD", "packed-refs") or rel.startswith("refs/"):
                f = tf.extractfile(m)
                if f is not None:
                    heads[rel] = f.read(1 << 20).decode("utf-8", "replace")
    head = heads.get("HEAD", "").strip()
    if head.startswith("ref: "):
        ref = head[5:].strip()
        head = heads.get(ref, "").strip()
        if not head:
            for ln in heads.get("packed-refs", "").splitlines():
                parts = ln.split()
                if len(parts) == 2 and parts[1] == ref:
                    head = parts[0]
    return head if _COMMIT.match(head) else None


def version_key(version: str) -> tuple:
    """Sort key of a package version (PEP 440; an unparsable one sorts first, by its text)."""
    try:
        return (1, Version(version), "")
    except InvalidVersion:
        return (0, Version("0"), version)


def available_versions(name: str = "upstream", lock: Lock | None = None) -> list[str]:
    """Every version of a pypi-sdist source's package that has an sdist on the index, oldest first.

    Source: the index's JSON listing (``PIP_INDEX_URL`` or PyPI), else ``pip index versions``.
    Raises BadInput for a source that is not a pypi-sdist one, LlamactlError when nothing can list them.
    """
    spec = _sdist_source(name, lock)
    files = pipdl.index_files(spec.package)
    if files is not None:
        versions = {f.version for f in files if f.kind == "sdist"}
    else:
        versions = set(pipdl.pip_versions(spec.package))
    return sorted(versions, key=version_key)


def versions_between(name: str, first: str, last: str, lock: Lock | None = None,
                     versions: list[str] | None = None) -> list[str]:
    """The versions from ``first`` to ``last`` inclusive, in version order (either may be the older).

    ``name`` is the source (``upstream``); ``versions`` defaults to :func:`available_versions`.
    Raises BadInput when either end is not among them.
    """
    versions = versions if versions is not None else available_versions(name, lock)
    for v in (first, last):
        if v not in versions:
            raise BadInput(f"{name}@{v}: no such version with an sdist", hint=f"newest: {', '.join(versions[-5:])}")
    lo, hi = sorted((first, last), key=version_key)
    return [v for v in versions if version_key(lo) <= version_key(v) <= version_key(hi)]


def _sdist_source(name: str, lock: Lock | None) -> PypiSdistSource:
    lock = lock or load_lock()
    base = name.partition("@")[0]
    spec = lock.sources.get(base)
    if not isinstance(spec, PypiSdistSource):
        raise BadInput(f"source {base!r} is not a pypi-sdist source, so it has no versions to list",
                       hint=f"pypi-sdist sources: {', '.join(n for n, s in lock.sources.items() if isinstance(s, PypiSdistSource))}")
    return spec


# --- fetching ---------------------------------------------------------------------------


def fetch_sdist(spec: PypiSdistSource, progress: ProgressFn | None = None) -> Path:
    """The pinned sdist (hash-checked), cached by sha256; one download at a time per sha256.

    ``progress`` hears the download (bytes). Raises LlamactlError on a sha256 mismatch or when it cannot be fetched.
    """
    cache = paths.downloads_dir() / spec.sha256
    with locks.hold(cache, f"the download of {spec.package}=={spec.version}"):
        if cache.is_dir():
            for f in cache.iterdir():
                if f.name.endswith((".tar.gz", ".zip")) and sha256_file(f) == spec.sha256:
                    return f
        log.info(f"downloading {spec.package}=={spec.version} (sdist, pinned sha256) ...")
        pin = pipdl.Pin(spec.package, spec.version, spec.sha256)
        return pipdl.download([pin], cache, "sdist", f"{spec.package}=={spec.version}", progress=progress)[pin]


def extract_sdist_subtree(archive: Path, subdir: str, dest: Path) -> None:
    """Extract ``<top>/<subdir>/`` of an sdist into ``dest`` (:func:`llamactl.source.trees.extract`)."""
    trees.extract(archive, dest, subdir)


def fetch_git(spec: GitSource) -> Path:
    """Fetch one commit of a git source into a cached tarball keyed by the commit id."""
    cache = paths.downloads_dir() / f"git-{spec.commit}.tar"
    if cache.exists():
        return cache
    with locks.hold(cache, f"the fetch of {spec.commit[:12]}"):
        if cache.exists():
            return cache
        return _fetch_git(spec, cache)


def _fetch_git(spec: GitSource, cache: Path) -> Path:
    with tempfile.TemporaryDirectory(dir=paths.downloads_dir()) as tmp:
        log.info(f"fetching {spec.url} at {spec.commit[:12]} ...")
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
        with open(part, "wb") as f:
            trees.git_archive(repo / ".git", spec.commit, f)
        part.rename(cache)
    return cache


def export_path_tree(spec: PathSource, dest: Path) -> str:
    """Copy a local tree; a git checkout (or bare git dir) exports ``spec.rev``. Returns its identity."""
    src = spec.path
    git_dir = spec.git_dir()
    dest.mkdir(parents=True, exist_ok=True)
    if git_dir is not None:
        commit = proc.run(["git", f"--git-dir={git_dir}", "rev-parse", f"{spec.rev}^{{commit}}"]).stdout.strip()
        trees.export_commit(git_dir, commit, dest)
        return commit
    if spec.rev != "HEAD":
        raise LlamactlError(f"{src} is not a git checkout, so @{spec.rev} means nothing there")
    shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build", "build-*", "__pycache__"))
    return "worktree"


# --- what `llamactl source list` shows ------------------------------------------------------------


class SourceRow(BaseModel):
    """One source name usable as ``--source``/``build.source``: a pin of vendor/sources.yaml, or a
    recorded version of a pypi-sdist source (``upstream@0.3.35``)."""

    name: str
    kind: str
    version: str                  # package version, or the git commit
    hash: str                     # sdist sha256, or the git commit
    llama_cpp_commit: str | None  # what upstream commit the tree is (None: unknown)
    series: str | None
    origin: str                   # "sources.yaml" (the lock) or "upstream-versions.yaml" (recorded on first fetch)
    default: bool = False


def inventory(lock: Lock | None = None) -> list[SourceRow]:
    """The pinned sources, then every recorded version of each pypi-sdist source (oldest first).

    Reads vendor/sources.yaml and vendor/upstream-versions.yaml; no network.
    """
    lock = lock or load_lock()
    versions = load_versions()
    rows: list[SourceRow] = []
    for name, spec in lock.sources.items():
        if isinstance(spec, PypiSdistSource):
            rec = versions.get(spec.package, {}).get(spec.version)
            commit = rec.commit if rec is not None and rec.sha256 == spec.sha256 and rec.commit else spec.commit
            rows.append(SourceRow(name=name, kind=spec.kind, version=spec.version, hash=spec.sha256, llama_cpp_commit=commit,
                                  series=spec.series, origin="sources.yaml", default=name == lock.default))
            for v in sorted(versions.get(spec.package, {}), key=version_key):
                if v == spec.version:
                    continue
                e = versions[spec.package][v]
                rows.append(SourceRow(name=f"{name}@{v}", kind=spec.kind, version=v, hash=e.sha256, llama_cpp_commit=e.commit,
                                      series=spec.series, origin=versions_path().name))
        elif isinstance(spec, GitSource):
            rows.append(SourceRow(name=name, kind=spec.kind, version=spec.commit, hash=spec.commit, llama_cpp_commit=None,
                                  series=spec.series, origin="sources.yaml", default=name == lock.default))
        else:
            rows.append(SourceRow(name=name, kind=spec.kind, version=spec.rev, hash="", llama_cpp_commit=None,
                                  series=spec.series, origin="sources.yaml", default=name == lock.default))
    return rows
