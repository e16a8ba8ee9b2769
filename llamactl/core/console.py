"""One output helper for people and for machines.

Human output goes through rich (which honours NO_COLOR and non-TTY output);
``--json`` output is plain JSON on stdout with nothing else mixed in.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

def _width(stream) -> int | None:
    """Wide tables in CI logs and pipes, where rich would otherwise assume 80 columns."""
    if stream.isatty():
        return None
    return int(os.environ.get("COLUMNS", "160"))


console = Console(stderr=False, highlight=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, width=_width(sys.stderr))


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
    return json.dumps(data, indent=2, default=_default, sort_keys=False)


class Output:
    """Print a result either as JSON or through a human renderer."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode

    def result(self, data: Any, human: Callable[[Any], None] | None = None) -> None:
        if self.json_mode:
            sys.stdout.write(to_json(data) + "\n")
        elif human is not None:
            human(data)
        else:
            console.print(data)

    def info(self, message: str) -> None:
        """Progress chatter: stderr in JSON mode so stdout stays parseable."""
        (err_console if self.json_mode else console).print(message)


def quiet_progress() -> bool:
    return os.environ.get("LLAMACTL_NO_PROGRESS") == "1"


@contextmanager
def progress_bar(description: str, total: float | None = None, transient: bool = True) -> Iterator[tuple[Progress, Any]]:
    """A rich progress bar on stderr; disabled when not a terminal."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
        disable=quiet_progress(),
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield progress, task
