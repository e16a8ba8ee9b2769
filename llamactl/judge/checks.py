"""The checks run in each validation cell, over HTTP against a live llama-server.

Each check is a function ``(ctx) -> CheckResult``; they share one httpx client and
record what they measured in ``data``.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from llamactl.judge import metrics as metrics_lib
from llamactl.serve.profiles import Profile

PASS, FAIL, SKIP = "pass", "fail", "skip"

CONCURRENT_PROMPTS = [
    "Count from one to forty in words, separated by commas.",
    "List the months of the year and the days of the week, twice.",
    "Write the alphabet in order, one letter per line, and then backwards.",
    "Name as many colours, animals and fruits as you can, comma separated.",
]


@dataclass
class CheckResult:
    name: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellContext:
    url: str
    profile: Profile
    client: httpx.Client
    metrics_before: list[metrics_lib.Sample] | None = None
    alive: Callable[[], bool] = lambda: True
    request_timeout: float = 180.0
    timings: list[dict] = field(default_factory=list)   # server `timings` seen in responses

    @property
    def model(self) -> str:
        return self.profile.alias or "model"


class CheckFailed(Exception):
    pass


def _post(ctx: CellContext, path: str, body: dict) -> httpx.Response:
    return ctx.client.post(f"{ctx.url}{path}", json=body, timeout=ctx.request_timeout)


def _expect_200(r: httpx.Response, ctx: CellContext | None = None) -> dict:
    if r.status_code != 200:
        raise CheckFailed(f"HTTP {r.status_code}: {r.text[:200]}")
    try:
        body = r.json()
    except ValueError as exc:
        raise CheckFailed(f"response is not JSON: {r.text[:200]}") from exc
    if ctx is not None and isinstance(body, dict) and isinstance(body.get("timings"), dict):
        ctx.timings.append(body["timings"])
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
    usage = body.get("usage") or {}
    if not isinstance(usage.get("input_tokens"), int) or not isinstance(usage.get("output_tokens"), int):
        return f"usage lacks input_tokens/output_tokens: {usage}"
    return None


def tiny_message(ctx: CellContext) -> dict:
    """The seed's request: max_tokens 8, one user message "hi"."""
    body = _expect_200(_post(ctx, "/v1/messages", {
        "model": ctx.model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
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
        ]}))
    bad = validate_anthropic_message(body)
    if bad:
        raise CheckFailed(bad)
    return {"stop_reason": body["stop_reason"], "usage": body["usage"]}


def _busy_slots(ctx: CellContext) -> int | None:
    try:
        r = ctx.client.get(f"{ctx.url}/slots", timeout=5)
        if r.status_code != 200:
            return None
        return sum(1 for s in r.json() if s.get("is_processing"))
    except (httpx.HTTPError, ValueError):
        return None


