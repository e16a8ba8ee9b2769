"""llama-perplexity's output, parsed: the reference run's PPL and a KL-divergence run's statistics.

llama-perplexity (``tools/perplexity/perplexity.cpp``) prints to stdout and stderr (read here as one
stream). Two modes matter:

- the reference run, ``--kl-divergence-base FILE`` without ``--kl-divergence``: writes the logits to
  FILE and prints ``[1]18.4505,[2]22.0377,...`` per chunk, then
  ``Final estimate: PPL = 19.8337 +/- 0.85184``;
- a candidate run, ``--kl-divergence --kl-divergence-base FILE``: one table row per chunk, then three
  blocks: ``Mean PPL(Q)  : 19.808362 ±   0.849620``, ``Mean PPL(base)``, ``Mean PPL(Q)/PPL(base)``;
  ``Mean    KLD:   0.007175 ±   0.000097``, ``Maximum KLD:``, ``99.9%   KLD:`` ... ``Median  KLD:`` ...
  ``Minimum KLD:``; ``RMS Δp    :  1.975 ± 0.051 %`` and ``Same top p: 94.461 ± 0.358 %``.

A line the parser needs and does not find is an error naming that line (the format changed, or the run
stopped early), never a zero. Figures are as printed: KL in nats, Δp and same-top in percent.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from llamactl.core.errors import LlamactlError

NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
PM = r"\s*(?:±|\+/-)\s*"

# (the line as llama-perplexity prints its label, the regex of the whole figure)
FINAL_ESTIMATE = ("Final estimate: PPL =", re.compile(r"Final estimate: PPL = " + NUM + PM + NUM))
KLD_LINES: dict[str, tuple[str, re.Pattern[str]]] = {
    "ppl": ("Mean PPL(Q)", re.compile(r"Mean PPL\(Q\)\s*:\s*" + NUM + PM + NUM)),
    "ppl_base": ("Mean PPL(base)", re.compile(r"Mean PPL\(base\)\s*:\s*" + NUM + PM + NUM)),
    "ppl_ratio": ("Mean PPL(Q)/PPL(base)", re.compile(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*" + NUM + PM + NUM)),
    "kld_mean": ("Mean    KLD:", re.compile(r"Mean\s+KLD:\s*" + NUM + PM + NUM)),
    "kld_max": ("Maximum KLD:", re.compile(r"Maximum KLD:\s*" + NUM)),
    "kld_p99": ("99.0%   KLD:", re.compile(r"99\.0%\s+KLD:\s*" + NUM)),
    "kld_median": ("Median  KLD:", re.compile(r"Median\s+KLD:\s*" + NUM)),
    "dp_rms": ("RMS Δp    :", re.compile(r"RMS Δp\s*:\s*" + NUM + PM + NUM + r"\s*%")),
    "same_top": ("Same top p:", re.compile(r"Same top p:\s*" + NUM + PM + NUM + r"\s*%")),
}
PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+KLD:\s*" + NUM, re.M)
MIN_KLD = re.compile(r"Minimum KLD:\s*" + NUM)
CHUNKS = re.compile(r"(?:computing|calculating perplexity) over (\d+) chunks, n_ctx=(\d+)")
BASE_PROGRESS = re.compile(r"\[(\d+)\]" + NUM + ",")
KLD_ROW = re.compile(r"^\s*(\d+)\s+" + NUM + PM + NUM, re.M)
TOO_SHORT = re.compile(r"you need at least (\d+) tokens to evaluate perplexity with a context of (\d+)")
TOO_SHORT_HAVE = re.compile(r"tokenizes to only (\d+) tokens")
ERROR_LINE = re.compile(r"^(?:[\d.]+ E |E |error|.*\bfailed\b|.*: unable to|.*GGML_ASSERT).*$", re.M | re.I)
MIN_SCORED = 100      # kl_divergence prints no statistics over fewer scored tokens


class PerplexityOutputError(LlamactlError):
    """llama-perplexity's output lacks a line llamactl needs, or says why it stopped."""


