"""One reader of server-sent events (the streamed answers of llama-server's chat and messages APIs).

Lines in, events out, as the WHATWG EventSource rules say: ``field: value`` lines up to a blank
line make one event; several ``data`` lines are joined with newlines; ``:`` lines are comments.
An event still open when the stream ends is delivered too (a server cut off mid-event is the
checks' business, not the reader's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

DONE = "[DONE]"   # OpenAI-style streams end with ``data: [DONE]``


@dataclass(frozen=True)
class Event:
    """One event: its ``event`` name (None when the server sent none) and its ``data`` text."""

    event: str | None
    data: str

    @property
    def done(self) -> bool:
        """True for the ``[DONE]`` sentinel of an OpenAI-style stream."""
        return self.data.strip() == DONE


def events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of an SSE stream given as lines (``httpx.Response.iter_lines()``); events with no
    ``data`` line are skipped, as EventSource does."""
    name: str | None = None
    data: list[str] | None = None
    for line in lines:
        if not line.strip():
            if data is not None:
                yield Event(name, "\n".join(data))
            name, data = None, None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value.strip()
        elif field == "data":
            data = [*(data or []), value]
    if data is not None:
        yield Event(name, "\n".join(data))
