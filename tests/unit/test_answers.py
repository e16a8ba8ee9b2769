"""Answers as evidence: parsing, where two answers part, numerics vs bugs, the KV probe's figures."""

from __future__ import annotations

import math

import pytest

from llamactl.judge import answers as A
from llamactl.judge.answer_checks import quality_bounds, repeat_requests
from llamactl.judge.references import is_own_twin, signature, twin_profile
from llamactl.judge.status import Status
from llamactl.serve.profiles import Profile


def ans(tokens: list[int], top: list | None = None, key: str = "k", pieces: list[str] | None = None) -> A.Answer:
    return A.Answer(key, tokens, "".join(pieces or []), "limit", top=top or [], pieces=pieces or [])


def row(p1: float, p2: float, a: int = 1, b: int = 2) -> list[tuple[int, float]]:
    return [(a, p1), (b, p2)]


def test_equal_answers_pass():
    v = A.judge(A.first_divergence(ans([1, 2, 3]), ans([1, 2, 3])), exact=True, tie_margin=0.05, what="x")
    assert v.status == Status.PASS and v.divergence is None


def test_divergence_names_position_continuations_and_margin():
    ref = ans([5, 6, 7, 8], top=[row(0.9, 0.05), row(0.6, 0.3), row(0.5, 0.45), None], pieces=[" a", " b", " c", " d"])
    got = ans([5, 6, 9, 9], pieces=[" a", " b", " z", " z"])
    d = A.first_divergence(ref, got)
    assert d is not None and d.pos == 2 and d.ref_tokens == [7, 8] and d.got_tokens == [9, 9]
    assert d.ref_text == " c d" and d.got_text == " z z"
    assert d.margin == pytest.approx(0.05) and not d.length_only
    assert "differs from token 2" in d.describe() and "0.050" in d.describe()


def test_near_tie_is_numerics_unless_exact_answers():
    ref = ans([1, 2], top=[row(0.9, 0.1), row(0.51, 0.49)])
    d = A.first_divergence(ref, ans([1, 3]))
    assert A.judge(d, exact=False, tie_margin=0.05, what="x").status == Status.WARN
    assert "numerics" in A.judge(d, exact=False, tie_margin=0.05, what="x").detail
    exact = A.judge(d, exact=True, tie_margin=0.05, what="x")
    assert exact.status == Status.FAIL and "exact_answers" in exact.detail


def test_clear_margin_fails_and_missing_probabilities_fail():
    ref = ans([1, 2], top=[row(0.9, 0.1), row(0.8, 0.1)])
    assert A.judge(A.first_divergence(ref, ans([1, 3])), exact=False, tie_margin=0.05, what="x").status == Status.FAIL
    bare = A.judge(A.first_divergence(ans([1, 2]), ans([1, 3])), exact=False, tie_margin=0.05, what="x")
    assert bare.status == Status.FAIL and "no reference probabilities" in bare.detail


def test_an_answer_that_ends_early_fails():
    d = A.first_divergence(ans([1, 2, 3]), ans([1, 2]))
    assert d is not None and d.length_only and d.pos == 2
    assert A.judge(d, exact=False, tie_margin=0.5, what="x").status == Status.FAIL


def test_margin_from_another_source_only_in_the_same_context():
    ref = ans([1, 2, 3])
    twin_same = ans([1, 2, 3], top=[None, None, row(0.52, 0.48)])
    twin_other = ans([1, 9, 3], top=[None, None, row(0.9, 0.01)])
    assert A.first_divergence(ref, ans([1, 2, 4]), twin_other).margin is None
    assert A.first_divergence(ref, ans([1, 2, 4]), twin_other, twin_same).margin == pytest.approx(0.04)


def test_foreign_nonce_is_named():
    answers = {"a": ans([1], key="a", pieces=["I saw ZQ-BBBBBB"]), "b": ans([2], key="b", pieces=["fine ZQ-BBBBBB"])}
    out = A.foreign_nonces(answers, {"a": "ZQ-AAAAAA", "b": "ZQ-BBBBBB"})
    assert out == ["a shows b's nonce ZQ-BBBBBB"]


def test_nonces_are_unique_per_request_and_stable():
    keys = ["short-0", "short-1", "short-2", "long", "chat", "repeat"]
    assert len({A.nonce(k) for k in keys}) == len(keys)
    assert A.nonce("short-0") == A.nonce("short-0")
    assert A.short_request(0).nonce in A.short_request(0).prompt


