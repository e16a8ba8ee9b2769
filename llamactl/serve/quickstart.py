"""Start llama-server for `llamactl run` before the CLI, the profile schema and the build check load.

When `llamactl run ...` is called with the same arguments, environment and input files as an
earlier run, the argv that run rendered is started at once (a few milliseconds into the
process), while the normal path imports, resolves the profile, checks the build and renders
the argv. If the normal path arrives at the same argv and environment, the running process is
adopted (``take``); if anything differs, it is killed and the normal argv started. So the early
start can only save time, never change what runs.

Entries live in ``<cache>/quickstart/<key>.json``, keyed by the arguments, working directory
and LLAMACTL_HOME/LLAMACTL_CACHE; each holds the argv, the environment variables and the
files (size, mtime) the plan was made from, llamactl's own modules among them.

The fast path (:func:`serve_fast`): when every input of the remembered plan is unchanged, the
normal path can only arrive at the same argv, so re-deriving it (Typer, the profile schema, the
build and model checks: ~0.5 s of CPU) is skipped: the early server is supervised here, with the
same run directory, log, ready line or ``--json`` object, Ctrl-C handling and exit codes. If the
early server does not become healthy, it is stopped and the normal path runs and reports as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from llamactl.core import paths
from llamactl.core.files import write_atomic
from llamactl.core.hashing import stable_key
from llamactl.serve.early import Early

ENTRY_VERSION = 2
# besides the profile's own variables (profiles.ENV_VARS), these change what `run` would start
EXTRA_ENV = ("LLAMACTL_HOME", "LLAMACTL_CACHE", "LLAMA_SERVER", "PATH", "CC", "CXX")
_SKIP = {"--detach", "-d", "--help"}


_args: list[str] | None = None
_early: Early | None = None
_entry: dict | None = None          # the remembered plan the early server was started from
_cli: dict | None = None            # what the CLI of this `run` asked for (quiet, json): see note_cli


def _entry_path(args: list[str]) -> Path:
    key = stable_key([args, os.getcwd(), os.environ.get("LLAMACTL_HOME"), os.environ.get("LLAMACTL_CACHE")], 32)
    return paths.cache_root() / "quickstart" / f"{key}.json"


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def early_start(args: list[str]) -> None:
    """Called by the CLI with `run`'s arguments: start the remembered argv if every input is unchanged."""
    global _args, _early, _entry
    _args = list(args)
    if _SKIP.intersection(args):
        return
    try:
        entry = json.loads(_entry_path(_args).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(entry, dict) or entry.get("version") != ENTRY_VERSION:
        return
    if any(os.environ.get(k) != v for k, v in entry["environ"].items()):
        return
    if any(_stat(p) != st for p, st in entry["files"]):
        return
    from llamactl.core.errors import LlamactlError
    from llamactl.core.proc import spawn
    from llamactl.serve.endpoint import free_port

    argv = list(entry["argv"])
    port = entry["port"]
    if entry["port_index"] is not None:
        try:
            port = free_port(entry["bind_host"], [], v6only=False)
        except LlamactlError:
            return      # the host cannot be bound now: the normal path says why in one line
        argv[entry["port_index"]] = str(port)
    elif not _bindable(entry["bind_host"], port):
        return      # a fixed port in use: the normal path says so in one line
    from llamactl.serve.dialect import is_server_env

    env = {k: v for k, v in os.environ.items() if not is_server_env(k)}   # as launcher.plan: no inherited LLAMA_ARG_* ...
    env.update(entry["env"])
    started = time.monotonic()
    try:
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     env=env, text=True, bufsize=1, errors="replace")   # dies with llamactl
    except OSError:
        return
    _early = Early(proc, argv, dict(entry["env"]), port, started)
    _entry = dict(entry, port=port)
    _early.thread = threading.Thread(target=_early._pump, daemon=True)
    _early.thread.start()
    import atexit

    atexit.register(discard)    # never left running when the normal path fails before adopting it


def _bindable(host: str, port: int) -> bool:
    """Whether llama-server could bind ``host:port`` now (judged as it binds: a TIME-WAIT port is free)."""
    from llamactl.core.errors import LlamactlError
    from llamactl.serve.endpoint import bind_like_server

    try:
        bind_like_server(host, port).close()
    except (OSError, LlamactlError):
        return False
    return True


def pending_port() -> int | None:
    """The port of the early server, which the plan should use instead of picking a new one."""
    return _early.port if _early is not None else None


def take(argv: list[str], env: dict[str, str]) -> Early | None:
    """The early process if it runs exactly ``argv`` with ``env``; otherwise it is killed. None if none."""
    global _early
    early, _early = _early, None
    if early is None:
        return None
    if early.argv == list(argv) and early.env == dict(env) and early.proc.poll() is None:
        return early
    early.kill()
    return None


def discard() -> None:
    """Kill the early process, if any (a run that will not adopt it, e.g. --detach)."""
    take([], {})


def note_cli(quiet: bool, json_mode: bool) -> None:
    """The CLI's output choices for this `run`, remembered with the plan for the fast path."""
    global _cli
    _cli = {"quiet": quiet, "json": json_mode}


