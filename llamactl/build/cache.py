"""What the cache (``~/.cache/llamactl``) holds, which of it is stale, and pruning it.

Kinds: ``build`` (builds/<backend>-<key>), ``work`` (build-work/: the per-configuration
directories incremental builds compile in), ``download`` (pinned sdists, git tarballs),
``model`` (fetched and generated models), ``tree`` (cached per-source trees), ``run``
(server logs and run records), ``help`` (``--help`` of binaries llamactl did not build),
``logits`` (kld/: ``llamactl quality``'s reference logits, stale when unused for ``older_than``
days, default 7), ``text`` (texts/: pinned evaluation texts, stale when no pin names them).

Stale means nothing current produces or needs it: a build whose key the current source
pins, patch series, CMake options and compilers no longer give; a work directory no kept
build came from (or only builds of an outdated configuration); a download or model no
pin names; a tree of a source no longer pinned; a run older than ``older_than`` days
(default 7). In use -- never removed, not even with ``all_``: a build or tree whose lock
another llamactl holds, anything a live process runs from or names in its argv, a
detached server's run that is still running.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import psutil

from llamactl.build import cmake, toolchain
from llamactl.build.builder import BuildRequest, MANIFEST, build_key, key_material
from llamactl.core import locks, paths, runrecords
from llamactl.core.errors import LlamactlError
from llamactl.core.hashing import sha256_bytes, sha256_file
from llamactl.models import catalog, texts
from llamactl.source.git import Repo
from llamactl.source.patches import load_series, series_hashes
from llamactl.source.sources import GitSource, Lock, PathSource, PypiSdistSource, load_lock, load_versions, resolve
from llamactl.source.vendor import identity_of, path_identity, read_provenance

RUN_DAYS = 7.0
BUSY_S = 1800.0   # a build without a manifest whose log changed this recently is still compiling
# a build stale only for these reasons still leaves its work dir useful (the next build of that
# configuration recompiles incrementally there)
CONTENT_REASONS = ("is now pinned to", "its patches are no longer", "built from uncommitted edits")
DAY = 86400.0


@dataclass
class Entry:
    """One thing in the cache. ``size``: bytes; ``last_used``: seconds since the epoch."""

    kind: str
    name: str
    path: str
    size: int
    last_used: float
    stale: str | None = None     # why it is stale
    in_use: str | None = None    # why it must stay
    work_dir: str | None = None  # builds: the work directory it was compiled in

    @property
    def age_days(self) -> float:
        return max(0.0, (time.time() - self.last_used) / DAY)

    def to_json(self) -> dict:
        return dict(asdict(self), age_days=round(self.age_days, 2))


def _walk(path: Path) -> tuple[int, float]:
    """(bytes, newest mtime) of a file or a tree, symlinks not followed."""
    try:
        st = path.lstat()
    except OSError:
        return 0, 0.0
    if not path.is_dir() or path.is_symlink():
        return st.st_size, st.st_mtime
    size, newest = 0, st.st_mtime
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        s = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    newest = max(newest, s.st_mtime)
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    else:
                        size += s.st_size
        except OSError:
            continue
    return size, newest


def _entry(kind: str, path: Path, name: str | None = None) -> Entry:
    size, newest = _walk(path)
    lock = locks.lock_path(path)
    return Entry(kind, name or path.name, str(path), size, newest or (lock.stat().st_mtime if lock.exists() else 0.0))


def _children(d: Path) -> list[Path]:
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if not p.name.endswith(".lock"))


# --- what live processes use ----------------------------------------------------------------


def _live_paths() -> list[tuple[str, str]]:
    """(path, who) for every executable and absolute argv path of the processes we can see."""
    seen: list[tuple[str, str]] = []
    for p in psutil.process_iter(["pid", "name", "exe", "cmdline"]):
        info = p.info
        who = f"{info.get('name') or '?'} (pid {info['pid']})"
        for x in [info.get("exe") or "", *(info.get("cmdline") or [])]:
            if x.startswith("/"):
                seen.append((x, who))
    return seen


def _user(path: Path, live: list[tuple[str, str]]) -> str | None:
    prefix = str(path).rstrip("/") + "/"
    for x, who in live:
        if x == str(path) or x.startswith(prefix):
            return f"used by {who}"
    return None


# --- staleness --------------------------------------------------------------------------------


def _current_identity(source: dict, lock: Lock) -> tuple[dict | None, str | None]:
    """The identity the named source has today, or (None, why not)."""
    name = source.get("source", "")
    try:
        if name.startswith("path:") or "@" in name:   # path:/dir[@REV], upstream@VERSION, NAME@COMMIT
            name_, spec = resolve(name, lock, fetch=False)
        elif name in lock.sources:
            name_, spec = name, lock.sources[name]
        else:
            return None, f"source {name!r} is no longer in vendor/sources.yaml"
    except Exception as exc:   # a path source whose directory is gone, ...
        return None, str(exc).splitlines()[0]
    if isinstance(spec, PathSource):
        commit = path_identity(spec)
        if commit is None:
            return source, None     # a plain directory: cannot tell, keep it
        return {"source": name_, "kind": "path", "version": commit, "hash": commit}, None
    version, digest = identity_of(name_, spec) or ("?", "?")
    return {"source": name_, "kind": spec.kind, "version": version, "hash": digest}, None


def _series_now(patches: list[dict]) -> list[dict] | None:
    """The recorded patch list if some series under patches/ still has exactly it."""
    if not patches:
        return []
    root = paths.patches_dir()
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and series_hashes(load_series(d.name)) == patches:
            return patches
    return None


def _vendor_local() -> str | None:
    tree = paths.vendor_tree()
    repo = Repo(tree)
    if not repo.exists() or not repo.is_dirty():
        return None
    return sha256_bytes(repo.diff_head().encode())[:16]


def build_staleness(manifest: dict, lock: Lock, compilers: dict) -> str | None:
    """Why the current sources, series, CMake options and compilers no longer give this build."""
    material = manifest.get("key_material") or {}
    ident, why = _current_identity(material.get("source") or {}, lock)
    if ident is None:
        return why
    if ident != material.get("source"):
        return f"{ident['source']} is now pinned to {str(ident.get('version'))[:16]}"
    patches = _series_now(material.get("patches") or [])
    if patches is None:
        return "its patches are no longer a series under patches/"
    local = material.get("local_changes")
    if local is not None:
        prov = read_provenance()
        if prov is None or prov.identity != ident or _vendor_local() != local:
            return "built from uncommitted edits that vendor/llama.cpp no longer holds"
    backend = material.get("backend", "cpu")
    fixed = cmake.COMMON_OPTIONS + cmake.BACKEND_OPTIONS.get(backend, [])
    opts = material.get("cmake_options") or []
    if opts[:len(fixed)] != fixed:
        return "llamactl's CMake options changed since"
    if material.get("compilers") != compilers:
        return f"compiler changed (now {compilers.get('c++')})"
    req = BuildRequest(backend=backend, target=material.get("target", "llama-server"),
                       gpu_targets=material.get("gpu_targets"), cmake_options=opts[len(fixed):])
    now = build_key(key_material(req, ident, patches, local, compilers))
    if now != manifest.get("key"):
        return "llamactl's build inputs changed since (tool targets, key layout)"
    return None


# --- listing ------------------------------------------------------------------------------------


def scan(older_than: float | None = None, on_warning: Callable[[str], None] | None = None) -> list[Entry]:
    """Every entry of the cache with its size, last use, staleness and use.

    ``older_than``: days; runs and help texts older than that are stale (default 7), and
    so is anything else not used for that long when it is given. Reads no network.
    """
    root = paths.cache_root()
    live = _live_paths()
    running = {str(r.dir): r for r in runrecords.load_all(on_warning) if runrecords.verify(r, on_warning)}
    try:
        lock: Lock | None = load_lock()
    except Exception:
        lock = None
    compilers = toolchain.compiler_ids()
    entries: list[Entry] = []
    builds = _builds(root / "builds", lock, compilers, live)
    entries += builds
    entries += _work_dirs(root / "build-work", builds)
    entries += _downloads(root / "downloads", lock)
    entries += _models(root / "models", live)
    entries += _trees(root / "trees", lock, live)
    runs_days = older_than if older_than is not None else RUN_DAYS
    for d in _children(root / "runs"):
        e = _entry("run", d)
        if str(d) in running:
            e.in_use = f"detached server pid {running[str(d)].pid} is running"
        elif e.age_days > runs_days:
            e.stale = f"older than {runs_days:g} days"
        entries.append(e)
    for f in _children(root / "help"):
        e = _entry("help", f)
        if e.age_days > runs_days:
            e.stale = f"older than {runs_days:g} days"
        entries.append(e)
    for d in _children(root / "kld"):     # llamactl quality's reference logits: large, recomputed on demand
        e = _entry("logits", d, f"kld/{d.name}")
        if locks.is_locked(d):
            e.in_use = "llama-perplexity is writing them"
        elif e.age_days > runs_days:
            e.stale = f"not used for {runs_days:g} days"
        entries.append(e)
    pinned_texts = {t.sha256[:16] for t in texts.TEXTS.values()}
    for d in _children(root / "texts"):
        e = _entry("text", d, f"texts/{d.name}")
        if d.name not in pinned_texts:
            e.stale = "no pinned text names it"
        entries.append(e)
    known = {"builds", "build-work", "downloads", "models", "trees", "runs", "help", "kld", "texts"}
    for other in _children(root):
        if other.name not in known:
            entries.append(_entry("other", other))
    for e in entries:
        if older_than is not None and e.stale is None and e.age_days > older_than:
            e.stale = f"not used for {e.age_days:.0f} days"
        if e.in_use is None and e.kind not in ("run",):
            e.in_use = _user(Path(e.path), live)
    return entries


def _builds(d: Path, lock: Lock | None, compilers: dict, live: list[tuple[str, str]]) -> list[Entry]:
    out = []
    for b in _children(d):
        e = _entry("build", b)
        if locks.is_locked(b):
            e.in_use = "another llamactl holds its build lock"
        m = b / MANIFEST
        try:
            manifest = json.loads(m.read_text())
        except (OSError, ValueError):
            manifest = None
        if manifest is None:
            log = b / "build.log"
            if log.exists() and time.time() - log.stat().st_mtime < BUSY_S:
                e.in_use = e.in_use or "a build is writing its log"
            if not e.in_use:
                e.stale = "incomplete: no manifest (a failed or interrupted build)"
        elif lock is None:
            e.stale = None
        else:
            e.stale = build_staleness(manifest, lock, compilers)
        e.work_dir = (manifest or {}).get("work_dir")
        out.append(e)
    return out


def _work_dirs(d: Path, builds: list[Entry]) -> list[Entry]:
    """Work dirs stay while a kept build (or one outdated only by its source content) came from them."""
    useful = {b.work_dir for b in builds if b.work_dir and (not b.stale or any(r in b.stale for r in CONTENT_REASONS))}
    out = []
    for w in _children(d):
        if w.name == "stamps" or w.name.endswith(".clone"):
            continue
        e = _entry("work", w)
        if locks.is_locked(w):
            e.in_use = "a build is compiling in it"
        elif str(w) not in useful:
            e.stale = "no kept build was compiled in it"
        out.append(e)
    stamps = d / "stamps"
    if stamps.is_dir():
        out.append(_entry("other", stamps, "build-work/stamps"))
    return out


def _pinned_sdists(lock: Lock | None) -> set[str]:
    """sha256 of every pinned sdist: the lock's and every version recorded in vendor/upstream-versions.yaml."""
    pinned = {s.sha256 for s in (lock.sources.values() if lock else []) if isinstance(s, PypiSdistSource)}
    try:
        pinned |= {e.sha256 for vers in load_versions().values() for e in vers.values()}
    except LlamactlError:
        pass
    return pinned


