"""`llamactl load`: what a server config can carry, in throughput and latency, at several loads.

Examples:
    llamactl load default --clients 1,2,4,8 --duration 20
    llamactl load tiny-gemma4-mtp --cell parallel=2 --rate 2,8 --prompt-len 64:256 --max-tokens 32:128
    llamactl load default --parallel 2 --clients 1,2,4 --html reports/load.html --plot reports/load.png
    llamactl load default --clients 4 --requests 100 --json | jq '.cells[].levels[] | {level, output_tok_per_s}'
    llamactl load default --clients 2 --baseline last --fail-below 0.85
    llamactl load default --url http://127.0.0.1:8080 --clients 1,2     # a server already running
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
from llamactl.cli.common import check_outputs, num, parse_duration, stop_on_signals, warn_exposure
from llamactl.cli.console import Output, console, err_console, progress_bar
from llamactl.core.errors import BadInput, ExitCode
from llamactl.core.files import write_atomic
from llamactl.judge import load as load_lib
from llamactl.judge.matrix import expand, load_matrix_file, select
from llamactl.judge.traffic import Lengths, Record
from llamactl.report import fingerprint, gate, load_gate, png, traffic_view, view
from llamactl.report.history import History
from llamactl.serve import launcher


_ms = traffic_view._ms


def _table(data: dict[str, Any]) -> Table:
    meta = data["meta"]
    t = Table(title=f"llamactl load {data.get('profile', '')}  (prompt {meta['prompt_len']} tokens, answer "
                    f"{meta['max_tokens']} tokens, {meta['duration_s']:g} s per load; latencies p50/p90/p99 in ms)",
              title_justify="left")
    for col in ("cell", "load", "done", "errors", "req/s", "out tok/s", "tok/s per req p50", "TTFT", "TPOT", "e2e",
                "acceptance", "server check"):
        t.add_column(col, overflow="fold")
    for c in data["cells"]:
        if c.get("error") and not c["levels"]:
            t.add_row(c["cell"], "-", "-", Text(c['error'][:120], "red"), *["-"] * 8)
            continue
        for lv in c["levels"]:
            def trio(k: str, lv: dict[str, Any] = lv) -> str:
                return "/".join(_ms(lv[k][p]) for p in ("p50", "p90", "p99"))
            errs = ", ".join(f"{k} {n}" for k, n in lv["errors"].items()) or "0"
            t.add_row(c["cell"], lv["level"], str(lv["completed"]), Text(errs, "red" if lv["errors"] else ""),
                      num(lv["req_per_s"], "{:.2f}"), num(lv["output_tok_per_s"]), num(lv["per_request_tok_per_s"]["p50"]),
                      trio("ttft_s"), trio("tpot_s"), trio("e2e_s"), num(lv.get("acceptance"), "{:.0%}"),
                      "; ".join(lv["server_check"].get("shown") or []) or "within 5%")
        if c.get("error"):
            t.add_row(c["cell"], "", "", Text(c['error'][:120], "red"), *[""] * 8)
    return t


@o.with_overrides(exclude=("port",))
def load(
    name: Annotated[str, typer.Argument(help="Profile to load.")],
    overrides: o.Overrides = o.Overrides(),
    matrix: Annotated[Optional[Path], typer.Option("--matrix", help="YAML matrix file (default: the profile's matrix).")] = None,
    cell: Annotated[Optional[list[str]], typer.Option("--cell", help="Only cells matching key=value.")] = None,
    no_matrix: Annotated[bool, typer.Option("--no-matrix", help="Load the profile as it is, ignoring its matrix.")] = False,
    clients: Annotated[Optional[list[str]], typer.Option("--clients", help="Closed loop: concurrent clients per load, e.g. 1,2,4,8 "
                       "(each sends its next request when its last one ends).")] = None,
    rate: Annotated[Optional[list[str]], typer.Option("--rate", help="Open loop: requests/s per load, Poisson arrivals, e.g. 0.5,2.")] = None,
    duration: Annotated[str, typer.Option("--duration", help="Time per load: seconds, or 90s, 2m, 1h30m.")] = "20",
    requests: Annotated[Optional[int], typer.Option("--requests", help="At most this many requests per load.")] = None,
    prompt_len: Annotated[str, typer.Option("--prompt-len", help="Prompt tokens: N or LO:HI (uniform, seeded).")] = "128",
    max_tokens: Annotated[str, typer.Option("--max-tokens", help="Answer tokens: N or LO:HI (uniform, seeded; ignore_eos).")] = "64",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the length draws and arrivals.")] = 42,
    url: Annotated[Optional[str], typer.Option("--url", help="Load a server already running here (no launch); the "
                   "profile gives its model name and API key.")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Gate against: last (same profile on this machine), "
                        "a history run id, or a load JSON file.")] = None,
    warn_below: Annotated[float, typer.Option("--warn-below", help="Warn when output tok/s (or 1/p90 e2e) falls below this ratio of the baseline.")] = 0.95,
    fail_below: Annotated[float, typer.Option("--fail-below", help=f"Fail (exit {int(ExitCode.REGRESSION)}) below this ratio.")] = 0.85,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a throughput-vs-latency PNG here (needs matplotlib).")] = None,
    json_path: o.JsonOut = None,
    html: o.Html = None,
    md: o.Markdown = None,
    history: o.History = None,
    json: o.Json = False,
) -> None:
    """Throughput (req/s, output tok/s) and latency (TTFT, TPOT, end to end: p50/p90/p99) per load, one server per cell."""
    seconds = parse_duration(duration)
    if requests is not None and requests < 1:
        raise BadInput(f"--requests {requests}: at least 1")
    levels = load_lib.parse_levels(clients or [], rate or [])
    settings = load_lib.Settings(Lengths.parse(prompt_len, "--prompt-len"), Lengths.parse(max_tokens, "--max-tokens"),
                                 seconds, requests, seed)
    thresholds = gate.Thresholds(warn_below, fail_below)
    check_outputs((json_path, "--json-out"), (plot, "--plot"), (html, "--html"), (md, "--markdown"))
    base = overrides.resolve(name)
    spec = load_matrix_file(matrix) if matrix else (None if no_matrix else base.profile.matrix)
    cells = select(expand(spec, str(matrix or f"{base.path} matrix")), cell or [])
    load_lib.check_settings(base, cells if url is None else [], levels, settings)   # a --url server's ctx is its own
    against = load_gate.baseline(baseline, base.name, fingerprint.machine()["id"], History(history)) if baseline else None
    out = Output(json)
    screen = err_console if json else console
    if url is not None:
        if not url.startswith(("http://", "https://")):
            raise BadInput(f"--url {url!r}: expected http://HOST:PORT")
        cells = cells[:1]
    binary = launcher.ensure_binary(base.profile, out.progress) if url is None else None
    run_dir = launcher.new_run_dir(f"load-{base.name}")
    stop = threading.Event()
    stop_on_signals(on_signal=stop.set)
    warn_exposure(base.profile.host)
    t0 = time.monotonic()
    results = []
    with progress_bar("load", total=len(cells) * len(levels)) as (progress, task):
        for c in cells:
            seen: set[str] = set()
            counts = {"n": 0, "err": 0}

            def tick(level: str, rec: Record | None, c=c, seen=seen, counts=counts) -> None:
                counts["n"] += 1
                counts["err"] += 0 if rec is None or rec.ok else 1
                progress.update(task, description=f"{c.id} {level}: {counts['n']} requests, {counts['err']} errors")
                if level not in seen:
                    if seen:
                        progress.advance(task)
                    seen.add(level)
            if url is not None:
                results.append(load_lib.load_url(base, url, levels, settings, tick, stop))
            else:
                assert binary is not None
                results.append(load_lib.load_cell(base, c, binary, run_dir, levels, settings, tick, stop))
            progress.update(task, completed=len(results) * len(levels))
            if stop.is_set():
                break
    meta = {"profile": base.name, "binary": str(binary.path) if binary else None, "url": url,
            "version": (binary.manifest or {}).get("version", "") if binary else "",
            "prompt_len": str(settings.prompt_len), "max_tokens": str(settings.max_tokens), "duration_s": seconds,
            "requests": requests, "seed": seed, "levels": [lv.label for lv in levels],
            "wall_s": round(time.monotonic() - t0, 1), "run_dir": str(run_dir), "interrupted": stop.is_set()}
    data = load_lib.to_json(results, meta)
    screen.print(_table(data))
    if against:
        label, ref = against
        data["gate"] = view.gate_summary(load_gate.compare(data, ref, label, thresholds), label, thresholds)
        for v in data["gate"]["verdicts"]:
            screen.print(f"  {v['line']}", highlight=False)
        screen.print(f"baseline gate: {data['gate']['worst'].upper()} against {label}", highlight=False)
    data = report_cmd.after_run(data, history, html, md)
    if json_path:
        write_atomic(json_path, jsonsafe.dumps(data) + "\n")
        screen.print(f"requests: {json_path}")
    if plot:
        png.load_png(data, plot)
        screen.print(f"chart: {plot}")
    if json:
        out.result(data)
    if stop.is_set():
        sys.exit(int(ExitCode.INTERRUPTED))
    if any(c.get("error") for c in data["cells"]):
        sys.exit(int(ExitCode.FAILED))
    if (data.get("gate") or {}).get("worst") == gate.REGRESSION:
        sys.exit(int(ExitCode.REGRESSION))
