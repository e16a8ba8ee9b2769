"""The checks run in each validation cell, over HTTP against a live llama-server.

Each check is a function ``(ctx) -> dict``; :func:`run_check` turns its outcome into a
:class:`CheckResult` and never lets an exception out: :class:`CheckFailed` (and HTTP errors,
timeouts) -> FAIL, :class:`CannotJudge` -> ERROR (evidence missing), :class:`CheckSkipped` ->
SKIP, any other exception -> ERROR with its type and message. Every request is bounded by the
profile's ``request_timeout`` (seconds) and by the cell's deadline (``cell_timeout``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httpx

from llamactl.judge import metrics as metrics_lib, sse
from llamactl.judge.status import Status
from llamactl.serve.profiles import Profile

CONCURRENT_PROMPTS = [
    "Count from one to forty in words, separated by commas.",
    "List the months of the year and the days of the week, twice.",
    "Write the alphabet in order, one letter per line, and then backwards.",
    "Name as many colours, animals and fruits as you can, comma separated.",
]
# llama.cpp logs the KV cache it made, e.g. "llama_kv_cache: size = 8.00 MiB (...), K (f16): 4.00 MiB, V (q8_0): ..."
_KV_LINE = re.compile(r"llama_kv_cache[^:]*:.*\bK \((?P<k>[\w.]+)\):.*\bV \((?P<v>[\w.]+)\):")
# ... and the server its slots: "load_model: initializing, n_slots = 2, n_ctx_slot = 256, kv_unified = 'false'"
_SLOTS_LINE = re.compile(r"n_slots = (?P<n>\d+), n_ctx_slot = (?P<ctx>\d+)(?:, kv_unified = '(?P<unified>\w+)')?")


@dataclass
class CheckResult:
    name: str
    status: Status
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellContext:
    """What the checks of one cell share. Times are in seconds; ``deadline`` is a ``time.monotonic()`` value."""

    url: str
    profile: Profile
    client: httpx.Client
    metrics_before: list[metrics_lib.Sample] | None = None
    alive: Callable[[], bool] = lambda: True
    request_timeout: float = 180.0
    deadline: float | None = None
    cell_timeout: float | None = None
    log_lines: Callable[[], list[str]] = lambda: []
    model_paths: dict[str, Path] = field(default_factory=dict)
    rpc_endpoints: list[str] = field(default_factory=list)   # host:port of the cell's RPC workers
    timings: list[dict] = field(default_factory=list)   # server `timings` seen in responses
    server: dict[str, Any] = field(default_factory=dict)   # the server's own view (server_view check)
    warnings: list[str] = field(default_factory=list)
    references: Any = None      # judge.references.References: the cell's twins' answers (None: --url)
    state: dict[str, Any] = field(default_factory=dict)   # what one check leaves for the next (answers)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model(self) -> str:
        return self.profile.alias or "model"

    def add_timings(self, t: Any) -> None:
        if isinstance(t, dict):
            with self._lock:
                self.timings.append(t)


class CheckFailed(Exception):
    """The server answered, and the answer is wrong: FAIL."""

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


class RequestTimedOut(CheckFailed):
    """A request got no (complete) answer within request_timeout or the cell's deadline."""


class CheckWarned(Exception):
    """Judged, and nothing is wrong enough to fail, but something deserves a look (numerics): WARN."""

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


class CannotJudge(Exception):
    """The evidence a check needs is not available (an endpoint is off, nothing reports it): ERROR."""


class CheckSkipped(Exception):
    """Nothing to check in this cell: SKIP."""


def limit(ctx: CellContext) -> tuple[float, str]:
    """Seconds the next request may take, and the name of the setting that bounds it.

    Raises:
        RequestTimedOut: the cell's deadline has already passed.
    """
    t, name = ctx.request_timeout, f"request_timeout {ctx.request_timeout:g}s"
    if ctx.deadline is not None:
        left = ctx.deadline - time.monotonic()
        cell = f"cell_timeout {ctx.cell_timeout:g}s" if ctx.cell_timeout else "the cell deadline"
        if left <= 0:
            raise RequestTimedOut(f"{cell} reached")
        if left < t:
            t, name = left, cell
    return t, name


