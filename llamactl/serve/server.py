"""Start, watch and stop one llama-server process.

The server runs in its own process group with an argv list (no shell). On Linux it
gets PR_SET_PDEATHSIG (armed after exec, see :func:`llamactl.core.proc.spawn`) so it dies
if llamactl itself is killed, unless detached; ``stop`` sends SIGTERM to the group, then
SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import itertools
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from llamactl.core.errors import LlamactlError, ServerFailed
from llamactl.core.proc import ProcessIdentity, identify, pid_alive, signal_group, spawn
from llamactl.serve import endpoint as endpoint_lib
from llamactl.serve.endpoint import Endpoint

__all__ = ["ANSI", "Crash", "LogLine", "ServerDied", "ServerProcess", "describe_exit", "ensure_port_free", "free_port",
           "parse_log_line", "pid_alive", "root_cause", "signal_group"]

if TYPE_CHECKING:
    import httpx

    from llamactl.serve.early import Early

# ggml's GGML_ABORT prints "FILE:LINE: message" (e.g. ggml-rpc.cpp:566: Remote RPC server crashed ...). Not
# only at a line's start: llama.cpp's log thread writes a line's prefix ("0.00.115.435 I ") and its text in
# separate writes to the same stderr, so an abort from another thread can land between them
_ASSERT = re.compile(r"(?:^|(?<=\s))\S+\.(?:c|cc|cpp|cu|m|mm):\d+: |GGML_ASSERT|GGML_ABORT|terminate called|Segmentation fault|Assertion .* failed|fatal error|std::\w+_error|what\(\):")
_FRAME = re.compile(r"^\s*(#\d+\s|\S*\(.*\+0x[0-9a-f]+\)|.*\bin \w|\s*\d+: )")
_GDB_FRAME = re.compile(r"^#\d+\s+0x[0-9a-f]+ in ")
_LOG_LINE = re.compile(r"^(?:[\d.]+ [IWED] )?(?:llama_model_loader|print_info|load_tensors|llama_context|llama_kv_cache|"
                       r"srv |slot |main:|common_|build_info|system_info)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port llama-server can bind on ``host`` now (IPv4, IPv6, names, a comma list); see ``endpoint.free_port``.

    Raises LlamactlError when ``host`` cannot be bound at all.
    """
    tcp = [h for h in endpoint_lib.split_hosts(host) if not h.endswith(".sock")] or ["127.0.0.1"]
    return endpoint_lib.free_port(tcp[0], tcp[1:], v6only=len(tcp) > 1)


def ensure_port_free(host: str, port: int) -> None:
    """Raise LlamactlError (naming the holder) unless llama-server could bind ``host:port`` now.

    Judged like llama-server binds (SO_REUSEADDR): a port left in TIME-WAIT is free.
    """
    Endpoint.parse(host, port).probe_bind()


# llama.cpp's common/log: with a prefix (the default since upstream set it in common_init) each line is
# "[M.SS.mmm.uuu ]L msg" with L one of I W E D; colours may wrap it. Without (the fork at 0a635dcd9,
# or --no-log-prefix) the level is not written; --log-jsonl writes {"type":"log","level":"error",...}.
# a terminal control sequence (colours, styles): gdb styles its backtrace, LLAMA_LOG_COLORS the log
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_PREFIXED = re.compile(r"^(?:\d+\.\d{2}\.\d{3}\.\d{3} )?(?P<level>[IWED]) (?P<msg>.*)$")
_TAG = re.compile(r"^(?:srv|cmn|slot|res|que|log)\s+(?=\S+:)")     # the server's component tag before "func:"
# without levels: what llama.cpp's error lines say (LLAMA_LOG_ERROR, exceptions caught and printed)
_ERRORISH = re.compile(
    r"\berror\b|\bfailed\b|\bfailure\b|\brequires\b|\bunknown\b|\binvalid\b|\billegal\b|\bcannot\b|can't|"
    r"could not|unable to|not supported|unsupported|no such file|not found|does not|mismatch|out of memory|"
    r"\bexceeds?\b|\btoo (?:large|small|many|long)\b|\bmissing\b|\bcorrupt", re.I)
_NOT_ERROR = re.compile(r"^\s*(?:llama_model_loader: - |print_info:|main: build|system_info:)|\bwarning\b|"
                        r"^\d+\s+(?:in\s+)?\S*\.\./|^\[New LWP|libthread_db|"        # gdb (ggml's backtrace) noise
                        r"\benabling automatically\b|\bforcing\b|\bbuild \d+ \(unknown\)|"
                        r"cannot be used with preferred buffer type|not supported by template|"
                        r"\bclamping\b|\bwithout it\b|\binstead\b|\bfalling back\b", re.I)   # fallbacks, not fatal

# error-level lines llama.cpp itself calls harmless (the MTP assistant's context during memory fitting)
_BENIGN = re.compile(r"\bis normal\b", re.I)


@dataclass
class LogLine:
    """One log line with the level llama.cpp wrote it at (None where the log carries no levels)."""

    level: str | None      # "I", "W", "E", "D"
    msg: str


