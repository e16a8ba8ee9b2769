"""Baseline gate verdicts: ratios, the noise rule, TTFT inverted, thresholds, A/B arms."""

from __future__ import annotations

import pytest

from llamactl.core.errors import LlamactlError
from llamactl.report import gate
from llamactl.report.gate import NO_CHANGE, OK, FASTER, REGRESSION, WARN, Thresholds, band, judge

TH = Thresholds(0.95, 0.85)


def variant(decode: list[float], ttft: list[float] | None = None) -> dict:
    ttft = ttft or [0.05] * len(decode)
    return {"error": None, "samples": [{"server_decode_tps": d, "client_decode_tps": d * 0.99, "ttft_s": t}
                                       for d, t in zip(decode, ttft, strict=True)]}


def bench(decode: list[float], ttft: list[float] | None = None, cell: str = "echo", arm: str = "mtp-on") -> dict:
    return {"meta": {"profile": "p"}, "cells": [{"cell": cell, "variants": {arm: variant(decode, ttft)}}]}


def test_band_is_iqr_from_four_samples_else_min_max():
    assert band([1, 2, 3]) == (1, 3)
    assert band([1, 2, 3, 4, 5, 6, 7, 8, 100]) == (3, 7)       # an outlier does not widen the band


@pytest.mark.parametrize("base, cur, verdict", [
    ([100, 101, 99, 100], [100, 99, 101, 100], OK),            # unchanged
    ([100, 101, 99, 100], [80, 81, 79, 80], REGRESSION),       # 0.80x, tight spreads
    ([100, 101, 99, 100], [90, 91, 89, 90], WARN),             # 0.90x: between fail and warn
    ([100, 140, 60, 100, 130, 70], [80, 120, 50, 90, 110, 60], NO_CHANGE),   # 0.85x but inside the noise
    ([100, 101, 99, 100], [130, 131, 129, 130], FASTER),
    ([100], [84], REGRESSION),                                  # one sample each: the medians decide
])
def test_decode_verdicts(base, cur, verdict):
    assert judge(base, cur, True, TH)[0] == verdict


def test_ttft_uses_the_inverse():
    v, ratio = judge([0.10, 0.10, 0.11, 0.10], [0.20, 0.21, 0.20, 0.20], False, TH)   # first token twice as late
    assert v == REGRESSION and ratio == pytest.approx(0.5, rel=0.02)
    assert judge([0.20, 0.21, 0.20, 0.20], [0.10, 0.10, 0.11, 0.10], False, TH)[0] == FASTER


def test_compare_runs_against_a_file_and_missing_baselines():
    base = bench([100, 101, 99, 100, 100, 101])
    cur = bench([70, 71, 69, 70, 70, 71])
    cur["cells"].append({"cell": "new", "variants": {"mtp-on": variant([50, 50])}})
    vs = gate.compare_runs(cur, gate.file_lookup(base, "file base.json"), TH)
    decode = [v for v in vs if v.cell == "echo" and v.metric == gate.DECODE][0]
    assert decode.verdict == REGRESSION and decode.ratio == pytest.approx(0.70, abs=0.01) and decode.against == "file base.json"
    assert "REGRESSION 0.70x of file base.json" in decode.line()
    assert [v.verdict for v in vs if v.cell == "new"] == [gate.NO_BASELINE]
    ttft = [v for v in vs if v.cell == "echo" and v.metric == gate.TTFT][0]
    assert ttft.verdict == OK                                   # same TTFT: only decode regressed
    assert gate.worst(vs) == REGRESSION
    assert gate.worst([v for v in vs if v.cell == "new"]) == OK


def test_compare_arms_b_against_a():
    run = {"meta": {"ab": ["no-series", "series"]}, "cells": [
        {"cell": "base", "variants": {"no-series": variant([100, 102, 98, 100]), "series": variant([99, 101, 100, 98])}}]}
    vs = gate.compare_arms(run, TH)
    assert [(v.variant, v.metric, v.verdict) for v in vs] == [("series", gate.DECODE, OK), ("series", gate.TTFT, OK)]
    assert vs[0].against == "arm no-series"
    assert gate.compare_arms({"meta": {}, "cells": run["cells"]}, TH) == []   # no A/B: nothing to compare


@pytest.mark.parametrize("warn, fail", [(0.8, 0.9), (1.2, 0.9), (0.9, 0.0), (0.9, -1)])
def test_bad_thresholds_are_one_line_errors(warn, fail):
    with pytest.raises(LlamactlError) as e:
        Thresholds(warn, fail)
    assert "0 < fail-below <= warn-below <= 1" in e.value.message


def with_acceptance(b: dict, acc: float | None) -> dict:
    for c in b["cells"]:
        for v in c["variants"].values():
            v["summary"] = {"acceptance": acc}
    return b


@pytest.mark.parametrize("base, cur, verdict", [
    (1.0, 1.0, OK), (0.90, 0.87, OK), (0.90, 0.80, WARN), (1.0, 0.0, REGRESSION), (0.0, 0.5, OK)])
def test_acceptance_drops_are_judged_in_points_without_a_noise_band(base, cur, verdict):
    assert gate.judge_acceptance(base, cur, TH) == verdict


def test_a_broken_draft_head_is_a_regression_even_when_speed_is_unchanged():
    same = [100, 101, 99, 100]
    vs = gate.compare_runs(with_acceptance(bench(same), 0.0), gate.file_lookup(with_acceptance(bench(same), 1.0), "run 2"), TH)
    acc = [v for v in vs if v.metric == gate.ACCEPTANCE]
    assert [v.verdict for v in vs if v.metric == gate.DECODE] == [OK]
    assert len(acc) == 1 and acc[0].verdict == REGRESSION and gate.worst(vs) == REGRESSION
    assert acc[0].line() == "echo mtp-on draft acceptance: REGRESSION 0% vs 100% of run 2 (-100 points)"
    # no acceptance on either side (MTP off, or an old run): no acceptance verdict at all
    assert not [v for v in gate.compare_runs(bench(same), gate.file_lookup(bench(same), "run 2"), TH)
                if v.metric == gate.ACCEPTANCE]
