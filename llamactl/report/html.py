"""One self-contained HTML page for validate/bench runs and trends (jinja2; inline CSS and SVG, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamactl.core.errors import LlamactlError
from llamactl.report.templating import env


def render(view: dict[str, Any]) -> str:
    """The page for a report view (``view.report_view``)."""
    return env(False).get_template("report.html.j2").render(**view)


def write(view: dict[str, Any], path: Path) -> None:
    """Write the page; LlamactlError when the path cannot be written."""
    _write(render(view), path)


def _write(text: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise LlamactlError(f"cannot write {path}: {exc.strerror or exc}") from exc
