"""Charts as PNG files (matplotlib, optional: ``pip install 'llamactl[plot]'``): the bench trend, and the
KL-divergence distribution of a quality run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamactl.core.errors import LlamactlError
from llamactl.report.history import CellRow


def _pyplot(option: str) -> Any:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LlamactlError(f"{option} needs matplotlib", hint="pip install 'llamactl[plot]', or use --html") from exc
    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    """Lay out, write and close ``fig``. Raises LlamactlError when ``path`` cannot be written."""
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise LlamactlError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)


def kl_png(run: dict[str, Any], path: Path, option: str = "--plot") -> None:
    """The KL divergence per token of each candidate of a quality run: its quantiles (min, 0.1%, 1%, 5%,
    10%, median, 90%, 95%, 99%, 99.9%, max, as llama-perplexity prints them) on a log scale, the mean
    in the legend. Raises LlamactlError (no matplotlib, a path that cannot be written)."""
    plt = _pyplot(option)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    order: list[float] = []
    for c in run.get("cells") or []:
        k = c.get("kld") or {}
        pct = k.get("kld_percentiles") or {}
        pts = sorted((float(q), max(float(v), 1e-7)) for q, v in pct.items() if isinstance(v, (int, float)))
        if not pts:
            continue
        order = sorted(set(order) | {q for q, _ in pts})
        ax.plot([order.index(q) for q, _ in pts], [v for _, v in pts], marker="o",
                label=f"{c.get('cell', '?')} (mean {k.get('kld_mean', 0):.4g})")
    ax.set_yscale("log")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(["min" if q == 0 else "max" if q == 100 else f"{q:g}%" for q in order], fontsize=8)
    ax.set_xlabel("quantile of the per-token KL divergence")
    ax.set_ylabel("KL divergence (nats, log scale)")
    meta, ref = run.get("meta") or {}, run.get("reference") or {}
    ax.set_title(f"llamactl quality {run.get('profile', '')}: KL vs {ref.get('kv', 'f16/f16')} "
                 f"({meta.get('scored_tokens', '?')} tokens of {meta.get('text', '?')})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def trend_png(rows: list[CellRow], path: Path, profile: str | None) -> None:
    """Decode tok/s (top) and draft acceptance (bottom) per (cell, arm) across runs. Raises LlamactlError."""
    plt = _pyplot("--png")
    run_ids = sorted({r.run_id for r in rows})
    labels = {r.run_id: f"#{r.run_id} {str(r.build.get('commit') or '')[:9]} {r.build_key[:6]}" for r in rows}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.7 * len(run_ids) + 4), 7), sharex=True)
    series: dict[str, list[CellRow]] = {}
    for r in rows:
        series.setdefault(f"{r.cell} {r.variant}".strip(), []).append(r)
    for name, rs in series.items():
        pts = [(run_ids.index(r.run_id), r.decode_tps) for r in rs if r.decode_tps is not None]
        if pts:
            ax1.plot(*zip(*pts, strict=True), marker="o", label=name)
        acc = [(run_ids.index(r.run_id), r.acceptance) for r in rs if r.acceptance is not None and r.variant != "mtp-off"]
        if acc:
            ax2.plot(*zip(*acc, strict=True), marker="o", label=name)
    ax1.set_ylabel("decode tok/s (median per run)")
    ax1.set_title(f"llamactl trend {profile or ''}")
    ax2.set_ylabel("draft acceptance")
    ax2.set_ylim(0, 1.05)
    ax2.set_xticks(range(len(run_ids)))
    ax2.set_xticklabels([labels[i] for i in run_ids], rotation=30, ha="right", fontsize=8)
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    _save(plt, fig, path)


def load_png(run: dict[str, Any], path: Path, option: str = "--plot") -> None:
    """Throughput vs latency of a load run: per cell, output tok/s (x) against p50 and p90 end-to-end
    latency (y, s), one point per load, labelled with the load."""
    plt = _pyplot(option)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, c in enumerate(run.get("cells") or []):
        pts = [(lv.get("output_tok_per_s"), (lv.get("e2e_s") or {}).get("p50"), (lv.get("e2e_s") or {}).get("p90"), lv.get("level"))
               for lv in c.get("levels") or [] if lv.get("output_tok_per_s") and (lv.get("e2e_s") or {}).get("p50")]
        if not pts:
            continue
        xs, p50, p90, labels = zip(*pts, strict=True)
        ax.plot(xs, p50, "o-", color=f"C{i}", label=f"{c.get('cell')} p50")
        ax.plot(xs, p90, "s--", color=f"C{i}", alpha=0.6, label=f"{c.get('cell')} p90")
        for x, y, lab in zip(xs, p50, labels, strict=True):
            ax.annotate(str(lab), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("output tokens/s (all requests)")
    ax.set_ylabel("end-to-end latency (s)")
    ax.set_title(f"llamactl load {run.get('profile', '')}: throughput vs latency")
    ax.legend(fontsize=8)
    _save(plt, fig, path)
