"""`llamactl report`: HTML and Markdown reports of validate/bench runs, and trends from the history.

Examples:
    llamactl report reports/validate.json                       # Markdown on stdout
    llamactl report reports/validate.json --markdown "$GITHUB_STEP_SUMMARY" --html reports/validate.html
    llamactl report reports/bench.json reports/validate.json --html reports/all.html
    llamactl report 12 --html run12.html                        # a run from the history, by id
    llamactl report reports/bench.json --trend --html reports/bench.html
    llamactl report --trend --profile tiny-gemma4-bench --png reports/trend.png
    llamactl report --trend --kind quality --profile default --html reports/kl-trend.html
    llamactl report merge shard1.json shard2.json --json-out reports/all.json --junit reports/all.xml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text
from rich.markup import escape

from llamactl.core import jsonsafe
from llamactl.cli import options as o
from llamactl.cli.common import check_outputs
from llamactl.cli.console import err_console
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.report import fingerprint, markdown, publish, runs, view
from llamactl.report.history import History


def after_run(run: dict[str, Any], history: Path | None, html: Path | None, md: Path | None) -> dict[str, Any]:
    """Record a finished validate/bench run in the history and write its reports; notes go to stderr."""
    enriched = publish.enrich(run)
    store = History(history)
    pub = publish.record(enriched, store)
    if pub.history_error:
        err_console.print(f"[yellow]warning:[/] run not recorded in the history: {escape(pub.history_error)}", highlight=False, markup=True)
    else:
        enriched["history"] = {"id": pub.history_id, "machine": enriched["machine"], "build": enriched["build"]}
        err_console.print(f"history: run #{pub.history_id} in {store.path}", highlight=False, markup=False)
    for p in publish.render([enriched], html, md, store):
        err_console.print(f"report: {p}", highlight=False, markup=False)
    return enriched


def _load(arg: str, store: History) -> list[dict[str, Any]]:
    path = Path(arg).expanduser()
    if not path.exists() and arg.isdigit():
        data = store.get(int(arg))
        return runs.split_runs(data)
    return runs.load(path)


def report(
    files: Annotated[Optional[list[str]], typer.Argument(help="Run JSON files (validate, bench or merged), or history run ids.",
                                                         show_default=False)] = None,
    html: o.Html = None,
    md: o.Markdown = None,
    trend: Annotated[bool, typer.Option("--trend", help="Add decode tok/s and acceptance per cell across builds, from the history.")] = False,
    profile: Annotated[Optional[str], typer.Option("--profile", help="Profile for --trend (default: the first run's).")] = None,
    cell: Annotated[Optional[str], typer.Option("--cell", help="Only this cell in --trend.")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Write the --trend chart as a PNG (needs matplotlib).")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="--trend of bench runs (tok/s, acceptance) or quality runs "
                    "(mean KL, same top %); default: the first run's kind, else bench.")] = None,
    history: o.History = None,
    json_path: Annotated[Optional[Path], typer.Option("--json-out", help="report merge: also write the merged report as JSON to this file.", show_default=False)] = None,
    json: Annotated[bool, typer.Option("--json", help="report merge: print the merged report as JSON on stdout (the table goes to stderr).")] = False,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="report merge: write the merged JUnit XML here.")] = None,
) -> None:
    """Render runs as one self-contained HTML page and/or Markdown; Markdown on stdout when no file is named."""
    if files and files[0] == "merge" and not Path("merge").exists():
        _merge([Path(f) for f in files[1:]], json_path, junit, html, md, json)
        return
    if json_path or junit or json:
        raise BadInput("--json, --json-out and --junit belong to `llamactl report merge A.json B.json ...`")
    check_outputs((html, "--html"), (md, "--markdown"), (png, "--png"))
    store = History(history)
    run_list = [r for f in files or [] for r in _load(f, store)]
    if png and not trend:
        raise BadInput("--png draws the trend: add --trend")
    if not run_list and not trend:
        raise BadInput("name a run JSON file (or a history run id), or use --trend --profile NAME")
    trend_data = None
    rows = []
    if trend:
        profile = profile or (runs.profile_of(run_list[0]) if run_list else None)
        if not profile:
            raise BadInput("--trend needs a profile: --profile NAME, or a run file")
        machine = next((m for m in (view.context(r, store)[0] for r in run_list) if m), None) or fingerprint.machine()
        kind = kind or (run_list[0]["kind"] if run_list and run_list[0]["kind"] == runs.QUALITY else runs.BENCH)
        if kind not in (runs.BENCH, runs.QUALITY):
            raise BadInput(f"--kind {kind!r}: --trend draws bench or quality runs")
        if kind == runs.QUALITY:
            if png:
                raise BadInput("--png draws the bench trend; the quality trend goes to --html or --markdown")
            points = store.quality_points(profile, machine.get("id"), cell)
            trend_data = view.quality_trend_view(points, profile)
            if trend_data is None:
                raise LlamactlError(f"no quality runs of {profile}{f' cell {cell}' if cell else ''} on this machine in {store.path}",
                                    hint="llamactl history --kind quality lists what is recorded")
        rows = [] if kind == runs.QUALITY else store.cells(profile=profile, cell=cell, kind=runs.BENCH, machine_id=machine.get("id"))
        if not rows and kind == runs.BENCH:
            raise LlamactlError(f"no bench runs of {profile}{f' cell {cell}' if cell else ''} on this machine in {store.path}",
                                hint="llamactl history lists what is recorded")
        if kind == runs.BENCH:
            trend_data = view.trend_view(rows, profile)
    if png:
        from llamactl.report.png import trend_png
        trend_png(rows, png, profile)
        err_console.print(f"trend: {png}", highlight=False, markup=False)
    written = publish.render(run_list, html, md, store, trend_data)
    for p in written:
        err_console.print(f"report: {p}", highlight=False, markup=False)
    if not written and not png:
        sys.stdout.write(markdown.render(view.report_view(run_list, store, trend_data)))


def _merge(files: list[Path], json_path: Path | None, junit: Path | None, html: Path | None, md: Path | None,
           json: bool = False) -> None:
    """`report merge`: one table of every cell with the machine it ran on; exit 1 on a cell run twice or nowhere."""

    from rich.table import Table

    from llamactl.cli.console import Output, console
    from llamactl.core.files import write_atomic
    from llamactl.core.errors import ExitCode
    from llamactl.judge.status import Status
    from llamactl.report import merge as merge_lib, reports

    check_outputs((json_path, "--json-out"), (junit, "--junit"), (html, "--html"), (md, "--markdown"))
    merged, info = merge_lib.merge(files)
    screen = err_console if json else console   # stdout carries only the JSON with --json
    if json_path:
        write_atomic(json_path, jsonsafe.dumps(merge_lib.merged_dict(merged, info)) + "\n")
    if junit:
        reports.write_junit(merged, junit)
    t = Table("cell", "status", "machine", "shard file", "reason", title=f"{merged.profile}: {len(files)} report(s) merged")
    for row in info["cells"]:
        st = Status(row["status"])
        t.add_row(row["cell"], Text(st.label, reports.STYLE[st]),
                  str(row["machine"] or "-") + (f" (x{row['ran']})" if row.get("ran", 1) > 1 else ""),
                  Path(row["file"]).name if row["file"] else "-", row["reason"] or "")
    screen.print(t)
    for d in info["duplicates"]:
        err_console.print(f"[red]ran twice:[/] {escape(d['cell'])} on {escape(', '.join(d['machines']))}", highlight=False, markup=True)
    for cid in info["missing"]:
        err_console.print(f"[red]ran nowhere:[/] {escape(cid)}", highlight=False, markup=True)
    for line in reports.summary_lines(merged):
        screen.print(line, highlight=False)
    publish.render([merged_run(merged, info)], html, md)
    if json:
        Output(True).result(merge_lib.merged_dict(merged, info))
    if info["duplicates"] or info["missing"] or not merged.ok:
        sys.exit(ExitCode.FAILED)


def merged_run(merged: Any, info: dict[str, Any]) -> dict[str, Any]:
    from llamactl.report import merge as merge_lib

    return merge_lib.merged_dict(merged, info)
