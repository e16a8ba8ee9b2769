"""`llamactl soak`: hours of mixed agent traffic; does the server last (memory, slots, speed, errors, answers)?

Examples:
    llamactl soak default --parallel 2 --duration 30m
    llamactl soak tiny-gemma4-mtp --cell parallel=2 --cell mtp=true --duration 60s --html reports/soak.html
    llamactl soak default --duration 2h --clients 4 --json-out reports/soak.json --junit reports/soak.xml
    llamactl soak tiny-gemma4-mtp --no-matrix --duration 90s --set harness.soak.memory_slope_mib_per_h=256
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text
from rich.table import Table

from llamactl.core import jsonsafe
from llamactl.cli import options as o, report_cmd
from llamactl.cli.common import check_outputs, parse_duration, stop_on_signals, warn_exposure
from llamactl.cli.console import Output, console, err_console, progress_bar
from llamactl.core.errors import BadInput, ExitCode
from llamactl.core.files import write_atomic
from llamactl.judge import soak as soak_lib
from llamactl.judge.matrix import expand, load_matrix_file, select
from llamactl.report import soak_junit
from llamactl.report.reports import STYLE
from llamactl.judge.status import Status
from llamactl.serve import launcher



def _table(data: dict[str, Any]) -> Table:
    t = Table(title=f"llamactl soak {data.get('profile', '')} ({data['meta']['duration']})", title_justify="left")
    for col in ("cell", "status", "verdict", "detail"):
        t.add_column(col, overflow="fold")
    for c in data["cells"]:
        st = Status(c["status"])
        label = Text(st.label, STYLE[st])
        if not c["verdicts"]:
            t.add_row(c["cell"], label, "-", c.get("reason", ""))
        for i, v in enumerate(c["verdicts"]):
            vs = Status(v["status"])
            t.add_row(c["cell"] if i == 0 else "", label if i == 0 else "", Text(v["name"], STYLE[vs]),
                      v["detail"])
    return t


@o.with_overrides(exclude=("port",))
def soak(
    name: Annotated[str, typer.Argument(help="Profile to soak.")],
    overrides: o.Overrides = o.Overrides(),
    duration: Annotated[str, typer.Option("--duration", help="Traffic per cell: seconds, or 90s, 30m, 2h.")] = "30m",
    clients: Annotated[Optional[int], typer.Option("--clients", help="Concurrent clients (default: the cell's slots).")] = None,
    sample: Annotated[float, typer.Option("--sample", help="Seconds between readings of /proc, /slots and the log.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the traffic mix.")] = 42,
    matrix: Annotated[Optional[Path], typer.Option("--matrix", help="YAML matrix file (default: the profile's matrix).")] = None,
    cell: Annotated[Optional[list[str]], typer.Option("--cell", help="Only cells matching key=value.")] = None,
    no_matrix: Annotated[bool, typer.Option("--no-matrix", help="Soak the profile as it is, ignoring its matrix.")] = False,
    json_path: o.JsonOut = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here (one test per cell and verdict).")] = None,
    html: o.Html = None,
    md: o.Markdown = None,
    history: o.History = None,
    json: o.Json = False,
) -> None:
    """Hours of mixed agent traffic: memory slope, slots released, acceptance and tok/s drift, errors, answers under load."""
    seconds = parse_duration(duration)
    if clients is not None and not 1 <= clients <= 64:
        raise BadInput("--clients must be 1..64")
    if not 0.05 <= sample <= 60:
        raise BadInput("--sample must be 0.05..60 seconds")
    check_outputs((json_path, "--json-out"), (junit, "--junit"), (html, "--html"), (md, "--markdown"))
    base = overrides.resolve(name)
    spec = load_matrix_file(matrix) if matrix else (None if no_matrix else base.profile.matrix)
    cells = select(expand(spec, str(matrix or f"{base.path} matrix")), cell or [])
    out = Output(json)
    screen = err_console if json else console
    binary = launcher.ensure_binary(base.profile, out.progress)
    run_dir = launcher.new_run_dir(f"soak-{base.name}")
    stop = threading.Event()
    stop_on_signals(on_signal=stop.set)
    warn_exposure(base.profile.host)
    settings = soak_lib.Settings(seconds, clients, sample, seed)
    t0 = time.monotonic()
    results = []
    with progress_bar("soak", total=len(cells) * seconds) as (progress, task):
        for k, c in enumerate(cells):
            def tick(p: soak_lib.Progress, k: int = k) -> None:
                rss = "-" if p.rss_mib is None else f"{p.rss_mib:.0f} MiB"
                progress.update(task, completed=k * seconds + min(p.elapsed_s, seconds),
                                description=f"{p.cell}: {p.elapsed_s:.0f}/{p.duration_s:.0f} s, {p.requests} requests, "
                                            f"{p.errors} errors, RSS {rss}")
            results.append(soak_lib.soak_cell(base, c, binary, run_dir, settings, tick, stop))
            if stop.is_set():
                break
    meta = {"profile": base.name, "binary": str(binary.path), "version": (binary.manifest or {}).get("version", ""),
            "duration": duration, "duration_s": seconds, "clients": clients, "sample_s": sample, "seed": seed,
            "wall_s": round(time.monotonic() - t0, 1), "run_dir": str(run_dir), "interrupted": stop.is_set()}
    data = soak_lib.to_json(results, meta)
    screen.print(_table(data))
    if junit:
        soak_junit.write(data, junit)
        screen.print(f"junit: {junit}")
    data = report_cmd.after_run(data, history, html, md)
    if json_path:
        write_atomic(json_path, jsonsafe.dumps(data) + "\n")
        screen.print(f"soak: {json_path}")
    if json:
        out.result(data)
    if stop.is_set():
        sys.exit(int(ExitCode.INTERRUPTED))
    if not data["ok"]:
        sys.exit(int(ExitCode.FAILED))
