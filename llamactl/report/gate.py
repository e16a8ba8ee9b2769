"""Performance gates: is this bench slower than its baseline, beyond the noise?

Rule (simple on purpose, and the same for ``--baseline`` and for A/B arms in one run):

1. ``ratio`` compares medians so that higher is better: decode tok/s new/old, TTFT old/new.
2. ``ratio >= warn_below`` is ``ok`` (``faster`` when above ``1/warn_below`` and outside the noise).
3. Below ``warn_below``: when the interquartile ranges of the two sample sets overlap, the
   difference is inside the noise: ``no change``. With fewer than 4 samples the range is
   min..max; with one sample on each side there is no spread, and the medians decide.
4. Otherwise ``warn`` (ratio >= ``fail_below``) or ``regression``; a regression makes the
   bench exit with ExitCode.REGRESSION (6).
5. Draft acceptance (MTP on: accepted / drafted tokens from /metrics) is one number per run and,
   with greedy sampling on fixed prompts, not load noise: a drop of more than
   ``acceptance_warn_drop`` (0.05, i.e. 5 points) warns, more than ``acceptance_fail_drop`` (0.15)
   is a regression: a patch that breaks the draft head shows here even when speed hides it.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable

from llamactl.core.errors import BadInput
from llamactl.report import runs

OK, FASTER, NO_CHANGE, WARN, REGRESSION, NO_BASELINE = "ok", "faster", "no change", "warn", "regression", "no baseline"
SEVERITY = {NO_BASELINE: 0, OK: 0, FASTER: 0, NO_CHANGE: 0, WARN: 1, REGRESSION: 2}
DECODE, TTFT, ACCEPTANCE = "decode tok/s", "TTFT", "draft acceptance"


@dataclass(frozen=True)
class Thresholds:
    """Ratios (higher is better) below which a bench warns or fails: 0 < fail_below <= warn_below <= 1."""

    warn_below: float = 0.95
    fail_below: float = 0.85
    acceptance_warn_drop: float = 0.05       # absolute drop of draft acceptance (0..1)
    acceptance_fail_drop: float = 0.15

    def __post_init__(self) -> None:
        if not (0 < self.fail_below <= self.warn_below <= 1):
            raise BadInput(f"--fail-below {self.fail_below} and --warn-below {self.warn_below} must satisfy "
                                "0 < fail-below <= warn-below <= 1 (ratios of decode tok/s to the baseline)")


@dataclass
class Verdict:
    cell: str
    variant: str
    metric: str                      # DECODE | TTFT | ACCEPTANCE
    verdict: str
    against: str                     # "run 12", "file before.json", "arm no-series"
    baseline: float | None = None    # median (tok/s, or seconds for TTFT)
    current: float | None = None
    ratio: float | None = None       # higher is better
    baseline_band: tuple[float, float] | None = None
    current_band: tuple[float, float] | None = None
    n: tuple[int, int] = (0, 0)

    def line(self) -> str:
        """One plain line for a terminal or a CI log."""
        head = f"{self.cell} {self.variant} {self.metric}"
        if self.verdict == NO_BASELINE:
            return f"{head}: no baseline ({self.against})"
        if self.metric == ACCEPTANCE and self.current is not None and self.baseline is not None:
            return (f"{head}: {self.verdict.upper()} {self.current:.0%} vs {self.baseline:.0%} of {self.against} "
                    f"({100 * (self.current - self.baseline):+.0f} points)")
        fmt = (lambda x: f"{1000 * x:.0f} ms") if self.metric == TTFT else (lambda x: f"{x:.1f}")
        spread = ""
        if self.baseline_band and self.current_band:
            spread = (f"; spread {fmt(self.baseline_band[0])}..{fmt(self.baseline_band[1])} vs "
                      f"{fmt(self.current_band[0])}..{fmt(self.current_band[1])}")
        return (f"{head}: {self.verdict.upper()} {self.ratio:.2f}x of {self.against} "
                f"({fmt(self.current)} vs {fmt(self.baseline)}, n={self.n[1]} vs {self.n[0]}{spread})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def band(xs: list[float]) -> tuple[float, float]:
    """The interquartile range of the samples; min..max below 4 samples."""
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        return q[0], q[2]
    return min(xs), max(xs)


def judge(base: list[float], cur: list[float], higher_is_better: bool, th: Thresholds) -> tuple[str, float | None]:
    """(verdict, ratio) for two sample sets; ratio is oriented so that higher is better."""
    if not base or not cur:
        return NO_BASELINE, None
    mb, mc = statistics.median(base), statistics.median(cur)
    if mb <= 0 or mc <= 0:
        return NO_BASELINE, None
    ratio = mc / mb if higher_is_better else mb / mc
    (b0, b1), (c0, c1) = band(base), band(cur)
    overlap = c0 <= b1 and b0 <= c1
    if ratio >= th.warn_below:
        return (FASTER if ratio > 1 / th.warn_below and not overlap else OK), ratio
    if overlap:
        return NO_CHANGE, ratio
    return (WARN if ratio >= th.fail_below else REGRESSION), ratio


def compare_variant(cell: str, variant: str, base: dict[str, Any], cur: dict[str, Any], against: str,
                    th: Thresholds) -> list[Verdict]:
    """Decode tok/s and TTFT verdicts for one (cell, variant) against one baseline variant."""
    out = []
    for metric, pick, higher in ((DECODE, runs.decode_samples, True), (TTFT, runs.ttft_samples, False)):
        b, c = pick(base), pick(cur)
        verdict, ratio = judge(b, c, higher, th)
        if verdict == NO_BASELINE:
            out.append(Verdict(cell, variant, metric, NO_BASELINE, f"{against} has no {metric} samples" if c else "no samples in this run"))
            continue
        out.append(Verdict(cell, variant, metric, verdict, against, statistics.median(b), statistics.median(c), ratio,
                           band(b), band(c), (len(b), len(c))))
    ab, ac = runs.acceptance_of(base), runs.acceptance_of(cur)
    if ab is not None and ac is not None:
        out.append(Verdict(cell, variant, ACCEPTANCE, judge_acceptance(ab, ac, th), against, ab, ac,
                           ac / ab if ab > 0 else None, n=(1, 1)))
    return out


def judge_acceptance(base: float, cur: float, th: Thresholds) -> str:
    """Verdict for draft acceptance (0..1) against its baseline: absolute drops, no noise band (rule 5)."""
    drop = base - cur
    if drop > th.acceptance_fail_drop:
        return REGRESSION
    if drop > th.acceptance_warn_drop:
        return WARN
    return OK


BaselineLookup = Callable[[str, str], "tuple[str, dict[str, Any]] | None"]


def compare_runs(current: dict[str, Any], lookup: BaselineLookup, th: Thresholds) -> list[Verdict]:
    """Every (cell, variant) of a bench run against ``lookup(cell, variant) -> (against, variant) | None``."""
    out: list[Verdict] = []
    for c in current.get("cells") or []:
        for v, r in (c.get("variants") or {}).items():
            if r.get("error"):
                continue
            found = lookup(c["cell"], v)
            if found is None:
                out.append(Verdict(c["cell"], v, DECODE, NO_BASELINE, "no earlier run of this cell on this machine"))
                continue
            out.extend(compare_variant(c["cell"], v, found[1], r, found[0], th))
    return out


def file_lookup(baseline: dict[str, Any], label: str) -> BaselineLookup:
    """Look cells up in a saved bench run (``--baseline FILE`` or a history run id)."""
    index = {(c.get("cell"), v): r for c in baseline.get("cells") or [] for v, r in (c.get("variants") or {}).items()}

    def lookup(cell: str, variant: str) -> tuple[str, dict[str, Any]] | None:
        r = index.get((cell, variant))
        return (label, r) if r is not None and not r.get("error") else None
    return lookup


def compare_arms(current: dict[str, Any], th: Thresholds) -> list[Verdict]:
    """A/B in one run: every arm after the first against the first (``--build A --build B``: B vs A)."""
    arms = (current.get("meta") or {}).get("ab") or []
    if len(arms) < 2:
        return []
    out: list[Verdict] = []
    for c in current.get("cells") or []:
        variants = c.get("variants") or {}
        ref = variants.get(arms[0])
        if not ref or ref.get("error"):
            continue
        for arm in arms[1:]:
            r = variants.get(arm)
            if r and not r.get("error"):
                out.extend(compare_variant(c["cell"], arm, ref, r, f"arm {arms[0]}", th))
    return out


def worst(verdicts: list[Verdict]) -> str:
    """The most severe verdict (REGRESSION, WARN, else OK)."""
    top = max((SEVERITY.get(v.verdict, 0) for v in verdicts), default=0)
    return {2: REGRESSION, 1: WARN}.get(top, OK)
