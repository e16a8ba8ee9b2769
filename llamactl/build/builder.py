"""Cached out-of-tree builds of llama-server.

A build directory is keyed by everything that goes into the binary: the source's
provenance, the applied patch series (file hashes), uncommitted edits in the vendored
tree, backend, CMake options and compiler. The same inputs find the same directory and
its manifest, so an unchanged build returns without running anything.

Compiling happens in one work directory per configuration (backend, target, CMake options,
compilers, source name: everything in the key but the source content). Its ``src/`` is synced
file by file from the vendored tree, keeping unchanged files' mtimes, so after a patch or an edit
ninja recompiles only what changed. The finished binaries, ``--help``, ``--version`` and the
manifest are then published to the content-keyed directory: a key only ever names a build made
from exactly its inputs. A cache hit is decided from a cheap stamp (provenance, lock and patch
files, git HEAD and dirty files, compiler binaries) without hashing or snapshotting the tree.

Concurrency: the toolchain is checked before anything is vendored or copied. The source tree
is vendor/llama.cpp for the current source (under its lock) or, for any other source, a cached
per-provenance tree that is cloned and patched aside (vendor/llama.cpp untouched). The work
directory's lock (filelock) is held from the sync through the compile, so a second llamactl
asking for the same build waits and then finds it cached. cmake/ninja/compilers run in a
process group of their own that dies with llamactl (Ctrl-C, SIGTERM, SIGKILL).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from llamactl.build import cmake
from llamactl.core import locks, paths
from llamactl.core import proc
from llamactl.build import srcsync, toolchain
from llamactl.core.errors import LlamactlError
from llamactl.core.files import write_atomic
from llamactl.core.progress import ProgressFn, report
from llamactl.source.git import Repo
from llamactl.core.hashing import sha256_bytes, stable_key
from llamactl.source.patches import apply as apply_series
from llamactl.source.patches import Patch, load_series, revert, series_hashes
from typing import TYPE_CHECKING, ContextManager

if TYPE_CHECKING:   # the lock file's pydantic models load only when a build has to look at sources
    from llamactl.source.vendor import Provenance

MANIFEST = "manifest.json"
HELP_FILE = "llama-server.help.txt"
STAMP_VERSION = 1
WORK_TARGET = "llama-server"   # how every target's work directory key spells the target (see work_material)
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
log = logging.getLogger(__name__)


@dataclass
class BuildRequest:
    source: str | None = None        # lock name or path:/dir; None = what is vendored, else the lock default
    backend: str = "cpu"
    target: str = "llama-server"
    jobs: int = 2
    gpu_targets: str | None = None
    cmake_options: list[str] = field(default_factory=list)
    series: str | None = None        # None = the source's own series; a directory path works too
    no_patches: bool = False
    aside: bool = False              # never read vendor/llama.cpp: build from the source's cached tree
    work_source: str | None = None   # compile in this source's work directory (a variant of it: bisect)


@dataclass
class BuildResult:
    manifest: dict
    cached: bool
    seconds: float

    @property
    def binary(self) -> Path:
        return Path(self.manifest["binaries"][self.manifest["target"]])

    @property
    def build_root(self) -> Path:
        return Path(self.manifest["build_root"])

    @property
    def help_text(self) -> str:
        return (self.build_root / HELP_FILE).read_text()


def _source_name(req: BuildRequest) -> str | None:
    from llamactl.source.vendor import read_provenance

    if req.source:
        return req.source
    prov = read_provenance()
    return prov.source if prov else None


def key_material(req: BuildRequest, prov_identity: dict, patches: list[dict], local_diff: str | None,
                 compilers: dict, backend_patches: list[dict] | None = None) -> dict:
    extra = {"backend_patches": backend_patches} if backend_patches else {}   # absent: other keys unchanged
    return {
        "source": prov_identity,
        "patches": patches,
        "local_changes": local_diff,
        "backend": req.backend,
        "target": req.target,
        "tool_targets": cmake.TOOL_TARGETS,
        "gpu_targets": req.gpu_targets,
        "cmake_options": cmake.COMMON_OPTIONS + cmake.BACKEND_OPTIONS.get(req.backend, []) + req.cmake_options,
        "compilers": compilers,
        **extra,
    }


def backend_series(series: str | None, backend: str) -> list[Patch]:
    """Patches only this backend's builds get, ``patches/<series>/<backend>/*.patch``.

    They are applied to the build's snapshot of the tree (never to vendor/llama.cpp), so other
    backends' build keys and the vendored tree stay as they are. Used for toolchain compatibility,
    e.g. ggml-vulkan against Debian 12's Vulkan headers (1.3.239).
    """
    return load_series(f"{series}/{backend}") if series else []


def build_key(material: dict) -> str:
    return stable_key(material)


def build_root_for(backend: str, key: str) -> Path:
    return paths.builds_dir() / f"{backend}-{key}"


def prepare_tree(req: BuildRequest, progress: ProgressFn | None = None) -> tuple[Provenance, list[dict], str | None]:
    """Vendor and patch as needed; return provenance, applied patch hashes and a hash of local edits."""
    from llamactl.source.vendor import vendor

    prov = vendor(_source_name(req), progress=progress, series=req.series)
    tree = paths.vendor_tree()
    series = req.series if req.series is not None else prov.series
    if req.no_patches:
        if Repo(tree).commits_since_base():
            revert(tree, series=series)
        applied = []
    else:
        res = apply_series(tree, series)
        if res.applied:
            log.info(f"applied {len(res.applied)} patch(es) from patches/{series}/")
        applied = series_hashes(load_series(series))
    repo = Repo(tree)
    local = sha256_bytes(repo.diff_head().encode())[:16] if repo.is_dirty() else None
    return prov, applied, local


def dry_run(req: BuildRequest) -> cmake.CMakePlan:
    """The exact commands, with no toolchain needed; detects gfx/CUDA targets when it can."""
    from llamactl.source.sources import resolve
    from llamactl.source.vendor import expected_identity

    tc = toolchain.detect(req.backend, req.gpu_targets)
    name, spec = resolve(_source_name(req))
    ident = expected_identity(name, spec)
    series = None if req.no_patches else (req.series if req.series is not None else spec.series)
    material = key_material(req, ident, series_hashes(load_series(series)), None, toolchain.compiler_ids(),
                            series_hashes(backend_series(series, req.backend)))
    work = work_dir_for(req.backend, material, req.work_source)
    tree = work / "src" if (work / "src").is_dir() else paths.vendor_tree()
    return _plan(req, work, _extra_targets(tree), tc.gpu_targets or req.gpu_targets, tc.env or None,
                 tc.tools.get("ccache") is not None)


def work_dir_of(req: BuildRequest, series: str | None) -> Path:
    """The work directory a build of ``req`` (with ``series``) compiles in; nothing is fetched or
    resolved: ``req.work_source``, else ``req.source``, names its family."""
    extra = [] if req.no_patches else backend_series(series, req.backend)
    material = key_material(req, {"source": req.work_source or req.source}, [], None, toolchain.compiler_ids(),
                            series_hashes(extra))
    return work_dir_for(req.backend, material, req.work_source)


def is_warm(work: Path) -> bool:
    """True when ``work`` holds a configured build tree (a build there is incremental)."""
    return (work / "build" / "build.ninja").is_file() and (work / "src.index.json").is_file()


def work_material(material: dict, work_source: str | None = None) -> dict:
    """The key material without the source's content (provenance hash, patches, local edits).

    Builds that differ only in source content share one work directory, so ninja can rebuild
    incrementally between them; the source's name stays in, so upstream and the fork keep apart.
    Every CMake target of a configuration (``llama-server``, ``llama-perplexity``, ...) compiles in the
    same work directory (the configure command does not depend on the target), so building a second
    target after the first compiles only what that target adds; the key names the target as
    ``WORK_TARGET`` so work directories made before targets shared them keep their names.
    Versions of one source (``upstream@0.3.35``, ``NAME@COMMIT``, ``path:/dir@REV``) are one family
    and share one work directory (``upstream@``), apart from the plain name's: moving between
    versions (bisect) recompiles only what changed, and the pinned source's work directory keeps
    its own incremental state.
    ``work_source`` names another source whose work directory to use (bisect: a ``path:`` checkout
    of upstream compiles where upstream does).
    """
    m = {k: v for k, v in material.items() if k not in ("source", "patches", "local_changes")}
    m["source_name"] = source_family(work_source or material["source"].get("source"))
    if "target" in m:   # one configuration, every target (llama-server, llama-perplexity): one work dir
        m["target"] = WORK_TARGET
    return m


def source_family(name: str | None) -> str | None:
    """``upstream@0.3.35`` -> ``upstream@``, ``path:/d@REV`` -> ``path:/d@``; a plain name is its own family."""
    if name is None:
        return None
    head, at, _rev = (name[5:] if name.startswith("path:") else name).partition("@")
    return ("path:" if name.startswith("path:") else "") + head + at


def work_root() -> Path:
    """Work directories and stamps, beside (not inside) the content-keyed build directories."""
    p = paths.cache_root() / "build-work"
    p.mkdir(parents=True, exist_ok=True)
    return p


def work_dir_for(backend: str, material: dict, work_source: str | None = None) -> Path:
    return work_root() / f"{backend}-{stable_key(work_material(material, work_source))}"


def build(req: BuildRequest, progress: ProgressFn | None = None) -> BuildResult:
    """Build (or find cached) the request's binaries; raises LlamactlError on any failure.

    ``progress`` hears downloads (bytes) and the compile (``configuring``, then ninja steps of
    ``building TARGET``); what happens (vendoring, patches applied, lock waits) is logged.

    The toolchain is checked first (ToolchainMissing, naming what to install, before anything
    is vendored or copied). A cache hit costs a stamp lookup (one ``git status``) and a manifest
    read. A miss compiles in the configuration's work directory, incrementally when it already
    holds an earlier build, holding that directory's lock through the compile.
    """
    t0 = time.monotonic()
    toolchain.preflight(req.backend, req.gpu_targets)
    own_tree = not req.aside and _uses_vendor_tree(req)
    while True:
        with (locks.vendor_lock() if own_tree else _cached_tree_lock(req)):
            tree = paths.vendor_tree() if own_tree else _cached_tree(req)
            hit = _stamp_hit(req, tree)
            if hit is not None:
                return BuildResult(hit, True, time.monotonic() - t0)
            prov, applied, local, tree = _prepare(req, own_tree, progress)
            compilers = toolchain.compiler_ids()
            extra = [] if req.no_patches else backend_series(req.series if req.series is not None else prov.series, req.backend)
            material = key_material(req, prov.identity, applied, local, compilers, series_hashes(extra))
            key = build_key(material)
            _record_stamp(req, key, tree)
            root = build_root_for(req.backend, key)
            cached = _load_manifest(root)
            if cached is not None:
                return BuildResult(cached, True, time.monotonic() - t0)
            work = work_dir_for(req.backend, material, req.work_source)
            lock = locks.try_hold(work)
            if lock is not None:
                try:
                    if own_tree:
                        rev = Repo(tree).out("stash", "create") or "HEAD"
                        source_tree = Repo(tree).out("rev-parse", f"{rev}^{{tree}}")
                        synced = srcsync.sync_tree(tree, rev, work / "src", work / "src.index.json")
                    else:
                        series = None if req.no_patches else (req.series if req.series is not None else prov.series)
                        source_tree, synced = _sync_patched(tree, series, work)
                    apply_backend_patches(work / "src", extra)
                except BaseException:
                    lock.release()
                    raise
                break
        # another llamactl is building in this work dir: wait for it, then look again
        with locks.hold(work, f"the build work dir {work.name}"):
            pass
    try:
        return _compile(req, prov, applied, local, material, key, root, work, source_tree, synced, progress, t0)
    finally:
        lock.release()


def _uses_vendor_tree(req: BuildRequest) -> bool:
    """True when the request's source is the one in vendor/llama.cpp (read cheaply; no lock file models)."""
    if req.source is None:
        return True
    tree = paths.vendor_tree()
    prov = _read_json(tree.parent / f"{tree.name}.provenance.json")
    if isinstance(prov, dict) and (tree / ".git").exists():
        return prov.get("source") == req.source
    from llamactl.source.vendor import uses_vendor_tree

    return uses_vendor_tree(req.source)