def remember(argv: list[str], env: dict[str, str], host: str, port: int, auto_port: bool,
             files: list[Path], env_names: list[str], ready: dict | None = None) -> None:
    """Record this run's plan for the next `llamactl run` with the same arguments (no-op outside `run`).

    ``ready`` (profile name, health_timeout in s, base URL, endpoint paths) lets the next run take the
    fast path; without it (or without :func:`note_cli`) the next run still starts early, then re-plans.
    """
    if _args is None or _SKIP.intersection(_args):
        return
    import sys

    code = sorted({str(m.__file__) for name, m in list(sys.modules.items())      # llamactl's own code is an input
                   if name.split(".")[0] == "llamactl" and getattr(m, "__file__", None)})
    base = ready.get("base_url", "") if ready else ""
    fast = None
    if ready is not None and _cli is not None and base.endswith(f":{port}"):
        fast = dict(ready, **_cli, base_url=base[: -len(str(port))])
    port_index = None
    if auto_port:
        port_index = next((i for i in range(1, len(argv)) if argv[i] == str(port) and "port" in argv[i - 1]), None)
        if port_index is None:
            return
    entry = {
        "version": ENTRY_VERSION,
        "argv": list(argv),
        "env": dict(env),
        "port": port,
        "port_index": port_index,
        "bind_host": host if host not in ("0.0.0.0", "::", "") else "127.0.0.1",
        "environ": {k: os.environ.get(k) for k in sorted({*env_names, *EXTRA_ENV})},
        "files": [[str(f), _stat(str(f))] for f in [*files, *code]],
        "fast": fast,
    }
    dest = _entry_path(_args)
    write_atomic(dest, json.dumps(entry))


def _health_ok(host: str, port: int) -> bool:
    """GET /health answers 200 (a raw HTTP/1.0 request: no client library to import on this path)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(f"GET /health HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return False
    return head.split(b" ", 2)[1:2] == [b"200"]


def serve_fast() -> int | None:
    """Supervise the early server as `llamactl run` would; the exit code, or None to run the normal path.

    None when there is no early server, its plan has no fast entry, or it does not become healthy
    within the profile's health_timeout (it is stopped first; the normal path then starts and reports).
    After ready: Ctrl-C or SIGTERM stop it (exit 130); a server that exits on its own is reported
    from its log (exit 5, ServerFailed).
    """
    global _early
    early, entry = _early, _entry
    fast = entry.get("fast") if entry else None
    if early is None or entry is None or not fast:
        return None
    import shlex
    import shutil
    import signal
    import sys

    from llamactl.core import paths
    from llamactl.core.errors import ExitCode
    from llamactl.serve.endpoint import exposure_warning
    from llamactl.serve.server import ServerProcess

    port = int(entry["port"])
    base = f"{fast['base_url']}{port}"
    host = entry["bind_host"]
    run_dir = paths.new_run_dir(fast["profile"])
    log = run_dir / "server.log"
    (run_dir / "argv.json").write_text(json.dumps(early.argv))
    json_mode, quiet = bool(fast["json"]), bool(fast["quiet"])
    color = not os.environ.get("NO_COLOR")
    dim, yellow, red, green, end = (("\x1b[2m", "\x1b[33m", "\x1b[31m", "\x1b[32m", "\x1b[0m") if color
                                    else ("", "", "", "", ""))
    info_to = sys.stderr if json_mode else sys.stdout
    print(f"{dim if info_to.isatty() else ''}$ {' '.join(shlex.quote(a) for a in early.argv)}"
          f"{end if info_to.isatty() else ''}", file=info_to, flush=True)
    warning = exposure_warning(fast.get("host", host))
    if warning:
        print(f"{yellow}warning:{end} {warning}", file=sys.stderr, flush=True)
    echo = None if (quiet or json_mode) else (lambda line: print(f"{dim}{line}{end}", file=sys.stderr, flush=True))
    sp = ServerProcess(early.argv, host, port, log, env=early.env, echo=echo)
    _early = None
    sp.adopt(early)

    def _term(signum: int, frame: object) -> None:   # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _term)
    try:
        deadline = time.monotonic() + float(fast["health_timeout"])
        while not _health_ok(host, port):
            if sp.proc is None or sp.proc.poll() is not None or time.monotonic() > deadline:
                sp.stop()
                shutil.rmtree(run_dir, ignore_errors=True)
                return None      # the normal path starts it again and reports why it fails
            time.sleep(0.005 if time.monotonic() - sp.started_at < 2.0 else 0.05)
        secs = time.monotonic() - sp.started_at
        ready = {"profile": fast["profile"], "url": base, "pid": sp.pid, "log": str(log), "ready_s": round(secs, 3),
                 "early_start": True, "socket": None, "sockets": [],
                 "endpoints": [f"{base}{e}" for e in fast["endpoints"]]}
        if json_mode:
            sys.stdout.write(json.dumps(ready, indent=2) + "\n")
        else:
            sys.stdout.write(f"{green}ready{end} {base} in {secs:.2f}s (pid {sp.pid}, log {log})\n  "
                             + "\n  ".join(ready["endpoints"]) + "\n")
        sys.stdout.flush()
        rc = sp.proc.wait() if sp.proc else None
    except KeyboardInterrupt:
        print(f"{yellow}stopping llama-server ...{end}", file=sys.stderr, flush=True)
        sp.stop()
        print(f"{yellow}interrupted{end}", file=sys.stderr, flush=True)
        return int(ExitCode.INTERRUPTED)
    crash = sp.crash()
    sp.stop()
    if rc == 0:
        print(f"{red}error:{end} llama-server exited (code 0)", file=sys.stderr, flush=True)
        return int(ExitCode.FAILED)
    print(f"{red}{crash.summary()}{end}", file=sys.stderr)
    for ln in crash.frames[:8] or crash.last_lines[-8:]:
        print(f"  {red if crash.frames else dim}{ln}{end}", file=sys.stderr)
    print(f"{red}error:{end} {crash.summary()} {dim}(log: {crash.log}){end}", file=sys.stderr, flush=True)
    return int(ExitCode.SERVER_FAILED)
