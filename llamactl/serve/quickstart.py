"""Start llama-server for `llamactl run` before the CLI, the profile schema and the build check load.

When `llamactl run ...` is called with the same arguments, environment and input files as an
earlier run, the argv that run rendered is started at once (a few milliseconds into the
process), while the normal path imports, resolves the profile, checks the build and renders
the argv. If the normal path arrives at the same argv and environment, the running process is
adopted (``take``); if anything differs, it is killed and the normal argv started. So the early
start can only save time, never change what runs.

Entries live in ``<cache>/quickstart/<key>.json``, keyed by the arguments, working directory
and LLAMACTL_HOME/LLAMACTL_CACHE; each holds the argv, the environment variables and the
files (size, mtime) the plan was made from.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llamactl.core import paths
from llamactl.core.hashing import stable_key

ENTRY_VERSION = 1
# besides the profile's own variables (profiles.ENV_VARS), these change what `run` would start
EXTRA_ENV = ("LLAMACTL_HOME", "LLAMACTL_CACHE", "LLAMA_SERVER", "PATH", "CC", "CXX")
_SKIP = {"--detach", "-d", "--help"}


@dataclass
class Early:
    """A llama-server started from a remembered plan, its output held until someone adopts it."""

    proc: subprocess.Popen
    argv: list[str]
    env: dict[str, str]
    port: int
    started_at: float
    _lines: list[str] = field(default_factory=list)
    _sink: Callable[[str], None] | None = None
    _on_end: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                if self._sink is None:
                    self._lines.append(line)
                    continue
                sink = self._sink
            sink(line)
        with self._lock:
            end = self._on_end
        if end:
            end()

    def attach(self, sink: Callable[[str], None], on_end: Callable[[], None]) -> threading.Thread:
        """Send every output line so far, then each new one, to ``sink``; ``on_end`` after the last."""
        with self._lock:
            for line in self._lines:
                sink(line)
            self._lines.clear()
            self._sink, self._on_end = sink, on_end
            done = self.thread is None or not self.thread.is_alive()
        if done:
            on_end()
        assert self.thread is not None
        return self.thread

    def kill(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()


_args: list[str] | None = None
_early: Early | None = None


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
    global _args, _early
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
    from llamactl.serve.server import free_port

    argv = list(entry["argv"])
    port = entry["port"]
    if entry["port_index"] is not None:
        try:
            port = free_port(entry["bind_host"])
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


def remember(argv: list[str], env: dict[str, str], host: str, port: int, auto_port: bool,
             files: list[Path], env_names: list[str]) -> None:
    """Record this run's plan for the next `llamactl run` with the same arguments (no-op outside `run`)."""
    if _args is None or _SKIP.intersection(_args):
        return
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
        "files": [[str(f), _stat(str(f))] for f in files],
    }
    dest = _entry_path(_args)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry))
    tmp.replace(dest)
