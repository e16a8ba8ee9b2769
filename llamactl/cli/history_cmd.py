"""`llamactl history`: the validate, bench and quality runs recorded on this machine (or any history file).

Examples:
    llamactl history                                   # newest runs first
    llamactl history tiny-gemma4-bench --cell echo     # one cell's numbers across runs and builds
    llamactl history --kind bench --json
    llamactl history default --kind quality
    llamactl history --history ci/history.sqlite
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from llamactl.cli import options as o
from llamactl.cli.common import num
from llamactl.cli.console import Output, console
from llamactl.core.errors import BadInput
from llamactl.report import fingerprint
from llamactl.report.history import History


def history(
    profile: Annotated[Optional[str], typer.Argument(help="Only runs of this profile.", show_default=False)] = None,
    cell: Annotated[Optional[str], typer.Option("--cell", help="One cell's numbers per run (and arm).")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="validate | bench | quality | load | soak.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many runs (or cell rows).")] = 50,
    json: o.Json = False,
    history_path: o.History = None,
) -> None:
    """List recorded runs: id, time, kind, profile, result, build and machine; --cell for per-cell numbers."""
    if kind not in (None, "validate", "bench", "quality", "load", "soak"):
        raise BadInput(f"--kind {kind!r}: expected validate, bench or quality")
    if limit < 1:
        raise BadInput("--limit must be >= 1")
    store = History(history_path)
    out = Output(json)
    if cell:
        rows = store.cells(profile=profile, cell=cell, kind=kind, limit=limit)
        if json:
            out.result([asdict(r) for r in rows])
            return
        if not rows:
            console.print(f"no runs of cell {cell}{f' in {profile}' if profile else ''} in {store.path}")
            return
        t = Table(title=f"cell {cell}: {len(rows)} row(s) from {store.path}", title_justify="left")
        for col in ("run", "when", "arm", "status", "decode tok/s", "TTFT ms", "acceptance", "all slots tok/s", "build", "machine"):
            t.add_column(col)
        for r in rows:
            t.add_row(f"#{r.run_id}", r.started_at, r.variant or "-", r.status, num(r.decode_tps),
                      num(None if r.ttft_s is None else 1000 * r.ttft_s, "{:.0f}"), num(r.acceptance, "{:.0%}"),
                      num(r.tokens_per_s), fingerprint.build_label(r.build), r.machine_id[:8])
        console.print(t)
        return
    run_rows = store.runs(profile=profile, kind=kind, limit=limit)
    if json:
        out.result([asdict(r) for r in run_rows])
        return
    if not run_rows:
        console.print(f"no runs{f' of {profile}' if profile else ''} recorded in {store.path}")
        return
    here = fingerprint.machine()["id"]
    t = Table(title=f"{len(run_rows)} run(s), newest first, from {store.path}", title_justify="left")
    for col in ("run", "when", "kind", "profile", "result", "build", "machine"):
        t.add_column(col)
    for run in run_rows:
        result = (Text("ok", "green") if run.ok else Text("not ok", "red")) if run.ok is not None else Text("-")
        t.add_row(f"#{run.id}", run.started_at, run.kind, run.profile, Text.assemble(result, f" {run.summary}"),
                  fingerprint.build_label(run.build), run.machine_id[:8] + (" (this)" if run.machine_id == here else ""))
    console.print(t)