def test_reference_set_long_prompt_spans_ubatches_and_fits():
    reqs = A.reference_set(ubatch=64, tokens_per_paragraph=20, n_ctx_slot=2048)
    long = next(r for r in reqs if r.key == "long")
    assert long.prompt.count("part") * 20 > 64            # more than one ubatch of prefill
    assert {r.key for r in reqs} == {"short-0", "short-1", "long", "chat"}
    tight = A.reference_set(ubatch=512, tokens_per_paragraph=70, n_ctx_slot=256)
    assert "long" not in {r.key for r in tight}           # does not fit the slot: left out, not cut
    assert "long" not in {r.key for r in A.reference_set(64, 20, 2048, long=False)}


def test_parse_completion_with_probabilities_and_drafted_tail():
    req = A.short_request(0)
    body = {"content": " a b", "tokens": [7, 8], "stop_type": "limit", "truncated": False, "tokens_evaluated": 9,
            "timings": {"draft_n": 3, "draft_n_accepted": 2},
            "completion_probabilities": [{"id": 7, "token": " a", "logprob": -0.1,
                                          "top_logprobs": [{"id": 7, "token": " a", "logprob": math.log(0.7)},
                                                           {"id": 4, "token": " q", "logprob": math.log(0.2)}]}]}
    a = A.parse_answer(req, body)
    assert a.tokens == [7, 8] and a.drafted == 3 and a.accepted == 2 and a.n_prompt == 9
    assert a.top[0] == [(7, pytest.approx(0.7)), (4, pytest.approx(0.2))] and a.top[1] is None


def test_parse_chat_takes_ids_from_logprobs_and_sees_a_context_cut():
    req = A.chat_request()
    body = {"choices": [{"finish_reason": "length", "message": {"content": "ab"},
                         "logprobs": {"content": [{"id": 3, "token": "a", "logprob": 0.0, "top_logprobs": []},
                                                  {"id": 4, "token": "b", "logprob": 0.0}]}}],
            "usage": {"prompt_tokens": 60, "completion_tokens": 2}}
    a = A.parse_answer(req, body, n_ctx_slot=63)
    assert a.tokens == [3, 4] and a.truncated and a.finish == "length"
    assert not A.parse_answer(req, body, n_ctx_slot=4096).truncated     # its own max_tokens is not a cut


@pytest.mark.parametrize("body", [[], {"content": "x"}, {"tokens": ["a"]}, {"choices": []}])
def test_bad_answers_are_named(body):
    req = A.chat_request() if isinstance(body, dict) and "choices" in body else A.short_request(0)
    with pytest.raises(A.BadAnswer):
        A.parse_answer(req, body)


