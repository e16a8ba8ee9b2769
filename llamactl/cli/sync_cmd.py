"""`llamactl sync --to SOURCE PROFILE`: is moving the profile to a new base safe?

Rebases the profile's series onto SOURCE (scratch, patches/ and vendor/ untouched), builds and
validates the matrix on the current base and on SOURCE, and prints one table: per cell the status
and tok/s before and after. Exit 0 safe, 6 a cell does worse, 1 the series conflicts, 3 a side
does not build.

Examples:
    llamactl sync --to upstream@0.3.35 default
    llamactl sync --to upstream@0.3.35 default --cell parallel=2 --json > sync.json
    llamactl sync --to path:~/src/llama.cpp@master tiny-gemma4-mtp --fail-below 0.8
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from llamactl.cli import options as o
from llamactl.cli.common import stop_on_signals
from llamactl.cli.console import Output, console, err_console
from llamactl.core.errors import BadInput
from llamactl.judge import sync as sync_lib
from llamactl.judge.matrix import expand, load_matrix_file, select
from llamactl.judge.status import Status

STYLE = {"same": "", "fixed": "green", "regression": "bold red", "slower": "yellow", "changed": "yellow"}
VERDICT_STYLE = {sync_lib.SAFE: "bold green", sync_lib.REGRESSION: "bold red", sync_lib.CONFLICTS: "bold red",
                 sync_lib.BUILD_FAILED: "bold red", sync_lib.INTERRUPTED: "yellow"}


@o.with_overrides(exclude=o.ONLY_SET)
def sync(
    name: o.ProfileName,
    overrides: o.Overrides,
    to: Annotated[str, typer.Option("--to", help="The new base: upstream@VERSION, NAME@COMMIT, path:/dir@REV, or a source name.")],
    cell: Annotated[Optional[list[str]], typer.Option("--cell", help="Only cells matching key=value (repeatable).")] = None,
    matrix: Annotated[Optional[Path], typer.Option("--matrix", help="YAML file with a matrix (axes/include/exclude).")] = None,
    fail_below: Annotated[Optional[float], typer.Option("--fail-below", min=0.0, max=1.0,
                                                        help="Also a regression: a cell's tok/s after below this ratio of before.")] = None,
    json: o.Json = False,
) -> None:
    """Rebase the profile's series onto a new base, build and validate before and after, one table; exit says if it is safe."""
    base = overrides.resolve(name)
    spec = load_matrix_file(matrix) if matrix else base.profile.matrix
    cells = select(expand(spec, str(matrix or f"{base.path} matrix")), cell or [])
    if not cells:
        raise BadInput(f"the matrix of {base.name} selects no cells", hint="check its axes/include/exclude")
    out = Output(json)
    stop_on_signals()
    report = sync_lib.sync(base, to, cells, fail_below=fail_below, progress=out.progress)
    out.result(report.to_dict(), lambda _: _human(report))
    if json:
        err_console.print(_closing(report), highlight=False)
    sys.exit(report.exit_code)


def _tps(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def _status(s: str | None) -> str:
    return Status(s).label if s else "-"


def _human(r: sync_lib.SyncReport) -> None:
    if r.rebase is not None:
        n = r.rebase.counts()
        console.print(f"rebase {r.rebase.series} onto {r.rebase.onto}: {n['clean']} cleanly, {n['offsets']} with offsets, "
                      f"{n['upstream']} already upstream, {n['conflicts']} conflict", highlight=False)
        for p in r.rebase.patches:
            if p.status != "clean":
                console.print(f"  {p.name}: {p.label} ({p.detail})", highlight=False)
    for side in (r.before, r.after):
        if side.build:
            b = side.build
            ver = (b.get("version") or [""])[0]
            commit = (b.get("source_commit") or "")[:9]
            console.print(f"{side.label}: {side.source}{' (' + commit + ')' if commit else ''}, build {str(b.get('key'))} "
                          f"in {b.get('build_s')} s, {ver}; validate {side.report.wall_s if side.report else '-'} s",
                          highlight=False)
    if r.cells:
        t = Table("cell", "before", "after", "tok/s before", "tok/s after", "change", "verdict",
                  title=f"{r.profile}: {r.before.source} -> {r.to}", title_justify="left")
        for c in r.cells:
            change = f"{c.ratio - 1:+.0%}" if c.ratio is not None else "-"
            style = STYLE.get(c.verdict, "")
            verdict = Text(c.verdict, style)
            t.add_row(c.cell, _status(c.before), _status(c.after), _tps(c.tps_before), _tps(c.tps_after), change, verdict)
        console.print(t)
        for c in r.cells:
            if c.verdict in ("regression", "changed", "fixed") and (c.reason_after or c.reason_before):
                console.print(f"  {c.cell}: after: {c.reason_after or '-'}", highlight=False)
    console.print(_closing(r), highlight=False)


def _closing(r: sync_lib.SyncReport) -> Text:
    style = VERDICT_STYLE.get(r.verdict, "")
    return Text.assemble(f"sync {r.profile} -> {r.to}: ", (r.verdict.upper(), style),
                         f" ({r.reason}) in {r.wall_s:.0f} s, exit {r.exit_code}")
