"""Small statistics for benchmark samples: median and spread, and run-to-run comparison."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Summary:
    n: int
    median: float | None
    min: float | None
    max: float | None
    stdev: float | None

    @property
    def spread_pct(self) -> float | None:
        """(max - min) / median, in percent: how much the repeats disagree."""
        if not self.median or self.min is None or self.max is None:
            return None
        return 100.0 * (self.max - self.min) / self.median


def summarize(values: Sequence[float | None]) -> Summary:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return Summary(0, None, None, None, None)
    return Summary(len(xs), statistics.median(xs), min(xs), max(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def pct_change(new: float | None, old: float | None) -> float | None:
    if new is None or not old:
        return None
    return 100.0 * (new - old) / old