def _pinned_commits(lock: Lock | None) -> set[str]:
    return {s.commit for s in (lock.sources.values() if lock else []) if isinstance(s, GitSource)}


def _downloads(d: Path, lock: Lock | None) -> list[Entry]:
    out = []
    sdists, commits = _pinned_sdists(lock), _pinned_commits(lock)
    for f in _children(d):
        e = _entry("download", f)
        if lock is None:
            pass
        elif f.name.startswith("git-") and f.name.endswith(".tar"):
            if f.name[4:-4] not in commits:
                e.stale = "no git source pins this commit"
        elif len(f.name) == 64:
            if f.name not in sdists:
                e.stale = "no source pins this sha256"
        elif e.age_days > 1 / 24:
            e.stale = "left over from an interrupted download"
        out.append(e)
    return out


def _models(d: Path, live: list[tuple[str, str]]) -> list[Entry]:
    out = []
    prefixes = {m.sha256[:16] for m in catalog.CATALOG.values()}
    for f in _children(d):
        if f.name == "tiny-gemma4" and f.is_dir():
            from llamactl.models import tiny_gemma4

            writer = sha256_file(Path(tiny_gemma4.__file__))[:12]
            for w in _children(f):
                e = _entry("model", w, f"tiny-gemma4/{w.name}")
                if w.name != writer:
                    e.stale = "written by an older tiny_gemma4.py"
                out.append(e)
            continue
        e = _entry("model", f)
        if f.name not in prefixes:
            e.stale = "no catalog model has this hash"
        out.append(e)
    return out


