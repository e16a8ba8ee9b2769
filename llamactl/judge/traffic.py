"""Generated traffic, one request at a time, timed from the client: what ``load`` and ``soak`` send.

Each request streams (or not) through llama-server's OpenAI (``/v1/chat/completions``) or Anthropic
(``/v1/messages``) API and comes back as a :class:`Record`: time to first token (s), time per output
token after the first (s/token, vLLM's TPOT), end to end (s), token counts (the server's own
``timings.predicted_n`` / ``prompt_n`` where the answer carries them, else the client's count of
content chunks), the server's ``timings`` (ms) and, for a failure, its kind. Nothing here prints.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from llamactl.core.errors import BadInput
from llamactl.judge import sse

# error kinds, as ``load``/``soak`` count them (``errors`` by kind)
HTTP_5XX, HTTP_4XX, TIMEOUT, CONNECT, STREAM = "http-5xx", "http-4xx", "timeout", "connect", "stream"
LEFT = "client-left"   # the client closed the stream on purpose (soak's disconnects): not an error

# ~1 token each with a leading space in SentencePiece/BPE vocabularies: prompt length in words ~ tokens
WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue "
         "side kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force education").split()


@dataclass(frozen=True)
class Lengths:
    """A length in tokens: fixed (``128``) or drawn uniformly from a range (``64:256``)."""

    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str | int, what: str) -> "Lengths":
        """``N`` or ``LO:HI`` (tokens, LO <= HI, both >= 1). Raises BadInput."""
        s = str(text).strip()
        lo_s, sep, hi_s = s.partition(":")
        try:
            lo, hi = int(lo_s), int(hi_s if sep else lo_s)
        except ValueError:
            raise BadInput(f"{what} {s!r}: expected N or LO:HI tokens (e.g. 128 or 64:256)") from None
        if lo < 1 or hi < lo:
            raise BadInput(f"{what} {s!r}: need 1 <= LO <= HI")
        return cls(lo, hi)

    def draw(self, rng: random.Random) -> int:
        return self.lo if self.lo == self.hi else rng.randint(self.lo, self.hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"


PROMPT_HEAD = "Continue this list of words with more words:"


def prompt_text(n_tokens: int, rng: random.Random, tag: str = "", tokens_per_word: float = 1.0, overhead: int = 12) -> str:
    """A prompt of about ``n_tokens`` tokens (common words; ``tokens_per_word`` and the fixed ``overhead``
    of the instruction and chat template as measured by :func:`calibrate`), distinct per ``tag`` so that no
    two requests share a prefix past the instruction (the prompt cache cannot make them cheap)."""
    n_words = max(1, round((n_tokens - overhead) / max(tokens_per_word, 0.05)))
    return f"[{tag}] {PROMPT_HEAD} " + " ".join(rng.choice(WORDS) for _ in range(n_words))


def calibrate(client: httpx.Client, url: str, timeout: float = 30.0, model: str = "model") -> tuple[float, int]:
    """(tokens per word, tokens a chat prompt adds to its words: the instruction and the chat template) of
    this server's model: words from its ``/tokenize``, the rest from one chat request's ``usage.prompt_tokens``
    (max_tokens 1). (1.0, 12) when the server cannot tell (prompt lengths are then approximate)."""
    try:
        words = client.post(f"{url}/tokenize", json={"content": " " + " ".join(WORDS)}, timeout=timeout)
        tpw = len(words.json()["tokens"]) / len(WORDS) or 1.0
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return 1.0, 12
    probe = f"[r0] {PROMPT_HEAD} " + " ".join(WORDS[:20])
    try:
        r = client.post(f"{url}/v1/chat/completions", timeout=timeout, json=chat_body(probe, 1, stream=False, model=model,
                                                                                       cache_prompt=False))
        n_prompt = int(r.json()["usage"]["prompt_tokens"])
        return tpw, max(0, n_prompt - round(20 * tpw))
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return tpw, 12


@dataclass
class Record:
    """One request as the client saw it. Times in s since the run's start (``start_s``, ``end_s``) and
    durations in s; ``server`` is the answer's ``timings`` (ms, tokens), empty when it carried none."""

    kind: str
    start_s: float
    end_s: float = 0.0
    status: int | None = None
    error: str | None = None          # an error kind above, None when answered
    detail: str = ""
    ttft_s: float | None = None
    tpot_s: float | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    server: dict[str, Any] = field(default_factory=dict)
    left: bool = False                # the client left mid-stream on purpose
    expected_error: bool = False      # the error was the point (a prompt longer than the slot's context)
    text: str = ""

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["e2e_s"] = round(self.e2e_s, 4)
        d.pop("text")
        return d