def _cached_tree(req: BuildRequest) -> Path:
    from llamactl.source.vendor import cached_tree_path

    assert req.source is not None
    return cached_tree_path(req.source)


def _cached_tree_lock(req: BuildRequest) -> ContextManager[None]:
    return locks.hold(_cached_tree(req), f"the cached tree of {req.source}")


def _prepare(req: BuildRequest, own_tree: bool, progress: ProgressFn | None) -> tuple[Provenance, list[dict], str | None, Path]:
    """(provenance, patch hashes, local-edit hash, tree) of the tree this build reads."""
    if own_tree:
        prov, applied, local = prepare_tree(req, progress)
        return prov, applied, local, paths.vendor_tree()
    from llamactl.source.vendor import ensure_cached_tree

    assert req.source is not None
    tree, prov = ensure_cached_tree(req.source, progress, req.series)
    series = req.series if req.series is not None else prov.series
    applied = [] if req.no_patches else series_hashes(load_series(series))
    return prov, applied, None, tree


def _sync_patched(tree: Path, series: str | None, work: Path) -> tuple[str, srcsync.SyncResult]:
    """Sync a read-only cached tree plus ``series`` into ``work/src``, patching a throwaway clone."""
    clone = work.with_name(work.name + ".clone")
    shutil.rmtree(clone, ignore_errors=True)
    proc.run(["git", "clone", "-q", "--shared", str(tree), str(clone)])
    try:
        if series:
            apply_series(clone, series)
        source_tree = Repo(clone).out("rev-parse", "HEAD^{tree}")
        return source_tree, srcsync.sync_tree(clone, "HEAD", work / "src", work / "src.index.json")
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def _compile(req: BuildRequest, prov: Provenance, applied: list[dict], local: str | None, material: dict,
             key: str, root: Path, work: Path, source_tree: str, synced: srcsync.SyncResult,
             progress: ProgressFn | None, t0: float) -> BuildResult:
    tc = toolchain.detect(req.backend, req.gpu_targets)
    tc.require()
    if req.backend == "hip" and not tc.gpu_targets:
        raise LlamactlError("no AMD GPU target detected", hint="pass --gpu-targets gfx1100 (or set it in the profile)")
    if req.backend == "cuda" and not tc.gpu_targets:
        raise LlamactlError("no NVIDIA GPU detected (nvidia-smi), so CMAKE_CUDA_ARCHITECTURES=native cannot work",
                            hint="pass --gpu-targets 89 (CUDA architectures, e.g. '86;89;90'), or set build.gpu_targets")
    use_ccache = tc.tools.get("ccache") is not None
    src, bdir = work / "src", work / "build"
    plan = _plan(req, work, _extra_targets(src), tc.gpu_targets, tc.env or None, use_ccache)
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    env = dict(os.environ)
    env.update(plan.env)
    if use_ccache:
        # relative paths inside the work dir make ccache hits across work dirs
        env.update({"CCACHE_BASEDIR": str(work), "CCACHE_NOHASHDIR": "1"})
    configured_with = {"configure": plan.configure, "env": plan.env}
    stamp = work / "configured.json"
    configured = (bdir / "CMakeCache.txt").exists() and (bdir / "build.ninja").exists() and _read_json(stamp) == configured_with
    with open(log, "w") as logf:
        logf.write(f"# source tree {source_tree} synced into {src}: {len(synced.written)} file(s) written, "
                   f"{len(synced.removed)} removed, {synced.unchanged} unchanged\n")
        if configured:
            logf.write("# already configured with the same command (ninja re-runs CMake when a CMake file changed)\n")
        else:
            stamp.unlink(missing_ok=True)
            _run_logged(plan.configure, env, logf, log, progress, "configuring")
            stamp.write_text(json.dumps(configured_with))
        steps = _run_logged(plan.build, env, logf, log, progress, f"building {req.target}")
    targets = [req.target, *plan.extra_targets]
    if not (bdir / "bin" / req.target).exists():
        raise LlamactlError(f"build finished but {bdir / 'bin' / req.target} is missing", hint=f"see {log}")
    binaries = _publish(bdir / "bin", root / "build" / "bin", targets)
    binary = binaries[req.target]
    version = _capture([str(binary), "--version"])
    help_text = _capture([str(binary), "--help"])
    (root / HELP_FILE).write_text(help_text)
    manifest = {
        "key": key,
        "key_material": material,
        "build_root": str(root),
        "target": req.target,
        "backend": req.backend,
        "source": prov.__dict__,
        "source_tree": source_tree,
        "patches": applied,
        "backend_patches": material.get("backend_patches", []),
        "local_changes": local,
        "cmake": {"configure": plan.configure, "build": plan.build, "env": plan.env, "shell": plan.shell_lines()},
        "work_dir": str(work),
        "incremental": {"files_written": len(synced.written), "files_removed": len(synced.removed),
                        "written": sorted(synced.written)[:50], "removed": sorted(synced.removed)[:50],
                        "configured": not configured, "ninja_steps": steps},
        "toolchain": tc.tools,
        "gpu_targets": tc.gpu_targets,
        "duration_s": round(time.monotonic() - t0, 1),
        "binaries": {t: str(p) for t, p in binaries.items()},
        "version": version.strip(),
        "help_file": str(root / HELP_FILE),
        "log": str(log),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return BuildResult(manifest, False, time.monotonic() - t0)


# Shared-library builds (-D BUILD_SHARED_LIBS=ON) must find their libraries next to the published
# binary, not in the work dir that the next build overwrites.
RPATH_OPTIONS = ["-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON"]


def _plan(req: BuildRequest, work: Path, extra_targets: list[str], gpu_targets: str | None,
          env: dict[str, str] | None, ccache: bool) -> cmake.CMakePlan:
    """The CMake commands for a build in ``work`` (sources in work/src, build tree in work/build)."""
    return cmake.plan(req.backend, work / "src", work / "build", target=req.target, jobs=req.jobs,
                      extra_targets=extra_targets,
                      gpu_targets=gpu_targets, extra_options=[*req.cmake_options, *RPATH_OPTIONS], env=env,
                      ccache=ccache)


def _publish(src_bin: Path, dest_bin: Path, targets: list[str]) -> dict[str, Path]:
    """Copy the built binaries (and any shared libraries) out of the work dir; copies, never links,
    because the next build in the work dir rewrites those files."""
    if dest_bin.exists():
        shutil.rmtree(dest_bin)
    dest_bin.mkdir(parents=True)
    out: dict[str, Path] = {}
    for f in sorted(src_bin.iterdir()):
        if f.is_file() and (f.name in targets or ".so" in f.name):
            shutil.copy2(f, dest_bin / f.name)
            if f.name in targets:
                out[f.name] = dest_bin / f.name
    return out


def _read_json(p: Path) -> object:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _extra_targets(src: Path) -> list[str]:
    """Tools built with every llama-server: llama-gguf-split and the RPC worker (when the tree has one)."""
    rpc = cmake.rpc_target(src)
    return [*cmake.TOOL_TARGETS, *([rpc] if rpc else [])]


def _load_manifest(root: Path) -> dict | None:
    m = root / MANIFEST
    if not m.exists():
        return None
    try:
        data = json.loads(m.read_text())
    except ValueError:
        return None
    if all(Path(p).exists() for p in data.get("binaries", {}).values()) and (root / HELP_FILE).exists():
        return data
    return None


# --- the cheap stamp -----------------------------------------------------------------------------


def stamp_material(req: BuildRequest, tree: Path | None = None) -> dict | None:
    """Every build input, cheaply: file contents and stats, git HEAD and the dirty files' bytes.

    No tree is hashed or snapshotted: one ``git status`` (stat-based) stands for the tracked
    files. Two equal stamps mean ``prepare_tree`` would change nothing and the build key would
    be the same. None when no stamp can be taken (nothing vendored, a path source, no git).
    """
    tree = tree or paths.vendor_tree()
    try:   # the files of vendor.provenance_path and sources.lock_path, read without loading those modules
        prov_text = (tree.parent / f"{tree.name}.provenance.json").read_text()
        prov = json.loads(prov_text)
        lock_text = (paths.vendor_dir() / "sources.yaml").read_text()
    except (OSError, ValueError):
        return None
    name = req.source or prov.get("source")
    if not isinstance(name, str) or name.startswith("path:") or prov.get("source") != name or prov.get("kind") == "path":
        return None    # a path source's identity is another repo's HEAD: vendor() looks there each time
    series = req.series if req.series is not None else prov.get("series")
    git = _git_state(tree)
    if git is None:
        return None
    return {
        "version": STAMP_VERSION,
        "tree": str(tree),
        "provenance": prov_text,
        "lock": sha256_bytes(lock_text.encode()),
        "request": {"source": req.source, "backend": req.backend, "target": req.target, "gpu_targets": req.gpu_targets,
                    "cmake_options": req.cmake_options, "series": req.series, "no_patches": req.no_patches},
        "series": series_hashes(load_series(series)),
        "git": git,
        "compilers": _compiler_files(),
        "options": [cmake.COMMON_OPTIONS, cmake.BACKEND_OPTIONS.get(req.backend, []), cmake.TOOL_TARGETS],
        **({"backend_series": series_hashes(backend_series(series, req.backend))}
           if not req.no_patches and backend_series(series, req.backend) else {}),
    }


def _git_state(tree: Path) -> dict | None:
    """HEAD and, per uncommitted path, a hash of its bytes (or None when deleted)."""
    cp = subprocess.run(["git", "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=no"],
                        cwd=tree, capture_output=True)
    if cp.returncode != 0:
        return None
    head: str | None = None
    dirty: dict[str, str | None] = {}
    recs = cp.stdout.split(b"\0")
    i = 0
    while i < len(recs):
        rec = recs[i].decode("utf-8", "surrogateescape")
        i += 1
        if rec.startswith("# branch.oid "):
            head = rec.split()[-1]
        elif rec[:2] in ("1 ", "2 ", "u "):
            nfields = {"1": 8, "2": 9, "u": 10}[rec[0]]
            path = rec.split(" ", nfields)[-1]
            if rec[0] == "2":
                dirty[recs[i].decode("utf-8", "surrogateescape")] = None   # the rename's old path
                i += 1
            f = tree / path
            dirty[path] = sha256_bytes(f.read_bytes()) if f.is_file() else (os.readlink(f) if f.is_symlink() else None)
    return {"head": head, "dirty": dirty} if head else None


def _compiler_files() -> list:
    out: list = []
    for var, default in (("CC", "cc"), ("CXX", "c++")):
        exe = os.environ.get(var, default)
        found = shutil.which(exe)
        if found is None:
            out.append([exe, None])
            continue
        real = os.path.realpath(found)
        st = os.stat(real)
        out.append([exe, found, real, st.st_size, st.st_mtime_ns])
    return out


def _stamp_file(material: dict) -> Path:
    return work_root() / "stamps" / f"{stable_key(material, 32)}.json"


def cached_build(req: BuildRequest) -> dict | None:
    """The manifest of ``req``'s build when it is cached and the cheap stamp names it (vendored tree
    unchanged since), else None; nothing is vendored, copied or compiled to find out."""
    if req.source is not None and req.source.startswith("path:"):
        return None
    try:
        return _stamp_hit(req)
    except (OSError, ValueError):
        return None


def _stamp_hit(req: BuildRequest, tree: Path | None = None) -> dict | None:
    """The cached manifest that the current stamp names, if that build is still complete."""
    material = stamp_material(req, tree)
    if material is None:
        return None
    rec = _read_json(_stamp_file(material))
    if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
        return None
    return _load_manifest(build_root_for(req.backend, rec["key"]))


def _record_stamp(req: BuildRequest, key: str, tree: Path | None = None) -> None:
    material = stamp_material(req, tree)
    if material is None:
        return
    f = _stamp_file(material)
    write_atomic(f, json.dumps({"key": key}))


def apply_backend_patches(src: Path, patches: list[Patch]) -> None:
    """Apply backend-only patches to a build's source copy; a patch already applied is skipped.

    Raises LlamactlError naming the patch when one neither applies nor is already applied.
    """
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(src.parent)}   # never an enclosing repository

    def git_apply(patch: Patch, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "apply", *flags, str(patch.path)], cwd=src, capture_output=True, text=True, env=env)

    for patch in patches:
        check = git_apply(patch, "--check")
        if check.returncode == 0:
            done = git_apply(patch)
            if done.returncode == 0:
                continue
            check = done
        if git_apply(patch, "--reverse", "--check").returncode == 0:
            continue   # already applied (srcsync left the patched file alone)
        why = (check.stderr.strip().splitlines() or ["?"])[0]
        raise LlamactlError(f"backend patch {patch.name} does not apply: {why}", hint=f"patch: {patch.path}")