def _trees(d: Path, lock: Lock | None, live: list[tuple[str, str]]) -> list[Entry]:
    out = []
    for t in _children(d):
        e = _entry("tree", t)
        tree = t / "llama.cpp"
        if locks.is_locked(tree):
            e.in_use = "another llamactl holds its lock"
        prov = read_provenance(tree)
        if prov is None:
            e.stale = None if e.in_use else "incomplete (no provenance)"
        else:
            e.name = f"{t.name} ({prov.source} {prov.version[:12]})"
            if lock is not None:
                ident, why = _current_identity(prov.identity, lock)
                if ident is None:
                    e.stale = why
                elif ident != prov.identity:
                    e.stale = f"{prov.source} is now pinned to {str(ident.get('version'))[:16]}"
        out.append(e)
    return out


# --- pruning --------------------------------------------------------------------------------------


def select(entries: Iterable[Entry], all_: bool = False) -> list[Entry]:
    """What prune removes: stale entries (every entry with ``all_``), never one in use."""
    return [e for e in entries if not e.in_use and (all_ or e.stale)]


def prune(entries: Iterable[Entry], all_: bool = False, dry_run: bool = False) -> list[Entry]:
    """Remove the selected entries; returns what was (or would be) removed.

    A build or tree is removed only while holding its lock, so a llamactl that starts
    using it at that moment is never cut off.
    """
    removed = []
    for e in select(entries, all_):
        p = Path(e.path)
        if dry_run:
            removed.append(e)
            continue
        guarded = p / "llama.cpp" if e.kind == "tree" else p
        held = locks.try_hold(guarded)
        if held is None:
            e.in_use = "locked by another llamactl"
            continue
        try:
            trash = p.with_name(f".trash-{p.name}-{os.getpid()}")
            try:
                os.replace(p, trash)
            except FileNotFoundError:
                continue
            if trash.is_dir() and not trash.is_symlink():
                shutil.rmtree(trash, ignore_errors=True)
            else:
                trash.unlink(missing_ok=True)
            removed.append(e)
        finally:
            held.release()   # the empty lock file stays: unlinking it could split waiters
    return removed


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