def parse_log_line(line: str) -> LogLine:
    """Split a llama.cpp log line into level and message (colour, timestamp and component tag removed)."""
    ln = ANSI.sub("", line).rstrip()
    if ln.startswith("{") and '"level"' in ln:
        try:
            obj = json.loads(ln)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj.get("type") == "log":
            lvl = {"error": "E", "warn": "W", "info": "I", "debug": "D"}.get(str(obj.get("level")))
            return LogLine(lvl, _TAG.sub("", str(obj.get("msg", "")).strip()))
    m = _PREFIXED.match(ln)
    if m:
        return LogLine(m.group("level"), _TAG.sub("", m.group("msg").strip()))
    return LogLine(None, _TAG.sub("", ln.strip()))


def root_cause(log_lines: list[str]) -> str | None:
    """The first error-level line of a llama.cpp log: what went wrong, not the cascade after it.

    Uses the level prefix (``E ``) or JSONL level where the log has them; in a log without levels,
    the first line that reads as an error (outside the model-metadata dump). None if nothing does.
    """
    parsed = [parse_log_line(ln) for ln in log_lines]
    first_e = next((p.msg for p in parsed if p.level == "E" and p.msg and not _BENIGN.search(p.msg)), None)
    if first_e is not None:
        return first_e
    # no level (or none at error level): lines written before the logger (argument errors) or a log without prefixes
    return next((p.msg for p in parsed if p.level is None and p.msg and _ERRORISH.search(p.msg)
                 and not _NOT_ERROR.search(p.msg) and not _BENIGN.search(p.msg)), None)


@dataclass
class Crash:
    """Why a server stopped on its own, in the words of its log."""

    returncode: int | None
    signal: str | None
    assert_line: str | None
    frames: list[str]
    last_lines: list[str]
    log: str
    error_line: str | None = None    # the first error-level log line (the root cause of an early exit)

    def summary(self) -> str:
        how = f"killed by {self.signal}" if self.signal else f"exit code {self.returncode}"
        why = self.assert_line or self.error_line
        return f"llama-server {how}" + (f": {why}" if why else "")


def _assert_window(log: Path, after: int = 400) -> list[str] | None:
    """The first assert/abort line of the log file and the ``after`` lines that follow it (its frames),
    read line by line (a soak's log can be large); None when there is none or the file is unreadable."""
    try:
        with log.open("r", errors="replace") as f:
            for line in f:
                if _ASSERT.search(line):
                    out = [line.rstrip("\n")]
                    for nxt in itertools.islice(f, after):
                        out.append(nxt.rstrip("\n"))
                    return out
    except OSError:
        return None
    return None


# where llama.cpp's log thread starts a line of its own ("0.00.115.463 I "), glued to an abort's text
_LOG_PREFIX = re.compile(r"\d+\.\d\d\.\d\d\d\.\d\d\d [IWED] ")


def _abort_text(line: str, m: re.Match) -> str:
    """An abort's own words from the line that shows it: a "FILE:LINE: message" abort from its match on,
    and up to the next log prefix (the log thread's prefix or next line written around it is not its text)."""
    if not m.group().endswith(": "):
        return line.strip()
    text = line[m.start():]
    glued = _LOG_PREFIX.search(text, m.end() - m.start())
    return (text[:glued.start()] if glued and glued.start() > m.end() - m.start() else text).strip()


def describe_exit(returncode: int | None, log_lines: list[str], log: Path) -> Crash:
    """A crash report from the exit status and the log: the assert and its frames, or the root-cause line."""
    sig = None
    if returncode is not None and returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
    assert_line = None
    frames: list[str] = []
    for i, ln in enumerate(log_lines):
        clean = ANSI.sub("", ln)
        m = _ASSERT.search(clean)
        if m and assert_line is None:
            assert_line = _abort_text(clean, m)
            window = [ANSI.sub("", f).strip() for f in log_lines[i + 1:i + 400]]
            # ggml prints its backtrace through gdb when gdb is installed ("#3 0x... in ggml_reshape_3d ()"),
            # after gdb's thread list; else glibc's backtrace() lines, right after the assert
            frames = [f for f in window if _GDB_FRAME.match(f)] or [
                f for f in window[:40] if (_FRAME.match(f) or "llama" in f or "ggml" in f) and not _LOG_LINE.match(f)]
            break
    error_line = root_cause(log_lines)
    return Crash(returncode, sig, assert_line, frames[:20], [line.rstrip() for line in log_lines[-15:]], str(log), error_line)