def _run_logged(argv: list[str], env: dict, logf, log: Path, progress: ProgressFn | None, what: str) -> int:
    """Run one step, its output into the log; returns how many ninja steps it ran. ``progress``
    hears ``what`` (ninja's [done/total] steps once ninja prints them)."""
    logf.write("$ " + " ".join(argv) + "\n")
    logf.flush()
    try:   # own process group, dies with llamactl however llamactl ends
        p = proc.spawn(argv, whole_group=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, bufsize=1)
    except FileNotFoundError as exc:
        raise LlamactlError(f"{argv[0]} not found", hint=toolchain.INSTALL_HINTS.get(argv[0])) from exc
    steps = 0
    report(progress, what, unit="steps")
    try:
        assert p.stdout is not None
        for line in p.stdout:
            logf.write(line)
            logf.flush()
            m = _NINJA.match(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                steps = max(steps, done)
                report(progress, what, done, total, "steps")
        rc = p.wait()
    except BaseException:   # Ctrl-C, SIGTERM (as KeyboardInterrupt), an error: stop cmake and all below it
        proc.terminate(p, grace=5)
        raise
    finally:
        report(progress, what, steps, None, "steps", finished=True)
    logf.flush()
    if rc != 0:
        raise LlamactlError(f"{what} failed: {first_error(log)}", hint=f"full log: {log}")
    return steps


def first_error(log: Path) -> str:
    """The first compiler/CMake error line in a build log."""
    text = log.read_text(errors="replace").splitlines()
    for pat in (r"\berror:", r"CMake Error", r"FAILED:"):
        for i, ln in enumerate(text):
            if re.search(pat, ln):
                line = ln.strip()
                if line.endswith(":"):   # CMake puts the message on the next line(s)
                    more = next((t.strip() for t in text[i + 1:i + 4] if t.strip()), "")
                    line = f"{line} {more}".strip()
                return line[:300]
    return text[-1].strip() if text else "(empty log)"


def _capture(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LlamactlError(f"{argv[0]} does not run: {exc}") from exc
    return cp.stdout + cp.stderr


# ggml's op tests: each op of a backend against the CPU backend (``-b Vulkan0 -o MUL_MAT``).
TEST_TARGETS = ["test-backend-ops"]

# ops of the Gemma 4 + MTP graphs (target and assistant), for ``test-backend-ops -o``
MTP_GRAPH_OPS = ["MUL_MAT", "GET_ROWS", "RMS_NORM", "MUL", "ADD", "ROPE", "SOFT_MAX", "GLU", "GELU", "SCALE",
                 "TANH", "CONCAT", "SET_ROWS", "CPY", "CONT"]


def build_tests(res: BuildResult, progress: ProgressFn | None = None, jobs: int = 2) -> dict[str, str]:
    """Build ``TEST_TARGETS`` in the build directory of ``res``; returns target -> binary path.

    The build directory is configured again with ``-DLLAMA_BUILD_TESTS=ON``, which adds targets and
    leaves llama-server as built (its key does not change). Recorded in the manifest under ``tests``.
    Raises LlamactlError naming the first error when configure or build fails.
    """
    root = res.build_root
    work = Path(res.manifest.get("work_dir") or root)   # builds before work dirs compiled in their key dir
    if "work_dir" in res.manifest and srcsync.load_index(work / "src.index.json") and \
            json.loads((work / "src.index.json").read_text()).get("rev_tree") != res.manifest.get("source_tree"):
        raise LlamactlError(f"{work} now holds another build's sources", hint="run the build again, then --with-tests")
    conf = [*res.manifest["cmake"]["configure"], "-DLLAMA_BUILD_TESTS=ON"]
    bld = ["cmake", "--build", str(work / "build"), "--target", *TEST_TARGETS, "-j", str(jobs)]
    env = {**os.environ, **res.manifest["cmake"].get("env", {})}
    log = root / "tests-build.log"
    t0 = time.monotonic()
    with open(log, "w") as logf:
        _run_logged(conf, env, logf, log, progress, "configuring tests")
        _run_logged(bld, env, logf, log, progress, f"building {' '.join(TEST_TARGETS)}")
    missing = [t for t in TEST_TARGETS if not (work / "build" / "bin" / t).exists()]
    if missing:
        raise LlamactlError(f"test build finished but {', '.join(missing)} is missing", hint=f"see {log}")
    found: dict[str, str] = {}
    for t in TEST_TARGETS:   # beside llama-server: the work dir's copy is rewritten by the next build there
        dest = root / "build" / "bin" / t
        if dest != work / "build" / "bin" / t:
            shutil.copy2(work / "build" / "bin" / t, dest)
        found[t] = str(dest)
    manifest = dict(res.manifest, tests={"binaries": found, "configure": conf, "build": bld, "log": str(log),
                                         "duration_s": round(time.monotonic() - t0, 1)})
    write_atomic(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    res.manifest.update(manifest)
    return found
