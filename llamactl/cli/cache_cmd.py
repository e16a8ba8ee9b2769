"""`llamactl cache list|prune`: what ~/.cache/llamactl holds, and removing what is not needed.

Examples:
    llamactl cache list                       # builds, downloads, models, trees, runs: size, last use, stale?
    llamactl cache list --json
    llamactl cache prune --dry-run            # what would go: stale entries only
    llamactl cache prune                      # remove stale builds/downloads/models/trees, runs older than 7 days
    llamactl cache prune --older-than 30      # also anything not used for 30 days
    llamactl cache prune --all                # everything not in use (a running server's build stays)
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from llamactl.build import cache as cache_lib
from llamactl.cli import options as o
from llamactl.core import paths
from llamactl.cli.common import warn
from llamactl.cli.console import Output, console

app = typer.Typer(help="What the cache holds (builds, downloads, models, trees, runs) and pruning it.",
                  no_args_is_help=True)

OlderThan = Annotated[Optional[float], typer.Option(
    "--older-than", min=0, help="Days: runs older than this are stale (default 7); so is anything unused for this long.")]


def _ago(days: float) -> str:
    if days < 1 / 24:
        return f"{days * 1440:.0f} min ago"
    if days < 1:
        return f"{days * 24:.0f} h ago"
    return f"{days:.0f} d ago"


def _table(entries: list[cache_lib.Entry], title: str | None = None) -> None:
    t = Table("kind", "name", "size", "last used", "state", title=title)
    for e in entries:
        if e.in_use:
            state = Text.assemble(("in use", "green"), " ", (f"({e.in_use})", "dim"))
        elif e.stale:
            state = Text.assemble(("stale", "yellow"), " ", (f"({e.stale})", "dim"))
        else:
            state = Text("kept")
        t.add_row(e.kind, e.name, cache_lib.human_size(e.size), _ago(e.age_days), state)
    console.print(t)


@app.command("list")
def list_(older_than: OlderThan = None, json: o.Json = False) -> None:
    """Everything in the cache with its size, last use, and whether it is stale or in use."""
    entries = cache_lib.scan(older_than, on_warning=warn)

    def human(es: list[cache_lib.Entry]) -> None:
        _table(es)
        stale = [e for e in es if e.stale and not e.in_use]
        console.print(f"{cache_lib.human_size(sum(e.size for e in es))} in {paths.cache_root()}; "
                      f"{len(stale)} stale ({cache_lib.human_size(sum(e.size for e in stale))}): `llamactl cache prune`")

    Output(json).result([e.to_json() for e in entries] if json else entries, human)


@app.command("prune")
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only say what would be removed.")] = False,
    older_than: OlderThan = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove everything that is not in use, stale or not.")] = False,
    json: o.Json = False,
) -> None:
    """Remove stale entries (with --all: everything not in use). Never a build in use or locked."""
    entries = cache_lib.scan(older_than, on_warning=warn)
    gone = cache_lib.prune(entries, all_=all_, dry_run=dry_run)
    freed = sum(e.size for e in gone)

    def human(es: list[cache_lib.Entry]) -> None:
        if es:
            _table(es, "would remove" if dry_run else "removed")
        console.print(f"{'would free' if dry_run else 'freed'} {cache_lib.human_size(freed)} ({len(es)} entries)")

    Output(json).result([e.to_json() for e in gone] if json else gone, human)