def request(ctx: CellContext, method: str, path: str, body: dict | None = None) -> httpx.Response:
    """One request, read whole within ``limit(ctx)`` seconds (also when the server trickles bytes).

    Raises:
        RequestTimedOut: no complete answer in time (the message names the setting).
        httpx.HTTPError: the connection failed.
    """
    secs, name = limit(ctx)
    end = time.monotonic() + secs
    try:
        with ctx.client.stream(method, f"{ctx.url}{path}", json=body, timeout=secs) as r:
            chunks = []
            for chunk in r.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > end:
                    raise RequestTimedOut(f"{method} {path}: answer not complete within {name}")
            headers = [(k, v) for k, v in r.headers.multi_items()
                       if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
            return httpx.Response(r.status_code, headers=headers, content=b"".join(chunks), request=r.request)
    except httpx.TimeoutException as exc:
        raise RequestTimedOut(f"{method} {path}: no answer within {name} ({type(exc).__name__})") from exc


def sse_events(ctx: CellContext, path: str, body: dict) -> Iterator[sse.Event]:
    """The events of a streamed (SSE) answer (:mod:`llamactl.judge.sse`), bounded like :func:`request`.

    Raises:
        CheckFailed: HTTP status other than 200.
        RequestTimedOut: the stream did not end in time.
    """
    secs, name = limit(ctx)
    end = time.monotonic() + secs
    try:
        with ctx.client.stream("POST", f"{ctx.url}{path}", json=body, timeout=secs) as r:
            if r.status_code != 200:
                r.read()
                raise CheckFailed(f"HTTP {r.status_code}: {r.text[:200]}")
            def lines() -> Iterator[str]:
                for line in r.iter_lines():
                    if time.monotonic() > end:
                        raise RequestTimedOut(f"POST {path} (stream): not finished within {name}")
                    yield line
            yield from sse.events(lines())
    except httpx.TimeoutException as exc:
        raise RequestTimedOut(f"POST {path} (stream): no data within {name} ({type(exc).__name__})") from exc


def _post(ctx: CellContext, path: str, body: dict) -> httpx.Response:
    return request(ctx, "POST", path, body)


def _expect_200(r: httpx.Response, ctx: CellContext | None = None) -> dict:
    if r.status_code != 200:
        raise CheckFailed(f"HTTP {r.status_code}: {r.text[:200]}")
    try:
        body = r.json()
    except ValueError as exc:
        raise CheckFailed(f"{r.request.url.path}: response is not JSON: {r.text[:120]!r}") from exc
    if not isinstance(body, dict):
        raise CheckFailed(f"{r.request.url.path}: response is JSON but not an object: {str(body)[:120]}")
    if ctx is not None:
        ctx.add_timings(body.get("timings"))
    return body


def validate_anthropic_message(body: dict) -> str | None:
    """None when ``body`` is a well-formed Anthropic Messages response, else what is wrong."""
    if body.get("type") != "message" or body.get("role") != "assistant":
        return f"type/role are {body.get('type')!r}/{body.get('role')!r}, expected message/assistant"
    content = body.get("content")
    if not isinstance(content, list) or not content:
        return "content is not a non-empty list of blocks"
    if not all(isinstance(b, dict) and "type" in b for b in content):
        return "content blocks lack a type"
    if not any(b["type"] == "text" and isinstance(b.get("text"), str) for b in content):
        return "no text block"
    if body.get("stop_reason") not in ("end_turn", "max_tokens", "stop_sequence", "tool_use"):
        return f"stop_reason {body.get('stop_reason')!r}"
    usage = body.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int) \
            or not isinstance(usage.get("output_tokens"), int):
        return f"usage lacks input_tokens/output_tokens: {usage}"
    return None


def validate_chat_completion(body: dict) -> str | None:
    """None when ``body`` is a well-formed OpenAI chat completion, else what is wrong."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return f"no choices[0] in {str(body)[:150]}"
    msg = choices[0].get("message")
    if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
        return f"choices[0].message.content is not a string: {str(msg)[:150]}"
    usage = body.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
        return f"usage lacks completion_tokens: {usage}"
    return None


def tiny_message(ctx: CellContext) -> dict:
    """The seed's request: max_tokens 8, one user message "hi"."""
    body = _expect_200(_post(ctx, "/v1/messages", {
        "model": ctx.model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}), ctx)
    bad = validate_anthropic_message(body)
    if bad:
        raise CheckFailed(bad)
    return {"stop_reason": body["stop_reason"], "usage": body["usage"]}


def claude_style(ctx: CellContext) -> dict:
    """A Claude-style request: system prompt plus a multi-turn conversation."""
    body = _expect_200(_post(ctx, "/v1/messages", {
        "model": ctx.model, "max_tokens": 16, "temperature": 0,
        "system": "You are a terse assistant. Answer in one short sentence.",
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
            {"role": "user", "content": [{"type": "text", "text": "And of Italy?"}]},
        ]}), ctx)
    bad = validate_anthropic_message(body)
    if bad:
        raise CheckFailed(bad)
    return {"stop_reason": body["stop_reason"], "usage": body["usage"]}


