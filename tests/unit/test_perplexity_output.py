"""llama-perplexity's output, parsed from recorded runs (Gemma 3 270M, this project's CPU build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamactl.judge.perplexity_output import (KLD_LINES, PerplexityOutputError, parse_base, parse_kld, progress)

FIX = Path(__file__).parents[1] / "fixtures" / "perplexity"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def test_reference_run():
    b = parse_base(fixture("base-f16-ctx128.txt"))
    assert (b.ppl, b.ppl_err, b.chunks, b.n_ctx) == (15.8769, 2.41498, 4, 128)


def test_kl_divergence_run_q8_0():
    k = parse_kld(fixture("kld-q8_0-ctx128.txt"))
    assert (k.chunks, k.n_ctx) == (4, 128)
    assert k.kld_mean == pytest.approx(0.006969) and k.kld_mean_err > 0
    assert 0 < k.kld_percentiles["0"] < k.kld_median < k.kld_p99 <= k.kld_max
    assert k.kld_percentiles["50"] == k.kld_median and k.kld_percentiles["100"] == k.kld_max
    assert list(k.kld_percentiles) == ["0", "0.1", "1.0", "5.0", "10.0", "50", "90.0", "95.0", "99.0", "99.9", "100"]
    assert k.same_top == pytest.approx(93.651) and 0 < k.same_top_err < 5
    assert k.dp_rms == pytest.approx(1.789, abs=1e-3)
    assert k.ppl_base == pytest.approx(15.876753)
    assert k.delta_ppl_pct == pytest.approx(100 * (k.ppl_ratio - 1))
    assert k.to_dict()["delta_ppl_pct"] == pytest.approx(k.delta_ppl_pct)


def test_q4_0_is_worse_than_q8_0():
    q8, q4 = parse_kld(fixture("kld-q8_0-ctx128.txt")), parse_kld(fixture("kld-q4_0-ctx128.txt"))
    assert q4.kld_mean > 10 * q8.kld_mean and q4.same_top < q8.same_top and q4.delta_ppl_pct > q8.delta_ppl_pct


@pytest.mark.parametrize("key", list(KLD_LINES))
def test_a_missing_line_is_an_error_naming_it(key):
    label, rx = KLD_LINES[key]
    text = fixture("kld-q8_0-ctx128.txt")
    cut = "\n".join(line for line in text.splitlines() if not rx.search(line))
    with pytest.raises(PerplexityOutputError, match="lacks the line '" + label.replace("(", r"\(").replace(")", r"\)")):
        parse_kld(cut)


def test_a_changed_number_format_is_an_error_not_a_zero():
    text = fixture("kld-q8_0-ctx128.txt").replace("Mean    KLD:   0.006969", "Mean    KLD:   nan")
    with pytest.raises(PerplexityOutputError, match="nan for 'Mean    KLD:'"):
        parse_kld(text)


def test_reference_without_final_estimate():
    text = "\n".join(x for x in fixture("base-f16-ctx128.txt").splitlines() if "Final estimate" not in x)
    with pytest.raises(PerplexityOutputError, match="lacks the line 'Final estimate: PPL ='"):
        parse_base(text)


def test_a_text_too_short_says_so():
    text = ("0.00.983 I perplexity: tokenizing the input ..\n"
            "0.00.990 E perplexity: you need at least 1024 tokens to evaluate perplexity with a context of 512\n"
            "0.00.990 E perplexity: the data file you provided tokenizes to only 300 tokens\n")
    with pytest.raises(PerplexityOutputError, match="needs at least 1024 tokens for --ctx 512, the text has 300"):
        parse_base(text)


def test_too_few_scored_tokens_for_statistics():
    text = fixture("kld-q8_0-ctx128.txt").replace("over 4 chunks, n_ctx=128", "over 1 chunks, n_ctx=128")
    text = text[:text.index("====== Perplexity statistics")]
    with pytest.raises(PerplexityOutputError, match="scored 63 tokens"):
        parse_kld(text)


def test_no_model_loaded():
    with pytest.raises(PerplexityOutputError, match="computing over N chunks.*unable to load model"):
        parse_kld("main: error: unable to load model\n")


def test_progress_in_both_modes():
    base = fixture("base-f16-ctx128.txt")
    assert progress(base) == (4, 4)
    assert progress(base[:base.index("[3]")]) == (2, 4)
    kld = fixture("kld-q4_0-ctx128.txt")
    assert progress(kld) == (4, 4)
    assert progress(kld[:kld.index("\n   3 ")]) == (2, 4)
    assert progress("loading the model") == (0, None)


def test_the_default_size_run():
    """--ctx 512 --chunks 16 (8192 tokens of the text, four chunks per pass), as `llamactl quality` runs it."""
    b = parse_base(fixture("base-f16-ctx512.txt"))
    assert (b.ppl, b.chunks, b.n_ctx) == (19.8337, 16, 512)
    k = parse_kld(fixture("kld-q8_0-q4_0-ctx512.txt"))
    assert (k.chunks, k.n_ctx) == (16, 512) and k.ppl_base == pytest.approx(b.ppl, rel=1e-3)
    assert k.kld_mean == pytest.approx(0.012286) and k.same_top == pytest.approx(92.67, abs=0.01)
    assert progress(fixture("kld-q8_0-q4_0-ctx512.txt")) == (16, 16)