@dataclass
class ServerProcess:
    argv: list[str]
    host: str
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    echo: Callable[[str], None] | None = None   # called with each log line (terminal output)
    keep: Callable[[str], bool] | None = None    # which lines the log file and the tail keep (None: all)
    api_key: str | None = None
    drop_env: tuple[str, ...] = ()            # inherited variables llama-server must not see (launcher decides)
    proc: subprocess.Popen | None = None
    _tail: deque = field(default_factory=lambda: deque(maxlen=4000))
    _reader: threading.Thread | None = None
    started_at: float = 0.0
    healthy_at: float | None = None
    adopted: bool = False          # started early by quickstart from the previous run's plan
    identity: ProcessIdentity | None = None   # pid, start time and argv, for run records
    endpoint: Endpoint | None = None   # where the client reaches it; from host/port when not given
    workers: list = field(default_factory=list)   # RPC workers (serve/rpc.py) stopped AFTER this server

    def __post_init__(self) -> None:
        if self.endpoint is None:
            self.endpoint = Endpoint.parse(endpoint_lib.split_hosts(self.host)[0], self.port)

    @property
    def url(self) -> str:
        """The client's base URL (``http://localhost`` for a unix socket: use ``client()``)."""
        assert self.endpoint is not None
        return self.endpoint.base_url

    def client(self, **kw: Any) -> httpx.Client:
        """An httpx client to this server (its endpoint's transport, the API key header); ``kw`` as Endpoint.client."""
        assert self.endpoint is not None
        headers = {**self.headers(), **kw.pop("headers", {})}
        return self.endpoint.client(headers=headers, **kw)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, detach: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in self.drop_env}
        env.update(self.env)
        logf: TextIO = open(self.log_path, "w")
        self.started_at = time.monotonic()
        try:
            self.proc = spawn(
                self.argv,
                die_with_parent=not detach,   # a detached server outlives llamactl on purpose
                stdin=subprocess.DEVNULL,
                stdout=logf if detach else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
                bufsize=1,
                errors="replace",
            )
        except FileNotFoundError as exc:
            logf.close()
            raise LlamactlError(f"llama-server binary not found: {self.argv[0]}") from exc
        except PermissionError as exc:
            logf.close()
            raise LlamactlError(f"llama-server binary is not executable: {self.argv[0]}") from exc
        if detach:   # what `ps`/`stop` check before they signal it
            self.identity = identify(self.proc.pid, self.argv)
            logf.close()
            return
        self._reader = threading.Thread(target=self._pump, args=(logf,), daemon=True)
        self._reader.start()

    def _pump(self, logf: TextIO) -> None:
        assert self.proc and self.proc.stdout
        with logf:
            for line in self.proc.stdout:
                self._line(logf, line)

    def _line(self, logf: TextIO, line: str) -> None:
        if self.keep is None or self.keep(line):
            logf.write(line)
            logf.flush()
            self._tail.append(line.rstrip("\n"))
        if self.echo:
            self.echo(line.rstrip("\n"))

    def adopt(self, early: "Early") -> None:
        """Take over a process that quickstart started for this very argv; its log starts at its first line."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf: TextIO = open(self.log_path, "w")
        self.proc, self.started_at, self.adopted = early.proc, early.started_at, True
        self._reader = early.attach(lambda line: self._line(logf, line), logf.close)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def wait_healthy(self, timeout: float, on_tick: Callable[[float], None] | None = None) -> float:
        """Poll GET /health until 200; raise with the crash report if the process dies."""
        import httpx   # here, not at import: the early start of `run` (quickstart) needs this module fast

        deadline = time.monotonic() + timeout
        with self.client(timeout=2.0) as client:
            while True:
                if not self.alive():
                    crash = self.crash()
                    raise ServerDied(crash)
                try:
                    r = client.get(f"{self.url}/health")
                    if r.status_code == 200:
                        self.healthy_at = time.monotonic()
                        return self.healthy_at - self.started_at
                except httpx.TransportError:
                    pass
                now = time.monotonic()
                if on_tick:
                    on_tick(now - self.started_at)
                if now > deadline:
                    raise ServerFailed(f"llama-server not healthy after {timeout:.0f}s", hint=f"log: {self.log_path}")
                time.sleep(0.01 if now - self.started_at < 2.0 else 0.05)   # tiny models are healthy in ~0.1 s

    def log_lines(self) -> list[str]:
        if self._reader is not None:
            if not self.alive():
                self._reader.join(timeout=2)   # let the pump drain the last lines
            return list(self._tail)
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def crash(self) -> Crash:
        rc = self.proc.poll() if self.proc else None
        if rc is not None and self._reader is not None:
            # ggml prints an abort's backtrace through gdb (seconds of output on the same pipe): read to its end
            self._reader.join(timeout=15)
        lines = self.log_lines()
        if rc is not None and not any(_ASSERT.search(ln) for ln in lines):
            # the reader may lag behind a dying server, and gdb's backtrace of every thread (ggml prints it
            # after the assert) can be longer than the tail: the log file holds every line the pump wrote
            window = _assert_window(self.log_path)
            if window:
                lines = window + lines[-15:]
        return describe_exit(rc, lines, self.log_path)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds, then its RPC workers. Returns the exit code.

        The server goes first: stopped under it, a worker makes llama-server abort in its clean-up.
        """
        try:
            return self._stop(grace)
        finally:
            for w in self.workers:
                w.stop()

    def _stop(self, grace: float) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.endpoint is not None:
            self.endpoint.clear_stale()   # llama-server leaves its unix socket file behind
        return self.proc.returncode


class ServerDied(ServerFailed):
    """llama-server stopped on its own; ``crash`` says how, in the words of its log."""

    def __init__(self, crash: Crash) -> None:
        super().__init__(crash.summary(), hint=f"log: {crash.log}")
        self.crash = crash
