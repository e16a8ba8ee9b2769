"""`llamactl bench`: does MTP pay off on this machine, for this KV type and slot count?

Examples:
    llamactl bench default --repeat 3
    llamactl bench tiny-gemma4-bench --json-out reports/bench.json --plot reports/bench.png
    llamactl bench tiny-gemma4-mtp --cell parallel=2 --n-predict 128 --prompts prompts.txt
    llamactl bench --compare before.json after.json
    llamactl bench tiny-gemma4-bench --cell echo --baseline last --html reports/bench.html
    llamactl bench tiny-gemma4-bench --baseline 12 --warn-below 0.95 --fail-below 0.85
    llamactl bench tiny-gemma4-bench --cell echo --build no-series --build series
"""

from __future__ import annotations

import json as jsonlib
import platform
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.markup import escape
from rich.console import Console
from rich.table import Table

from llamactl.core import jsonsafe
from llamactl.judge import bench as bench_lib
from llamactl.serve import launcher
from llamactl.cli import options as o, report_cmd
from llamactl.cli.common import check_outputs, num, stop_on_signals, warn_exposure
from llamactl.cli.console import Output, console, err_console, progress_bar
from llamactl.core.errors import BadInput, ExitCode, LlamactlError
from llamactl.core.files import read_text, write_atomic
from llamactl.report import fingerprint, gate, publish, view
from llamactl.report.history import History
from llamactl.judge.matrix import expand, load_matrix_file, select


def _table(data: dict) -> Table:
    t = Table(title=f"llamactl bench {data['meta'].get('profile', '')}  (medians of {data['meta'].get('repeat')} repeats x "
                    f"{data['meta'].get('prompts')} prompts; MTP on/off from the server's decode timings)", title_justify="left")
    for col in ("cell", "variant", "decode tok/s", "spread", "server tok/s", "prompt tok/s", "TTFT ms",
                "all slots tok/s", "acceptance", "peak RSS MB", "MTP on/off"):
        t.add_column(col)
    for c in data["cells"]:
        for v, r in c["variants"].items():
            s = r["summary"]
            dec = s["client_decode_tps"]
            spread = None
            if dec["median"] and dec["min"] is not None:
                spread = 100 * (dec["max"] - dec["min"]) / dec["median"]
            ttft = s["ttft_s"]["median"]
            t.add_row(c["cell"], v if not r["error"] else Text.assemble(f"{v} ", (f"({r['error'][:60]})", "red")), num(dec["median"]),
                      num(spread, "±{:.0f}%"), num(s["server_decode_tps"]["median"]), num(s["server_prompt_tps"]["median"]),
                      num(None if ttft is None else ttft * 1000, "{:.0f}"), num(s["aggregate_tps"]["median"]),
                      num(s["acceptance"], "{:.0%}"), num(r["peak_rss_mb"], "{:.0f}"),
                      num(c["speedup"], "{:.2f}x") if v == "mtp-on" else "")
    return t


def _verdicts(data: dict) -> list[str]:
    return view.mtp_verdicts(data)


