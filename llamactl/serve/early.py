"""A llama-server started early (by :mod:`llamactl.serve.quickstart`), waiting to be adopted.

Its own module so that both sides use it without importing each other: quickstart starts one,
:class:`llamactl.serve.server.ServerProcess` adopts it (``adopt``), and quickstart's fast path
supervises it through a ServerProcess.
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Callable


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
