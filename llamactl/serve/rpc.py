"""llama.cpp's RPC workers (``ggml-rpc-server`` / ``rpc-server``) from the same cached build as the server.

A worker is started with an argv list, in its own process group, with PR_SET_PDEATHSIG (the
same helpers as llama-server, :mod:`llamactl.serve.server`), so none outlives llamactl. Every
worker llamactl starts leaves a record (``<cache>/rpc-workers/<host>_<port>.json``: pid, build
key, binary) so a server that names it in ``rpc.workers`` can be refused when the builds differ:
``rpc-server`` has no ``--version``, and a worker of another source or series silently breaks
fork-only tensor types (turbo4). The RPC protocol has no authentication: binding anything but
loopback needs ``allow_remote``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.build.cmake import RPC_TARGETS
from llamactl.core import paths
from llamactl.core.errors import BadInput, LlamactlError, ServerFailed
from llamactl.serve.server import ServerProcess, describe_exit, free_port, pid_alive

log = logging.getLogger(__name__)

NO_AUTH_WARNING = ("the RPC protocol has no authentication: anyone who can reach {endpoint} can use this "
                   "machine's devices and memory; never expose it to an open network")
READY_TIMEOUT_S = 30.0
# what llama-server aborts with when a worker goes away under it (ggml-rpc.cpp)
WORKER_GONE = "Remote RPC server crashed or returned malformed response"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> str | None:
    """None for loopback; the no-authentication warning when ``allow_remote``.

    Raises:
        BadInput: a non-loopback ``host`` without ``allow_remote``.
    """
    if is_loopback(host):
        return None
    if not allow_remote:
        raise BadInput(f"an RPC worker on {host} would be reachable from other machines, and the RPC protocol "
                       "has no authentication", hint="bind 127.0.0.1, or pass --allow-remote on a trusted network")
    return NO_AUTH_WARNING.format(endpoint=f"{host}")


def worker_binary(server_binary: Path, manifest: dict | None) -> Path:
    """The RPC worker built with ``server_binary`` (the manifest's ``binaries``, else next to it).

    Raises:
        LlamactlError: the build has no RPC worker (built before -DGGML_RPC=ON, or a server_binary alone).
    """
    for t in RPC_TARGETS:
        p = (manifest or {}).get("binaries", {}).get(t)
        if p and Path(p).is_file():
            return Path(p)
    for t in RPC_TARGETS:
        p = server_binary.parent / t
        if p.is_file() and os.access(p, os.X_OK):
            return p
    raise LlamactlError(f"no RPC worker ({' or '.join(RPC_TARGETS)}) next to {server_binary}",
                        hint="rebuild with `llamactl build` (every build now has -DGGML_RPC=ON and the worker)")


def build_key(manifest: dict | None, server_binary: Path) -> str:
    """The build key of a llamactl build; for a binary built elsewhere, its path."""
    return str((manifest or {}).get("key") or f"binary:{server_binary}")


def records_dir() -> Path:
    return paths.cache_root() / "rpc-workers"


def _record_path(host: str, port: int) -> Path:
    return records_dir() / f"{host.replace(':', '_')}_{port}.json"


def read_record(host: str, port: int) -> dict[str, Any] | None:
    """The record of a live worker llamactl started at host:port, else None (stale records are removed)."""
    p = _record_path(host, port)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int) or not pid_alive(rec["pid"]):
        p.unlink(missing_ok=True)
        return None
    return rec


def check_pairing(endpoints: list[str], server_key: str) -> list[str]:
    """Compare the server's build with the workers llamactl started; returns notes for workers it cannot judge.

    Raises:
        LlamactlError: a worker llamactl started from another build (source, series, backend or options).
    """
    notes = []
    for ep in endpoints:
        host, _, port = ep.rpartition(":")
        rec = read_record(host, int(port)) if is_loopback(host) else None
        if rec is None:
            notes.append(f"rpc worker {ep}: not started by llamactl here, its build cannot be checked")
            continue
        if rec.get("build_key") != server_key:
            raise LlamactlError(
                f"rpc worker {ep} runs build {rec.get('build_key')}, the server build {server_key}: a worker of "
                "another source or series breaks fork-only types such as turbo4",
                hint="start the worker from the same profile: llamactl rpc-worker PROFILE")
    return notes


@dataclass
class RpcWorker:
    """One RPC worker process; ``stop`` it after the server that uses it."""

    binary: Path
    host: str
    port: int
    log_path: Path
    build_key: str
    devices: list[str] = field(default_factory=list)
    threads: int | None = None
    cache: bool = False
    echo: Callable[[str], None] | None = None
    process: ServerProcess | None = None
    record: bool = True
    ready_s: float | None = None      # seconds from start until it accepted a TCP connection

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        a = [str(self.binary), "--host", self.host, "--port", str(self.port)]
        if self.devices:
            a += ["--device", ",".join(self.devices)]
        if self.threads:
            a += ["--threads", str(self.threads)]
        if self.cache:
            a.append("--cache")
        return a

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def start(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Start and wait until it accepts TCP connections; returns seconds to ready.

        Raises:
            ServerFailed: it exited (its last log line named) or did not listen within ``timeout`` s.
        """
        self.process = ServerProcess(self.argv(), self.host, self.port, self.log_path, echo=self.echo)
        self.process.start()
        t0 = time.monotonic()
        while True:
            if not self.alive():
                crash = describe_exit(self.process.proc.poll() if self.process.proc else None,
                                      self.process.log_lines(), self.log_path)
                last = next((ln for ln in reversed(crash.last_lines) if ln.strip()), "no output")
                raise ServerFailed(f"rpc worker {self.endpoint} exited (code {crash.returncode}): {last}",
                                   hint=f"log: {self.log_path}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise ServerFailed(f"rpc worker {self.endpoint} not listening after {timeout:g}s",
                                   hint=f"log: {self.log_path}")
            time.sleep(0.02)
        if self.record:
            records_dir().mkdir(parents=True, exist_ok=True)
            _record_path(self.host, self.port).write_text(json.dumps(
                {"pid": self.pid, "host": self.host, "port": self.port, "build_key": self.build_key,
                 "binary": str(self.binary), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        self.ready_s = round(time.monotonic() - t0, 3)
        return self.ready_s

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM its process group, SIGKILL after ``grace`` s; removes its record. Returns the exit code."""
        rc = self.process.stop(grace) if self.process else None
        p = _record_path(self.host, self.port)
        try:
            if json.loads(p.read_text()).get("pid") == self.pid:
                p.unlink()
        except (OSError, ValueError):
            pass
        return rc


def local_workers(n: int, binary: Path, build_key: str, log_dir: Path) -> list[RpcWorker]:
    """``n`` workers on 127.0.0.1 at free ports (not started)."""
    return [RpcWorker(binary, "127.0.0.1", free_port("127.0.0.1"), log_dir / f"rpc-worker-{i}.log", build_key)
            for i in range(n)]


def start_all(workers: list[RpcWorker]) -> None:
    """Start every worker; on a failure stop those already started and raise."""
    started: list[RpcWorker] = []
    try:
        for w in workers:
            w.start()
            started.append(w)
    except BaseException:
        stop_all(started)
        raise


def stop_all(workers: list[RpcWorker]) -> None:
    """Stop workers (after the server: a server whose workers go first aborts in its clean-up)."""
    for w in workers:
        try:
            w.stop()
        except Exception:   # noqa: BLE001 - stop the others too
            log.exception("stopping rpc worker %s", w.endpoint)
