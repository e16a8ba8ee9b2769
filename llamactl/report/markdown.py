"""Markdown for a CI job summary: the matrix, failures with reason and repro, bench verdicts and gates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llamactl.report.html import _write
from llamactl.report.templating import env


def render(view: dict[str, Any]) -> str:
    """Markdown for a report view (``view.report_view``)."""
    text = env(True).get_template("report.md.j2").render(**view)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def write(view: dict[str, Any], path: Path) -> None:
    """Write the Markdown; LlamactlError when the path cannot be written."""
    _write(render(view), path)
