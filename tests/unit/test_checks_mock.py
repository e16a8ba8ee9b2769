"""Each HTTP check against httpx.MockTransport: a good answer passes, each bad shape is FAIL with a
reason, missing evidence is ERROR, and an exception inside the check is ERROR with its type."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import httpx
import pytest

from llamactl.judge import checks
from llamactl.judge.checks import CellContext, run_check
from llamactl.judge.status import Status
from llamactl.serve.profiles import Profile

MESSAGE = {"id": "m", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}],
           "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 2}}
TIMINGS = {"prompt_n": 3, "prompt_ms": 5.0, "predicted_n": 2, "predicted_ms": 150.0}
CHAT = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}, "timings": TIMINGS}
EVENTS = [("message_start", {"type": "message_start"}),
          ("content_block_start", {"type": "content_block_start", "index": 0}),
          ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"text": "hi"}}),
          ("content_block_stop", {"type": "content_block_stop", "index": 0}),
          ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
          ("message_stop", {"type": "message_stop"})]


def sse(events: list[tuple[str, dict]]) -> str:
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events)


def chat_sse(timings: dict | None = TIMINGS, finish: bool = True) -> str:
    last: dict[str, Any] = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop" if finish else None}]}
    if timings:
        last["timings"] = timings
    return (f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': 'hi'}, 'finish_reason': None}]})}\n\n"
            f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n")


def slots_json(n: int = 1, busy: int = 0, spec: bool = False, n_ctx: int = 4096) -> list[dict]:
    return [{"id": i, "n_ctx": n_ctx, "speculative": spec, "is_processing": i < busy} for i in range(n)]


Handler = Callable[[httpx.Request], httpx.Response]


def server(**routes: Any) -> Handler:
    """A well-behaved llama-server: ``path`` (``#stream`` for SSE) -> JSON, text, a Response or a callable."""
    defaults: dict[str, Any] = {
        "/health": {"status": "ok"}, "/props": {"total_slots": 1, "default_generation_settings": {"n_ctx": 4096},
                                                 "model_path": "/m/model.gguf"},
        "/slots": slots_json(), "/metrics": "llamacpp:requests_processing 0\n",
        "/v1/messages": MESSAGE, "/v1/messages#stream": sse(EVENTS),
        "/v1/chat/completions": CHAT, "/v1/chat/completions#stream": chat_sse()}
    defaults.update(routes)

    def handle(req: httpx.Request) -> httpx.Response:
        key = req.url.path
        if req.method == "POST" and json.loads(req.content or b"{}").get("stream"):
            key += "#stream"
        v = defaults[key]
        if callable(v):
            v = v(req)
        if isinstance(v, httpx.Response):
            return v
        if isinstance(v, str):
            return httpx.Response(200, text=v)
        return httpx.Response(200, json=v)
    return handle


def ctx_for(handler: Handler, **profile: Any) -> CellContext:
    prof = Profile(model="/m/model.gguf", **{"metrics": False, "slots": False, **profile})
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return CellContext("http://fake", prof, client, request_timeout=1.0, model_paths={})


def run(name: str, handler: Handler, **profile: Any) -> checks.CheckResult:
    fn = dict(checks.CHECKS)[name]
    return run_check(name, fn, ctx_for(handler, **profile))


def routes(**kw: Any) -> dict[str, Any]:
    """Map keyword names to paths: messages, messages_stream, chat, chat_stream, slots, props, metrics, health."""
    names = {"messages": "/v1/messages", "messages_stream": "/v1/messages#stream", "chat": "/v1/chat/completions",
             "chat_stream": "/v1/chat/completions#stream", "slots": "/slots", "props": "/props",
             "metrics": "/metrics", "health": "/health"}
    return {names[k]: v for k, v in kw.items()}


def mk(**kw: Any) -> Handler:
    h = server()
    table = routes(**kw)

    def handle(req: httpx.Request) -> httpx.Response:
        key = req.url.path + ("#stream" if req.method == "POST" and json.loads(req.content or b"{}").get("stream") else "")
        if key in table:
            v = table[key]
            v = v(req) if callable(v) else v
            if isinstance(v, httpx.Response):
                return v
            return httpx.Response(200, text=v) if isinstance(v, str) else httpx.Response(200, json=v)
        return h(req)
    return handle


def boom(req: httpx.Request) -> httpx.Response:
    raise RuntimeError("boom")


def timeout(req: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=req)


# ---- the two /v1/messages checks -------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_message", "claude_style"])
def test_messages_checks(name):
    assert run(name, mk()).status == Status.PASS
    bad = {
        "not JSON": httpx.Response(200, text="{nope"),
        "HTTP 500": httpx.Response(500, text="oops"),
        "not an object": [1, 2],
        "type/role are None/None": {"id": "m"},
        "content is not a non-empty list": dict(MESSAGE, content=[]),
        "no text block": dict(MESSAGE, content=[{"type": "image"}]),
        "stop_reason 'weird'": dict(MESSAGE, stop_reason="weird"),
        "usage lacks input_tokens/output_tokens": dict(MESSAGE, usage=None),
    }
    for text, answer in bad.items():
        r = run(name, mk(messages=answer))
        assert r.status == Status.FAIL and text in r.detail, (text, r.detail)
    r = run(name, mk(messages=timeout))
    assert r.status == Status.FAIL and r.detail == "POST /v1/messages: no answer within request_timeout 1s (ReadTimeout)"
    r = run(name, mk(messages=lambda req: (_ for _ in ()).throw(httpx.ConnectError("refused", request=req))))
    assert r.status == Status.FAIL and r.detail == "ConnectError: refused"
    r = run(name, mk(messages=boom))
    assert r.status == Status.ERROR and r.detail == "RuntimeError: boom"


def test_a_trickling_answer_is_bounded_by_request_timeout():
    def slow(req: httpx.Request) -> httpx.Response:
        def body():
            for _ in range(50):
                time.sleep(0.05)
                yield b" "
        return httpx.Response(200, content=body())
    ctx = ctx_for(mk(messages=slow))
    ctx.request_timeout = 0.3
    t = time.monotonic()
    r = run_check("tiny_message", checks.tiny_message, ctx)
    assert r.status == Status.FAIL and "answer not complete within request_timeout 0.3s" in r.detail
    assert time.monotonic() - t < 2


def test_the_cell_deadline_bounds_a_request_and_is_named():
    ctx = ctx_for(mk(messages=timeout))
    ctx.deadline, ctx.cell_timeout = time.monotonic() + 0.2, 30
    r = run_check("tiny_message", checks.tiny_message, ctx)
    assert r.status == Status.FAIL and "within cell_timeout 30s" in r.detail
    ctx.deadline = time.monotonic() - 1
    r = run_check("claude_style", checks.claude_style, ctx)
    assert r.status == Status.FAIL and r.detail == "cell_timeout 30s reached"


# ---- streaming ---------------------------------------------------------------------------------

def test_streaming():
    assert run("streaming", mk()).status == Status.PASS
    e = EVENTS
    bad = {
        "first event is content_block_start": sse(e[1:]),
        "content_block_delta for block 0 outside content_block_start/stop": sse([e[0], e[2], e[1], *e[3:]]),
        "without message_stop": sse(e[:3]),
        "events after message_stop": sse([*e, e[2]]),
        "message_delta while block 0 is still open": sse([e[0], e[1], e[2], e[4], e[3], e[5]]),
        "error event": sse([e[0], ("error", {"type": "error", "error": {"message": "overloaded"}})]),
        "SSE data is not JSON": "event: message_start\ndata: {oops\n\n",
        "HTTP 503": httpx.Response(503, text="busy"),
        "no content_block_delta event": sse([e[0], e[1], e[3], e[4], e[5]]),
    }
    for text, answer in bad.items():
        r = run("streaming", mk(messages_stream=answer))
        assert r.status == Status.FAIL and text in r.detail, (text, r.detail)
    assert run("streaming", mk(messages_stream=boom)).status == Status.ERROR


# ---- chat completions ------------------------------------------------------------------------

def test_chat_completions_collects_timings_from_plain_and_streamed_answers():
    ctx = ctx_for(mk())
    r = run_check("chat_completions", checks.chat_completions, ctx)
    assert r.status == Status.PASS and r.data["stream_chunks"] == 2 and r.data["stream_done"]
    assert len(ctx.timings) == 2
    bad = {"no choices[0]": ({"usage": {}}, None), "message.content is not a string": (
        dict(CHAT, choices=[{"message": {"content": None}}]), None),
        "usage lacks completion_tokens": (dict(CHAT, usage={}), None),
        "no finish_reason": (CHAT, chat_sse(finish=False)), "chat stream: data is not JSON": (CHAT, "data: {x\n\n")}
    for text, (plain, stream) in bad.items():
        kw: dict[str, Any] = {"chat": plain}
        if stream is not None:
            kw["chat_stream"] = stream
        r = run("chat_completions", mk(**kw))
        assert r.status == Status.FAIL and text in r.detail, (text, r.detail)
    assert run("chat_completions", mk(chat=boom)).status == Status.ERROR


# ---- concurrency ---------------------------------------------------------------------------

def slow_chat(delay: float = 0.2, timings: dict | None = TIMINGS) -> Callable[[httpx.Request], httpx.Response]:
    def h(req: httpx.Request) -> httpx.Response:
        time.sleep(delay)
        return httpx.Response(200, json=dict(CHAT, timings=timings) if timings else {k: v for k, v in CHAT.items() if k != "timings"})
    return h


def test_concurrency_evidence_from_slots():
    r = run("concurrency", mk(chat=slow_chat(), slots=slots_json(2, busy=2)), parallel=2, slots=True)
    assert r.status == Status.PASS and r.data["evidence"] == "/slots" and r.data["peak_busy_slots"] == 2
    # sampling can miss short requests: a lower sampled peak defers to the server's own timings
    r = run("concurrency", mk(chat=slow_chat(0.2, dict(TIMINGS, predicted_ms=190.0)), slots=slots_json(2, busy=1)),
            parallel=2, slots=True)
    assert r.status == Status.PASS and r.data["evidence"].startswith("response timings (slots never busy together")
    r = run("concurrency", mk(chat=slow_chat(0.2, None), slots=slots_json(2, busy=1)), parallel=2, slots=True)
    assert r.status == Status.FAIL and "slots never busy together: peak 1/2" in r.detail and "no timings" in r.detail
    lock = threading.Lock()

    def serial(req: httpx.Request) -> httpx.Response:   # one real slot: spans cannot overlap
        with lock:
            time.sleep(0.2)
        return httpx.Response(200, json=dict(CHAT, timings=dict(TIMINGS, prompt_ms=0.0, predicted_ms=190.0)))
    r = run("concurrency", mk(chat=serial, slots=slots_json(2, busy=1)), parallel=2, slots=True)
    assert r.status == Status.FAIL and "slots never busy together: peak 1/2" in r.detail and "never overlapped" in r.detail
    r = run("concurrency", mk(chat=slow_chat(), slots={"slots": "x"}), parallel=2, slots=True)
    assert r.status == Status.FAIL and "malformed /slots" in r.detail


def test_concurrency_evidence_from_metrics_then_timings_else_error():
    r = run("concurrency", mk(chat=slow_chat(), metrics="llamacpp:requests_processing 2\n"), parallel=2, metrics=True)
    assert r.status == Status.PASS and r.data["evidence"] == "/metrics requests_processing"
    # no /slots, no /metrics: the server's processing spans (timings) must overlap
    r = run("concurrency", mk(chat=slow_chat(0.2, dict(TIMINGS, predicted_ms=190.0))), parallel=2)
    assert r.status == Status.PASS and r.data["evidence"] == "response timings" and r.data["overlap_s"] > 0
    lock = threading.Lock()

    def one_at_a_time(req: httpx.Request) -> httpx.Response:   # a server with one real slot
        with lock:
            time.sleep(0.2)
        return httpx.Response(200, json=dict(CHAT, timings=dict(TIMINGS, prompt_ms=0.0, predicted_ms=190.0)))
    r = run("concurrency", mk(chat=one_at_a_time), parallel=2)
    assert r.status == Status.FAIL and "never overlapped" in r.detail
    r = run("concurrency", mk(chat=slow_chat(0.05, None)), parallel=2)
    assert r.status == Status.ERROR and r.detail.startswith("cannot show that 2 slots decoded together: /slots is off")
    r = run("concurrency", mk(chat={"choices": []}), parallel=2)
    assert r.status == Status.FAIL and "no choices[0]" in r.detail


def test_concurrency_with_mtp_needs_drafts_per_response():
    drafted = dict(TIMINGS, draft_n=8, draft_n_accepted=7)
    r = run("concurrency", mk(chat=slow_chat(0.2, drafted), slots=slots_json(2, 2, True)), parallel=2, slots=True,
            enable_mtp=True, draft_model="/m/d.gguf")
    assert r.status == Status.PASS and r.data["draft_tokens"] == 16
    r = run("concurrency", mk(chat=slow_chat(0.2), slots=slots_json(2, 2, True)), parallel=2, slots=True,
            enable_mtp=True, draft_model="/m/d.gguf")
    assert r.status == Status.FAIL and "2/2 concurrent requests drafted nothing" in r.detail


# ---- speculative_metrics: drafting evidence --------------------------------------------------

def spec_ctx(timings: list[dict], metrics: bool = False, metrics_text: str = "", **profile: Any) -> CellContext:
    ctx = ctx_for(mk(metrics=metrics_text), metrics=metrics, **profile)
    ctx.timings = list(timings)
    return ctx


MTP = {"enable_mtp": True, "draft_model": "/m/d.gguf"}


def test_mtp_drafting_from_timings_when_metrics_are_off():
    ctx = spec_ctx([dict(TIMINGS, draft_n=10, draft_n_accepted=9), TIMINGS], **MTP, expect_acceptance=(0.8, 1.0))
    r = run_check("speculative_metrics", checks.speculative_metrics, ctx)
    assert r.status == Status.PASS and r.data["acceptance"] == 0.9 and r.data["scheme"] == "timings"
    assert "counted from response timings" in r.data["note"]
    r = run_check("speculative_metrics", checks.speculative_metrics, spec_ctx([], **MTP))
    assert r.status == Status.ERROR and r.detail == ("MTP is on but nothing can show drafting: /metrics is off "
                                                     "(metrics: false) and no response carried timings")
    r = run_check("speculative_metrics", checks.speculative_metrics, spec_ctx([TIMINGS], **MTP))
    assert r.status == Status.FAIL and "no draft tokens" in r.detail
    ctx = spec_ctx([dict(TIMINGS, draft_n=10, draft_n_accepted=1)], **MTP, expect_acceptance=(0.9, 1.0))
    r = run_check("speculative_metrics", checks.speculative_metrics, ctx)
    assert r.status == Status.FAIL and "draft acceptance 10% outside the expected 90%-100%" in r.detail


def test_mtp_off_without_any_measure_is_skip_and_drafts_are_fail():
    r = run_check("speculative_metrics", checks.speculative_metrics, spec_ctx([]))
    assert r.status == Status.SKIP
    r = run_check("speculative_metrics", checks.speculative_metrics, spec_ctx([dict(TIMINGS, draft_n=4)]))
    assert r.status == Status.FAIL and "MTP is off but 4 draft tokens" in r.detail
    assert run_check("speculative_metrics", checks.speculative_metrics, spec_ctx([TIMINGS])).status == Status.PASS


def test_mtp_drafting_from_metrics_and_garbage_metrics():
    text = ('llamacpp:spec_decode_num_draft_tokens_total 20\nllamacpp:spec_decode_num_accepted_tokens_total 19\n'
            'llamacpp:spec_decode_num_drafts_total 5\n')
    r = run_check("speculative_metrics", checks.speculative_metrics, spec_ctx([], True, text, **MTP))
    assert r.status == Status.PASS and r.data["scheme"] == "upstream" and r.data["acceptance"] == 0.95
    r = run_check("speculative_metrics", checks.speculative_metrics, spec_ctx([], True, "<html>{{ x", **MTP))
    assert r.status == Status.FAIL and r.detail.startswith("/metrics is not Prometheus text")


# ---- server_view: rendered vs actual -----------------------------------------------------------

def run_view(profile: dict, log: list[str] | None = None, **kw: Any) -> tuple[checks.CheckResult, CellContext]:
    ctx = ctx_for(mk(**kw), **profile)
    ctx.log_lines = lambda: log or []
    return run_check("server_view", checks.server_view, ctx), ctx


KV_LOG = ["llama_kv_cache: size = 8.00 MiB (4096 cells, 4 layers, 2/2 seqs), K (q8_0): 4.00 MiB, V (f16): 4.00 MiB"]


def test_server_view_records_what_the_server_runs():
    r, ctx = run_view({"parallel": 2, "ctx": 4096, "slots": True, "kv_k": "q8_0", "kv_v": "f16"}, KV_LOG,
                      slots=slots_json(2, n_ctx=2048), props={"total_slots": 2, "model_path": "/m/model.gguf",
                                                              "default_generation_settings": {"n_ctx": 2048}})
    assert r.status == Status.PASS, r.detail
    assert r.data["n_slots"] == 2 and r.data["n_ctx_slot"] == 2048 and r.data["n_ctx_total"] == 4096
    assert r.data["kv_k"] == "q8_0" and r.data["speculative"] is False and ctx.warnings == []


def test_server_view_fails_on_what_the_cell_claims_and_warns_on_the_rest():
    r, _ = run_view({"parallel": 2, "slots": True}, slots=slots_json(1))
    assert r.status == Status.FAIL and "the server runs 1 slot(s), the cell claims parallel=2" in r.detail
    r, _ = run_view({"slots": True, **MTP}, slots=slots_json(1, spec=False))
    assert r.status == Status.FAIL and "the cell claims MTP on, but the server's slots cannot speculate" in r.detail
    r, _ = run_view({"kv_k": "f16", "kv_v": "f16"}, KV_LOG)
    assert r.status == Status.FAIL and "kv_k=f16 rendered, but the server's KV cache is q8_0" in r.detail
    r, ctx = run_view({"parallel": 2, "ctx": 128, "slots": True}, slots=slots_json(2, n_ctx=256))
    assert r.status == Status.PASS
    assert ctx.warnings == ["ctx=128 rendered (64 per slot), the server runs 256 per slot (512 in all)"]
    r, _ = run_view({"slots": True}, slots=[{"no": "id"}])
    assert r.status == Status.FAIL and "malformed /slots" in r.detail
    r, _ = run_view({}, props=boom)
    assert r.status == Status.ERROR and "RuntimeError" in r.detail


def test_still_healthy():
    assert run("still_healthy", mk()).status == Status.PASS
    r = run("still_healthy", mk(health=httpx.Response(503, text="loading")))
    assert r.status == Status.FAIL and r.detail == "/health HTTP 503"


def test_server_view_from_the_log_when_props_and_slots_are_off():
    log = ["0.12.030 I srv    load_model: initializing, n_slots = 1, n_ctx_slot = 2048, kv_unified = 'true'"]
    r, ctx = run_view({"parallel": 2, "ctx": 4096}, log, props=httpx.Response(404, text="not found"))
    assert r.status == Status.FAIL and "the server runs 1 slot(s), the cell claims parallel=2" in r.detail
    assert ctx.server == {"sources": ["log"], "n_slots": 1, "n_ctx_slot": 2048, "kv_unified": True, "n_ctx_total": 2048}


def test_concurrency_repeats_a_round_that_did_not_overlap_before_failing():
    """A fast model can answer one request before the other arrives on a loaded machine (CI: two shards
    on 2 cores): a round without overlap is repeated; only rounds that all fail make a FAIL."""
    lock, calls = threading.Lock(), []

    def serial_first_round(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= 2:   # round 1: one at a time
            with lock:
                time.sleep(0.1)
        else:
            time.sleep(0.1)
        return httpx.Response(200, json=dict(CHAT, timings=dict(TIMINGS, prompt_ms=0.0, predicted_ms=95.0)))
    r = run("concurrency", mk(chat=serial_first_round), parallel=2)
    assert r.status == Status.PASS and r.data["rounds"] == 2 and r.data["overlap_s"] > 0
    calls.clear()

    def always_serial(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        with lock:
            time.sleep(0.1)
        return httpx.Response(200, json=dict(CHAT, timings=dict(TIMINGS, prompt_ms=0.0, predicted_ms=95.0)))
    r = run("concurrency", mk(chat=always_serial), parallel=2)
    assert r.status == Status.FAIL and f"({checks.CONCURRENCY_ROUNDS} rounds)" in r.detail
    assert len(calls) == 2 * checks.CONCURRENCY_ROUNDS and r.data["rounds"] == checks.CONCURRENCY_ROUNDS
