"""Inter-process locks (the ``filelock`` library): one llamactl at a time per build key,
per cached tree, per download and per model.

Lock files live next to what they guard (``<thing>.lock``); they are never deleted while
held, and :func:`is_locked` lets ``cache prune`` skip what another llamactl is using.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from filelock import FileLock, Timeout

from llamactl.core.errors import LlamactlError

log = logging.getLogger(__name__)


def lock_path(guarded: Path) -> Path:
    """The lock file that guards ``guarded`` (a file or a directory)."""
    return guarded.with_name(guarded.name + ".lock")


@contextmanager
def hold(guarded: Path, what: str, on_wait: Callable[[str], None] | None = None,
         timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of ``guarded`` for the block; blocks while another process holds it.

    ``on_wait`` (default: this module's logger) is told once (one line) when the lock is busy. ``timeout``: seconds, None
    waits for ever. Raises LlamactlError when the timeout passes.
    """
    path = lock_path(guarded)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), is_singleton=True)   # re-entrant within one thread
    try:
        lock.acquire(timeout=0)
    except Timeout:
        (on_wait or log.info)(f"waiting for another llamactl that holds the lock of {what} ({path})")
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout as exc:
            raise LlamactlError(f"{what} is locked by another llamactl", hint=f"lock file: {path}") from exc
    try:
        yield
    finally:
        lock.release()


def try_hold(guarded: Path) -> FileLock | None:
    """The lock of ``guarded`` if it is free now (caller releases it), else None."""
    path = lock_path(guarded)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def is_locked(guarded: Path) -> bool:
    """True when another process (or thread) holds the lock of ``guarded`` right now."""
    path = lock_path(guarded)
    if not path.exists():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def vendor_lock(on_wait: Callable[[str], None] | None = None) -> ContextManager[None]:
    """The lock of vendor/llama.cpp (``vendor/.llamactl.lock``): one llamactl at a time may
    switch, patch or snapshot the editable tree."""
    from llamactl.core import paths

    return hold(paths.vendor_dir() / ".llamactl", "vendor/llama.cpp", on_wait)
