"""From a resolved profile to a running llama-server: build, models, port, argv, process."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llamactl.models import catalog as models
from llamactl.models import draft_pair, gguf_info
from llamactl.core import paths
from llamactl.build.builder import BuildRequest, BuildResult, build, cached_build
from llamactl.core.progress import ProgressFn
from llamactl.serve.dialect import Help, parse_help, server_environment
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.hashing import stable_key
from llamactl.serve import quickstart, rpc
from llamactl.serve.profiles import ENV_VARS, Profile, Resolved
from llamactl.serve.render import render_argv
from llamactl.serve.endpoint import Endpoint, listen_endpoints
from llamactl.serve.server import ServerProcess, free_port


@dataclass
class Binary:
    path: Path
    help: Help
    manifest: dict | None = None   # None when LLAMA_SERVER / server_binary bypasses the build


@dataclass
class LaunchPlan:
    resolved: Resolved
    binary: Binary
    argv: list[str]
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)          # the profile's env: (set on top)
    model_paths: dict[str, Path] = field(default_factory=dict)
    env_dropped: list[str] = field(default_factory=list)       # inherited llama-server variables not passed on
    endpoints: list[Endpoint] = field(default_factory=list)   # every --host address; [0] is the one llamactl uses
    rpc_workers: list[rpc.RpcWorker] = field(default_factory=list)   # local workers to start before the server
    notes: list[str] = field(default_factory=list)             # what llamactl could not check (remote workers' builds)

    @property
    def endpoint(self) -> Endpoint:
        """Where llamactl reaches the server (the first host of ``--host``)."""
        return self.endpoints[0] if self.endpoints else Endpoint.parse(self.host, self.port)

    @property
    def url(self) -> str:
        """The URL to show: ``http://127.0.0.1:8080``, ``http://[::1]:8080`` or ``unix:///path.sock``."""
        return self.endpoint.url

    @property
    def base_url(self) -> str:
        """The client's base URL (``http://localhost`` for a unix socket, with ``endpoint.client()``)."""
        return self.endpoint.base_url

    @property
    def endpoint_paths(self) -> list[str]:
        """The HTTP paths `run` lists as ready: the API, plus /metrics and /slots when the profile enables them."""
        prof = self.resolved.profile
        return (["/health", "/v1/messages", "/v1/chat/completions", "/completion"]
                + (["/metrics"] if prof.metrics else []) + (["/slots"] if prof.slots else []))

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)


def build_request(profile: Profile) -> BuildRequest:
    b = profile.build
    return BuildRequest(source=b.source, backend=b.backend, gpu_targets=b.gpu_targets, series=b.series,
                        no_patches=b.no_patches, cmake_options=list(b.cmake_options))


def ensure_binary(profile: Profile, progress: ProgressFn | None = None, jobs: int | None = None) -> Binary:
    """The profile's llama-server: its ``server_binary``, or built (cached); ``progress`` hears the build."""
    if profile.server_binary:
        path = Path(profile.server_binary).expanduser()
        check_server_binary(path)
        return Binary(path.resolve(), parse_help(help_for(path)), None)
    req = build_request(profile)
    req.jobs = jobs or os.cpu_count() or 2
    res: BuildResult = build(req, progress)
    return Binary(res.binary, parse_help(res.help_text), res.manifest)


RECORDED_HELP = Path(__file__).resolve().parent / "recorded_help"


def recorded_help_path(source: str) -> Path:
    """Where the recorded ``llama-server --help`` of a pinned source lives (``recorded_help/<source>.txt``;
    the file may be missing for a source nobody recorded)."""
    return RECORDED_HELP / f"{source}.txt"


def recorded_binary(profile: Profile) -> Binary | None:
    """The profile's llama-server as its pinned source's recorded ``--help`` describes it, for rendering
    argv before anything is built (the path is the bare name ``llama-server``); None when the source
    has no recorded help (a ``path:`` source, say) or a ``server_binary`` is set."""
    if profile.server_binary:
        return None
    p = recorded_help_path(profile.build.source)
    if not p.is_file():
        return None
    return Binary(Path("llama-server"), parse_help(p.read_text()), None)


def is_built(profile: Profile) -> bool:
    """True when the profile's llama-server is there without building: a ``server_binary``, or a cached
    build that the cheap build stamp names (nothing is vendored, copied or compiled to find out)."""
    if profile.server_binary:
        return True
    try:
        return cached_build(build_request(profile)) is not None
    except LlamactlError:
        return False


