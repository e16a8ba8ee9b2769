"""`llamactl patch`: the patch series of the vendored source (ollama-style format-patch files).

Examples:
    llamactl patch status
    llamactl patch check
    llamactl patch apply
    llamactl patch revert
    cd vendor/llama.cpp && git commit -am "fix" && cd - && llamactl patch export
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from llamactl.source import patches
from llamactl.core import paths
from llamactl.cli import options as o
from llamactl.core.console import Output, console
from llamactl.core.errors import LlamactlError
from llamactl.source.vendor import require_vendored

app = typer.Typer(help="Status, apply, check, revert and export the patch series.", no_args_is_help=True)

COLORS = {patches.APPLIED: "green", patches.NOT_APPLIED: "yellow", patches.CONFLICTS: "red"}


def _series(series: str | None) -> str | None:
    if series is not None:
        patches.load_series(series, must_exist=True)
        return series
    return require_vendored().series


def _table(states: list[patches.PatchState]) -> None:
    if not states:
        console.print("no patches in this series")
        return
    t = Table("patch", "subject", "state", "detail")
    for s in states:
        t.add_row(s.patch.name, s.patch.subject, f"[{COLORS[s.state]}]{s.state}[/]", s.detail)
    console.print(t)


def _dump(states: list[patches.PatchState]) -> list[dict]:
    return [{"name": s.patch.name, "subject": s.patch.subject, "sha256": s.patch.sha256, "state": s.state, "detail": s.detail} for s in states]


@app.command()
def status(series: o.Series = None, json: o.Json = False) -> None:
    """Show each patch: applied / not applied / conflicts."""
    states = patches.status(paths.vendor_tree(), _series(series))
    Output(json).result(_dump(states), lambda _: _table(states))


@app.command()
def check(series: o.Series = None, json: o.Json = False) -> None:
    """Dry run: would the pending patches apply, in order? The tree is not touched."""
    states = patches.check(paths.vendor_tree(), _series(series))

    def human(_: object) -> None:
        _table(states)
        console.print("[green]series applies cleanly[/]")
    Output(json).result(_dump(states), human)


@app.command()
def apply(series: o.Series = None, json: o.Json = False) -> None:
    """Apply the series as commits on top of the base; skips what is applied; all or nothing."""
    res = patches.apply(paths.vendor_tree(), _series(series))
    Output(json).result(res, lambda r: console.print(
        f"applied {len(r.applied)}, already applied {len(r.skipped)}; HEAD {r.head[:12]}"))


@app.command()
def revert(
    series: o.Series = None,
    force: Annotated[bool, typer.Option("--force", help="Also drop uncommitted edits and commits not in the series.")] = False,
    json: o.Json = False,
) -> None:
    """Return the vendored tree to its base commit."""
    dropped = patches.revert(paths.vendor_tree(), force=force, series=_series(series))
    Output(json).result({"dropped": dropped}, lambda d: console.print(f"reverted {len(d['dropped'])} commit(s) to base"))


@app.command()
def export(series: o.Series = None, json: o.Json = False) -> None:
    """Regenerate patches/<series>/ from the commits on top of the base (the edit round trip)."""
    name = _series(series)
    if not name:
        raise LlamactlError("no series to export to", hint="pass --series NAME")
    written = patches.export(paths.vendor_tree(), name)

    def human(w: list[str]) -> None:
        for p in w:
            console.print(f"wrote {p}")
    Output(json).result([str(p) for p in written], human)
