import pytest

from llamactl.judge import bench
from llamactl.judge.bench import compare, load_prompts
from llamactl.core.errors import LlamactlError
from llamactl.judge.stats import pct_change, ratio, summarize


def test_summarize_median_spread():
    s = summarize([10.0, 12.0, None, 11.0, 30.0])
    assert (s.n, s.median, s.min, s.max) == (4, 11.5, 10.0, 30.0)
    assert s.spread_pct == pytest.approx(100 * 20 / 11.5)
    assert s.stdev > 0
    empty = summarize([None])
    assert empty.n == 0 and empty.median is None and empty.spread_pct is None
    assert summarize([5.0]).stdev == 0.0


def test_ratio_and_change():
    assert ratio(120.0, 100.0) == 1.2 and ratio(None, 1.0) is None and ratio(1.0, 0.0) is None
    assert pct_change(90.0, 100.0) == pytest.approx(-10.0) and pct_change(1.0, None) is None


def _run(decode_off, decode_on, acc):
    def variant(decode, a):
        return {"summary": {"client_decode_tps": {"median": decode}, "server_decode_tps": {"median": decode},
                            "aggregate_tps": {"median": decode * 1.5}, "ttft_s": {"median": 0.02}, "acceptance": a}}
    return {"cells": [{"cell": "echo", "variants": {"mtp-off": variant(decode_off, None), "mtp-on": variant(decode_on, acc)}},
                      {"cell": "only-in-this-run", "variants": {"mtp-off": variant(1.0, None)}}]}


def test_compare_matches_cells_and_reports_change():
    rows = compare(_run(100.0, 150.0, 0.9), _run(100.0, 120.0, 0.8))
    assert [(r["cell"], r["variant"]) for r in rows] == [("echo", "mtp-off"), ("echo", "mtp-on"), ("only-in-this-run", "mtp-off")]
    on = rows[1]
    assert on["client_decode_tps"]["change_pct"] == pytest.approx(-20.0)
    assert on["acceptance"] == {"a": 0.9, "b": 0.8}
    assert rows[0]["client_decode_tps"]["change_pct"] == pytest.approx(0.0)


def test_prompts_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\n")
    assert load_prompts(f) == ["one", "two"]
    f.write_text("para one\nstill one\n\npara two\n")
    assert load_prompts(f) == ["para one\nstill one", "para two"]
    f.write_text("\n")
    with pytest.raises(LlamactlError):
        load_prompts(f)
    assert len(load_prompts(None)) == 3


def test_bench_collapses_the_mtp_axis():
    from llamactl.judge.bench import without_mtp_axis
    from llamactl.judge.matrix import expand
    from llamactl.serve.profiles import MatrixSpec

    cells = expand(MatrixSpec(axes={"parallel": [1, 2], "mtp": [False, True]}))
    assert [c.id for c in without_mtp_axis(cells)] == ["parallel=1", "parallel=2"]


def _cell(off_tps: float, on_tps: float) -> bench.CellBench:
    c = bench.CellBench("kv=f16", {})
    for v, tps in (("mtp-off", off_tps), ("mtp-on", on_tps)):
        c.variants[v] = bench.VariantResult(v, samples=[bench.Sample("kv=f16", v, 0, 0, server_decode_tps=tps,
                                                                     draft_tokens=10, accepted_tokens=8)])
    return c


@pytest.mark.parametrize("off,on,verdict", [(100, 106, "pays-off"), (100, 104, "no-difference"), (100, 95, "costs")])
def test_the_mtp_verdict_and_its_thresholds_reach_the_json(off, on, verdict):
    data = bench.to_json([_cell(off, on)], {})
    v = data["cells"][0]["mtp_verdict"]
    assert v["verdict"] == verdict and (v["pays_off_at"], v["costs_at"]) == (bench.PAYS_OFF_AT, bench.COSTS_AT)
    assert v["acceptance"] == pytest.approx(0.8) and v["line"].startswith("kv=f16: MTP ")
    from llamactl.report import view

    assert view.mtp_verdicts(data) == [v["line"]]
    del data["cells"][0]["mtp_verdict"]   # a run saved before verdicts were recorded is judged the same way
    assert view.mtp_verdicts(data) == [v["line"]]


def test_no_mtp_verdict_without_both_variants():
    c = _cell(100, 120)
    del c.variants["mtp-on"]
    assert bench.to_json([c], {})["cells"][0]["mtp_verdict"] is None