def chat_body(prompt: str, max_tokens: int, *, stream: bool, model: str = "model", system: str | None = None,
              ignore_eos: bool = True, seed: int = 42, cache_prompt: bool = True) -> dict[str, Any]:
    """An OpenAI chat request: greedy, ``max_tokens`` answer tokens (``ignore_eos``: exactly that many);
    ``cache_prompt`` False makes the server evaluate the whole prompt (no reuse from the slot or the cache)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                            "seed": seed, "stream": stream, "stream_options": {"include_usage": True}}
    if not stream:
        body.pop("stream_options")
    if not cache_prompt:
        body["cache_prompt"] = False
    if ignore_eos:
        body["ignore_eos"] = True
    return body


TOOLS = [{"name": "read_file", "description": "Read a file of the workspace.",
          "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
         {"name": "run", "description": "Run a shell command.",
          "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}]


def messages_body(prompt: str, max_tokens: int, *, stream: bool, model: str = "model") -> dict[str, Any]:
    """An Anthropic ``/v1/messages`` request as coding agents send it: system blocks and tools."""
    return {"model": model, "max_tokens": max_tokens, "stream": stream, "temperature": 0,
            "system": [{"type": "text", "text": "You are a coding agent. Answer briefly."},
                       {"type": "text", "text": "The workspace is a Python project."}],
            "tools": TOOLS, "messages": [{"role": "user", "content": prompt}]}


def _kind_of_status(code: int) -> str:
    return HTTP_5XX if code >= 500 else HTTP_4XX


def send(client: httpx.Client, url: str, path: str, body: dict[str, Any], *, kind: str, t0: float,
         timeout: float = 120.0, leave_after_tokens: int | None = None) -> Record:
    """Send one request and time it; never raises for what the server or the network did.

    ``path``: ``/v1/chat/completions`` or ``/v1/messages``. With ``body["stream"]`` the answer is read as
    SSE; ``leave_after_tokens`` closes the connection after that many content chunks (a client that goes
    away mid-stream: ``left`` is set, and it is not an error).
    """
    rec = Record(kind, time.monotonic() - t0)
    start = time.monotonic()
    try:
        if body.get("stream"):
            _stream(client, url, path, body, rec, start, timeout, leave_after_tokens)
        else:
            r = client.post(f"{url}{path}", json=body, timeout=timeout)
            rec.status = r.status_code
            if r.status_code != 200:
                rec.error, rec.detail = _kind_of_status(r.status_code), r.text[:200]
            else:
                _plain(r, rec, path)
                rec.ttft_s = None
    except httpx.TimeoutException as exc:
        rec.error, rec.detail = TIMEOUT, f"{type(exc).__name__} after {time.monotonic() - start:.1f} s"
    except httpx.TransportError as exc:
        rec.error, rec.detail = CONNECT if rec.status is None else STREAM, f"{type(exc).__name__}: {exc}"[:200]
    rec.end_s = time.monotonic() - t0
    return rec


def _plain(r: httpx.Response, rec: Record, path: str) -> None:
    try:
        data = r.json()
    except ValueError:
        rec.error, rec.detail = STREAM, f"not JSON: {r.text[:120]!r}"
        return
    if not isinstance(data, dict):
        rec.error, rec.detail = STREAM, f"not an object: {str(data)[:120]}"
        return
    timings: dict[str, Any] = data["timings"] if isinstance(data.get("timings"), dict) else {}
    rec.server = _timings(timings)
    usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
    if path == "/v1/messages":
        rec.output_tokens = usage.get("output_tokens")
        rec.prompt_tokens = usage.get("input_tokens")
        rec.text = "".join(b.get("text", "") for b in data.get("content") or [] if isinstance(b, dict))
    else:
        rec.output_tokens = usage.get("completion_tokens")
        rec.prompt_tokens = usage.get("prompt_tokens")
        ch = (data.get("choices") or [{}])[0]
        rec.text = str(((ch or {}).get("message") or {}).get("content") or "")
    if timings.get("predicted_n") is not None:
        rec.output_tokens = int(timings["predicted_n"])


def _timings(t: dict[str, Any]) -> dict[str, Any]:
    keep = ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second", "draft_n", "draft_n_accepted")
    return {k: t[k] for k in keep if k in t}


def _stream(client: httpx.Client, url: str, path: str, body: dict[str, Any], rec: Record, start: float,
            timeout: float, leave_after: int | None) -> None:
    first = last = None
    chunks = 0
    timings: dict[str, Any] = {}
    parts: list[str] = []
    with client.stream("POST", f"{url}{path}", json=body, timeout=timeout) as r:
        rec.status = r.status_code
        if r.status_code != 200:
            r.read()
            rec.error, rec.detail = _kind_of_status(r.status_code), r.text[:200]
            return
        for ev in sse.events(r.iter_lines()):
            if ev.done:
                break
            try:
                d = json.loads(ev.data)
            except ValueError:
                rec.error, rec.detail = STREAM, f"SSE data is not JSON: {ev.data[:100]!r}"
                return
            if not isinstance(d, dict):
                continue
            if d.get("type") == "error" or ev.event == "error":
                rec.error, rec.detail = STREAM, f"error event: {str(d)[:150]}"
                return
            if isinstance(d.get("timings"), dict):
                timings = d["timings"]
            start_usage = (d.get("message") or {}).get("usage") if d.get("type") == "message_start" else None
            if isinstance(start_usage, dict) and start_usage.get("input_tokens") is not None:
                rec.prompt_tokens = start_usage["input_tokens"]   # Anthropic: the prompt's size comes first
            text = _delta_text(d)
            usage = d.get("usage") if isinstance(d.get("usage"), dict) else None
            if usage:
                rec.output_tokens = usage.get("output_tokens", usage.get("completion_tokens", rec.output_tokens))
                rec.prompt_tokens = usage.get("input_tokens", usage.get("prompt_tokens", rec.prompt_tokens))
            if text:
                now = time.monotonic()
                first = first or now
                last = now
                chunks += 1
                parts.append(text)
                if leave_after is not None and chunks >= leave_after:
                    rec.left = True
                    break
    rec.text = "".join(parts)
    rec.server = _timings(timings)
    if timings.get("predicted_n") is not None:
        rec.output_tokens = int(timings["predicted_n"])
    elif rec.output_tokens is None or rec.left:
        rec.output_tokens = chunks
    if rec.prompt_tokens is None and timings.get("prompt_n") is not None:
        rec.prompt_tokens = int(timings["prompt_n"])   # tokens evaluated: the prompt less what the cache held
    if first is not None:
        rec.ttft_s = first - start
        n = rec.output_tokens or chunks
        if last is not None and n and n > 1 and last > first:
            rec.tpot_s = (last - first) / (n - 1)


def _delta_text(d: dict[str, Any]) -> str:
    """The text one SSE chunk adds (OpenAI ``choices[0].delta.content``/``reasoning_content``, Anthropic
    ``content_block_delta``)."""
    if d.get("type") == "content_block_delta":
        delta = d.get("delta") or {}
        return str(delta.get("text") or delta.get("partial_json") or delta.get("thinking") or "")
    choices = d.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta") or {}
        if isinstance(delta, dict):
            return str(delta.get("content") or delta.get("reasoning_content") or "")
    return ""


def percentile(xs: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``xs`` by linear interpolation between ranks; None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def pcts(xs: Sequence[float | None]) -> dict[str, float | None]:
    """``{"p50", "p90", "p99", "mean", "n"}`` of the values that are there."""
    vals = [float(x) for x in xs if x is not None]
    return {"p50": percentile(vals, 50), "p90": percentile(vals, 90), "p99": percentile(vals, 99),
            "mean": sum(vals) / len(vals) if vals else None, "n": len(vals)}
