"""One output helper for people and for machines (the command line's only).

Human output goes through rich (which honours NO_COLOR and non-TTY output). The consoles read no
markup: user text (a profile value, a path, a log line, a check's detail) with ``[a, b]`` or ``[/x]`` in
it prints as written; llamactl's own styled words opt in per call (``markup=True``, ``Text.from_markup``)
with every value in them escaped (``rich.markup.escape``), as ``tests/unit/test_cli_markup.py`` checks;
``--json`` output is plain JSON on stdout with nothing else mixed in. The library below
reports through ``logging`` and :data:`llamactl.core.progress.ProgressFn` callbacks;
:class:`Output` shows both: the ``llamactl`` logger's lines as its ``info`` (stderr in JSON
mode), progress events as rich progress bars on stderr (a plain line every 10% of a
compile when stderr is not a terminal).
"""

from __future__ import annotations

import logging
import os
import threading
import sys
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from llamactl.core import jsonsafe
from llamactl.core import progress as core_progress

def _width(stream) -> int | None:
    """Wide tables in CI logs and pipes, where rich would otherwise assume 80 columns."""
    if stream.isatty():
        return None
    return int(os.environ.get("COLUMNS", "160"))


console = Console(stderr=False, highlight=False, markup=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, markup=False, width=_width(sys.stderr))


def _default(o: Any) -> Any:
    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(data: Any) -> str:
    """``--json`` output: dataclasses, paths and models as their fields; never NaN (``core.jsonsafe``)."""
    return jsonsafe.dumps(data, default=_default)


class Output:
    """Print a result either as JSON or through a human renderer; show the library's log lines
    and progress events (the newest Output of the process is the one the log lines reach)."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._tenths: dict[str, int] = {}
        self._lock = threading.Lock()
        _library_log.target = self

    def result(self, data: Any, human: Callable[[Any], None] | None = None) -> None:
        if self.json_mode:
            sys.stdout.write(to_json(data) + "\n")
        elif human is not None:
            human(data)
        else:
            console.print(data)

    def info(self, message: str, markup: bool = False) -> None:
        """Progress chatter: stderr in JSON mode so stdout stays parseable."""
        (err_console if self.json_mode else console).print(message, markup=markup)

    def progress(self, ev: core_progress.Progress) -> None:
        """A :data:`~llamactl.core.progress.ProgressFn`: one rich bar per step on stderr (none with
        LLAMACTL_NO_PROGRESS=1); without a terminal a compile also prints a line every 10%."""
        with self._lock:
            task = self._tasks.get(ev.what)
            if ev.finished:
                if task is not None and self._bars is not None:
                    self._bars.remove_task(task)
                    del self._tasks[ev.what]
                    if not self._tasks:
                        self._bars.stop()
                        self._bars = None
                self._tenths.pop(ev.what, None)
                return
            if self._bars is None:
                self._bars = _new_progress(transient=True)
                self._bars.start()
            if task is None:
                task = self._tasks[ev.what] = self._bars.add_task(ev.what, total=ev.total)
            self._bars.update(task, completed=ev.done, total=ev.total)
        if ev.unit == "steps" and ev.total and not err_console.is_terminal:
            tenth = int(ev.done * 10 // ev.total)
            if tenth > self._tenths.get(ev.what, -1):
                self._tenths[ev.what] = tenth   # a plain line every 10% for logs without a bar
                self.info(f"{ev.what}: [{int(ev.done)}/{int(ev.total)}]")


class _LibraryLog(logging.Handler):
    """The ``llamactl`` logger's records: INFO as the current Output's ``info`` lines, WARNING and
    above on stderr as Python's last-resort handler writes them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.target: Output | None = None
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                sys.stderr.write(self.format(record) + "\n")
            elif self.target is not None:
                self.target.info(record.getMessage(), markup=False)
        except Exception:  # noqa: BLE001 - logging must never raise into the library
            self.handleError(record)


_library_log = _LibraryLog()
_logger = logging.getLogger("llamactl")
_logger.addHandler(_library_log)
_logger.setLevel(logging.INFO)


def quiet_progress() -> bool:
    return os.environ.get("LLAMACTL_NO_PROGRESS") == "1"


def _new_progress(transient: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
        disable=quiet_progress(),
    )


@contextmanager
def progress_bar(description: str, total: float | None = None, transient: bool = True) -> Iterator[tuple[Progress, Any]]:
    """A rich progress bar on stderr; disabled when not a terminal."""
    progress = _new_progress(transient)
    with progress:
        task = progress.add_task(description, total=total)
        yield progress, task
