"""load and soak without a server: lengths, levels, durations, timing one request (MockTransport), the
verdicts on synthetic samples, and the load gate."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from llamactl.cli.common import parse_duration
from llamactl.core.errors import BadInput
from llamactl.judge import load as L, soak as S, traffic as T
from llamactl.judge.answers import Answer
from llamactl.judge.status import Status
from llamactl.report import gate, load_gate
from llamactl.serve.profiles import SoakBounds


def test_lengths_parse_and_draw():
    assert T.Lengths.parse("128", "--prompt-len") == T.Lengths(128, 128)
    r = T.Lengths.parse(" 64:256 ", "--max-tokens")
    rng = random.Random(1)
    assert all(64 <= r.draw(rng) <= 256 for _ in range(50)) and str(r) == "64:256"
    for bad in ("", "x", "0", "9:3", "1:x", "-4", "1.5"):
        with pytest.raises(BadInput, match="--prompt-len"):
            T.Lengths.parse(bad, "--prompt-len")


def test_levels_and_durations():
    assert [lv.label for lv in L.parse_levels(["1,2", "4"], ["0.5"])] == ["1 clients", "2 clients", "4 clients", "0.5 req/s"]
    assert [lv.label for lv in L.parse_levels([], [])] == ["1 clients", "2 clients", "4 clients", "8 clients"]
    for clients, rates in ((["0"], []), (["x"], []), (["1.5"], []), ([], ["-1"]), ([], ["nan"]), (["1000"], []), ([], ["inf"]), ([], ["5000"])):
        with pytest.raises(BadInput):
            L.parse_levels(clients, rates)
    assert parse_duration("90") == 90 and parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration("2.5s") == 2.5 and parse_duration("5m30") == 330 and parse_duration("1H") == 3600
    for bad in ("", "0", "abc", "5 weeks", "-1m", "1x"):
        with pytest.raises(BadInput, match="--duration"):
            parse_duration(bad)


def test_loads_that_cannot_measure_are_refused_before_launch():
    """A request longer than a cell's slot (ctx / parallel; the whole ctx with kv_unified) would be refused
    by every server; an open loop with under one expected arrival measures nothing."""
    from llamactl.judge.matrix import Cell
    from llamactl.serve import profiles

    base = profiles.resolve("default", environ={}, cli={"ctx": 4096})
    cells = [Cell((("parallel", 1),)), Cell((("parallel", 2),)), Cell((("parallel", 2), ("kv_unified", True)))]
    fits = L.Settings(T.Lengths(64, 1900), T.Lengths(64, 64), 20.0)
    L.check_settings(base, cells, [L.Level("clients", 1.0)], fits)          # 1900 + 64 + 12 <= 2048
    L.check_settings(base, cells[2:], [], L.Settings(T.Lengths(4000, 4000)))   # unified: 4076 <= 4096
    for lens, cell, per_slot in (((64, 2000), cells[1], 2048), ((4050, 4050), cells[2], 4096), ((4050, 4050), cells[0], 4096)):
        with pytest.raises(BadInput, match=f"does not fit a slot of {per_slot} tokens"):
            L.check_settings(base, [cell], [L.Level("clients", 1.0)], L.Settings(T.Lengths(*lens), T.Lengths(64, 64), 20.0))
    assert L.slot_tokens(profiles.resolve("default", environ={}, cli={"ctx": 0}).profile) is None   # the model's own
    L.check_settings(profiles.resolve("default", environ={}, cli={"ctx": 0}), cells, [], L.Settings(T.Lengths(9999, 9999)))
    for rate, secs in ((1e-9, 20.0), (0.04, 20.0)):
        with pytest.raises(BadInput, match="less than one request expected"):
            L.check_settings(base, cells[:1], [L.Level("rate", rate)], L.Settings(duration_s=secs))
    L.check_settings(base, cells[:1], [L.Level("rate", 0.05)], L.Settings(duration_s=20.0))


def test_percentiles():
    assert T.percentile([], 50) is None
    assert T.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and T.percentile([5.0], 99) == 5.0
    p = T.pcts([None, 1.0, 3.0])
    assert p["n"] == 2 and p["mean"] == 2.0 and p["p50"] == 2.0


def _sse(chunks: list[dict], done: bool = True) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + ("data: [DONE]\n\n" if done else "")


def _client(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_send_times_a_streamed_answer_and_takes_the_servers_counts():
    chunks = [{"choices": [{"delta": {"content": w}}]} for w in ("a", "b", "c")]
    chunks.append({"choices": [{"delta": {}, "finish_reason": "length"}],
                   "timings": {"prompt_n": 7, "prompt_ms": 5.0, "predicted_n": 3, "predicted_ms": 2.0, "draft_n": 2,
                               "draft_n_accepted": 1}})
    c = _client(lambda req: httpx.Response(200, text=_sse(chunks), headers={"content-type": "text/event-stream"}))
    rec = T.send(c, "http://x", "/v1/chat/completions", T.chat_body("hi", 3, stream=True), kind="k", t0=0.0)
    assert rec.ok and rec.output_tokens == 3 and rec.prompt_tokens == 7 and rec.text == "abc"
    assert rec.ttft_s is not None and rec.tpot_s is not None and rec.server["draft_n_accepted"] == 1
    left = T.send(c, "http://x", "/v1/chat/completions", T.chat_body("hi", 3, stream=True), kind="k", t0=0.0,
                  leave_after_tokens=1)
    assert left.left and left.ok and left.output_tokens == 1


def test_send_reads_anthropic_streams_and_names_each_failure():
    events = [{"type": "message_start"}, {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}},
              {"type": "message_delta", "usage": {"output_tokens": 1}}]
    c = _client(lambda req: httpx.Response(200, text=_sse(events, done=False)))
    rec = T.send(c, "http://x", "/v1/messages", T.messages_body("q", 4, stream=True), kind="m", t0=0.0)
    assert rec.ok and rec.text == "hi" and rec.output_tokens == 1
    for resp, kind in ((httpx.Response(503, text="busy"), T.HTTP_5XX), (httpx.Response(400, text="too long"), T.HTTP_4XX),
                       (httpx.Response(200, text="data: {oops\n\n"), T.STREAM)):
        rec = T.send(_client(lambda req, r=resp: r), "http://x", "/v1/chat/completions",
                     T.chat_body("q", 4, stream=True), kind="k", t0=0.0)
        assert rec.error == kind, (kind, rec)

    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")
    assert T.send(_client(refuse), "http://x", "/v1/chat/completions", T.chat_body("q", 4, stream=False),
                  kind="k", t0=0.0).error == T.CONNECT

    def slow(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")
    assert T.send(_client(slow), "http://x", "/v1/chat/completions", T.chat_body("q", 4, stream=False),
                  kind="k", t0=0.0).error == T.TIMEOUT


def _rec(start: float, end: float, **kw) -> T.Record:
    r = T.Record(kw.pop("kind", "chat"), start, end, 200)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_summarize_counts_errors_and_shows_client_server_gaps():
    ok = [_rec(i, i + 1.0, ttft_s=0.1, tpot_s=0.01, output_tokens=10, server={"predicted_ms": 100.0, "predicted_n": 10,
                                                                                "prompt_ms": 50.0}) for i in range(4)]
    bad = [_rec(5, 6, error=T.HTTP_5XX, detail="boom")]
    s = L.summarize(L.Level("clients", 2), ok + bad, 10.0, slots=2)
    assert s["completed"] == 4 and s["errors"] == {T.HTTP_5XX: 1} and s["error_examples"][T.HTTP_5XX] == "boom"
    assert s["output_tok_per_s"] == 4.0 and s["req_per_s"] == 0.4
    assert s["server_check"]["tpot_s"]["gap_pct"] == pytest.approx(0.0)
    assert "ttft_s: client 100.00 ms vs server 50.00 ms (+100%)" in s["server_check"]["shown"]
    # more clients than slots: a wait for a slot is queue_s, not a gap
    s = L.summarize(L.Level("clients", 4), ok, 10.0, slots=2)
    assert "ttft_s" not in s["server_check"] and s["queue_s"]["p50"] == pytest.approx(0.05)


def _samples(resid_per_s: float, cache_per_s: float = 0.0, entries_per_s: float = 0.0, n: int = 60) -> list[S.Sample]:
    return [S.Sample(float(t), rss=200 + t * (resid_per_s + cache_per_s), anon_swap=100 + t * (resid_per_s + cache_per_s),
                     cache_mib=t * cache_per_s, cache_prompts=int(t * entries_per_s), busy=1, in_flight=1) for t in range(n)]


def test_memory_verdict_tells_the_prompt_cache_and_its_bookkeeping_from_a_leak():
    b = SoakBounds(memory_slope_mib_per_h=512)
    assert S.memory_verdict(_samples(0.0, cache_per_s=5.0), b, 60, 600).status == Status.PASS   # the cache's own growth
    leak = S.memory_verdict(_samples(1.0), b, 60, 600)                                         # 3600 MiB/h
    assert leak.status == Status.FAIL and "+3600 MiB/h" in leak.detail
    # growth that tracks new cache entries at ~40 KiB each: bookkeeping, or a leak: WARN
    v = S.memory_verdict(_samples(0.2, cache_per_s=5.0, entries_per_s=5.0), b, 60, 600)
    assert v.status == Status.WARN and "prompt-cache entries" in v.detail
    # a leak beside a growing cache: far more per entry than bookkeeping
    v = S.memory_verdict(_samples(0.3, cache_per_s=5.0, entries_per_s=0.1), b, 60, 600)
    assert v.status == Status.FAIL and "per new prompt-cache entry" in v.detail, v.detail
    assert "more than 4x the bound" in S.memory_verdict(_samples(2.0, cache_per_s=5.0, entries_per_s=1.0), b, 60, 600).detail
    # growth while the cache churns at its limit (evicting as it adds): heap left by evicted entries, WARN
    full = [S.Sample(float(t), rss=9000 + 0.25 * t, anon_swap=8500 + 0.25 * t, cache_mib=8190, cache_prompts=2700,
                     cache_limit_mib=8192) for t in range(60)]
    v = S.memory_verdict(full, b, 60, 600)
    assert v.status == Status.WARN and "churned at its 8192 MiB limit" in v.detail, v.detail
    assert S.memory_verdict(_samples(1.0, n=2), b, 60, 10).status == Status.SKIP


def test_slot_verdict_fails_a_slot_busy_with_no_client():
    b = SoakBounds(slot_release_s=2.0)
    fine = [S.Sample(float(t), busy=1, in_flight=1) for t in range(10)]
    assert S.slots_verdict(fine, b, [1.0]).status == Status.PASS
    stuck = fine + [S.Sample(10.0 + t, busy=2, in_flight=1) for t in range(4)]
    v = S.slots_verdict(stuck, b, [9.5])
    assert v.status == Status.FAIL and "stayed busy with no client for 3.0 s from 10 s" in v.detail
    assert S.slots_verdict([S.Sample(0.0)], b, []).status == Status.SKIP


def test_drift_errors_and_answers_verdicts():
    b = SoakBounds(warmup=0.0)

    def recs(t0: float, tps: float, acc: float, prompt: int = 100) -> list[T.Record]:
        return [_rec(t0, t0 + 0.5, output_tokens=8, prompt_tokens=prompt, server={
            "predicted_per_second": tps, "draft_n": 10, "draft_n_accepted": 10 * acc}) for _ in range(3)]
    assert S.drift_verdict(recs(0, 100, 0.9) + recs(95, 95, 0.9), b, 100).status == Status.PASS
    v = S.drift_verdict(recs(0, 100, 0.9) + recs(95, 50, 0.5), b, 100)
    assert v.status == Status.FAIL and "decode tok/s fell to 50%" in v.detail and "acceptance fell from 90% to 50%" in v.detail
    # conversations that grew decode slower by design: only like context lengths are compared (windows: a third)
    grown = recs(0, 100, 0.9) + recs(0, 40, 0.9, prompt=3000) + recs(95, 38, 0.9, prompt=3000) + recs(95, 99, 0.9)[:2]
    v = S.drift_verdict(grown, b, 100)
    assert v.status == Status.PASS and "like context lengths, 2 bin(s)" in v.detail, v.detail
    assert S.drift_verdict(recs(0, 100, 0.9) + recs(95, 40, 0.9, prompt=3000), b, 100).status == Status.FAIL
    # a lower median whose spread overlaps the first tenth's is noise (a busy core), not drift

    def spread(t0: float, values: list[float]) -> list[T.Record]:
        return [_rec(t0, t0 + 0.5, output_tokens=8, prompt_tokens=100, server={"predicted_per_second": v}) for v in values]
    v = S.drift_verdict(spread(0, [100, 60, 140, 90]) + spread(95, [55, 60, 65, 140]), b, 100)
    assert v.status == Status.PASS and "within the noise" in v.detail, v.detail
    ok = [_rec(0, 1), _rec(1, 2, left=True), _rec(2, 3, error=T.HTTP_4XX, expected_error=True)]
    assert S.errors_verdict(ok, None).status == Status.PASS
    assert S.errors_verdict(ok + [_rec(3, 4, error=T.HTTP_5XX, detail="x")], None).status == Status.FAIL
    assert "died" in S.errors_verdict(ok, "SIGSEGV").detail
    a = Answer("short-0", [1, 2, 3], "abc")
    assert S.answers_verdict([(a, a, 1.0)], True, 0.05).status == Status.PASS
    v = S.answers_verdict([(a, Answer("short-0", [1, 9, 3], "a?c"), 5.0)], True, 0.05)
    assert v.status == Status.FAIL and "short-0 at 5 s under load vs alone" in v.detail
    assert S.answers_verdict([], True, 0.05).status == Status.SKIP


def test_load_gate_compares_throughput_and_p90_latency():
    def run(tps: float, p90: float) -> dict:
        return {"kind": "load", "cells": [{"cell": "c", "levels": [{"level": "2 clients", "output_tok_per_s": tps,
                                                                     "e2e_s": {"p90": p90}}]}]}
    th = gate.Thresholds(0.95, 0.85)
    v = load_gate.compare(run(100, 1.0), run(100, 1.0), "file a", th)
    assert [x.verdict for x in v] == [gate.OK, gate.OK]
    v = load_gate.compare(run(50, 1.0), run(100, 1.0), "file a", th)
    assert v[0].verdict == gate.REGRESSION and v[1].verdict == gate.OK
    v = load_gate.compare(run(100, 1.1), run(100, 1.0), "file a", th)
    assert v[1].verdict == gate.WARN
    assert load_gate.compare(run(100, 1.0), {"cells": []}, "file a", th)[0].verdict == gate.NO_BASELINE


def test_a_slot_kept_for_a_client_that_left_shows_even_behind_queued_requests():
    b = SoakBounds(slot_release_s=1.0)
    # both slots busy, two requests in flight (one queued): only the walk-away count shows the kept slot
    hidden = [S.Sample(float(t), busy=2, in_flight=2, busy_long=1, in_flight_long=0) for t in range(4)]
    v = S.slots_verdict(hidden, b, [0.0])
    assert v.status == Status.FAIL and "for 3.0 s" in v.detail
    fine = [S.Sample(float(t), busy=2, in_flight=2, busy_long=1, in_flight_long=1) for t in range(4)]
    assert S.slots_verdict(fine, b, [0.0]).status == Status.PASS


def test_slot_tokens_pads_as_llama_cpp_does():
    """A validate run showed it: ctx 256 at parallel 2 runs 256 tokens per slot, not 128."""
    from llamactl.serve import profiles

    def slot(**kw):
        return L.slot_tokens(profiles.resolve("default", environ={}, cli=kw).profile)
    assert slot(ctx=256, parallel=2) == 256 and slot(ctx=4096, parallel=2) == 2048 and slot(ctx=4096, parallel=3) == 1536
    assert slot(ctx=100, parallel=1) == 256 and slot(ctx=1000, parallel=4, kv_unified=True) == 1024
