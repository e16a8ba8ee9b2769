"""A running process as Linux's /proc shows it: memory (MiB), threads, open files.

Facts come from ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM`` peak RSS, ``RssAnon``, ``RssFile``,
``VmSwap``, ``Threads``) and ``/proc/<pid>/fd`` (open files). A leak can hide from RSS in swap, so
``anon_swap_mib`` (RssAnon + VmSwap) is the figure for growth that is not file-backed (model weights
mapped with mmap are file-backed and come and go with the page cache).
"""

from __future__ import annotations

import os
from pathlib import Path

_KIB_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSwap")


def read_status(pid: int) -> dict[str, float] | None:
    """``{"VmRSS": MiB, "VmHWM": MiB, "RssAnon": MiB, "RssFile": MiB, "VmSwap": MiB, "Threads": n}`` of a
    live process; None when it is gone or /proc is unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in _KIB_KEYS:
            try:
                out[key] = int(rest.split()[0]) / 1024.0
            except (ValueError, IndexError):
                continue
        elif key == "Threads":
            try:
                out["Threads"] = float(int(rest.strip()))
            except ValueError:
                continue
    return out


def open_files(pid: int) -> int | None:
    """Entries in ``/proc/<pid>/fd`` (files, sockets, pipes); None when unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def anon_swap_mib(status: dict[str, float]) -> float | None:
    """RssAnon + VmSwap (MiB): memory the process allocated itself, in RAM or swapped out."""
    if "RssAnon" not in status:
        return None
    return status["RssAnon"] + status.get("VmSwap", 0.0)