@dataclass
class BaseOutput:
    """The reference run: its perplexity (± one standard error), chunks and context as it ran them."""

    ppl: float
    ppl_err: float
    chunks: int
    n_ctx: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KldOutput:
    """A candidate run against the reference logits. KL in nats; ``dp_rms`` and ``same_top`` in percent;
    ``ppl_ratio`` is PPL(Q)/PPL(base); ``kld_percentiles`` maps "0.1", "1.0", ..., "99.9" (percent) to KL,
    with "0" the minimum and "100" the maximum."""

    chunks: int
    n_ctx: int
    ppl: float
    ppl_err: float
    ppl_base: float
    ppl_base_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    kld_mean: float
    kld_mean_err: float
    kld_median: float
    kld_p99: float
    kld_max: float
    dp_rms: float
    dp_rms_err: float
    same_top: float
    same_top_err: float
    kld_percentiles: dict[str, float] = field(default_factory=dict)

    @property
    def delta_ppl_pct(self) -> float:
        """PPL(Q) against PPL(base), in percent (+1.5 = 1.5% higher perplexity than the reference)."""
        return 100.0 * (self.ppl_ratio - 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta_ppl_pct": round(self.delta_ppl_pct, 6)}


def _float(text: str, label: str) -> float:
    try:
        x = float(text)
    except ValueError as exc:
        raise PerplexityOutputError(f"llama-perplexity printed {text!r} for '{label}', not a number") from exc
    if math.isnan(x) or math.isinf(x):
        raise PerplexityOutputError(f"llama-perplexity printed {text} for '{label}'")
    return x


def first_error(text: str) -> str | None:
    """The first line of the output that reads as an error (LOG_ERR lines, ``failed``, an assert)."""
    for m in ERROR_LINE.finditer(text):
        line = m.group(0).strip()
        if line:
            return re.sub(r"^[\d.]+ E ", "", line)[:300]
    return None


def _stopped(text: str) -> None:
    """Raise for the reasons llama-perplexity stops early while exiting 0."""
    m = TOO_SHORT.search(text)
    if m:
        have = TOO_SHORT_HAVE.search(text)
        raise PerplexityOutputError(f"the text is too short: llama-perplexity needs at least {m.group(1)} tokens for "
                                    f"--ctx {m.group(2)}" + (f", the text has {have.group(1)}" if have else ""),
                                    hint="lower --ctx, or use a longer text")


def _chunks(text: str) -> tuple[int, int]:
    m = CHUNKS.search(text)
    if not m:
        raise PerplexityOutputError("llama-perplexity's output lacks the line 'computing over N chunks, n_ctx=...' "
                                    "(did it load the model?)" + _why(text))
    return int(m.group(1)), int(m.group(2))


def _why(text: str) -> str:
    err = first_error(text)
    return f": {err}" if err else ""


def parse_base(text: str) -> BaseOutput:
    """The reference run's output -> :class:`BaseOutput`.

    Raises:
        PerplexityOutputError: the text was too short for the context, or a needed line is missing
            (named in the message).
    """
    _stopped(text)
    chunks, n_ctx = _chunks(text)
    label, rx = FINAL_ESTIMATE
    m = rx.search(text)
    if not m:
        raise PerplexityOutputError(f"llama-perplexity's output lacks the line '{label}'" + _why(text))
    return BaseOutput(_float(m.group(1), label), _float(m.group(2), label), chunks, n_ctx)


def parse_kld(text: str) -> KldOutput:
    """A ``--kl-divergence`` run's output -> :class:`KldOutput`.

    Raises:
        PerplexityOutputError: a needed line is missing (named in the message), a figure is not a
            number (nan), or the run scored fewer than 100 tokens (llama-perplexity then prints no
            statistics).
    """
    _stopped(text)
    chunks, n_ctx = _chunks(text)
    if "KL divergence statistics" not in text and KLD_LINES["kld_mean"][1].search(text) is None:
        scored = chunks * (n_ctx - 1 - n_ctx // 2)
        if 0 < scored < MIN_SCORED and KLD_ROW.search(text):
            raise PerplexityOutputError(f"llama-perplexity scored {scored} tokens ({chunks} chunks of {n_ctx}); it prints "
                                        f"no statistics under {MIN_SCORED}", hint="raise --ctx or --chunks")
    got: dict[str, float] = {}
    for key, (label, rx) in KLD_LINES.items():
        m = rx.search(text)
        if not m:
            raise PerplexityOutputError(f"llama-perplexity's output lacks the line '{label}'" + _why(text),
                                        hint="its output format changed, or the run stopped early")
        got[key] = _float(m.group(1), label)
        if rx.groups >= 2:
            got[key + "_err"] = _float(m.group(2), label)
    pct = {m.group(1): _float(m.group(2), f"{m.group(1)}% KLD") for m in PERCENTILE.finditer(text)}
    mn = MIN_KLD.search(text)
    if mn:
        pct["0"] = _float(mn.group(1), "Minimum KLD")
    pct["50"] = got["kld_median"]
    pct["100"] = got["kld_max"]
    ordered = dict(sorted(pct.items(), key=lambda kv: float(kv[0])))
    return KldOutput(chunks, n_ctx, got["ppl"], got["ppl_err"], got["ppl_base"], got["ppl_base_err"],
                     got["ppl_ratio"], got["ppl_ratio_err"], got["kld_mean"], got["kld_mean_err"], got["kld_median"],
                     got["kld_p99"], got["kld_max"], got["dp_rms"], got["dp_rms_err"], got["same_top"],
                     got["same_top_err"], ordered)


def progress(text: str) -> tuple[int, int | None]:
    """(chunks done, chunks in all or None while unknown) from the output so far, in either mode."""
    m = CHUNKS.search(text)
    total = int(m.group(1)) if m else None
    done = max((int(x.group(1)) for x in BASE_PROGRESS.finditer(text)), default=0)
    head = text.find("Same top p\n")     # the KL table's header line ends with this column
    if head >= 0:
        done = max(done, max((int(x.group(1)) for x in KLD_ROW.finditer(text, head)), default=0))
    if total is not None:
        done = min(done, total)
    return done, total
