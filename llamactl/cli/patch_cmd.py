"""`llamactl patch`: the patch series of the vendored source (ollama-style format-patch files).

Examples:
    llamactl patch status
    llamactl patch check
    llamactl patch apply
    llamactl patch revert
    cd vendor/llama.cpp && git commit -am "fix" && cd - && llamactl patch export
    llamactl patch rebase --onto upstream@0.3.35       # per patch: cleanly / offsets / already upstream / conflicts
    llamactl patch rebase --onto path:~/src/llama.cpp@master --series upstream --write
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from llamactl.source import patches
from llamactl.core import paths
from llamactl.cli import options as o
from llamactl.cli.console import Output, console
from llamactl.core.errors import ExitCode, LlamactlError
from llamactl.source.vendor import require_vendored

app = typer.Typer(help="Status, apply, check, revert, export and rebase the patch series.", no_args_is_help=True)

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
        t.add_row(s.patch.name, s.patch.subject, Text(s.state, COLORS[s.state]), s.detail)
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
        console.print("[green]series applies cleanly[/]", markup=True)
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


REBASE_COLORS = {"clean": "green", "offsets": "yellow", "upstream": "cyan", "conflicts": "red"}


@app.command()
def rebase(
    onto: Annotated[str, typer.Option("--onto", help="The new base: any source name (upstream@0.3.35, NAME@COMMIT, path:/dir@REV).")],
    series: o.Series = None,
    write: Annotated[bool, typer.Option("--write", help="Rewrite patches/<series>/ (same names) when every patch resolves; "
                                        "patches already upstream are dropped.")] = False,
    conflicts_dir: Annotated[Optional[Path], typer.Option("--conflicts-dir", help="Where conflicted files go "
                                                          "(default ~/.cache/llamactl/rebase/<series>-onto-<source>/).")] = None,
    json: o.Json = False,
) -> None:
    """Carry the series to another base in a scratch tree (vendor/ untouched): per patch, applies cleanly /
    with offsets / already upstream / conflicts. Exit 1 when a patch conflicts."""
    from rich.markup import escape

    from llamactl.source import rebase as rebase_lib

    out = Output(json)
    report = rebase_lib.rebase(onto, series, write=write, conflicts_dir=conflicts_dir, progress=out.progress)

    def human(_: object) -> None:
        t = Table("patch", "subject", "on the new base", "detail")
        for p in report.patches:
            t.add_row(p.name, p.subject, Text(p.label, REBASE_COLORS[p.status]), p.detail)
        console.print(t)
        for p in report.patches:
            for h in p.failed_hunks if p.status == "conflicts" else []:
                console.print(f"  {p.name}: {h} does not apply", highlight=False)
            if p.conflict_dir:
                console.print(f"  {p.name}: conflicted files (with markers) and the patch in {p.conflict_dir}",
                              highlight=False)
        for n in report.notes:
            console.print(f"[yellow]note:[/] {escape(n)}", highlight=False, markup=True)
        c = report.counts()
        commit = f" ({report.onto_commit[:9]})" if report.onto_commit else ""
        console.print(f"rebase {report.series} onto {report.onto}{commit}: {c['clean']} cleanly, {c['offsets']} with offsets, "
                      f"{c['upstream']} already upstream, {c['conflicts']} conflict", highlight=False)
        if report.written:
            console.print(f"wrote {len(report.written)} patch(es) to patches/{report.series}/"
                          + (f"; dropped (already upstream): {', '.join(report.dropped)}" if report.dropped else ""),
                          highlight=False)
        elif write and not report.ok:
            console.print("[red]nothing written[/]: every patch must resolve first", highlight=False, markup=True)
    out.result(report.to_dict(), human)
    if not report.ok:
        sys.exit(int(ExitCode.FAILED))
