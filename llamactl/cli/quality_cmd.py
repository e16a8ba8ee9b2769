"""`llamactl quality`: what a KV cache type, a patch or a build costs in answer quality (llama-perplexity's KL).

Examples:
    llamactl quality default                                    # f16/f16 reference vs q8_0/q8_0 and q4_0/q4_0
    llamactl quality default --kv q8_0/q8_0 --kv q4_0/q4_0 --kv q8_0/q4_0 --plot reports/kl.png
    llamactl quality default --ctx 128 --chunks 4 --json | jq '.cells[] | {cell, kl: .kld.kld_mean}'
    llamactl quality default --fail-above-kl 0.05 --fail-below-top1 90 --markdown "$GITHUB_STEP_SUMMARY"
    llamactl quality default --kv f16/f16 --build no-series --build series      # what the patch series costs
    llamactl quality default --kv q8_0/q8_0 --set server_binary=/tmp/bug/llama-server   # decode probe on another server
    llamactl quality default --no-decode-probe --html reports/quality.html --json-out reports/quality.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llamactl.core import jsonsafe
from llamactl.cli import options as o, report_cmd
from llamactl.cli.common import check_outputs, stop_on_signals
from llamactl.cli.console import Output, console, err_console
from llamactl.core import paths
from llamactl.core.errors import BadInput, ExitCode
from llamactl.core.files import write_atomic
from llamactl.judge import bench as bench_lib, perplexity as P, quality as Q
from llamactl.judge.decode_probe import PROMPTS, Prober
from llamactl.models import texts
from llamactl.report import fingerprint, quality_gate, view
from llamactl.serve import launcher

COLUMNS = ("kv", "PPL ± err", "ΔPPL %", "mean KL", "median KL", "p99 KL", "max KL", "same top %", "RMS Δp %",
           "decode top-1", "decode KL")


def _table(data: dict[str, Any]) -> Table:
    meta = data.get("meta") or {}
    t = Table(title=f"llamactl quality {data.get('profile', '')}: KL divergence against {meta.get('reference_kv')} KV "
                    f"({meta.get('chunks')} chunks x {meta.get('ctx')} tokens of {meta.get('text')}, "
                    f"{meta.get('scored_tokens')} scored; KL in nats)", title_justify="left")
    several = len({c.get("build") for c in data.get("cells") or []}) > 1
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "kv" else "right")
    for r in view.quality_rows(data):
        label = r["cell"]
        if r["status"] == "error":
            t.add_row(Text.assemble(f"{label} ", (f"({r['error'][:80]})", "red")), *["-"] * (len(COLUMNS) - 1))
            continue
        t.add_row(Text(label, "dim" if r["status"] == "reference" else ""), r["ppl"], r["dppl"], r["kl_mean"],
                  r["kl_median"], r["kl_p99"], r["kl_max"], r["same_top"], r["dp_rms"], r["decode_top1"], r["decode_kl"])
    if several:
        t.caption = "rows: BUILD K/V; the reference is the first build"
    return t


def _arms(base: Any, texts_: list[str], decode: bool, out: Output) -> tuple[list[Q.Arm], dict[str, Any]]:
    """One arm per ``--build`` (or the profile's own build), with llama-perplexity and, for the decode
    probe, llama-server; built now when needed."""
    if texts_ and len(texts_) < 2:
        raise BadInput("--build compares builds: give two or more (e.g. --build no-series --build series)")
    specs: list[tuple[str, Any, Path | None]] = []
    for text in texts_ or []:
        parts = [p for p in text.split(",") if p.strip()]
        ppl = [p for p in parts if p.strip().startswith("perplexity=")]
        rest = ",".join(p for p in parts if p not in ppl) or "series"
        label, updates = bench_lib.parse_build(rest)
        prof = bench_lib.build_profile(base.profile, updates, label)
        specs.append((label, prof, Path(ppl[-1].split("=", 1)[1].strip()) if ppl else None))
    if not specs:
        specs = [(base.name, base.profile, None)]
    labels = [s[0] for s in specs]
    if len(set(labels)) != len(labels):
        raise BadInput(f"--build labels must differ: {', '.join(labels)} (name=LABEL sets one)")
    arms, builds = [], {}
    for label, prof, ppl_path in specs:
        server = launcher.ensure_binary(prof, out.progress) if (decode or prof.server_binary) else None
        if ppl_path is not None:
            pbin = P.binary_at(ppl_path)
        elif prof.server_binary and texts_:     # binary=PATH: llama-perplexity beside that llama-server
            pbin = P.binary_at(Path(prof.server_binary).expanduser().parent)
        else:
            pbin = P.ensure_binary(prof, out.progress)
        arms.append(Q.Arm(label, prof, pbin, server))
        # the arm is its llama-server when one was named (binary=PATH), else its llama-perplexity build
        ident = server.path if (server is not None and prof.server_binary and texts_) else pbin.path
        manifest = (pbin.manifest if ident == pbin.path else None) or fingerprint.manifest_for_binary(ident)
        builds[label] = fingerprint.build_identity(manifest, str(ident), (manifest or {}).get("version"))
    return arms, builds


def _text(name: str, out: Output) -> tuple[str, Path, str]:
    """(name, path, sha256) of ``--text``: a pinned text's name, or a file."""
    if name in texts.TEXTS:
        path = texts.fetch(name, out.progress)
        return name, path, texts.identity(path)
    path = Path(name).expanduser()
    if not path.is_file():
        raise BadInput(f"--text {name!r}: neither a pinned text ({', '.join(texts.TEXTS)}) nor a file")
    return path.name, path.resolve(), texts.identity(path)


@o.with_overrides(exclude=("parallel", "ctx", "batch", "ubatch", "kv_k", "kv_v", "mtp", "port", "draft_model"))
def quality(
    name: Annotated[str, typer.Argument(help="Profile whose build, model and flags to measure.")],
    overrides: o.Overrides = o.Overrides(),
    kv: Annotated[Optional[list[str]], typer.Option("--kv", help="A candidate K/V cache pair (repeatable; default: "
                  "q8_0/q8_0 and q4_0/q4_0; with --build: the reference pair).")] = None,
    reference_kv: Annotated[str, typer.Option("--reference-kv", help="The reference K/V pair (its logits are the base).")] = Q.DEFAULT_REFERENCE,
    build: Annotated[Optional[list[str]], typer.Option("--build", help="Compare builds (two or more; the first holds the "
                     "reference): series | no-series | key=value,... (source=path:/dir, series=NAME, name=LABEL, "
                     "binary=PATH/llama-server, perplexity=PATH).")] = None,
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Tokens per chunk; the second half of each is scored.")] = Q.DEFAULT_CTX,
    chunks: Annotated[int, typer.Option("--chunks", help="Chunks of the text (ctx x chunks tokens are read).")] = Q.DEFAULT_CHUNKS,
    batch: Annotated[Optional[int], typer.Option("--batch", help="llama-perplexity's -b (default 2048: 2048/ctx chunks at once).")] = None,
    text: Annotated[str, typer.Option("--text", help=f"A pinned text ({', '.join(texts.TEXTS)}) or a UTF-8 file.")] = texts.DEFAULT_TEXT,
    decode_probe: Annotated[bool, typer.Option("--decode-probe/--no-decode-probe", help="Also measure top-1 and KL "
                            "through single-token decode on llama-server (the path batched perplexity never takes).")] = True,
    decode_prompts: Annotated[int, typer.Option("--decode-prompts", help=f"Prompts the decode probe forces (1-{PROMPTS}, 24 tokens each).")] = PROMPTS,
    fail_above_kl: Annotated[Optional[float], typer.Option("--fail-above-kl", help=f"Exit {int(ExitCode.REGRESSION)} when a "
                             "candidate's mean KL (nats; batched, and decode with the probe) is above this.")] = None,
    fail_below_top1: Annotated[Optional[float], typer.Option("--fail-below-top1", help=f"Exit {int(ExitCode.REGRESSION)} when a "
                               "candidate's same-top-token rate (percent; batched, and decode top-1) is below this.")] = None,
    json_path: o.JsonOut = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG of each candidate's KL distribution (needs matplotlib).")] = None,
    html: o.Html = None,
    md: o.Markdown = None,
    history: o.History = None,
    json: o.Json = False,
) -> None:
    """KL divergence, PPL and top-token agreement of KV types or builds against an f16 reference (llama-perplexity)."""
    limits = quality_gate.Limits(fail_above_kl, fail_below_top1)
    if not 1 <= decode_prompts <= PROMPTS:
        raise BadInput(f"--decode-prompts {decode_prompts}: 1 to {PROMPTS}")
    ref_kv = P.KvPair.parse(reference_kv, "--reference-kv")
    kvs = [P.KvPair.parse(k) for k in kv] if kv else ([ref_kv] if build else [P.KvPair.parse(k) for k in Q.DEFAULT_KVS])
    if build and len(build) < 2:
        raise BadInput("--build compares builds: give two or more (e.g. --build no-series --build series)")
    if not build and all(k == ref_kv for k in kvs):
        raise BadInput(f"nothing to compare: the only candidate is the reference ({ref_kv.label})",
                       hint="add --kv q8_0/q8_0, or two --build")
    check_outputs((json_path, "--json-out"), (plot, "--plot"), (html, "--html"), (md, "--markdown"))
    base = overrides.resolve(name)
    settings = P.settings_for(base.profile, ctx, chunks, batch)
    settings.check()
    for k in [ref_kv, *kvs]:
        P.check_kv(k, settings)
    out = Output(json)
    screen = err_console if json else console   # stdout carries only the JSON with --json
    models = launcher.resolve_models(base.profile, out.progress, paths.project_root())
    arms, builds = _arms(base, build or [], decode_probe, out)
    Q.candidates(arms, kvs, ref_kv)                    # nothing to compare: refused before any run
    text_name, text_path, text_sha = _text(text, out)
    run_dir = launcher.new_run_dir(f"quality-{base.name}")
    stop_on_signals()
    inputs = Q.Inputs(base.profile.model, models["model"], text_name, text_path, text_sha, settings, ref_kv)
    prober = Prober(run_dir, base.name, decode_prompts, on_start=lambda what: screen.print(f"decode probe: starting {what}",
                    highlight=False, markup=False)) if decode_probe else None
    t0 = time.monotonic()
    ref, rows, decode_ref = Q.measure(inputs, arms, kvs, run_dir, out.progress, prober,
                                      on_line=lambda line: screen.print(line, highlight=False, markup=False))
    first = arms[0].perplexity
    version = ((first.manifest or {}).get("version") or "").strip().splitlines()
    meta = {"binary": str(first.path), "version": version[0] if version else "",
            "wall_s": round(time.monotonic() - t0, 1), "run_dir": str(run_dir), "decode_probe": decode_probe,
            "decode_prompts": decode_prompts if decode_probe else 0}
    if build:
        meta.update(builds=builds, ab=[a.label for a in arms])
    data = Q.to_json(base.name, inputs, ref, rows, meta, decode_ref)
    data["binary"] = str(first.path)
    verdicts = quality_gate.judge(data["cells"], limits)
    if limits.active:
        data["gate"] = quality_gate.summary(verdicts, limits)
    screen.print(_table(data))
    screen.print(f"reference logits: {ref.path} ({ref.size_bytes / 2**20:.0f} MiB, "
                 + ("cached" if ref.cached else f"computed in {ref.seconds:.1f}s") + f"); wall {meta['wall_s']:.1f}s; "
                 f"logs {run_dir}", highlight=False, markup=False)
    worst = _print_gate(data, screen)
    data = report_cmd.after_run(data, history, html, md)
    if json_path:
        write_atomic(json_path, jsonsafe.dumps(data) + "\n")
        screen.print(f"report: {json_path}", highlight=False, markup=False)
    if plot:
        from llamactl.report.png import kl_png

        kl_png(data, plot)
        screen.print(f"chart: {plot}", highlight=False, markup=False)
    if json:
        out.result(data)
    if worst == quality_gate.REGRESSION:
        sys.exit(int(ExitCode.REGRESSION))


def _print_gate(data: dict[str, Any], screen: Console) -> str:
    g = data.get("gate")
    if not g:
        return quality_gate.OK
    for v in g["verdicts"]:
        colour = "bold red" if v["verdict"] == quality_gate.REGRESSION else "green"
        screen.print(f"  [{colour}]{escape(v['line'])}[/]", highlight=False, markup=True)
    screen.print(f"quality gate: {g['worst'].upper()}" + (f" (exit {int(ExitCode.REGRESSION)})"
                 if g["worst"] == quality_gate.REGRESSION else ""), highlight=False)
    return str(g["worst"])
