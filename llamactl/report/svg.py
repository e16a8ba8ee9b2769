"""Inline SVG charts for the HTML report: grouped bars with whiskers, trend lines, quantile curves.

Built with ElementTree (text is escaped for us), no namespace URL and no scripts, so the
page stays one offline file with no resource references.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PALETTE = ["#8c8c8c", "#2a7ab9", "#e08a1e", "#3a9a4a", "#a04ab0", "#c0392b", "#16a0a0", "#7a5c3a"]
W, H = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 30, 70


@dataclass
class Bar:
    series: str
    value: float | None
    lo: float | None = None
    hi: float | None = None
    note: str = ""


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.2g}"


def _frame(title: str, ylabel: str, ymax: float, yfmt: Callable[[float], str] = _fmt) -> tuple[ET.Element, Callable[[float], float]]:
    svg = ET.Element("svg", width=str(W), height=str(H), viewBox=f"0 0 {W} {H}", role="img")
    ET.SubElement(svg, "title").text = title
    ET.SubElement(svg, "text", {"x": str(LEFT), "y": "18", "font-size": "13", "font-weight": "bold"}).text = title
    plot_h = H - TOP - BOTTOM

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / ymax)
    for i in range(5):
        v = ymax * i / 4
        ET.SubElement(svg, "line", {"x1": str(LEFT), "x2": str(W - RIGHT), "y1": f"{y(v):.1f}", "y2": f"{y(v):.1f}",
                                    "stroke": "#ddd", "stroke-width": "1"})
        ET.SubElement(svg, "text", {"x": str(LEFT - 6), "y": f"{y(v) + 4:.1f}", "text-anchor": "end", "font-size": "10"}).text = yfmt(v)
    ET.SubElement(svg, "text", {"x": "12", "y": str(TOP + plot_h // 2), "transform": f"rotate(-90 12 {TOP + plot_h // 2})",
                                "text-anchor": "middle", "font-size": "10"}).text = ylabel
    return svg, y


def _legend(svg: ET.Element, names: list[str], colour_of: Callable[[str], str] | None = None) -> None:
    for i, name in enumerate(names):
        yy = TOP + 16 * i
        fill = colour_of(name) if colour_of else PALETTE[i % len(PALETTE)]
        ET.SubElement(svg, "rect", x=str(W - RIGHT + 12), y=str(yy), width="10", height="10", fill=fill)
        ET.SubElement(svg, "text", {"x": str(W - RIGHT + 26), "y": str(yy + 9), "font-size": "10"}).text = name[:24]


def bars(groups: list[tuple[str, list[Bar]]], title: str, ylabel: str) -> str:
    """Grouped bars (one group per cell, one bar per series) with lo..hi whiskers; returns SVG markup."""
    series = list(dict.fromkeys(b.series for _, bs in groups for b in bs))
    top = max([b.hi or b.value or 0 for _, bs in groups for b in bs if b.value is not None] or [1.0])
    ymax = _nice_max(top * 1.1)
    svg, y = _frame(title, ylabel, ymax)
    plot_w = W - LEFT - RIGHT
    gw = plot_w / max(1, len(groups))
    bw = gw * 0.8 / max(1, len(series))
    for gi, (label, bs) in enumerate(groups):
        gx = LEFT + gi * gw + gw * 0.1
        for b in bs:
            if b.value is None:
                continue
            si = series.index(b.series)
            x = gx + si * bw
            rect = ET.SubElement(svg, "rect", x=f"{x:.1f}", y=f"{y(b.value):.1f}", width=f"{bw * 0.92:.1f}",
                                 height=f"{max(0.0, y(0) - y(b.value)):.1f}", fill=PALETTE[si % len(PALETTE)])
            ET.SubElement(rect, "title").text = f"{label} {b.series}: {b.value:.1f}" + (f" ({b.note})" if b.note else "")
            if b.lo is not None and b.hi is not None:
                cx = x + bw * 0.46
                ET.SubElement(svg, "line", {"x1": f"{cx:.1f}", "x2": f"{cx:.1f}", "y1": f"{y(b.lo):.1f}", "y2": f"{y(b.hi):.1f}",
                                            "stroke": "#222", "stroke-width": "1.2"})
                for v in (b.lo, b.hi):
                    ET.SubElement(svg, "line", {"x1": f"{cx - 4:.1f}", "x2": f"{cx + 4:.1f}", "y1": f"{y(v):.1f}", "y2": f"{y(v):.1f}",
                                                "stroke": "#222", "stroke-width": "1.2"})
            if b.note:
                ET.SubElement(svg, "text", {"x": f"{x + bw * 0.46:.1f}", "y": f"{y(b.hi or b.value) - 4:.1f}",
                                            "text-anchor": "middle", "font-size": "9"}).text = b.note
        ET.SubElement(svg, "text", {"x": f"{LEFT + gi * gw + gw / 2:.1f}", "y": str(H - BOTTOM + 16),
                                    "text-anchor": "middle", "font-size": "10"}).text = label[:32]
    _legend(svg, series)
    return ET.tostring(svg, encoding="unicode")


def lines(series: dict[str, list[tuple[int, float]]], x_labels: list[str], title: str, ylabel: str,
          percent: bool = False, names: list[str] | None = None) -> str:
    """One polyline per series over x positions 0..len(x_labels)-1; returns SVG markup.

    ``names`` fixes each series' colour by its position there, so that charts side by side agree.
    """
    names = names or list(series)

    def colour_of(name: str) -> str:
        return PALETTE[(names.index(name) if name in names else len(names)) % len(PALETTE)]
    top = max([v for pts in series.values() for _, v in pts] or [1.0])
    ymax = 1.0 if percent else _nice_max(top * 1.1)
    svg, y = _frame(title, ylabel, ymax, (lambda v: f"{100 * v:.0f}%") if percent else _fmt)
    plot_w = W - LEFT - RIGHT
    n = max(1, len(x_labels) - 1)

    def x(i: int) -> float:
        return LEFT + 10 + (plot_w - 20) * (i / n if len(x_labels) > 1 else 0.5)
    for i, lab in enumerate(x_labels):
        ET.SubElement(svg, "text", {"x": f"{x(i):.1f}", "y": str(H - BOTTOM + 14), "transform": f"rotate(30 {x(i):.1f} {H - BOTTOM + 14})",
                                    "font-size": "9"}).text = lab[:28]
    for name, pts in series.items():
        colour = colour_of(name)
        if len(pts) > 1:
            ET.SubElement(svg, "polyline", {"points": " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts), "fill": "none",
                                            "stroke": colour, "stroke-width": "2"})
        for i, v in pts:
            dot = ET.SubElement(svg, "circle", cx=f"{x(i):.1f}", cy=f"{y(v):.1f}", r="3.5", fill=colour)
            ET.SubElement(dot, "title").text = f"{name} @ {x_labels[i]}: " + (f"{100 * v:.0f}%" if percent else f"{v:.1f}")
    _legend(svg, list(series), colour_of)
    return ET.tostring(svg, encoding="unicode")


def quantiles(series: dict[str, list[tuple[float, float]]], title: str, ylabel: str, floor: float = 1e-6) -> str:
    """Quantile curves on a log scale: per series, (percentile 0..100, value) points (values below ``floor``
    drawn at it); x is the percentiles' order (min, 0.1%, 1%, ..., 99.9%, max). Returns SVG markup."""
    qs = sorted({q for pts in series.values() for q, _ in pts})
    vals = [max(v, floor) for pts in series.values() for _, v in pts] or [floor, 1.0]
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    hi = max(hi, lo + 1)
    svg = ET.Element("svg", width=str(W), height=str(H), viewBox=f"0 0 {W} {H}", role="img")
    ET.SubElement(svg, "title").text = title
    ET.SubElement(svg, "text", {"x": str(LEFT), "y": "18", "font-size": "13", "font-weight": "bold"}).text = title
    plot_h, plot_w = H - TOP - BOTTOM, W - LEFT - RIGHT

    def y(v: float) -> float:
        return TOP + plot_h * (1 - (math.log10(max(v, floor)) - lo) / (hi - lo))

    def x(q: float) -> float:
        i = qs.index(q)
        return LEFT + 10 + (plot_w - 20) * (i / max(1, len(qs) - 1))
    for e in range(lo, hi + 1):
        ET.SubElement(svg, "line", {"x1": str(LEFT), "x2": str(W - RIGHT), "y1": f"{y(10.0 ** e):.1f}", "y2": f"{y(10.0 ** e):.1f}",
                                    "stroke": "#ddd", "stroke-width": "1"})
        ET.SubElement(svg, "text", {"x": str(LEFT - 6), "y": f"{y(10.0 ** e) + 4:.1f}", "text-anchor": "end",
                                    "font-size": "10"}).text = f"1e{e}"
    ET.SubElement(svg, "text", {"x": "12", "y": str(TOP + plot_h // 2), "transform": f"rotate(-90 12 {TOP + plot_h // 2})",
                                "text-anchor": "middle", "font-size": "10"}).text = ylabel
    for q in qs:
        label = "min" if q == 0 else "max" if q == 100 else f"{q:g}%"
        ET.SubElement(svg, "text", {"x": f"{x(q):.1f}", "y": str(H - BOTTOM + 14), "text-anchor": "middle",
                                    "font-size": "9"}).text = label
    names = list(series)
    for si, (name, pts) in enumerate(series.items()):
        colour = PALETTE[(si + 1) % len(PALETTE)]
        if len(pts) > 1:
            ET.SubElement(svg, "polyline", {"points": " ".join(f"{x(q):.1f},{y(v):.1f}" for q, v in pts), "fill": "none",
                                            "stroke": colour, "stroke-width": "2"})
        for q, v in pts:
            dot = ET.SubElement(svg, "circle", cx=f"{x(q):.1f}", cy=f"{y(v):.1f}", r="3", fill=colour)
            ET.SubElement(dot, "title").text = f"{name} {q:g}%: {v:.6f}"
    _legend(svg, names, lambda n: PALETTE[(names.index(n) + 1) % len(PALETTE)])
    return ET.tostring(svg, encoding="unicode")


def xy(series: Mapping[str, Sequence[tuple[float, float | None]]], title: str, xlabel: str, ylabel: str,
       labels: dict[str, list[str]] | None = None) -> str:
    """Lines over a numeric x axis (0..max x): per series, (x, y) points (a None y breaks the line);
    ``labels`` names points (a load's label beside its dot). Returns SVG markup."""
    pts_all = [(x, y) for pts in series.values() for x, y in pts if y is not None]
    xmax = _nice_max(max([x for x, _ in pts_all] or [1.0]) * 1.05)
    ymax = _nice_max(max([y for _, y in pts_all] or [1.0]) * 1.1)
    svg, y_of = _frame(title, ylabel, ymax)
    plot_w = W - LEFT - RIGHT

    def x_of(v: float) -> float:
        return LEFT + plot_w * v / xmax
    for i in range(5):
        v = xmax * i / 4
        ET.SubElement(svg, "text", {"x": f"{x_of(v):.1f}", "y": str(H - BOTTOM + 14), "text-anchor": "middle",
                                    "font-size": "10"}).text = _fmt(v)
    ET.SubElement(svg, "text", {"x": str(LEFT + plot_w // 2), "y": str(H - BOTTOM + 32), "text-anchor": "middle",
                                "font-size": "10"}).text = xlabel
    names = list(series)
    for si, (name, pts) in enumerate(series.items()):
        colour = PALETTE[(si + 1) % len(PALETTE)]
        run: list[str] = []
        for x, y in [*pts, (0.0, None)]:
            if y is None:
                if len(run) > 1:
                    ET.SubElement(svg, "polyline", {"points": " ".join(run), "fill": "none", "stroke": colour, "stroke-width": "2"})
                run = []
                continue
            run.append(f"{x_of(x):.1f},{y_of(y):.1f}")
        for k, (x, y) in enumerate(pts):
            if y is None:
                continue
            dot = ET.SubElement(svg, "circle", cx=f"{x_of(x):.1f}", cy=f"{y_of(y):.1f}", r="2.5", fill=colour)
            lab = (labels or {}).get(name, [])
            ET.SubElement(dot, "title").text = f"{name}: {lab[k] + ' ' if k < len(lab) else ''}({x:g}, {y:.3g})"
            if k < len(lab):
                ET.SubElement(svg, "text", {"x": f"{x_of(x) + 4:.1f}", "y": f"{y_of(y) - 4:.1f}", "font-size": "9"}).text = lab[k]
    _legend(svg, names, lambda n: PALETTE[(names.index(n) + 1) % len(PALETTE)])
    return ET.tostring(svg, encoding="unicode")
