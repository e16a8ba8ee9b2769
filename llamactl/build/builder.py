"""Cached out-of-tree builds of llama-server.

A build directory is keyed by everything that goes into the binary: the source's
provenance, the applied patch series (file hashes), uncommitted edits in the vendored
tree, backend, CMake options and compiler. The same inputs find the same directory and
its manifest, so an unchanged build returns without running anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from llamactl.build import cmake
from llamactl.core import paths
from llamactl.core import proc
from llamactl.build import toolchain
from rich.markup import escape

from llamactl.core.console import Output, err_console, progress_bar
from llamactl.core.errors import LlamactlError
from llamactl.source.git import Repo
from llamactl.core.hashing import sha256_bytes, stable_key
from llamactl.source.patches import apply as apply_series
from llamactl.source.patches import load_series, revert, series_hashes
from llamactl.source.sources import PathSource, resolve
from llamactl.source.vendor import Provenance, identity_of, path_identity, read_provenance, vendor

MANIFEST = "manifest.json"
HELP_FILE = "llama-server.help.txt"
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")


@dataclass
class BuildRequest:
    source: str | None = None        # lock name or path:/dir; None = what is vendored, else the lock default
    backend: str = "cpu"
    target: str = "llama-server"
    jobs: int = 2
    gpu_targets: str | None = None
    cmake_options: list[str] = field(default_factory=list)
    series: str | None = None        # None = the source's own series
    no_patches: bool = False


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
    if req.source:
        return req.source
    prov = read_provenance()
    return prov.source if prov else None


def key_material(req: BuildRequest, prov_identity: dict, patches: list[dict], local_diff: str | None,
                 compilers: dict) -> dict:
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
    }


def build_key(material: dict) -> str:
    return stable_key(material)


def build_root_for(backend: str, key: str) -> Path:
    return paths.builds_dir() / f"{backend}-{key}"


def prepare_tree(req: BuildRequest, out: Output | None = None) -> tuple[Provenance, list[dict], str | None]:
    """Vendor and patch as needed; return provenance, applied patch hashes and a hash of local edits."""
    prov = vendor(_source_name(req), out=out, series=req.series)
    tree = paths.vendor_tree()
    series = req.series if req.series is not None else prov.series
    if req.no_patches:
        if Repo(tree).commits_since_base():
            revert(tree, series=series)
        applied = []
    else:
        res = apply_series(tree, series)
        if out and res.applied:
            out.info(f"applied {len(res.applied)} patch(es) from patches/{series}/")
        applied = series_hashes(load_series(series))
    repo = Repo(tree)
    local = sha256_bytes(repo.diff_head().encode())[:16] if repo.is_dirty() else None
    return prov, applied, local


def dry_run(req: BuildRequest) -> cmake.CMakePlan:
    """The exact commands, with no toolchain needed; detects gfx/CUDA targets when it can."""
    tc = toolchain.detect(req.backend, req.gpu_targets)
    name, spec = resolve(_source_name(req))
    if isinstance(spec, PathSource):
        commit = path_identity(spec) or "worktree"
        version, digest = commit, commit
    else:
        version, digest = identity_of(name, spec) or ("?", "?")
    ident = {"source": name, "kind": spec.kind, "version": version, "hash": digest}   # as Provenance.identity
    series = None if req.no_patches else (req.series if req.series is not None else spec.series)
    material = key_material(req, ident, series_hashes(load_series(series)), None, toolchain.compiler_ids())
    root = build_root_for(req.backend, build_key(material))
    return cmake.plan(
        req.backend, root / "src", root / "build", target=req.target, jobs=req.jobs,
        extra_targets=_extra_targets(paths.vendor_tree()),
        gpu_targets=tc.gpu_targets or req.gpu_targets, extra_options=req.cmake_options,
        env=tc.env or None, ccache=tc.tools.get("ccache") is not None,
    )


@contextmanager
def vendor_lock():
    """One llamactl at a time may switch, patch or snapshot vendor/llama.cpp."""
    lock = paths.vendor_dir() / ".llamactl.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(req: BuildRequest, out: Output | None = None) -> BuildResult:
    t0 = time.monotonic()
    with vendor_lock():
        prov, applied, local = prepare_tree(req, out)
        compilers = toolchain.compiler_ids()
        material = key_material(req, prov.identity, applied, local, compilers)
        key = build_key(material)
        root = build_root_for(req.backend, key)
        cached = _load_manifest(root)
        if cached is not None:
            return BuildResult(cached, True, time.monotonic() - t0)
        root.mkdir(parents=True, exist_ok=True)
        _snapshot(paths.vendor_tree(), root / "src")
    return _compile(req, prov, applied, local, material, key, root, out, t0)


def _compile(req: BuildRequest, prov: Provenance, applied: list[dict], local: str | None, material: dict,
             key: str, root: Path, out: Output | None, t0: float) -> BuildResult:

    tc = toolchain.detect(req.backend, req.gpu_targets)
    tc.require()
    if req.backend == "hip" and not tc.gpu_targets:
        raise LlamactlError("no AMD GPU target detected", hint="pass --gpu-targets gfx1100 (or set it in the profile)")
    use_ccache = tc.tools.get("ccache") is not None
    plan = cmake.plan(req.backend, root / "src", root / "build", target=req.target, jobs=req.jobs,
                      extra_targets=_extra_targets(root / "src"),
                      gpu_targets=tc.gpu_targets, extra_options=req.cmake_options, env=tc.env or None,
                      ccache=use_ccache)
    log = root / "build.log"
    env = dict(os.environ)
    env.update(plan.env)
    if use_ccache:
        # relative paths inside the key dir make ccache hits across build dirs
        env.update({"CCACHE_BASEDIR": str(root), "CCACHE_NOHASHDIR": "1"})
    with open(log, "w") as logf:
        _run_logged(plan.configure, env, logf, log, out, "configuring")
        _run_logged(plan.build, env, logf, log, out, f"building {req.target}")
    binary = root / "build" / "bin" / req.target
    if not binary.exists():
        raise LlamactlError(f"build finished but {binary} is missing", hint=f"see {log}")
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
        "patches": applied,
        "local_changes": local,
        "cmake": {"configure": plan.configure, "build": plan.build, "env": plan.env, "shell": plan.shell_lines()},
        "toolchain": tc.tools,
        "gpu_targets": tc.gpu_targets,
        "duration_s": round(time.monotonic() - t0, 1),
        "binaries": {t: str(root / "build" / "bin" / t) for t in [req.target, *plan.extra_targets]
                     if (root / "build" / "bin" / t).exists()},
        "version": version.strip(),
        "log": str(log),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.rename(root / MANIFEST)
    return BuildResult(manifest, False, time.monotonic() - t0)


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


def _snapshot(tree: Path, dest: Path) -> None:
    """Copy the vendored tree's current content (HEAD plus uncommitted edits) to ``dest``."""
    if dest.exists():
        return
    repo = Repo(tree)
    rev = repo.out("stash", "create") or "HEAD"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tempfile.TemporaryFile() as f:
        subprocess.run(["git", "archive", "--format=tar", rev], cwd=tree, stdout=f, check=True)
        f.seek(0)
        with tarfile.open(fileobj=f) as tf:
            tf.extractall(tmp, filter="data")
    tmp.rename(dest)