@o.with_overrides(exclude=("mtp", "port"))   # bench sets MTP per variant and runs servers side by side
def bench(
    name: Annotated[Optional[str], typer.Argument(help="Profile to benchmark.")] = None,
    overrides: o.Overrides = o.Overrides(),
    matrix: Annotated[Optional[Path], typer.Option("--matrix", help="YAML matrix file (default: the profile's matrix).")] = None,
    cell: Annotated[Optional[list[str]], typer.Option("--cell", help="Only cells matching key=value.")] = None,
    no_matrix: Annotated[bool, typer.Option("--no-matrix", help="Bench the profile as it is, ignoring its matrix.")] = False,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="Prompts file (one per line, or blank-line separated blocks).")] = None,
    n_predict: Annotated[int, typer.Option("--n-predict", help="Tokens to generate per request.")] = 64,
    repeat: Annotated[int, typer.Option("--repeat", help="Repeats per prompt (warm-up excluded).")] = 3,
    json_path: Annotated[Optional[Path], typer.Option("--json-out", help="Also write the run, every sample, as JSON to this file.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG bar chart here (needs matplotlib).")] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option("--compare", help="Compare two saved runs: A.json B.json.")] = None,
    build: Annotated[Optional[list[str]], typer.Option("--build", help="A/B: two or more builds interleaved in one run, the first is "
                     "the reference: series | no-series | key=value,... (source=path:/dir, series=NAME, binary=PATH, name=LABEL).")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Gate against: last (same profile, cell, machine), "
                        "a history run id, or a bench JSON file.")] = None,
    warn_below: Annotated[float, typer.Option("--warn-below", help="Warn when decode tok/s falls below this ratio of the baseline (TTFT: inverse).")] = 0.95,
    fail_below: Annotated[float, typer.Option("--fail-below", help=f"Fail (exit {int(ExitCode.REGRESSION)}) below this ratio, outside the noise.")] = 0.85,
    html: o.Html = None,
    md: o.Markdown = None,
    history: o.History = None,
    json: o.Json = False,
) -> None:
    """Decode/prompt speed, TTFT, all-slots throughput, peak RSS and MTP acceptance; MTP on vs off, interleaved."""
    if compare:
        _compare(*compare, json=json)
        return
    if not name:
        raise BadInput("name a profile to benchmark (or use --compare A.json B.json)")
    if repeat < 1 or n_predict < 2:
        raise BadInput("--repeat must be >= 1 and --n-predict >= 2")
    check_outputs((json_path, "--json-out"), (plot, "--plot"), (html, "--html"), (md, "--markdown"))   # before the build and the run, not after them
    thresholds = gate.Thresholds(warn_below, fail_below)
    base = overrides.resolve(name)
    spec = load_matrix_file(matrix) if matrix else (None if no_matrix else base.profile.matrix)
    unique = bench_lib.without_mtp_axis(select(expand(spec, str(matrix or f"{base.path} matrix")), cell or []))
    texts = bench_lib.load_prompts(prompts)
    out = Output(json)
    screen = err_console if json else console   # stdout carries only the JSON with --json
    against_lookup = (publish.baseline_lookup(baseline, base.name, fingerprint.machine()["id"], History(history))
                      if baseline else None)   # resolved before the bench runs
    arms, builds = _build_arms(base, build or [], out)
    binary = arms[0].binary if arms else None   # _build_arms gives every arm its binary
    if binary is None:
        binary = launcher.ensure_binary(base.profile, out.progress)
    run_dir = launcher.new_run_dir(f"bench-{base.name}")
    stop_on_signals()
    warn_exposure(base.profile.host)
    t0 = time.monotonic()
    results = []
    total = len(unique) * repeat * len(texts) * (len(arms) or 2)
    with progress_bar("benchmarking", total=total) as (progress, task):
        for c in unique:
            results.append(bench_lib.bench_cell(base, c, binary, run_dir, texts, n_predict, repeat,
                                                progress=lambda _msg: progress.advance(task), arms=arms or None))
    meta = {"profile": base.name, "binary": str(binary.path), "version": (binary.manifest or {}).get("version", ""),
            "repeat": repeat, "prompts": len(texts), "n_predict": n_predict, "wall_s": round(time.monotonic() - t0, 1),
            "machine": platform.platform(), "processor": platform.processor(), "run_dir": str(run_dir)}
    if arms:
        meta.update(builds=builds, ab=[a.label for a in arms])
    data = bench_lib.to_json(results, meta)
    screen.print(_table(data))
    for line in _verdicts(data):
        screen.print(line, highlight=False, markup=False)
    if arms:
        data["ab"] = view.gate_summary(gate.compare_arms(data, thresholds), f"arm {arms[0].label}", thresholds)
    if against_lookup:
        against, lookup = against_lookup
        data["gate"] = view.gate_summary(gate.compare_runs(data, lookup, thresholds), against, thresholds)
    worst = _print_gates(data, screen)
    data = report_cmd.after_run(data, history, html, md)   # history store (+ machine, build) and --html/--markdown
    if json_path:
        write_atomic(json_path, jsonsafe.dumps(data) + "\n")
        screen.print(f"samples: {json_path}")
    if plot:
        bench_lib.plot(data, plot)
        screen.print(f"chart: {plot}")
    if json:
        out.result(data)
    if worst == gate.REGRESSION:
        sys.exit(int(ExitCode.REGRESSION))