def concurrency(ctx: CellContext) -> dict:
    """As many simultaneous requests as slots, long enough that all slots decode together."""
    n = ctx.profile.parallel
    peak = {"busy": 0, "samples": 0}
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            b = _busy_slots(ctx)
            if b is not None:
                peak["samples"] += 1
                peak["busy"] = max(peak["busy"], b)
            time.sleep(0.02)

    def one(i: int) -> tuple[int, dict | str, float]:
        t = time.monotonic()
        r = _post(ctx, "/v1/messages", {
            "model": ctx.model, "max_tokens": ctx.profile.concurrent_max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": CONCURRENT_PROMPTS[i % len(CONCURRENT_PROMPTS)] + f" (request {i})"}]})
        try:
            return r.status_code, r.json(), time.monotonic() - t
        except ValueError:
            return r.status_code, r.text[:200], time.monotonic() - t

    spec_before = metrics_lib.spec_counters(read_metrics(ctx)) if ctx.profile.metrics else None
    th = threading.Thread(target=sampler, daemon=True) if ctx.profile.slots else None
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
    bad = [(code, body) for code, body, _ in results if code != 200]
    if bad:
        raise CheckFailed(f"{len(bad)}/{n} requests failed: HTTP {bad[0][0]} {str(bad[0][1])[:150]}")
    out_tokens = sum(body["usage"]["output_tokens"] for _, body, _ in results if isinstance(body, dict))
    data = {"requests": n, "output_tokens": out_tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(out_tokens / wall, 2) if wall else None,
            "peak_busy_slots": peak["busy"] if th else None, "slot_samples": peak["samples"]}
    if th and n > 1 and peak["busy"] < n:
        raise CheckFailed(f"slots never busy together: peak {peak['busy']}/{n} busy over {peak['samples']} samples")
    if spec_before is not None:
        during = metrics_lib.spec_counters(read_metrics(ctx)).minus(spec_before)
        data["draft_tokens"] = during.draft_tokens
        if ctx.profile.enable_mtp and during.present and not during.draft_tokens:
            raise CheckFailed(f"MTP is on but no slot drafted while {n} requests decoded together")
    return data


def streaming(ctx: CellContext) -> dict:
    """stream: true gives the full Anthropic SSE sequence, message_start ... message_stop."""
    events: list[str] = []
    text = ""
    with ctx.client.stream("POST", f"{ctx.url}/v1/messages", timeout=ctx.request_timeout, json={
            "model": ctx.model, "max_tokens": 12, "stream": True,
            "messages": [{"role": "user", "content": "Say hello."}]}) as r:
        if r.status_code != 200:
            r.read()
            raise CheckFailed(f"HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if line.startswith("event:"):
                events.append(line[6:].strip())
            elif line.startswith("data:"):
                try:
                    d = json.loads(line[5:])
                except ValueError:
                    continue
                if d.get("type") == "content_block_delta":
                    text += d.get("delta", {}).get("text", "")
    if not events or events[0] != "message_start":
        raise CheckFailed(f"first event is {events[:1]}, expected message_start")
    if events[-1] != "message_stop":
        raise CheckFailed(f"last event is {events[-1:]}, expected message_stop")
    for needed in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
        if needed not in events:
            raise CheckFailed(f"no {needed} event in {events}")
    return {"events": len(events), "text_chars": len(text)}


def chat_completions(ctx: CellContext) -> dict:
    body = _expect_200(_post(ctx, "/v1/chat/completions", {
        "model": ctx.model, "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}), ctx)
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise CheckFailed(f"no choices[0].message.content in {str(body)[:150]}") from exc
    if not isinstance(content, str):
        raise CheckFailed("message.content is not a string")
    return {"finish_reason": body["choices"][0].get("finish_reason"), "usage": body.get("usage")}


def read_metrics(ctx: CellContext) -> list[metrics_lib.Sample]:
    r = ctx.client.get(f"{ctx.url}/metrics", timeout=10)
    if r.status_code != 200:
        raise CheckFailed(f"/metrics HTTP {r.status_code} (is `metrics: true` set?)")
    return metrics_lib.parse(r.text)


def _timings_counters(ctx: CellContext) -> metrics_lib.SpecCounters:
    """Draft counts from responses' ``timings`` (for builds whose /metrics has no draft counters)."""
    drafted = sum(t.get("draft_n", 0) for t in ctx.timings)
    accepted = sum(t.get("draft_n_accepted", 0) for t in ctx.timings)
    if not any("draft_n" in t for t in ctx.timings):
        return metrics_lib.SpecCounters()
    return metrics_lib.SpecCounters(scheme="timings", draft_tokens=float(drafted), accepted_tokens=float(accepted))


def speculative_metrics(ctx: CellContext) -> dict:
    """With MTP on, draft counters exist and grew during the cell; with MTP off they did not."""
    after = metrics_lib.spec_counters(read_metrics(ctx))
    before = metrics_lib.spec_counters(ctx.metrics_before or [])
    delta = after.minus(before)
    note = ""
    if not after.present:
        delta = _timings_counters(ctx)
        note = "no speculative counters on /metrics; counted from response timings"
    data = {"scheme": delta.scheme, "spec_type": after.spec_type, "delta": delta.to_dict(),
            "acceptance": delta.acceptance, "note": note}
    if ctx.profile.enable_mtp:
        if not delta.present:
            raise CheckFailed("MTP is on but neither /metrics nor response timings report drafts")
        if not delta.draft_tokens:
            raise CheckFailed(f"MTP is on but no draft tokens were generated (scheme {delta.scheme})")
        band = ctx.profile.expect_acceptance
        acc = delta.acceptance
        if band is not None and acc is not None and not band[0] <= acc <= band[1]:
            raise CheckFailed(f"draft acceptance {acc:.0%} outside the expected {band[0]:.0%}-{band[1]:.0%}")
    elif delta.present and (delta.draft_tokens or 0) > 0:
        raise CheckFailed(f"MTP is off but {delta.draft_tokens:.0f} draft tokens were generated")
    return data


def still_healthy(ctx: CellContext) -> dict:
    if not ctx.alive():
        raise CheckFailed("server process is gone")
    r = ctx.client.get(f"{ctx.url}/health", timeout=10)
    if r.status_code != 200:
        raise CheckFailed(f"/health HTTP {r.status_code}")
    return {}


CHECKS: list[tuple[str, Callable[[CellContext], dict]]] = [
    ("tiny_message", tiny_message),
    ("claude_style", claude_style),
    ("concurrency", concurrency),
    ("streaming", streaming),
    ("chat_completions", chat_completions),
    ("speculative_metrics", speculative_metrics),
    ("still_healthy", still_healthy),
]


def run_check(name: str, fn: Callable[[CellContext], dict], ctx: CellContext) -> CheckResult:
    t = time.monotonic()
    try:
        data = fn(ctx)
        return CheckResult(name, PASS, time.monotonic() - t, "", data)
    except CheckFailed as exc:
        return CheckResult(name, FAIL, time.monotonic() - t, str(exc))
    except httpx.HTTPError as exc:
        return CheckResult(name, FAIL, time.monotonic() - t, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
