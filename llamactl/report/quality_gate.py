"""Quality gates for ``llamactl quality``: a candidate whose KL divergence is too high, or whose top token
agrees with the reference's too rarely, is a regression (exit code 6, as ``bench``'s).

- ``--fail-above-kl X`` (nats): each candidate's mean KL from llama-perplexity, and its decode-probe
  mean KL when the probe ran, must be at most X.
- ``--fail-below-top1 P`` (percent, 0-100): each candidate's same-top-token rate from llama-perplexity,
  and its decode-probe top-1 agreement when the probe ran, must be at least P.

A candidate whose run failed is a regression when a gate is set (it gives no figure to pass with).
The gate reads the run's JSON (``cells[].kld``, ``cells[].decode``), so a saved run can be judged again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llamactl.core.errors import BadInput

OK, REGRESSION = "ok", "regression"
KL, SAME_TOP, DECODE_KL, DECODE_TOP1, RUN = "mean KL", "same top", "decode KL", "decode top-1", "run"


@dataclass(frozen=True)
class Limits:
    """``fail_above_kl`` in nats (None: no KL gate), ``fail_below_top1`` in percent (None: no top-1 gate)."""

    fail_above_kl: float | None = None
    fail_below_top1: float | None = None

    def __post_init__(self) -> None:
        if self.fail_above_kl is not None and not self.fail_above_kl >= 0:
            raise BadInput(f"--fail-above-kl {self.fail_above_kl}: a KL divergence in nats, 0 or more (e.g. 0.01)")
        if self.fail_below_top1 is not None and not 0 < self.fail_below_top1 <= 100:
            raise BadInput(f"--fail-below-top1 {self.fail_below_top1}: a percentage, above 0 and at most 100 (e.g. 90)")

    @property
    def active(self) -> bool:
        return self.fail_above_kl is not None or self.fail_below_top1 is not None


@dataclass
class Verdict:
    cell: str
    metric: str                 # KL | SAME_TOP | DECODE_KL | DECODE_TOP1 | RUN
    verdict: str                # OK | REGRESSION
    value: float | None         # nats for KL metrics, percent for top-1 metrics
    limit: float | None
    detail: str = ""

    def line(self) -> str:
        """One plain line for a terminal or a CI log."""
        if self.metric == RUN:
            return f"{self.cell}: {self.verdict.upper()}: {self.detail}"
        if self.metric in (KL, DECODE_KL):
            return f"{self.cell} {self.metric}: {self.verdict.upper()} {self.value:.6f} (fail above {self.limit:g})"
        return f"{self.cell} {self.metric}: {self.verdict.upper()} {self.value:.2f}% (fail below {self.limit:g}%)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "line": self.line()}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def judge(cells: list[dict[str, Any]], limits: Limits) -> list[Verdict]:
    """Every gated figure of every candidate (none when no limit is set)."""
    if not limits.active:
        return []
    out: list[Verdict] = []
    for c in cells:
        name = str(c.get("cell", "?"))
        raw_kld, raw_dec = c.get("kld"), c.get("decode")
        kld: dict[str, Any] | None = raw_kld if isinstance(raw_kld, dict) else None
        if c.get("status") == "error" or kld is None:
            out.append(Verdict(name, RUN, REGRESSION, None, None, f"no figures: {c.get('error') or 'the run failed'}"))
            continue
        dec: dict[str, Any] = raw_dec if isinstance(raw_dec, dict) else {}
        top1 = _num(dec.get("top1_agreement"))
        figures: list[tuple[str, float | None]] = [
            (KL, _num(kld.get("kld_mean"))), (SAME_TOP, _num(kld.get("same_top"))),
            (DECODE_KL, _num(dec.get("mean_kl"))), (DECODE_TOP1, None if top1 is None else 100 * top1)]
        for metric, value in figures:
            if value is None:
                continue
            if metric in (KL, DECODE_KL) and limits.fail_above_kl is not None:
                bad = value > limits.fail_above_kl
                out.append(Verdict(name, metric, REGRESSION if bad else OK, value, limits.fail_above_kl))
            elif metric in (SAME_TOP, DECODE_TOP1) and limits.fail_below_top1 is not None:
                bad = value < limits.fail_below_top1
                out.append(Verdict(name, metric, REGRESSION if bad else OK, value, limits.fail_below_top1))
    return out


def worst(verdicts: list[Verdict]) -> str:
    return REGRESSION if any(v.verdict == REGRESSION for v in verdicts) else OK


def summary(verdicts: list[Verdict], limits: Limits) -> dict[str, Any]:
    """What the run's JSON keeps of the gate (``gate``), and what the report templates render."""
    return {"fail_above_kl": limits.fail_above_kl, "fail_below_top1": limits.fail_below_top1, "worst": worst(verdicts),
            "verdicts": [v.to_dict() for v in verdicts]}