HELP_TIMEOUT_S = 30.0                                  # a llama-server answers --help in well under a second
SERVER_FLAGS = ("--port", "--host", "--model", "--ctx-size", "--parallel")   # every llama-server --help lists these
WHAT = "server_binary (LLAMA_SERVER)"


def check_server_binary(path: Path) -> None:
    """A ``server_binary`` must be an executable file. Raises BadInput naming what is wrong."""
    if not path.exists():
        raise BadInput(f"{WHAT} {path} does not exist")
    if path.is_dir():
        raise BadInput(f"{WHAT} {path} is a directory, not the llama-server program")
    if not os.access(path, os.X_OK) or not path.stat().st_mode & 0o111:
        raise BadInput(f"{WHAT} {path} is not executable", hint=f"chmod +x {path}")


def help_for(binary: Path, timeout: float | None = None) -> str:
    """``--help`` of a binary that llamactl did not build, cached by path, size and mtime.

    ``timeout`` in seconds (default :data:`HELP_TIMEOUT_S`). Raises:
        BadInput: the program cannot be run, does not answer --help in time, or is not a
            llama-server (its --help lacks the server's flags, e.g. --port).
    """
    st = binary.stat()
    cache = paths.cache_root() / "help" / f"{stable_key([str(binary.resolve()), st.st_size, st.st_mtime_ns])}.txt"
    if cache.exists():
        return cache.read_text(errors="replace")
    timeout = HELP_TIMEOUT_S if timeout is None else timeout
    try:
        cp = subprocess.run([str(binary), "--help"], capture_output=True, text=True, errors="replace",
                            timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        raise BadInput(f"{WHAT} {binary} did not answer --help within {timeout:g}s; is it a llama-server?") from exc
    except OSError as exc:
        raise BadInput(f"{WHAT} {binary} cannot be run: {exc.strerror or exc}") from exc
    text = cp.stdout + cp.stderr
    help_ = parse_help(text)
    missing = [f for f in SERVER_FLAGS if not help_.has(f)]
    if len(missing) > 1:
        raise BadInput(f"{WHAT} {binary} is not a llama-server: its --help lacks {', '.join(missing)}",
                       hint="point it at the llama-server program, or leave it unset to build one")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(text)
    return text


def resolve_models(profile: Profile, progress: ProgressFn | None = None, base: Path | None = None) -> dict[str, Path]:
    """Model fields -> local files, each checked as a loadable GGUF (all shards of a split model), and a
    target with its MTP drafter checked as a pair llama-server can run (same vocabulary, the width the
    head was made for: :func:`llamactl.models.draft_pair.check_pair`).

    Raises LlamactlError naming the file and what is wrong with it (ModelFileError), or both models
    and what differs (DraftMismatch).
    """
    res = {"model": models.resolve(profile.model, progress, base)}
    if profile.enable_mtp and profile.draft_model:
        res["draft_model"] = models.resolve(profile.draft_model, progress, base)
    heads = {key: gguf_info.check_launchable(path) for key, path in res.items()}
    if "draft_model" in heads:
        draft_pair.check_pair(heads["model"][0], heads["draft_model"][0], profile.model, profile.draft_model)
    return res


def plan(resolved: Resolved, progress: ProgressFn | None = None, binary: Binary | None = None,
         jobs: int | None = None) -> LaunchPlan:
    """Everything up to the process start; raises before launch on anything unsupported.
    ``progress`` hears model downloads and the build."""
    p = resolved.profile
    base = paths.project_root()
    model_paths = resolve_models(p, progress, base)   # a bad model file is refused before any build
    binary = binary or ensure_binary(p, progress, jobs)
    # bound the way llama-server binds: a port in TIME-WAIT is free, a live listener is named
    early_port = quickstart.pending_port()   # a server `run` started early already holds its port
    if early_port is not None and p.port in ("auto", early_port):
        endpoints = listen_endpoints(p.host, early_port, Path.cwd(), probe=False)
    else:
        endpoints = listen_endpoints(p.host, p.port, Path.cwd())
    tcp_port = next((e.port for e in endpoints if e.port is not None), None)
    port = tcp_port if tcp_port is not None else (8080 if p.port == "auto" else int(p.port))  # ignored for .sock
    host = ",".join(e.host for e in endpoints)   # socket paths made absolute
    rp = p if host == p.host else p.model_copy(update={"host": host})
    workers, rpc_eps, notes = _rpc_plan(p, binary)
    argv = render_argv(rp, binary.help, binary.path, port=port, model_paths=model_paths, rpc_endpoints=rpc_eps)
    _, dropped = server_environment(dict(os.environ), dict(p.env), binary.help)
    return LaunchPlan(resolved, binary, argv, host, port, dict(p.env), model_paths, dropped, endpoints, workers, notes)


def _rpc_plan(p: Profile, binary: Binary) -> tuple[list[rpc.RpcWorker], list[str] | None, list[str]]:
    """Local workers to start (free loopback ports), the --rpc endpoints, notes on unchecked workers.

    Raises:
        LlamactlError: no RPC worker in the build, or a running worker from another build.
    """
    if p.rpc is None:
        return [], None, []
    key = rpc.build_key(binary.manifest, binary.path)
    if p.rpc.workers:
        return [], list(p.rpc.workers), rpc.check_pairing(list(p.rpc.workers), key)
    wbin = rpc.worker_binary(binary.path, binary.manifest)
    workers = [rpc.RpcWorker(wbin, "127.0.0.1", free_port("127.0.0.1"), Path(os.devnull), key)
               for _ in range(p.rpc.local_workers)]
    return workers, [w.endpoint for w in workers], []


def new_run_dir(name: str) -> Path:
    """A fresh ``<runs>/<YYYYmmdd-HHMMSS>-<name>[.N]`` directory (see ``paths.new_run_dir``)."""
    return paths.new_run_dir(name)


def start(plan_: LaunchPlan, log_path: Path, echo: Callable[[str], None] | None = None,
          detach: bool = False, keep: Callable[[str], bool] | None = None) -> ServerProcess:
    """Start the planned llama-server (and its local RPC workers); ``echo`` hears every output line,
    ``keep`` (None: all) decides which lines the log file and the crash tail keep."""
    for ep in plan_.endpoints:
        ep.clear_stale()   # a unix socket file left by an earlier server: llama-server cannot bind over it
    sp = ServerProcess(plan_.argv, plan_.host, plan_.port, log_path, env=plan_.env, echo=echo,
                       api_key=plan_.resolved.profile.api_key, drop_env=tuple(plan_.env_dropped),
                       endpoint=plan_.endpoint, keep=keep)
    if plan_.rpc_workers:    # workers first (on loopback), the server after; sp.stop() stops them after it
        if detach:
            raise BadInput("rpc.local_workers cannot be left running with --detach",
                           hint="start workers with `llamactl rpc-worker` and name them in rpc.workers")
        quickstart.discard()
        for i, w in enumerate(plan_.rpc_workers):
            w.log_path = log_path.with_name(f"{log_path.stem}.rpc-{i}.log")
        rpc.start_all(plan_.rpc_workers)
        sp.workers = list(plan_.rpc_workers)
        try:
            sp.start()
        except BaseException:
            rpc.stop_all(plan_.rpc_workers)
            raise
        return sp
    early = None if detach else quickstart.take(plan_.argv, plan_.env)
    if early is not None:
        sp.adopt(early)
    else:
        quickstart.discard()
        sp.start(detach=detach)
    if not any(e.uds for e in plan_.endpoints):   # the early start binds TCP ports only
        prof = plan_.resolved.profile
        ready = {"profile": plan_.resolved.name, "health_timeout": prof.health_timeout, "base_url": plan_.base_url,
                 "host": prof.host, "endpoints": plan_.endpoint_paths}
        quickstart.remember(plan_.argv, plan_.env, plan_.host, plan_.port, prof.port == "auto",
                            _plan_inputs(plan_), [*ENV_VARS, *plan_.env_dropped],
                            ready=None if plan_.env_dropped or prof.api_key else ready)
    return sp


def _plan_inputs(plan_: LaunchPlan) -> list[Path]:
    """The files a plan was made from: profiles, patches, the vendored tree's state, binary, build, models."""
    tree = paths.vendor_tree()
    files = [*sorted(paths.profiles_dir().glob("*.y*ml")), *sorted(paths.patches_dir().glob("*/*.patch")),
             tree.parent / f"{tree.name}.provenance.json", tree / ".git" / "index", tree / ".git" / "HEAD",
             paths.vendor_dir() / "sources.yaml", plan_.binary.path, *plan_.model_paths.values()]
    head = tree / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            files.append(tree / ".git" / ref[5:])
    except OSError:
        pass
    if plan_.binary.manifest:
        files.append(Path(plan_.binary.manifest["build_root"]) / "manifest.json")
    if plan_.resolved.path is not None:     # a profile given as a path outside profiles/
        files.append(plan_.resolved.path)
    return files
