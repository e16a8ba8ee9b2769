"""`llamactl validate`: the validation matrix over HTTP, with reports for people and CI.

Examples:
    llamactl validate                                  # the default profile's matrix
    llamactl validate tiny-gemma4-mtp --junit reports/junit.xml --json reports/validate.json
    llamactl validate gemma4-26b-a4b-mtp --cell parallel=2 --cell enable_mtp=1
    llamactl validate tiny-gemma4-mtp --matrix profiles/matrices/kv-types.yaml --fail-fast
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llamactl.report import reports
from llamactl.cli import options as o, report_cmd
from llamactl.cli.profile_cmd import resolve_from_cli
from llamactl.cli.run_cmd import stop_on_signals
from llamactl.core.console import Output, console, quiet_progress
from llamactl.core.errors import ExitCode, LlamactlError
from llamactl.core.files import check_writable
from llamactl.judge.matrix import expand, load_matrix_file, select
from llamactl.judge.validate import run_matrix


def validate(
    name: Annotated[str, typer.Argument(help="Profile whose matrix to run.")] = "default",
    matrix: Annotated[Optional[Path], typer.Option("--matrix", help="YAML file with a matrix (axes/include/exclude).")] = None,
    cell: Annotated[Optional[list[str]], typer.Option("--cell", help="Only cells matching key=value (repeatable).")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failing cell.")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the full report as JSON here.")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here (one testcase per cell and check).")] = None,
    html: o.Html = None,
    md: o.Markdown = None,
    history: o.History = None,
    set_: o.Set = None,
    no_env: o.NoEnv = False,
) -> None:
    """Start the server for each matrix cell, run the HTTP checks, report; exit 0 only if all ran cells pass."""
    for path, what in ((json_path, "--json"), (junit, "--junit"), (html, "--html"), (md, "--markdown")):
        if path is not None:
            check_writable(path, what)    # before the build and the run, not after them
    base = resolve_from_cli(name, no_env, sets=set_)
    spec = load_matrix_file(matrix) if matrix else base.profile.matrix
    cells = select(expand(spec, str(matrix or f"{base.path} matrix")), cell or [])
    out = Output(False)
    stop_on_signals()
    console.print(f"validating [bold]{base.name}[/]: {len(cells)} cell(s)")
    live_enabled = console.is_terminal and not quiet_progress()
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console)
    task = bar.add_task("cells", total=len(cells))
    with Live(console=console, refresh_per_second=4, transient=False) if live_enabled else nullcontext() as live:
        def update(report, running):
            if live_enabled:
                bar.update(task, completed=len(report.cells), description=f"cell {escape(running)}" if running else "cells")
                live.update(Group(reports.table(report, running), bar), refresh=True)
            elif running is None and report.cells:
                c = report.cells[-1]
                console.print(f"  {escape(c.cell)}: {c.status.upper()} {escape(c.reason)}", highlight=False)
        report = run_matrix(base, cells, out=out, fail_fast=fail_fast, on_update=update)
    if not live_enabled:
        console.print(reports.table(report))
    failed = [c for c in report.cells if c.status == "fail"]
    for c in failed:
        console.print(f"[red]FAIL[/] {escape(c.cell)}: {escape(c.reason)}", highlight=False)
        for ln in (c.crash or {}).get("frames", [])[:8]:
            console.print(f"    {ln}", highlight=False, markup=False)
        console.print(f"    log:   {c.log}\n    repro: {c.repro}", highlight=False, markup=False)
    for c in report.cells:
        if c.status == "xfail":
            console.print(f"[yellow]XFAIL[/] {escape(c.cell)}: {escape(c.reason)}", highlight=False)
            console.print(f"    log:   {c.log}", highlight=False, markup=False)
    for line in reports.summary_lines(report):
        console.print(line, highlight=False)
    if json_path:
        reports.write_json(report, json_path)
    if junit:
        reports.write_junit(report, junit)
    report_cmd.after_run(report.to_dict(), history, html, md)   # history store + --html/--markdown
    if report.interrupted:
        sys.exit(ExitCode.INTERRUPTED)
    if not report.ok:
        sys.exit(ExitCode.FAILED)
