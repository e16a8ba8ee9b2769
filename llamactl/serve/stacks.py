"""Where a live process is stuck: every thread's stack, read with gdb (Debian's package ``gdb``).

A server that accepts connections and never answers is a deadlock or a busy loop somewhere in its
threads (multi-slot and speculative paths have shown both). A crash shows its frames because
llama.cpp prints them when it aborts; a hang prints nothing, so llamactl attaches gdb in batch mode
(``thread apply all bt``), reads the stacks and detaches, leaving the process as it was.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

_THREAD = re.compile(r'^Thread (?P<n>\d+) \((?:Thread 0x[0-9a-f]+ \(LWP (?P<lwp>\d+)\)(?: "(?P<name>[^"]*)")?)?')
_FRAME = re.compile(r"^#(?P<i>\d+)\s+(?:0x[0-9a-f]+ in )?(?P<fn>.+?)(?: \(.*?\))?(?: (?:at|from) (?P<where>\S+))?$")
OWN = ("llama", "ggml", "server", "common_", "gemma")    # frames of llama.cpp itself, not libc/libstdc++


@dataclass
class Stacks:
    """The threads of one process: ``threads`` is a list of {"id", "lwp", "name", "frames"}, frames as
    ``#i function (file)`` strings, innermost first; ``error`` says why there are none."""

    pid: int
    threads: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def summary(self, per_thread: int = 4) -> list[str]:
        """One line per thread: its name, the innermost frame (where it waits) and llama.cpp's own frames."""
        out = []
        for t in self.threads:
            frames = t["frames"]
            own = [f for f in frames[1:] if any(k in f for k in OWN)]
            shown = (frames[:1] + own if own else frames)[:per_thread]
            out.append(f"thread {t['id']}{' ' + t['name'] if t.get('name') else ''}: " + " <- ".join(shown))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def parse_gdb(text: str, pid: int) -> Stacks:
    """Stacks from gdb's ``thread apply all bt`` output."""
    st = Stacks(pid)
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _THREAD.match(line.strip())
        if m:
            cur = {"id": int(m.group("n")), "lwp": int(m.group("lwp")) if m.group("lwp") else None,
                   "name": m.group("name") or "", "frames": []}
            st.threads.append(cur)
            continue
        f = _FRAME.match(line.strip())
        if f and cur is not None:
            where = f.group("where")
            cur["frames"].append(f"#{f.group('i')} {f.group('fn').strip()}" + (f" ({where})" if where else ""))
    if not st.threads:
        st.error = "gdb printed no threads: " + (text.strip().splitlines() or ["(nothing)"])[-1][:200]
    return st


def thread_stacks(pid: int, timeout: float = 30.0) -> Stacks:
    """Every thread's stack of the live process ``pid`` (gdb attaches, prints, detaches); never raises."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return Stacks(pid, error="gdb not found: install it (Debian: apt-get install gdb) to see where a server hangs")
    try:
        cp = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx", "-ex", "set pagination off",
                             "-ex", "thread apply all bt"], capture_output=True, text=True, errors="replace",
                            timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Stacks(pid, error=f"gdb did not finish within {timeout:g}s")
    except OSError as exc:
        return Stacks(pid, error=f"gdb could not run: {exc}")
    return parse_gdb(cp.stdout + "\n" + cp.stderr, pid)