def parse_slots(r: httpx.Response) -> list[dict]:
    """The slot objects of a GET /slots answer.

    Raises:
        CheckFailed: not 200, not JSON, or not a list of objects with an ``id``.
    """
    if r.status_code != 200:
        raise CheckFailed(f"/slots HTTP {r.status_code}: {r.text[:120]}")
    try:
        slots = r.json()
    except ValueError as exc:
        raise CheckFailed(f"malformed /slots: not JSON: {r.text[:120]!r}") from exc
    if not isinstance(slots, list) or not slots or not all(isinstance(s, dict) and "id" in s for s in slots):
        raise CheckFailed(f"malformed /slots: expected a list of slot objects, got {str(slots)[:120]}")
    return slots


def read_metrics(ctx: CellContext) -> list[metrics_lib.Sample]:
    """GET /metrics, parsed.

    Raises:
        CheckFailed: not 200, or not Prometheus text.
    """
    r = request(ctx, "GET", "/metrics")
    if r.status_code != 200:
        raise CheckFailed(f"/metrics HTTP {r.status_code} (is `metrics: true` set?)")
    try:
        return metrics_lib.parse(r.text)
    except Exception as exc:   # prometheus_client raises ValueError, TypeError, ... on garbage
        raise CheckFailed(f"/metrics is not Prometheus text ({type(exc).__name__}: {str(exc)[:100]}): "
                          f"{r.text[:80]!r}") from exc


def _overlap(spans: list[tuple[float, float]]) -> float:
    """Seconds during which every (start, end) span was open at once (0 when they never all were)."""
    if not spans:
        return 0.0
    return max(0.0, min(e for _, e in spans) - max(s for s, _ in spans))


CONCURRENCY_ROUNDS = 3   # rounds of n requests before "never together" is a verdict


