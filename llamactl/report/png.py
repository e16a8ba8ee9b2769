"""The trend as a PNG (matplotlib, optional: ``pip install 'llamactl[plot]'``)."""

from __future__ import annotations

from pathlib import Path

from llamactl.core.errors import LlamactlError
from llamactl.report.history import CellRow


def trend_png(rows: list[CellRow], path: Path, profile: str | None) -> None:
    """Decode tok/s (top) and draft acceptance (bottom) per (cell, arm) across runs. Raises LlamactlError."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LlamactlError("--png needs matplotlib", hint="pip install 'llamactl[plot]', or use --html") from exc
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
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise LlamactlError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
