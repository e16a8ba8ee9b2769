"""Progress reports from the library to whoever shows them.

The library never draws on the terminal: a long step (a download, a compile) calls a
:data:`ProgressFn` with :class:`Progress` events, and one-line messages go through
``logging``. The command line turns both into rich progress bars and lines (cli/console.py);
tests and other callers pass their own callable, or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

Unit = Literal["bytes", "steps", "items"]


@dataclass(frozen=True)
class Progress:
    """One report on a step named ``what`` (``download gemma3-270m``, ``building llama-server``).

    ``done`` and ``total`` count ``unit`` (bytes downloaded, ninja steps, cells); ``total`` is None
    while unknown (a spinner). ``finished`` is True on the step's last event, sent once, also when
    the step failed.
    """

    what: str
    done: float = 0
    total: float | None = None
    unit: Unit = "items"
    finished: bool = False


ProgressFn = Callable[[Progress], None]


def report(fn: ProgressFn | None, what: str, done: float = 0, total: float | None = None,
           unit: Unit = "items", finished: bool = False) -> None:
    """Send one event to ``fn`` (nothing when ``fn`` is None)."""
    if fn is not None:
        fn(Progress(what, done, total, unit, finished))
