"""The jinja2 environment for report templates shipped in ``llamactl/report/templates``."""

from __future__ import annotations

import functools

from jinja2 import Environment, PackageLoader, select_autoescape

ICONS = {"pass": "✅", "ok": "✅", "faster": "✅", "fail": "❌", "regression": "❌", "error": "💥", "skip": "⏭️",
         "not_run": "⏭️", "xfail": "⚠️", "warn": "⚠️", "xpass": "❗", "interrupted": "⏹️", "no change": "➖",
         "no baseline": "➖"}


def md_cell(value: object) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|").replace("<", "&lt;")


def icon(status: str) -> str:
    return ICONS.get(str(status).lower(), "❔")


@functools.lru_cache(maxsize=2)
def env(markdown: bool) -> Environment:
    e = Environment(loader=PackageLoader("llamactl.report", "templates"),
                    autoescape=False if markdown else select_autoescape(["html", "j2"], default=True),
                    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    e.filters["md"] = md_cell
    e.globals["icon"] = icon
    return e