def concurrency(ctx: CellContext) -> dict:
    """As many simultaneous requests as slots, long enough that all slots decode together.

    Evidence that they did, first available: /slots sampled (``is_processing``), else /metrics sampled
    (``llamacpp:requests_processing``), else the server's per-response ``timings`` (the processing
    spans of all responses overlap). None available -> ERROR. With MTP, slots must draft meanwhile.
    The requests leave together (a barrier); a round that shows no overlap is repeated, up to
    ``CONCURRENCY_ROUNDS``, before "never together" is a FAIL (``rounds`` in the evidence).
    """
    n = ctx.profile.parallel
    peak: dict[str, Any] = {"slots": 0, "slot_samples": 0, "processing": 0, "metric_samples": 0, "error": None}
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            try:
                if ctx.profile.slots:
                    busy = sum(1 for s in parse_slots(ctx.client.get(f"{ctx.url}/slots", timeout=5))
                               if s.get("is_processing"))
                    peak["slot_samples"] += 1
                    peak["slots"] = max(peak["slots"], busy)
                elif ctx.profile.metrics:   # one endpoint only: each sample is a task in the server's loop
                    r = ctx.client.get(f"{ctx.url}/metrics", timeout=5)
                    v = metrics_lib.value(metrics_lib.parse(r.text), "llamacpp:requests_processing") \
                        if r.status_code == 200 else None
                    if v is not None:
                        peak["metric_samples"] += 1
                        peak["processing"] = max(peak["processing"], int(v))
            except CheckFailed as exc:
                peak["error"] = peak["error"] or str(exc)
            except Exception:   # noqa: BLE001 - a sample that fails is just not a sample
                pass
            time.sleep(0.05)

    barrier = threading.Barrier(n)

    def one(i: int) -> tuple[int, dict | str, float, float]:
        try:   # all requests leave together: a thread that starts late can miss a fast model's answer
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        t = time.monotonic()
        r = _post(ctx, "/v1/chat/completions", {
            "model": ctx.model, "max_tokens": ctx.profile.harness.concurrent_max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": CONCURRENT_PROMPTS[i % len(CONCURRENT_PROMPTS)] + f" (request {i})"}]})
        end = time.monotonic()
        try:
            body = r.json()
        except ValueError:
            return r.status_code, f"not JSON: {r.text[:150]!r}", t, end
        return r.status_code, body if isinstance(body, dict) else f"not an object: {str(body)[:150]}", t, end

    spec_before = None
    if ctx.profile.metrics:
        try:
            spec_before = metrics_lib.spec_counters(read_metrics(ctx))
        except CheckFailed:
            spec_before = None       # speculative_metrics reports a broken /metrics
    rounds = CONCURRENCY_ROUNDS if n > 1 else 1
    for round_no in range(1, rounds + 1):
        peak.update(slots=0, slot_samples=0, processing=0, metric_samples=0, error=None)
        stop.clear()
        barrier.reset()
        th = threading.Thread(target=sampler, daemon=True) if (ctx.profile.slots or ctx.profile.metrics) and n > 1 else None
        if th:
            th.start()
        t0 = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=n) as pool:
                results = list(pool.map(one, range(n)))
        finally:
            stop.set()
            if th:
                th.join(timeout=5)
        wall = time.monotonic() - t0
        bad = [(code, body) for code, body, _, _ in results if code != 200 or not isinstance(body, dict)]
        if bad:
            raise CheckFailed(f"{len(bad)}/{n} requests failed: HTTP {bad[0][0]} {str(bad[0][1])[:150]}")
        bodies = [body for _, body, _, _ in results if isinstance(body, dict)]   # every one: none was bad
        for body in bodies:
            shape = validate_chat_completion(body)
            if shape:
                raise CheckFailed(shape)
        timings = [body.get("timings") for body in bodies]
        for t in timings:
            ctx.add_timings(t)
        out_tokens = sum(body["usage"]["completion_tokens"] for body in bodies)
        cut = cut_by_context(bodies, ctx.profile.harness.concurrent_max_tokens, ctx.server.get("n_ctx_slot"))
        if cut:
            raise CheckFailed(f"complete answers: {cut}; concurrent_max_tokens "
                              f"{ctx.profile.harness.concurrent_max_tokens} needs the whole answer "
                              "(a larger ctx, fewer slots or a smaller concurrent_max_tokens)")
        data: dict[str, Any] = {"requests": n, "output_tokens": out_tokens, "wall_s": round(wall, 3),
                                "tokens_per_s": round(out_tokens / wall, 2) if wall else None,
                                "peak_busy_slots": peak["slots"] if peak["slot_samples"] else None,
                                "slot_samples": peak["slot_samples"],
                                "peak_requests_processing": peak["processing"] if peak["metric_samples"] else None,
                                "rounds": round_no}
        if n == 1:
            break
        if peak["error"]:
            raise CheckFailed(peak["error"], data)
        try:
            _judge_overlap(n, peak, results, timings, data, ctx)
            break
        except CheckFailed as exc:
            # a fast model can answer one request before the other is parsed on a loaded machine: only
            # rounds that all fail to overlap make a verdict
            if round_no == rounds:
                raise CheckFailed(f"{exc} ({rounds} rounds)", exc.data) from None
    if ctx.profile.enable_mtp:
        during = None
        if spec_before is not None:
            try:
                during = metrics_lib.spec_counters(read_metrics(ctx)).minus(spec_before)
            except CheckFailed:
                during = None
        if during is not None and during.present:
            data["draft_tokens"] = during.draft_tokens
            if not during.draft_tokens:
                raise CheckFailed(f"MTP is on but no slot drafted while {n} requests decoded together", data)
        elif all(isinstance(t, dict) for t in timings):
            drafted = [t.get("draft_n", 0) for t in timings if isinstance(t, dict)]   # all are
            data["draft_tokens"] = float(sum(drafted))
            if not all(drafted):
                raise CheckFailed(f"MTP is on but {drafted.count(0)}/{n} concurrent requests drafted nothing "
                                  "(response timings carry no draft_n)", data)
    return data


def cut_by_context(bodies: list[dict], max_tokens: int, n_ctx_slot: Any) -> str | None:
    """How the first chat answer that the slot's context cut short was cut, or None.

    An answer is cut when it finished by ``length`` with fewer than ``max_tokens`` tokens: the slot ran
    out of context (``n_ctx_slot``, from /slots or the log) before the request's own limit.
    """
    for i, body in enumerate(bodies):
        usage = body.get("usage") or {}
        choice = (body.get("choices") or [{}])[0]
        got, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
        if isinstance(got, int) and got < max_tokens and isinstance(choice, dict) \
                and choice.get("finish_reason") == "length":
            where = f", n_ctx_slot {n_ctx_slot}" if n_ctx_slot else ""
            return (f"answer {i} was cut by the slot's context after {got} of {max_tokens} tokens "
                    f"(prompt {prompt}{where})")
    return None


def _judge_overlap(n: int, peak: dict[str, Any], results: list[tuple[int, Any, float, float]],
                   timings: list[Any], data: dict[str, Any], ctx: CellContext) -> None:
    """Decide whether n requests were processed together; raise CheckFailed/CannotJudge if not.

    A sampled peak of n (/slots ``is_processing`` or /metrics ``llamacpp:requests_processing``) proves
    it. Sampling can miss short requests (a 64-token answer takes ~50 ms on the CPU and each sample
    queues behind the server's task loop), so a lower sampled peak is not a verdict by itself: the
    server's own per-response ``timings`` decide then (processing spans, prompt_ms + predicted_ms
    before each response's end, must all overlap). Only when they do not, or are absent, it fails.
    """
    sampled: str | None = None
    if peak["slot_samples"]:
        data["evidence"] = "/slots"
        if peak["slots"] >= n:
            return
        sampled = f"slots never busy together: peak {peak['slots']}/{n} busy over {peak['slot_samples']} /slots samples"
    elif peak["metric_samples"]:
        data["evidence"] = "/metrics requests_processing"
        if peak["processing"] >= n:
            return
        sampled = (f"requests never processed together: peak llamacpp:requests_processing "
                   f"{peak['processing']}/{n} over {peak['metric_samples']} samples")
    if all(isinstance(t, dict) and "predicted_ms" in t for t in timings):
        spans = [(end - (t.get("prompt_ms", 0) + t["predicted_ms"]) / 1000, end)
                 for (_, _, _, end), t in zip(results, timings, strict=True) if isinstance(t, dict)]   # all are
        data["overlap_s"] = round(_overlap(spans), 4)
        if data["overlap_s"] > 0:
            data["evidence"] = "response timings" + (f" ({sampled})" if sampled else "")
            return
        if sampled:
            raise CheckFailed(f"{sampled}, and the response timings never overlapped", data)
        data["evidence"] = "response timings"
        raise CheckFailed(f"the server's processing of the {n} requests never overlapped "
                          "(response timings): slots did not decode together", data)
    if sampled:
        raise CheckFailed(f"{sampled} (responses carry no timings to tell otherwise)", data)
    missing = ["/slots is off (slots: false)" if not ctx.profile.slots else "/slots gave no samples",
               "/metrics is off (metrics: false)" if not ctx.profile.metrics
               else "/metrics has no llamacpp:requests_processing", "responses carry no timings"]
    raise CannotJudge(f"cannot show that {n} slots decoded together: " + ", ".join(missing))


def _check_anthropic_stream(events: list[tuple[str, dict]]) -> str | None:
    """None when the SSE events follow Anthropic's order, else what is wrong."""
    names = [e for e, _ in events if e != "ping"]
    if not names:
        return "no events"
    if names[0] != "message_start":
        return f"first event is {names[0]}, expected message_start"
    open_blocks: set[Any] = set()
    closed = 0
    for i, (name, data) in enumerate((e, d) for e, d in events if e != "ping"):
        idx = data.get("index")
        if name == "error":
            return f"error event: {str(data.get('error', data))[:150]}"
        if name == "message_start" and i:
            return f"message_start again at event {i}"
        if name == "content_block_start":
            open_blocks.add(idx)
        elif name == "content_block_delta" and idx not in open_blocks:
            return f"content_block_delta for block {idx} outside content_block_start/stop (event {i})"
        elif name == "content_block_stop":
            if idx not in open_blocks:
                return f"content_block_stop for block {idx} that was not started (event {i})"
            open_blocks.discard(idx)
            closed += 1
        elif name == "message_delta" and open_blocks:
            return f"message_delta while block {sorted(open_blocks, key=str)[0]} is still open (event {i})"
        elif name == "message_stop" and i != len(names) - 1:
            return f"events after message_stop: {names[i + 1:][:3]}"
    if names[-1] != "message_stop":
        return f"stream ended after {len(names)} events without message_stop (last: {names[-1]}; cut off?)"
    for needed in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
        if needed not in names:
            return f"no {needed} event in {names}"
    return None


def streaming(ctx: CellContext) -> dict:
    """stream: true gives the full Anthropic SSE sequence, message_start ... message_stop, in order."""
    events: list[tuple[str, dict]] = []
    text = ""
    for ev in sse_events(ctx, "/v1/messages", {
            "model": ctx.model, "max_tokens": 12, "stream": True,
            "messages": [{"role": "user", "content": "Say hello."}]}):
        try:
            d = json.loads(ev.data)
        except ValueError as exc:
            raise CheckFailed(f"SSE data is not JSON: {ev.data[:100]!r}") from exc
        if not isinstance(d, dict):
            raise CheckFailed(f"SSE data is not an object: {ev.data[:100]!r}")
        events.append((ev.event or str(d.get("type", "?")), d))
        ctx.add_timings(d.get("timings"))
        if d.get("type") == "content_block_delta":
            text += str((d.get("delta") or {}).get("text", ""))
    bad = _check_anthropic_stream(events)
    if bad:
        raise CheckFailed(bad)
    return {"events": len(events), "text_chars": len(text)}


def chat_completions(ctx: CellContext) -> dict:
    """/v1/chat/completions, whole and streamed; both carry the server's ``timings``."""
    body = _expect_200(_post(ctx, "/v1/chat/completions", {
        "model": ctx.model, "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}), ctx)
    bad = validate_chat_completion(body)
    if bad:
        raise CheckFailed(bad)
    chunks, done, finish = 0, False, None
    for ev in sse_events(ctx, "/v1/chat/completions", {
            "model": ctx.model, "max_tokens": 16, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Say hi."}]}):
        payload = ev.data.strip()
        if ev.done:
            done = True
            continue
        try:
            d = json.loads(payload)
        except ValueError as exc:
            raise CheckFailed(f"chat stream: data is not JSON: {payload[:100]!r}") from exc
        if not isinstance(d, dict):
            raise CheckFailed(f"chat stream: data is not an object: {payload[:100]!r}")
        chunks += 1
        ctx.add_timings(d.get("timings"))
        for ch in d.get("choices") or []:
            if isinstance(ch, dict) and ch.get("finish_reason"):
                finish = ch["finish_reason"]
    if not chunks or finish is None:
        raise CheckFailed(f"chat stream: {chunks} chunks and no finish_reason (cut off?)")
    return {"finish_reason": body["choices"][0].get("finish_reason"), "usage": body.get("usage"),
            "stream_chunks": chunks, "stream_done": done}


def _timings_counters(ctx: CellContext) -> metrics_lib.SpecCounters:
    """Draft counts from responses' ``timings`` (llama-server leaves out draft_n when nothing was drafted)."""
    if not ctx.timings:
        return metrics_lib.SpecCounters()
    drafted = sum(t.get("draft_n", 0) for t in ctx.timings)
    accepted = sum(t.get("draft_n_accepted", 0) for t in ctx.timings)
    return metrics_lib.SpecCounters(scheme="timings", draft_tokens=float(drafted), accepted_tokens=float(accepted))


def speculative_metrics(ctx: CellContext) -> dict:
    """With MTP on, drafts were made during the cell (and acceptance is in the band); with MTP off, none.

    Counted from /metrics when it has draft counters, else from the responses' ``timings``;
    ERROR when neither can show it.
    """
    after = before = metrics_lib.SpecCounters()
    why_not_metrics = "/metrics is off (metrics: false)"
    if ctx.profile.metrics:
        after = metrics_lib.spec_counters(read_metrics(ctx))
        before = metrics_lib.spec_counters(ctx.metrics_before or [])
        why_not_metrics = "/metrics has no speculative counters"
    delta = after.minus(before)
    note = ""
    if not after.present:
        delta = _timings_counters(ctx)
        note = f"{why_not_metrics}; counted from response timings" if delta.present else ""
    data = {"scheme": delta.scheme, "spec_type": after.spec_type, "delta": delta.to_dict(),
            "acceptance": delta.acceptance, "note": note}
    if ctx.profile.enable_mtp:
        if not delta.present:
            raise CannotJudge(f"MTP is on but nothing can show drafting: {why_not_metrics} and no response "
                              "carried timings")
        if not delta.draft_tokens:
            raise CheckFailed(f"MTP is on but no draft tokens were generated ({delta.scheme})", data)
        band = ctx.profile.harness.expect_acceptance
        acc = delta.acceptance
        if band is not None and acc is None:
            raise CannotJudge(f"acceptance cannot be measured ({delta.scheme} has no accepted-token count); "
                              f"expected {band[0]:.0%}-{band[1]:.0%}")
        if band is not None and acc is not None and not band[0] <= acc <= band[1]:
            raise CheckFailed(f"draft acceptance {acc:.0%} outside the expected {band[0]:.0%}-{band[1]:.0%}", data)
    elif not delta.present:
        raise CheckSkipped(f"MTP is off; {why_not_metrics} and no timings to confirm that nothing was drafted")
    elif (delta.draft_tokens or 0) > 0:
        raise CheckFailed(f"MTP is off but {delta.draft_tokens:.0f} draft tokens were generated", data)
    return data


def still_healthy(ctx: CellContext) -> dict:
    if not ctx.alive():
        raise CheckFailed("server process is gone")
    r = request(ctx, "GET", "/health")
    if r.status_code != 200:
        raise CheckFailed(f"/health HTTP {r.status_code}")
    return {}


def kv_types_from_log(lines: list[str]) -> tuple[str, str] | None:
    """(K type, V type) of the first KV cache llama.cpp logged (the target's), or None."""
    for ln in lines:
        m = _KV_LINE.search(ln)
        if m:
            return m.group("k"), m.group("v")
    return None


def server_view(ctx: CellContext) -> dict:
    """The server's own view after /health (/props, /slots, its log), compared with what was rendered.

    A difference that changes what the cell claims to test (slot count, KV types, MTP on/off) is a
    FAIL; any other difference (context size, model path) is a warning in ``ctx.warnings``.
    """
    p = ctx.profile
    view: dict[str, Any] = {"sources": []}
    r = request(ctx, "GET", "/props")
    if r.status_code == 200:
        props = _expect_200(r)
        view["sources"].append("/props")
        dgs = props.get("default_generation_settings")
        view["n_slots"] = props.get("total_slots")
        view["n_ctx_slot"] = dgs.get("n_ctx") if isinstance(dgs, dict) else None
        view["model_path"] = props.get("model_path")
        view["build_info"] = props.get("build_info")
    slots: list[dict] | None = None
    if p.slots:
        slots = parse_slots(request(ctx, "GET", "/slots"))
        view["sources"].append("/slots")
        view["n_slots"] = len(slots)
        ctxs = {s.get("n_ctx") for s in slots}
        view["n_ctx_slot"] = ctxs.pop() if len(ctxs) == 1 else sorted(ctxs, key=str)
        spec = [s.get("speculative") for s in slots]
        view["speculative"] = spec[0] if len(set(spec)) == 1 else spec
    lines = ctx.log_lines()
    kv = kv_types_from_log(lines)
    if kv:
        view["kv_k"], view["kv_v"] = kv
    m = next((m for m in map(_SLOTS_LINE.search, lines) if m), None)
    if m:
        view.setdefault("n_slots", int(m.group("n")))
        view.setdefault("n_ctx_slot", int(m.group("ctx")))
        if m.group("unified"):
            view["kv_unified"] = m.group("unified") == "true"
    if kv or m:
        view["sources"].append("log")
    unified = view.get("kv_unified", bool(p.kv_unified) or p.parallel == 1)
    if isinstance(view.get("n_slots"), int) and isinstance(view.get("n_ctx_slot"), int):
        view["n_ctx_total"] = view["n_ctx_slot"] * (1 if unified else view["n_slots"])
    ctx.server.update(view)

    fails: list[str] = []
    if isinstance(view.get("n_slots"), int) and view["n_slots"] != p.parallel:
        fails.append(f"the server runs {view['n_slots']} slot(s), the cell claims parallel={p.parallel}")
    if isinstance(view.get("speculative"), bool) and view["speculative"] != p.enable_mtp:
        fails.append(f"the cell claims MTP {'on' if p.enable_mtp else 'off'}, but the server's slots "
                     f"{'can' if view['speculative'] else 'cannot'} speculate")
    for side, want in (("kv_k", p.kv_k), ("kv_v", p.kv_v)):
        if want and view.get(side) and view[side] != want:
            fails.append(f"{side}={want} rendered, but the server's KV cache is {view[side]}")
    if p.ctx and isinstance(view.get("n_ctx_slot"), int):
        want_slot = p.ctx if unified else p.ctx // p.parallel
        if view["n_ctx_slot"] != want_slot:
            ctx.warnings.append(f"ctx={p.ctx} rendered ({want_slot} per slot), the server runs "
                                f"{view['n_ctx_slot']} per slot ({view.get('n_ctx_total')} in all)")
    model = ctx.model_paths.get("model")
    if model and view.get("model_path") and Path(str(view["model_path"])).resolve() != Path(model).resolve():
        ctx.warnings.append(f"model {model} rendered, the server reports {view['model_path']}")
    if fails:
        raise CheckFailed("; ".join(fails), view)
    return view


# llama.cpp names RPC devices RPC<i> with the endpoint as description ("using device RPC0 (127.0.0.1:50052)",
# "RPC0: 127.0.0.1:50052 (...)" in --list-devices) and their buffers "RPC0[127.0.0.1:50052]" or "RPC[127.0.0.1:50052]"
_RPC_DEVICE = re.compile(r"\b(?P<dev>RPC\d+)\b\W{0,3}(?:\[|\(|: )?(?P<ep>[\w.\-]+:\d+)")
_RPC_BUFFER = re.compile(r"\b(?P<buf>RPC\d*\[(?P<ep>[^\]]+)\](?:_\w+)?)\s+(?P<what>model|KV|compute|RS|output)?\s*buffer size\s*=\s*(?P<mib>[\d.]+) MiB")


def rpc_placement_from_log(lines: list[str]) -> dict[str, Any]:
    """RPC devices and the MiB placed on each, per endpoint, from llama-server's log."""
    devices: dict[str, str] = {}
    model_mib: dict[str, float] = {}
    other_mib: dict[str, float] = {}
    offloaded = None
    for ln in lines:
        for m in _RPC_DEVICE.finditer(ln):
            devices.setdefault(m.group("ep"), m.group("dev"))
        b = _RPC_BUFFER.search(ln)
        if b:
            target = model_mib if b.group("what") == "model" else other_mib
            target[b.group("ep")] = round(target.get(b.group("ep"), 0.0) + float(b.group("mib")), 2)
        if offloaded is None and "offloaded" in ln and "layers to GPU" in ln:
            offloaded = ln.split("offloaded", 1)[1].strip()
    return {"devices": devices, "model_mib": model_mib, "other_mib": other_mib, "offloaded": offloaded}


def rpc_placement(ctx: CellContext) -> dict:
    """With an ``rpc:`` block: every worker was found as a device and model weights were placed on it.

    A cell whose model ran only on the local devices is a FAIL (it would pass every other check).
    """
    if ctx.profile.rpc is None:
        raise CheckSkipped("no rpc workers in this cell")
    found = rpc_placement_from_log(ctx.log_lines())
    want = ctx.rpc_endpoints or list(ctx.profile.rpc.workers)
    found["endpoints"] = want
    missing = [ep for ep in want if ep not in found["devices"] and ep not in found["model_mib"]]
    if missing and len(missing) == len(want):
        raise CheckFailed(f"no RPC device in the server log for {', '.join(missing)}: the model ran locally", found)
    if missing:
        raise CheckFailed(f"rpc worker(s) {', '.join(missing)} never became a device of the server", found)
    empty = [ep for ep in want if not found["model_mib"].get(ep)]
    if empty:
        raise CheckFailed(f"no layers placed on RPC device(s) {', '.join(found['devices'].get(ep, ep) for ep in empty)} "
                          f"({', '.join(empty)}): no RPC model buffer in the log"
                          f"{'; offloaded ' + found['offloaded'] if found['offloaded'] else ''}", found)
    return found


RPC_CHECK: tuple[str, Callable[[CellContext], dict]] = ("rpc_placement", rpc_placement)

CHECKS: list[tuple[str, Callable[[CellContext], dict]]] = [
    ("server_view", server_view),
    ("tiny_message", tiny_message),
    ("claude_style", claude_style),
    ("concurrency", concurrency),
    ("streaming", streaming),
    ("chat_completions", chat_completions),
    ("speculative_metrics", speculative_metrics),
    ("still_healthy", still_healthy),
]


Ctx = TypeVar("Ctx")   # a cell's CellContext, or judge.router_checks' RouterContext


def run_check(name: str, fn: Callable[[Ctx], dict], ctx: Ctx) -> CheckResult:
    """Run one check; every outcome, any exception included, becomes a CheckResult (KeyboardInterrupt passes)."""
    t = time.monotonic()

    def done(status: Status, detail: str = "", data: dict | None = None) -> CheckResult:
        return CheckResult(name, status, round(time.monotonic() - t, 3), detail, data or {})

    try:
        return done(Status.PASS, "", fn(ctx))
    except RequestTimedOut as exc:      # no answer: the cell stops asking (validate judges the server hung)
        return done(Status.FAIL, str(exc), {**exc.data, "no_answer": True})
    except CheckFailed as exc:
        return done(Status.FAIL, str(exc), exc.data)
    except CheckWarned as exc:
        return done(Status.WARN, str(exc), exc.data)
    except CannotJudge as exc:
        return done(Status.ERROR, str(exc))
    except CheckSkipped as exc:
        return done(Status.SKIP, str(exc))
    except httpx.HTTPError as exc:
        return done(Status.FAIL, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    except Exception as exc:   # noqa: BLE001 - the check itself broke: it could not judge
        return done(Status.ERROR, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
