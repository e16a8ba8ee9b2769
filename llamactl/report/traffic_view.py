"""What the HTML and Markdown reports show of ``load`` and ``soak`` runs: tables as text cells, SVG charts."""

from __future__ import annotations

from typing import Any

from llamactl.report import runs, svg


def _n(x: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _ms3(p: dict[str, Any] | None) -> str:
    p = p or {}
    return "/".join(_ms(p.get(k)) for k in ("p50", "p90", "p99"))


def _ms(x: Any) -> str:
    """Seconds as ms: whole ms from 10 ms up, one decimal below (a tiny model's TPOT)."""
    if not isinstance(x, (int, float)):
        return "-"
    return f"{1000 * x:.0f}" if x >= 0.01 else f"{1000 * x:.1f}"


def css(status: str) -> str:
    return f"st-{status.replace(' ', '-')}"


def load_view(run: dict[str, Any]) -> dict[str, Any]:
    """Rows per (cell, load), a throughput-vs-latency chart (x: output tok/s, y: p50 end to end, s), the gate."""
    rows, series, labels = [], {}, {}
    for c in run.get("cells") or []:
        cell = str(c.get("cell", "?"))
        pts, labs = [], []
        for lv in c.get("levels") or []:
            sc = lv.get("server_check") or {}
            rows.append({"cell": cell, "level": lv.get("level", "?"), "done": lv.get("completed", 0),
                         "errors": ", ".join(f"{k} {n}" for k, n in (lv.get("errors") or {}).items()) or "0",
                         "req_s": _n(lv.get("req_per_s"), "{:.2f}"), "tok_s": _n(lv.get("output_tok_per_s")),
                         "per_req": _n((lv.get("per_request_tok_per_s") or {}).get("p50")),
                         "ttft": _ms3(lv.get("ttft_s")), "tpot": _ms3(lv.get("tpot_s")), "e2e": _ms3(lv.get("e2e_s")),
                         "queue": _n(None if (lv.get("queue_s") or {}).get("p50") is None else 1000 * lv["queue_s"]["p50"], "{:.0f}"),
                         "acceptance": _n(None if lv.get("acceptance") is None else 100 * lv["acceptance"], "{:.0f}%"),
                         "check": "; ".join(sc.get("shown") or []) or "within 5%", "css": css("fail" if lv.get("errors") else "pass")})
            e2e = (lv.get("e2e_s") or {}).get("p50")
            if lv.get("output_tok_per_s") and e2e is not None:
                pts.append((float(lv["output_tok_per_s"]), float(e2e)))
                labs.append(str(lv.get("level", "")))
        if c.get("error"):
            rows.append({"cell": cell, "level": "-", "done": 0, "errors": str(c["error"])[:200], "req_s": "-", "tok_s": "-",
                         "per_req": "-", "ttft": "-", "tpot": "-", "e2e": "-", "queue": "-", "acceptance": "-", "check": "",
                         "css": css("fail")})
        if pts:
            series[cell], labels[cell] = pts, labs
    chart = svg.xy(series, "throughput vs latency (one point per load)", "output tok/s (all requests)",
                   "end to end p50 (s)", labels) if series else ""
    gate = run.get("gate") if isinstance(run.get("gate"), dict) else None
    meta = run.get("meta") or {}
    return {"rows": rows, "chart": chart, "gate": gate, "meta": {k: str(v)[:200] for k, v in meta.items()},
            "ok": not any(c.get("error") for c in run.get("cells") or [])}


SOAK_CHARTS = (  # (title, y label, [(series name, sample key or callable)])
    ("memory (MiB)", "MiB", [("RSS", "rss"), ("RssAnon+VmSwap", "anon_swap"), ("prompt cache", "cache_mib"),
                             ("anon+swap less cache", lambda s: None if s.get("anon_swap") is None else s["anon_swap"] - s.get("cache_mib", 0))]),
    ("busy slots and requests in flight", "count", [("busy slots", "busy"), ("in flight", "in_flight")]),
)


def soak_view(run: dict[str, Any]) -> dict[str, Any]:
    """Per cell: status, verdicts, and time series (memory, busy slots, tok/s, acceptance, latency) as SVG."""
    cells = []
    for c in run.get("cells") or []:
        st = runs.status_of(c)
        samples = [s for s in c.get("samples") or [] if isinstance(s, dict)]
        charts = []
        for title, ylabel, keys in SOAK_CHARTS:
            series = {}
            for name, key in keys:
                pts = [(float(s.get("t", 0)), key(s) if callable(key) else s.get(key)) for s in samples]
                if any(y is not None for _, y in pts):
                    series[name] = pts
            if series:
                charts.append(svg.xy(series, f"{c.get('cell', '?')}: {title}", "seconds", ylabel))
        ts = c.get("series") or {}
        for key, title, ylabel in (("tok_per_s", "server decode tok/s (median per interval)", "tok/s"),
                                   ("acceptance", "draft acceptance", "accepted / drafted"),
                                   ("e2e_p50_s", "end to end p50", "s")):
            pts = [(float(x), y) for x, y in ts.get(key) or []]
            if any(y is not None for _, y in pts):
                charts.append(svg.xy({key: pts}, f"{c.get('cell', '?')}: {title}", "seconds", ylabel))
        cells.append({"id": str(c.get("cell", "?")), "status": st, "css": css(st), "reason": str(c.get("reason") or ""),
                      "verdicts": [dict(v, css=css(str(v.get("status", "?")))) for v in c.get("verdicts") or []],
                      "charts": charts, "kinds": c.get("kinds") or {}, "log": c.get("log"),
                      "duration_s": _n(c.get("duration_s"), "{:.0f}")})
    meta = run.get("meta") or {}
    return {"cells": cells, "ok": bool(run.get("ok")), "meta": {k: str(v)[:200] for k, v in meta.items()}}
