"""What a report shows, computed once for the HTML and the Markdown templates.

Everything here is plain data (dicts, lists, strings); templates only lay it out. Unknown
statuses keep their name and get a neutral colour; unknown per-cell fields are listed as
they are under "other fields".
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from llamactl.core.errors import LlamactlError
from llamactl.report import fingerprint, gate as gate_lib, runs, svg, traffic_view
from llamactl.report.history import CellRow, History

KNOWN_STATUSES = {"pass", "fail", "error", "skip", "xfail", "xpass", "not_run", "interrupted", "running", "ok", "warn",
                  "regression", "faster", "no change", "no baseline"}
VALIDATE_KEYS = {"cell", "overrides", "status", "reason", "checks", "start_s", "requests_s", "seconds", "tokens_per_s",
                 "acceptance", "spec", "crash", "log", "repro", "argv"}
LOG_TAIL_LINES = 40


def css(status: str) -> str:
    """The CSS class of a status: its own for known ones, ``unknown`` otherwise."""
    s = status.lower()
    return "st-" + s.replace(" ", "-").replace("_", "-") if s in KNOWN_STATUSES else "st-unknown"


def _short(v: Any, limit: int = 300) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= limit else s[:limit] + " ..."


def log_tail(path: str | None, fallback: list[str] | None) -> list[str]:
    """The last lines of a server log when the file is still there, else what the run JSON kept."""
    if path:
        try:
            with open(path, errors="replace") as f:
                return [ln.rstrip("\n") for ln in deque(f, maxlen=LOG_TAIL_LINES)]
        except OSError:
            pass
    return list(fallback or [])


def context(run: dict[str, Any], history: History | None = None) -> tuple[dict | None, dict | None, int | None]:
    """(machine fingerprint, build identity, history id) of a run, from the file, else the history, else the manifest."""
    stored = run.get("history") or {}
    machine, build = run.get("machine") if isinstance(run.get("machine"), dict) else None, run.get("build")
    run_dir = runs.run_dir_of(run)
    if (machine is None or build is None) and not stored and history is not None and run_dir:
        try:
            stored = (history.find_by_run_dir(run_dir) or {}).get("history") or {}
        except LlamactlError:   # a report still renders without the history store
            stored = {}
    machine = machine or stored.get("machine")
    build = build or stored.get("build")
    if build is None:
        manifest = fingerprint.manifest_for_binary(runs.binary_of(run))
        if manifest:
            build = fingerprint.build_identity(manifest)
    return machine, build, stored.get("id")


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{100 * x:.0f}%"


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if not isinstance(x, (int, float)) or isinstance(x, bool) else fmt.format(x)


def validate_view(run: dict[str, Any]) -> dict[str, Any]:
    cells = []
    for c in run.get("cells") or []:
        st = runs.status_of(c)
        crash = c.get("crash") if isinstance(c.get("crash"), dict) else None
        checks = [{"name": k.get("name", "?"), "status": runs.status_of(k), "css": css(runs.status_of(k)),
                   "seconds": _num(k.get("seconds"), "{:.2f}"), "detail": str(k.get("detail") or "")}
                  for k in c.get("checks") or [] if isinstance(k, dict)]
        cells.append({
            "id": str(c.get("cell", "?")), "status": st, "css": css(st), "reason": str(c.get("reason") or ""),
            "start_s": _num(c.get("start_s"), "{:.2f}"), "seconds": _num(c.get("seconds")),
            "tokens_per_s": _num(c.get("tokens_per_s")), "acceptance": _pct(c.get("acceptance")),
            "checks": checks, "crash": crash, "log": c.get("log"),
            "log_tail": log_tail(c.get("log"), (crash or {}).get("last_lines")) if runs.is_problem(c) or crash else [],
            "repro": str(c.get("repro") or ""), "argv": " ".join(map(str, c.get("argv") or [])),
            "problem": runs.is_problem(c),
            "extra": {k: _short(v) for k, v in c.items() if k not in VALIDATE_KEYS and v not in (None, "", [], {})},
        })
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    ok = run.get("ok")
    if ok is None:
        ok = bool(cells) and not any(c["problem"] for c in cells)
    return {"cells": cells, "problems": [c for c in cells if c["problem"]], "counts": counts, "ok": bool(ok),
            "wall_s": _num(run.get("wall_s")), "binary": run.get("binary"), "version": run.get("version"),
            "interrupted": bool(run.get("interrupted")), "error": str(run.get("error") or "")}


def mtp_verdicts(data: dict[str, Any]) -> list[str]:
    """One plain sentence per cell: does MTP pay off here (decode speed-up and acceptance)?

    The run's own ``mtp_verdict`` lines; a run written before bench recorded them is judged now
    (:func:`llamactl.judge.bench.mtp_verdict`)."""
    from llamactl.judge.bench import mtp_verdict

    lines = []
    for c in data.get("cells") or []:
        stored = c.get("mtp_verdict")
        if isinstance(stored, dict) and isinstance(stored.get("line"), str):
            lines.append(stored["line"])
            continue
        on = (c.get("variants") or {}).get("mtp-on")
        if on is None:
            continue
        v = mtp_verdict(str(c.get("cell", "?")), c.get("speedup"), runs.acceptance_of(on))
        if v is not None:
            lines.append(v.line)
    return lines


def bench_view(run: dict[str, Any]) -> dict[str, Any]:
    cells, groups = [], []
    for c in run.get("cells") or []:
        variants, bars = [], []
        for name, r in (c.get("variants") or {}).items():
            dec, ttft = runs.decode_samples(r), runs.ttft_samples(r)
            med, ttft_med = runs.median(dec), runs.median(ttft)
            lo, hi = gate_lib.band(dec) if dec else (None, None)
            acc = runs.acceptance_of(r)
            agg = runs.median([x for x in r.get("aggregate_tps") or [] if isinstance(x, (int, float))])
            variants.append({"name": name, "decode": _num(med), "band": "-" if lo is None else f"{lo:.1f}..{hi:.1f}",
                             "n": len(dec), "ttft_ms": _num(None if ttft_med is None else 1000 * ttft_med, "{:.0f}"),
                             "acceptance": _pct(acc), "aggregate": _num(agg), "rss": _num(r.get("peak_rss_mb"), "{:.0f}"),
                             "error": str(r.get("error") or "")})
            bars.append(svg.Bar(name, med, lo, hi, "" if acc is None or name == "mtp-off" else f"acc {acc:.0%}"))
        cells.append({"id": str(c.get("cell", "?")), "variants": variants,
                      "speedup": _num(c.get("speedup"), "{:.2f}x") if c.get("speedup") is not None else ""})
        groups.append((str(c.get("cell", "?")), bars))
    meta = run.get("meta") or {}
    chart = svg.bars(groups, "decode tok/s per cell: median, whiskers = interquartile range",
                     "decode tok/s") if groups else ""
    gate = run.get("gate") if isinstance(run.get("gate"), dict) else None
    return {"cells": cells, "chart": chart, "meta": {k: _short(v, 200) for k, v in meta.items() if k not in ("builds",)},
            "builds": meta.get("builds") or {}, "verdicts": mtp_verdicts(run), "gate": gate,
            "ab": run.get("ab") if isinstance(run.get("ab"), dict) else None}


def run_view(run: dict[str, Any], history: History | None = None) -> dict[str, Any]:
    machine, build, hid = context(run, history)
    base = {"kind": run["kind"], "profile": runs.profile_of(run), "machine": machine, "build": build,
            "build_label": fingerprint.build_label(build) if build else None, "history_id": hid,
            "run_dir": runs.run_dir_of(run)}
    if run["kind"] == runs.QUALITY:
        base.update(quality_view(run))
    elif run["kind"] == runs.LOAD:
        base.update(traffic_view.load_view(run))
    elif run["kind"] == runs.SOAK:
        base.update(traffic_view.soak_view(run))
    else:
        base.update(validate_view(run) if run["kind"] == runs.VALIDATE else bench_view(run))
    return base


def _fnum(x: Any, fmt: str) -> str:
    return _num(x, fmt)


def quality_rows(run: dict[str, Any]) -> list[dict[str, str]]:
    """The quality table as text cells, the reference first: what the terminal, Markdown and HTML show.

    Columns: kv (and build), PPL ± err, ΔPPL %, mean / median / p99 / max KL (nats), same top %, RMS Δp %,
    decode top-1 %, decode KL (nats); ``error`` for a candidate whose run failed.
    """
    ref = run.get("reference") or {}
    dref = ref.get("decode") or {}
    rows = [{"cell": f"{ref.get('cell', '?')} (reference)", "build": "", "ppl": _ppl(ref.get("ppl"), ref.get("ppl_err")),
             "dppl": "0.00%", "kl_mean": "-", "kl_median": "-", "kl_p99": "-", "kl_max": "-", "same_top": "-",
             "dp_rms": "-", "decode_top1": "100.0%" if dref else "-", "decode_kl": "0" if dref else "-",
             "error": "", "status": "reference", "css": css("skip")}]
    several = len({c.get("build") for c in run.get("cells") or []}) > 1
    for c in run.get("cells") or []:
        k, d = c.get("kld") or {}, c.get("decode") or {}
        top1 = d.get("top1_agreement")
        rows.append({
            "cell": str(c.get("cell", "?")), "build": str(c.get("build") or "") if several else "", "ppl": _ppl(k.get("ppl"), k.get("ppl_err")),
            "dppl": _fnum(k.get("delta_ppl_pct"), "{:+.2f}%"), "kl_mean": _fnum(k.get("kld_mean"), "{:.6f}"),
            "kl_median": _fnum(k.get("kld_median"), "{:.6f}"), "kl_p99": _fnum(k.get("kld_p99"), "{:.6f}"),
            "kl_max": _fnum(k.get("kld_max"), "{:.6f}"), "same_top": _fnum(k.get("same_top"), "{:.2f}%"),
            "dp_rms": _fnum(k.get("dp_rms"), "{:.3f}%"),
            "decode_top1": _fnum(None if top1 is None else 100 * top1, "{:.1f}%"),
            "decode_kl": _fnum(d.get("mean_kl"), "{:.4f}"),
            "error": str(c.get("error") or c.get("decode_error") or ""), "status": str(c.get("status") or "ok"),
            "css": css("error" if c.get("status") == "error" else "ok")})
    return rows


def _ppl(v: Any, err: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:.4f} ± {err:.4f}" if isinstance(err, (int, float)) else f"{v:.4f}"


def quality_view(run: dict[str, Any]) -> dict[str, Any]:
    meta = run.get("meta") or {}
    ref = run.get("reference") or {}
    gate = run.get("gate") if isinstance(run.get("gate"), dict) else None
    if gate:
        gate = dict(gate, verdicts=[dict(v, css=css(v.get("verdict", "?"))) for v in gate.get("verdicts") or []])
    series = {}
    for c in run.get("cells") or []:
        pct = (c.get("kld") or {}).get("kld_percentiles") or {}
        pts = sorted((float(q), v) for q, v in pct.items() if isinstance(v, (int, float)))
        if pts:
            series[str(c.get("cell", "?"))] = pts
    return {"rows": quality_rows(run), "gate": gate, "chart": svg.quantiles(series, "KL divergence per token: quantiles "
            "(llama-perplexity)", "KL (nats)") if series else "",
            "meta": {k: _short(v, 200) for k, v in meta.items() if k not in ("builds",)},
            "builds": meta.get("builds") or {}, "reference": ref,
            "logits_mib": _num((ref.get("logits_bytes") or 0) / 2**20, "{:.0f}"),
            "wall_s": _num(meta.get("wall_s"))}


def quality_trend_view(points: list[dict[str, Any]], profile: str | None) -> dict[str, Any] | None:
    """Mean KL and same-top % per candidate across quality runs (x: run id and build)."""
    points = [p for p in points if p.get("kld_mean") is not None]
    if not points:
        return None
    run_ids = sorted({p["run_id"] for p in points})
    label_of = {p["run_id"]: f"#{p['run_id']} {str(p['build'].get('commit') or p['build_key'])[:9]} {p['build_key'][:6]}"
                for p in points}
    x_labels = [label_of[i] for i in run_ids]
    kl: dict[str, list[tuple[int, float]]] = {}
    top: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        kl.setdefault(p["cell"], []).append((run_ids.index(p["run_id"]), p["kld_mean"]))
        if p.get("same_top") is not None:
            top.setdefault(p["cell"], []).append((run_ids.index(p["run_id"]), p["same_top"] / 100))
    names = list(kl)
    return {
        "profile": profile, "runs": len(run_ids), "kind": runs.QUALITY,
        "decode_svg": svg.lines(kl, x_labels, f"trend {profile or ''}: mean KL per candidate (llama-perplexity)",
                                "mean KL (nats)", names=names),
        "acceptance_svg": svg.lines(top, x_labels, f"trend {profile or ''}: same top token per candidate", "same top",
                                    percent=True, names=names) if top else "",
        "rows": [{"run": p["run_id"], "when": p["started_at"], "cell": p["cell"], "variant": "",
                  "build": fingerprint.build_label(p["build"]), "decode": _num(p["kld_mean"], "{:.6f}"),
                  "acceptance": _num(p.get("same_top"), "{:.2f}%")} for p in points],
        "columns": ("mean KL", "same top"),
    }


def trend_view(rows: list[CellRow], profile: str | None) -> dict[str, Any] | None:
    """tok/s and acceptance per (cell, variant) across bench runs (x: run id and build)."""
    rows = [r for r in rows if r.decode_tps is not None or r.acceptance is not None]
    if not rows:
        return None
    run_ids = sorted({r.run_id for r in rows})
    label_of = {r.run_id: f"#{r.run_id} {str(r.build.get('commit') or r.build_key)[:9]} {r.build_key[:6]}" for r in rows}
    x_labels = [label_of[i] for i in run_ids]
    decode: dict[str, list[tuple[int, float]]] = {}
    acc: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        name = f"{r.cell} {r.variant}".strip()
        if r.decode_tps is not None:
            decode.setdefault(name, []).append((run_ids.index(r.run_id), r.decode_tps))
        if r.acceptance is not None and r.variant != "mtp-off":
            acc.setdefault(name, []).append((run_ids.index(r.run_id), r.acceptance))
    names = list(dict.fromkeys([*decode, *acc]))
    return {
        "profile": profile, "runs": len(run_ids),
        "decode_svg": svg.lines(decode, x_labels, f"trend {profile or ''}: decode tok/s per cell (median per run)", "decode tok/s", names=names) if decode else "",
        "acceptance_svg": svg.lines(acc, x_labels, f"trend {profile or ''}: draft acceptance per cell", "acceptance", percent=True, names=names) if acc else "",
        "rows": [{"run": r.run_id, "when": r.started_at, "cell": r.cell, "variant": r.variant, "build": fingerprint.build_label(r.build),
                  "decode": _num(r.decode_tps), "acceptance": _pct(r.acceptance)} for r in rows],
    }


def report_view(run_list: list[dict[str, Any]], history: History | None = None, trend: dict[str, Any] | None = None,
                title: str | None = None) -> dict[str, Any]:
    views = [run_view(r, history) for r in run_list]
    if title is None:
        title = "llamactl " + " + ".join(f"{v['kind']} {v['profile']}" for v in views) if views else "llamactl trend"
    return {"title": title, "runs": views, "trend": trend, "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def gate_summary(verdicts: list[gate_lib.Verdict], against: str, th: gate_lib.Thresholds) -> dict[str, Any]:
    """What a bench JSON keeps of a gate (``gate`` or ``ab``), and what the templates render."""
    return {"against": against, "warn_below": th.warn_below, "fail_below": th.fail_below, "worst": gate_lib.worst(verdicts),
            "verdicts": [dict(v.to_dict(), line=v.line(), css=css(v.verdict), ratio_s=_num(v.ratio, "{:.2f}x"),
                              current_s=_gate_num(v.metric, v.current), baseline_s=_gate_num(v.metric, v.baseline))
                         for v in verdicts]}


def _gate_num(metric: str, x: float | None) -> str:
    if x is None:
        return "-"
    if metric == gate_lib.ACCEPTANCE:
        return f"{x:.0%}"
    return f"{1000 * x:.0f} ms" if metric == gate_lib.TTFT else f"{x:.1f} tok/s"


def is_file(p: str) -> bool:
    return Path(p).expanduser().is_file()
