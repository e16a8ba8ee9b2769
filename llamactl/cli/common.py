"""Helpers every command shares: signals, warning lines, number cells, check-before-run of output paths."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any, Callable

from rich.markup import escape

from llamactl.cli.console import err_console
from llamactl.core.errors import BadInput


def _sigterm_to_interrupt(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def stop_on_signals(on_signal: Callable[[], None] | None = None) -> None:
    """Ctrl-C and SIGTERM both unwind through the `finally` that stops llama-server.

    SIGINT is set explicitly: a process started in the background by a non-interactive
    shell inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt.
    With ``on_signal`` (load, soak: stop the traffic, still write the report) the first signal
    calls it and a second one interrupts at once.
    """
    if on_signal is None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        return

    def first(signum: int, frame: Any) -> None:  # noqa: ARG001
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        on_signal()
    signal.signal(signal.SIGINT, first)
    signal.signal(signal.SIGTERM, first)


def warn(msg: str) -> None:
    """One yellow ``warning:`` line on stderr."""
    err_console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True, markup=True)


def warn_exposure(host: str) -> None:
    """A yellow warning line when the profile makes llama-server listen beyond loopback."""
    from llamactl.serve.endpoint import exposure_warning

    msg = exposure_warning(host)
    if msg:
        warn(msg)


def num(x: float | None, fmt: str = "{:.1f}") -> str:
    """A table cell for a number: ``-`` when there is none."""
    return "-" if x is None else fmt.format(x)


def check_outputs(*paths: tuple[Path | None, str]) -> None:
    """Check, before any work, that each named output file (path, its option) can be written.

    Raises BadInput naming the option (:func:`llamactl.core.files.check_writable`)."""
    from llamactl.core.files import check_writable

    for path, what in paths:
        if path is not None:
            check_writable(path, what)


_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """``--duration`` of load and soak: ``90``, ``90s``, ``2.5s``, ``30m``, ``2h``, ``1h30m``, ``5m30`` -> seconds.
    Raises BadInput for anything else, or nothing (0)."""
    t = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|min|m|s|)", t)
    if not t or not parts or "".join(f"{n}{u}" for n, u in parts) != t.replace(" ", ""):
        raise BadInput(f"--duration {text!r}: expected seconds or a time like 90s, 30m, 2h, 1h30m")
    total = sum(float(n) * _UNITS[u] for n, u in parts)
    if total <= 0:
        raise BadInput(f"--duration {text!r}: must be more than 0")
    return total
