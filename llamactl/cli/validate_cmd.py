"""`llamactl validate`: the validation matrix over HTTP, with reports for people and CI.

Examples:
    llamactl validate                                  # the default profile's matrix
    llamactl validate tiny-gemma4-mtp --junit reports/junit.xml --json reports/validate.json
    llamactl validate gemma4-26b-a4b-mtp --cell parallel=2 --cell enable_mtp=1
    llamactl validate tiny-gemma4-mtp --matrix profiles/matrices/kv-types.yaml --fail-fast
    llamactl validate --router tiny-gemma4-mtp tiny-gemma4-bench --json-out reports/router.json
    llamactl validate --router tiny-gemma4-mtp tiny-gemma4-bench --models-max 2
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.markup import escape
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llamactl.report import fingerprint, reports
from llamactl.cli import options as o, report_cmd
from llamactl.cli.common import check_outputs, stop_on_signals, warn_exposure
from llamactl.cli.console import Output, console, err_console, quiet_progress
from llamactl.core.errors import BadInput, ExitCode, LlamactlError
from llamactl.judge.matrix import expand, load_matrix_file, parse_shard, select, shard as shard_of_cells
from llamactl.judge.status import Status
from llamactl.judge.validate import Report, new_report, run_matrix, run_url


@o.with_overrides()
def validate(
    name: Annotated[str, typer.Argument(help="Profile whose matrix to run.")] = "default",
    more: o.RouterMembers = None,
    overrides: o.Overrides = o.Overrides(),
    router: Annotated[bool, typer.Option("--router", help="Validate llama-server's router mode over these profiles "
                                         "(routing, load/evict, one model's crash, a model that cannot load), e.g. "
                                         "`validate --router tiny-gemma4-mtp tiny-gemma4-bench`.")] = False,
    models_max: Annotated[Optional[int], typer.Option("--models-max", help="With --router: --models-max of the router "
                                                      "(default: one less than the profiles, so eviction is exercised), "
                                                      "e.g. --models-max 1.", show_default=False)] = None,
    matrix: Annotated[Optional[Path], typer.Option("--matrix", help="YAML file with a matrix (axes/include/exclude).")] = None,
    cell: Annotated[Optional[list[str]], typer.Option("--cell", help="Only cells matching key=value (repeatable).")] = None,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failing cell.")] = False,
    json_path: o.JsonOut = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here (one testcase per cell and check).")] = None,
    html: o.Html = None,
    md: o.Markdown = None,
    history: o.History = None,
    url: Annotated[Optional[str], typer.Option("--url", help="Check a server that is already running here (no launch); the profile says how it was started.")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Run only shard K/N of the matrix (by a hash of each cell id).")] = None,
    json: o.Json = False,
) -> None:
    """Start the server for each matrix cell, run the HTTP checks, report; exit 0 only if all ran cells pass.

    The JSON and JUnit reports are written whatever happens (Ctrl-C, SIGTERM, a failed build, an
    internal error), with every cell listed; their paths are checked before anything runs.
    """
    check_outputs((json_path, "--json-out"), (junit, "--junit"), (html, "--html"), (md, "--markdown"))   # before the build and the run, not after them
    if router or more:
        if not router:   # a usage error, as click words it (the older `validate --json FILE` gets its hint)
            raise typer.BadParameter(f"Got unexpected extra argument ({' '.join(more or [])}); more than one "
                                     f"profile needs --router: llamactl validate --router {name} {' '.join(more or [])}")
        if any(x is not None for x in (matrix, cell, url, shard, junit, html, md)):
            raise BadInput("--router takes --models-max, --json and --json-out (not --matrix, --cell, --url, --shard, "
                           "--junit, --html, --markdown)")
        _validate_router([name, *(more or [])], overrides, models_max, json_path, json)
        return
    if models_max is not None:
        raise BadInput("--models-max is for --router", hint=f"llamactl validate --router {name} OTHER --models-max 1")
    base = overrides.resolve(name)
    spec = load_matrix_file(matrix) if matrix else base.profile.matrix
    cells = select(expand(spec, str(matrix or f"{base.path} matrix")), cell or [])
    if not cells:
        raise BadInput(f"the matrix of {base.name} selects no cells", hint="check its axes/include/exclude")
    if url is not None:
        _validate_url(base, url, cells if (matrix or base.profile.matrix) else [], json_path, junit, history, html, md, json)
        return
    screen = err_console if json else console   # stdout carries only the JSON with --json
    all_ids = [c.id for c in cells]
    if shard:
        k, n = parse_shard(shard)
        cells = shard_of_cells(cells, k, n)
        screen.print(f"shard {k}/{n}: {len(cells)} of {len(all_ids)} cell(s)", highlight=False)
    out = Output(json)
    stop_on_signals()
    warn_exposure(base.profile.host)
    screen.print(f"validating [bold]{escape(base.name)}[/]: {len(cells)} cell(s)", markup=True)
    live_enabled = screen.is_terminal and not quiet_progress()
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=screen)
    task = bar.add_task("cells", total=len(cells))
    report = new_report(base, cells)
    report.matrix, report.shard = all_ids, (f"{k}/{n}" if shard else None)
    printed = 0

    def update(rep: Report, running: str | None) -> None:
        nonlocal printed
        done = sum(1 for c in rep.cells if c.status != Status.NOT_RUN)
        if live_enabled:
            bar.update(task, completed=done - (1 if running else 0),
                       description=f"cell {running}" if running else "cells")
            if live is not None:   # always, when live_enabled
                live.update(Group(reports.table(rep, running), bar), refresh=True)
        elif running is None:
            for c in rep.cells[printed:done]:
                screen.print(f"  {c.cell}: {Status(c.status).label} {c.reason}", highlight=False)
            printed = done

    if not cells:     # an empty shard: nothing to run here, still a report for the merge
        report.machine = fingerprint.run_fingerprint(None)
        _write_reports(report, json_path, junit)
        screen.print(f"validate: shard {report.shard} has no cells of {len(all_ids)}", highlight=False)
        if json:
            out.result(report.to_dict())
        return
    try:
        with Live(console=screen, refresh_per_second=4, transient=False) if live_enabled else nullcontext() as live:
            run_matrix(base, cells, progress=out.progress, fail_fast=fail_fast, on_update=update, report=report)
    except LlamactlError as exc:
        report.error = str(exc)
        raise
    except Exception as exc:            # the CLI's one handler turns it into a line (and --debug)
        report.error = f"internal error: {type(exc).__name__}: {exc}"
        raise
    finally:
        _write_reports(report, json_path, junit)
    _finish(report, out, screen, live_enabled, history, html, md)


def _validate_router(names: list[str], overrides: o.Overrides, models_max: int | None, json_path: Path | None,
                     json: bool) -> None:
    """`validate --router A B ...`: the router checks (judge/router_checks.py); exit 1 unless all pass or skip."""
    import json as jsonlib

    from rich.table import Table

    from llamactl.core import paths
    from llamactl.core.files import write_atomic
    from llamactl.judge.router_checks import run_router

    out = Output(json)
    screen = err_console if json else console
    members = [overrides.resolve(n) for n in names]
    stop_on_signals()
    screen.print(f"validating the router over [bold]{escape(', '.join(names))}[/]", highlight=False, markup=True)
    run_dir = paths.new_run_dir("router-validate")
    report = run_router(members, run_dir, models_max=models_max, progress=out.progress,
                        on_check=lambda c: screen.print(f"  {c.name}: {Status(c.status).label} {c.detail[:200]}",
                                                        highlight=False))
    data = report.to_dict()
    if json_path is not None:
        write_atomic(json_path, jsonlib.dumps(data, indent=2, default=str) + "\n")
    t = Table("check", "status", "seconds", "detail", title=f"router over {', '.join(names)} (--models-max {report.models_max})")
    for c in report.checks:
        st = Status(c.status)
        t.add_row(c.name, Text(st.label, reports.STYLE[st]), f"{c.seconds:.2f}", c.detail[:160])
    screen.print(t)
    if report.log:
        screen.print(f"log: {report.log}  preset: {report.preset}", highlight=False, markup=False)
    if json:
        out.result(data)
    if not report.ok:
        sys.exit(ExitCode.FAILED)


def _validate_url(base, url: str, cells: list, json_path: Path | None, junit: Path | None,
                  history: Path | None, html: Path | None, md: Path | None, json: bool = False) -> None:
    """`validate --url`: the checks against a running server; no launch, no stop."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except Exception as exc:   # noqa: BLE001 - httpx raises several types for a malformed URL
        raise BadInput(f"--url {url!r}: not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise BadInput(f"--url {url!r}: expected http(s)://HOST:PORT")
    stop_on_signals()
    out = Output(json)
    screen = err_console if json else console
    screen.print(f"validating [bold]{escape(base.name)}[/] against {escape(url)} (no launch)", highlight=False, markup=True)
    report = run_url(base, url, cells)
    _write_reports(report, json_path, junit)
    _finish(report, out, screen, False, history, html, md)


def _finish(report: Report, out: Output, screen: Console, live_enabled: bool,
            history: Path | None, html: Path | None, md: Path | None) -> None:
    """The outcome for people, the history and --html/--markdown, the JSON with --json, and the exit code
    (INTERRUPTED after Ctrl-C, FAILED unless every cell that ran passed)."""
    _print_outcome(report, live_enabled, screen)
    report_cmd.after_run(report.to_dict(), history, html, md)   # history store + --html/--markdown
    if out.json_mode:
        out.result(report.to_dict())
    if report.interrupted:
        sys.exit(ExitCode.INTERRUPTED)
    if not report.ok:
        sys.exit(ExitCode.FAILED)


def _write_reports(report: Report, json_path: Path | None, junit: Path | None) -> None:
    """Write both reports; a failure to write one is a line on stderr, not the end of the other."""
    if (json_path or junit) and not report.machine:
        try:
            report.machine = fingerprint.run_fingerprint(report.binary or None, report.version or None)
        except Exception as exc:   # noqa: BLE001 - a fingerprint never costs the reports
            report.machine = {"error": f"{type(exc).__name__}: {exc}"}
    for path, write in ((json_path, reports.write_json), (junit, reports.write_junit)):
        if path is None:
            continue
        try:
            write(report, path)
        except OSError as exc:
            err_console.print(f"[bold red]error:[/] cannot write {escape(str(path))}: {escape(exc.strerror or str(exc))}",
                              highlight=False, markup=True)


def _print_outcome(report: Report, live_enabled: bool, screen: Console = console) -> None:
    if not live_enabled:
        screen.print(reports.table(report))
    for c in report.cells:
        st = Status(c.status)
        if st in (Status.FAIL, Status.ERROR, Status.XPASS, Status.INTERRUPTED):
            screen.print(f"[{reports.STYLE[st]}]{escape(st.label)}[/] {escape(c.cell)}: {escape(c.reason)}", highlight=False, markup=True)
            for ln in [*(c.crash or {}).get("frames", [])[:8], *(c.hang or {}).get("frames", [])[:8]]:
                screen.print(f"    {ln}", highlight=False, markup=False)
            if c.log:
                screen.print(f"    log:   {c.log}", highlight=False, markup=False)
            screen.print(f"    repro: {c.repro}", highlight=False, markup=False)
        elif st == Status.XFAIL:
            screen.print(f"[yellow]XFAIL[/] {escape(c.cell)}: {escape(c.reason)}", highlight=False, markup=True)
            screen.print(f"    log:   {c.log}", highlight=False, markup=False)
        for w in c.warnings:
            screen.print(f"[yellow]warning[/] {escape(c.cell)}: {escape(w)}", highlight=False, markup=True)
    for line in reports.summary_lines(report):
        screen.print(line, highlight=False)