def _build_arms(base, texts: list[str], out: Output) -> tuple[list[bench_lib.Arm], dict]:
    """``--build A --build B``: one arm per build (built now if needed), MTP as the profile says."""
    if not texts:
        return [], {}
    if len(texts) < 2:
        raise BadInput("--build compares builds: give two or more (e.g. --build no-series --build series)")
    parsed = [bench_lib.parse_build(t) for t in texts]
    labels = [label for label, _ in parsed]
    if len(set(labels)) != len(labels):
        raise BadInput(f"--build labels must differ: {', '.join(labels)} (name=LABEL sets one)")
    profs = [bench_lib.build_profile(base.profile, upd, label) for label, upd in parsed]   # all checked before any build
    arms, builds = [], {}
    for (label, _), prof in zip(parsed, profs, strict=True):
        b = launcher.ensure_binary(prof, out.progress)
        arms.append(bench_lib.Arm(label, None, b))
        manifest = b.manifest or fingerprint.manifest_for_binary(b.path)   # binary= may name a llamactl build
        builds[label] = fingerprint.build_identity(manifest, str(b.path), (manifest or {}).get("version"))
    return arms, builds


def _print_gates(data: dict, screen: Console = console) -> str:
    """Print the A/B and baseline verdicts; return the worst of them."""
    worst = gate.OK
    for key, title in (("ab", "A/B"), ("gate", "baseline gate")):
        g = data.get(key)
        if not g:
            continue
        for v in g["verdicts"]:
            colour = {"regression": "bold red", "warn": "yellow", "faster": "green", "ok": "green"}.get(v["verdict"], "")
            screen.print(f"  [{colour}]{escape(v['line'])}[/]" if colour else f"  {escape(v['line'])}", highlight=False, markup=True)
        screen.print(f"{title}: {g['worst'].upper()} against {g['against']}"
                      + (f" (exit {int(ExitCode.REGRESSION)})" if g["worst"] == gate.REGRESSION else ""), highlight=False)
        if gate.SEVERITY.get(g["worst"], 0) > gate.SEVERITY.get(worst, 0):
            worst = g["worst"]
    return worst


def _compare(a: Path, b: Path, json: bool = False) -> None:
    data = []
    for p in (a, b):
        try:
            data.append(jsonlib.loads(read_text(p, "bench JSON", 64 * 1024 * 1024)))
        except ValueError as exc:
            raise BadInput(f"bench JSON {p}: not JSON: {exc}") from exc
    da, db = data
    try:
        rows = bench_lib.compare(da, db)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise BadInput(f"{a} / {b}: not llamactl bench JSON (from `llamactl bench --json-out F`): {type(exc).__name__} {exc}") from exc
    if not rows:
        raise LlamactlError(f"{a.name} and {b.name} share no cells to compare")

    def human(rows: list[dict]) -> None:
        console.print(_compare_table(a, b, rows))

    Output(json).result(rows, human)


def _compare_table(a: Path, b: Path, rows: list[dict]) -> Table:
    t = Table(title=f"{a.name} -> {b.name} (median decode tok/s, change)", title_justify="left")
    for col in ("cell", "variant", "decode A", "decode B", "change", "all slots A", "all slots B", "change", "acceptance A", "acceptance B"):
        t.add_column(col)
    for r in rows:
        d, agg = r["client_decode_tps"], r["aggregate_tps"]
        t.add_row(r["cell"], r["variant"], num(d["a"]), num(d["b"]), num(d["change_pct"], "{:+.1f}%"), num(agg["a"]), num(agg["b"]),
                  num(agg["change_pct"], "{:+.1f}%"), num(r["acceptance"]["a"], "{:.0%}"), num(r["acceptance"]["b"], "{:.0%}"))
    return t