def test_kl_over_top_n():
    ref = [(1, 0.7), (2, 0.2)]
    assert A.kl_top(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert A.kl_top(ref, [(1, 0.2), (2, 0.7)]) > 0.3
    assert A.kl_top(ref, [(9, 0.9), (8, 0.05)]) > 1.0      # the reference's tokens missing from the candidate


def test_grammar_literal_escapes():
    assert A.grammar_literal('a"b\\c\nd\x01é') == 'root ::= "a\\"b\\\\c\\nd\\x01é"'


def test_probe_compares_forced_positions_only():
    ref = ans([1, 2, 3], top=[row(0.8, 0.1, 1, 5), row(0.7, 0.2, 2, 6), row(0.6, 0.3, 3, 7)])
    cand = ans([1, 2, 9], top=[row(0.8, 0.1, 1, 5), row(0.3, 0.6, 2, 6), row(0.9, 0.1, 9, 3)])
    p = A.probe_result(ref, cand)
    assert p.forced == 2 and len(p.judged) == 3      # the position where they part still shares the context
    assert [s.cand_top1 == s.ref_top1 for s in p.judged] == [True, False, False]
    q = A.Quality([p])
    assert q.top1 == pytest.approx(1 / 3) and q.mean_kl and q.mean_kl > 0
    s = q.summary(tie_margin=0.05)
    assert s["positions"] == 3 and s["clear_disagreements"] == 2 and s["forced"] == {"k": "2/3"}
    after = A.probe_result(ans([1, 2, 3, 4], top=[row(0.8, 0.1, 1, 5)] * 4), ans([9, 2, 3, 4], top=[row(0.8, 0.1, 9, 5)] * 4))
    assert after.forced == 0 and len(after.judged) == 1      # nothing compared after the contexts part


def test_probe_body_forces_the_reference_text():
    req = A.short_request(0)
    body = A.probe_body(req, ans([1, 2], pieces=[" Mount", " Everest"]))
    assert body["grammar"] == 'root ::= " Mount Everest"' and body["n_predict"] == 2 and body["n_probs"] == A.N_PROBS
    assert body["temperature"] == 0.0 and body["cache_prompt"] is False


def prof(**kw) -> Profile:
    return Profile.model_validate({"model": "m.gguf", **kw})


def test_twins_drop_drafting_slots_and_rpc_and_set_the_reference_kv():
    p = prof(parallel=2, enable_mtp=True, draft_model="d.gguf", kv_k="q8_0", kv_v="q8_0", port=8080,
             rpc={"local_workers": 2}, n_gpu_layers=99)
    nd = twin_profile(p, "nodraft")
    assert not nd.enable_mtp and nd.parallel == 1 and nd.rpc is None and nd.n_gpu_layers is None
    assert (nd.kv_k, nd.kv_v) == ("q8_0", "q8_0")
    assert (twin_profile(p, "f16").kv_k, twin_profile(p, "f16").kv_v) == ("f16", "f16")
    assert signature(nd) == signature(twin_profile(prof(parallel=3, kv_k="q8_0", kv_v="q8_0"), "nodraft"))
    assert signature(prof(ctx=2048)) != signature(prof(ctx=4096))


def test_a_cell_is_its_own_twin_only_when_nothing_differs():
    assert is_own_twin(prof(kv_k="f16", kv_v="f16"), "f16")
    assert is_own_twin(prof(kv_k="q8_0", kv_v="q8_0"), "nodraft")
    assert not is_own_twin(prof(kv_k="q8_0", kv_v="q8_0"), "f16")
    assert not is_own_twin(prof(parallel=2), "nodraft")
    assert not is_own_twin(prof(enable_mtp=True, draft_model="d.gguf"), "nodraft")


def test_quality_bounds_by_kv_type_and_profile():
    assert quality_bounds(prof(kv_k="q8_0", kv_v="q8_0"))[:2] == (0.01, 0.95)
    assert quality_bounds(prof(kv_k="q8_0", kv_v="q4_0"))[:2] == (0.03, 0.93)
    assert quality_bounds(prof(kv_k="turbo4", kv_v="turbo4"))[:2] == (0.03, 0.93)
    custom = prof(kv_k="q4_0", harness={"expect_quality": {"kl_max": 0.05, "top1_min": 0.9}})
    assert quality_bounds(custom) == (0.05, 0.9, "expect_quality")


def test_repeat_sibling_shares_the_prompt_but_one_word():
    req, sib = repeat_requests()
    assert req.prompt != sib.prompt and req.prompt.split()[:3] == sib.prompt.split()[:3]
    assert req.prompt.split()[-3:] == sib.prompt.split()[-3:]


def test_a_chat_answer_cut_by_the_slots_context_is_named_with_both_numbers():
    from llamactl.judge.checks import cut_by_context

    full = {"usage": {"completion_tokens": 400, "prompt_tokens": 20}, "choices": [{"finish_reason": "length"}]}
    eos = {"usage": {"completion_tokens": 12, "prompt_tokens": 20}, "choices": [{"finish_reason": "stop"}]}
    cut = {"usage": {"completion_tokens": 107, "prompt_tokens": 20}, "choices": [{"finish_reason": "length"}]}
    assert cut_by_context([full, eos], 400, 128) is None
    msg = cut_by_context([full, cut], 400, 128)
    assert msg is not None and "answer 1" in msg and "107 of 400" in msg and "n_ctx_slot 128" in msg


def test_a_margin_from_the_top_token_alone_is_its_lower_bound():
    only_top = A.Answer("k", [5, 6], "ab", top=[[(5, 0.229)], [(6, 0.9)]])
    assert A.margin_at(0, only_top) == (0.0, [(5, 0.229)])        # p2 may be as large: no claim of a clear margin
    assert A.margin_at(1, only_top)[0] == 0.8                      # p2 <= 0.1