def _run_logged(argv: list[str], env: dict, logf, log: Path, out: Output | None, what: str) -> None:
    logf.write("$ " + " ".join(argv) + "\n")
    logf.flush()
    try:
        p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    except FileNotFoundError as exc:
        raise LlamactlError(f"{argv[0]} not found", hint=toolchain.INSTALL_HINTS.get(argv[0])) from exc
    tenth = -1
    with progress_bar(what, total=None) as (progress, task):
        assert p.stdout is not None
        for line in p.stdout:
            logf.write(line)
            logf.flush()
            m = _NINJA.match(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                progress.update(task, completed=done, total=total)
                if out and not err_console.is_terminal and done * 10 // total > tenth:
                    tenth = done * 10 // total   # a plain line every 10% for logs without a bar
                    out.info(escape(f"{what}: [{done}/{total}]"))
    rc = p.wait()
    logf.flush()
    if rc != 0:
        raise LlamactlError(f"{what} failed: {first_error(log)}", hint=f"full log: {log}")


def first_error(log: Path) -> str:
    """The first compiler/CMake error line in a build log."""
    text = log.read_text(errors="replace").splitlines()
    for pat in (r"\berror:", r"CMake Error", r"FAILED:"):
        for ln in text:
            if re.search(pat, ln):
                return ln.strip()[:300]
    return text[-1].strip() if text else "(empty log)"


def _capture(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LlamactlError(f"{argv[0]} does not run: {exc}") from exc
    return cp.stdout + cp.stderr
