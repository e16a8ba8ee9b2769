"""The right-answers checks: what the answers say, not only that they came.

- ``answers``: the reference request set (:func:`answers.reference_set`) asked alone with the prompt
  cache off; every answer must be complete (not cut by the slot's context: ``truncated``).
- ``lossless_drafting`` (MTP on): the answers equal the MTP-off twin's (same build, model, KV types).
- ``slot_isolation`` (parallel > 1): N distinct requests at once, and a long prompt that starts while
  another request is mid-decode, each equal its solo answer; another request's nonce in an answer
  fails whatever the tokens say.
- ``repeatable``: the same request again, with ``cache_prompt`` off and on (after a sibling that shares
  its prefix), gives the same tokens; a difference only with the cache on is named so.
- ``kv_quality`` (KV type other than the reference, f16): the f16 twin's greedy continuation is forced
  on the cell (a grammar of its text) while ``n_probs`` reads the cell's own distribution at each
  single-token decode: top-1 agreement and mean KL over the top-N, against per-type bounds.

A difference at a near tie (the reference's top-2 margin under ``harness.tie_margin``) is WARN
"numerics" unless ``harness.exact_answers``; anything else is FAIL with the first differing position,
both continuations (ids and text) and the margin there.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any, Callable

from llamactl.judge import answers as A
from llamactl.judge.answers import Answer, AnswerRequest, Verdict
from llamactl.judge.checks import (CannotJudge, CellContext, CheckFailed, CheckSkipped, CheckWarned, limit,
                                   request, sse_events)
from llamactl.judge.references import KINDS, ReferenceFailed
from llamactl.judge.status import Status
from llamactl.serve.profiles import Profile

DEFAULT_UBATCH = 512        # llama-server's --ubatch-size default
HIGH_PRECISION = {"f32", "f16", "bf16", "q8_0"}
BOUNDS_8BIT = (0.01, 0.95)   # q8_0: mean KL 0.001-0.0067, top-1 96.8% (llama.cpp PR #7412, LLMKube #601)
BOUNDS_4BIT = (0.03, 0.93)   # q4_0/turbo4: KL 0.0117, top-1 95.5% (LLMKube #601)
HARD_BOUNDS = (0.1, 0.85)    # broken configurations: KL 0.23-2.25, top-1 35-69% (turboquant #207, PR #111)


@dataclass
class Book:
    """The cell's solo answers to the reference set (``answers`` check), shared by the later checks."""

    reqs: list[AnswerRequest]
    solo: dict[str, Answer]
    n_ctx_slot: int | None
    n_probs: int

    def req(self, key: str) -> AnswerRequest | None:
        return next((r for r in self.reqs if r.key == key), None)


def _n_ctx_slot(ctx: CellContext) -> int | None:
    v = ctx.server.get("n_ctx_slot")
    if isinstance(v, int):
        return v
    p = ctx.profile
    if p.ctx:
        return p.ctx if (p.kv_unified or p.parallel == 1) else p.ctx // p.parallel
    return None


def _ubatch(p: Profile) -> int:
    return min(p.ubatch or DEFAULT_UBATCH, p.batch or 2048)


def _tokenize(ctx: CellContext, text: str) -> list[int]:
    r = request(ctx, "POST", "/tokenize", {"content": text})
    if r.status_code != 200:
        raise CheckFailed(f"/tokenize HTTP {r.status_code}: {r.text[:120]}")
    try:
        toks = r.json().get("tokens")
    except (ValueError, AttributeError) as exc:
        raise CheckFailed(f"/tokenize: not a JSON object: {r.text[:120]!r}") from exc
    if not isinstance(toks, list):
        raise CheckFailed(f"/tokenize: no tokens in {r.text[:120]!r}")
    return toks


def _post_answer(ctx: CellContext, req: AnswerRequest, body: dict[str, Any]) -> Answer:
    r = request(ctx, "POST", req.path, body)
    if r.status_code != 200:
        raise CheckFailed(f"POST {req.path} ({req.key}): HTTP {r.status_code}: {r.text[:200]}")
    try:
        out = A.parse_answer(req, r.json(), ctx.server.get("n_ctx_slot"))
    except (ValueError, A.BadAnswer) as exc:
        raise CheckFailed(f"POST {req.path} ({req.key}): {exc}") from exc
    ctx.add_timings(out.timings or None)
    return out


def _ask(ctx: CellContext, req: AnswerRequest, **kw: Any) -> Answer:
    return _post_answer(ctx, req, req.body(model=ctx.model, **kw))


def _book(ctx: CellContext) -> Book:
    book = ctx.state.get("book")
    if not isinstance(book, Book):
        raise CannotJudge("the answers check did not collect the solo answers")
    return book


def _enabled(ctx: CellContext) -> None:
    if not ctx.profile.harness.answers:
        raise CheckSkipped("harness.answers is false")


def _summary(a: Answer) -> dict[str, Any]:
    return {"tokens": len(a.tokens), "finish": a.finish, "text": a.text[:100], "drafted": a.drafted,
            "accepted": a.accepted, "prompt_tokens": a.n_prompt, "truncated": a.truncated}


def _conclude(verdicts: list[Verdict], data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Raise for the worst verdict (FAIL, then WARN), with every divergence in ``data``; else ``data``."""
    data["divergences"] = [v.divergence.to_dict() for v in verdicts if v.divergence is not None]
    for status, exc in ((Status.FAIL, CheckFailed), (Status.WARN, CheckWarned)):
        hit = [v for v in verdicts if v.status == status]
        if hit:
            more = f" (+{len(hit) - 1} more)" if len(hit) > 1 else ""
            raise exc(f"{prefix}{hit[0].detail}{more}", data)
    return data


def _verdict(ctx: CellContext, ref: Answer, got: Answer, what: str, *margins: Answer,
             exact: bool | None = None) -> Verdict:
    h = ctx.profile.harness
    exact = h.exact_answers if exact is None else exact
    div = A.first_divergence(ref, got, *margins)
    if div is not None:
        for side in ("ref", "got"):      # answers without pieces (drafted, streamed): the server's /detokenize
            if not getattr(div, f"{side}_text") and getattr(div, f"{side}_tokens"):
                setattr(div, f"{side}_text", _detokenize(ctx, getattr(div, f"{side}_tokens")))
    return A.judge(div, exact=exact, tie_margin=h.tie_margin, what=what)


def _detokenize(ctx: CellContext, tokens: list[int]) -> str:
    """The text of ``tokens`` (POST /detokenize), or "" when the server cannot say."""
    try:
        r = request(ctx, "POST", "/detokenize", {"tokens": tokens})
        out = r.json().get("content") if r.status_code == 200 else ""
        return out if isinstance(out, str) else ""
    except Exception:   # noqa: BLE001 - evidence text is a courtesy; the token ids are the evidence
        return ""


def _twins(ctx: CellContext, kind: str, reqs: list[AnswerRequest]) -> dict[str, Answer]:
    if ctx.references is None:
        raise CheckSkipped("needs a reference server, which --url runs do not start")
    try:
        return ctx.references.get(ctx.profile, kind, reqs, ctx.profile.harness.reference_kv)
    except ReferenceFailed as exc:
        raise CannotJudge(f"no reference answers: {exc}") from exc


# ---- the checks ------------------------------------------------------------------------------------


def answers(ctx: CellContext) -> dict:
    """The reference set, each request alone, prompt cache off; every answer complete."""
    _enabled(ctx)
    p = ctx.profile
    n_ctx = _n_ctx_slot(ctx)
    per_paragraph = len(_tokenize(ctx, f"[{A.nonce('long')} part 1] {A.LONG_PARAGRAPH}"))
    # the long prompt is compared where it can part: drafted (MTP) or beside another slot (parallel > 1)
    reqs = A.reference_set(_ubatch(p), per_paragraph, n_ctx or 4096, long=p.enable_mtp or p.parallel > 1)
    n_probs = 0 if p.enable_mtp else A.N_PROBS       # drafted tokens carry no probabilities anyway
    solo = {r.key: _ask(ctx, r, n_probs=n_probs) for r in reqs}
    ctx.state["book"] = Book(reqs, solo, n_ctx, n_probs)
    registered = []
    if ctx.references is not None and not p.enable_mtp:
        registered = [k for k in KINDS if ctx.references.register(p, k, reqs, solo, p.harness.reference_kv)]
    data: dict[str, Any] = {"n_ctx_slot": n_ctx, "ubatch": _ubatch(p), "requests": {k: _summary(a) for k, a in solo.items()},
                            "reference_for": registered}
    if "long" not in solo and (p.enable_mtp or p.parallel > 1):
        data["note"] = f"no long prompt: 2 ubatches of {_ubatch(p)} tokens do not fit the slot's context ({n_ctx})"
    cut = [a for a in solo.values() if a.truncated]
    if cut:
        a = cut[0]
        want = next(r.max_tokens for r in reqs if r.key == a.key)
        raise CheckFailed(f"complete answers: {a.key} was cut by the slot's context after {len(a.tokens)} of {want} "
                          f"tokens (prompt {a.n_prompt}, n_ctx_slot {n_ctx})", data)
    empty = [k for k, a in solo.items() if not a.tokens]
    if empty:
        raise CheckFailed(f"empty answer to {', '.join(empty)}", data)
    foreign = A.foreign_nonces(solo, {r.key: r.nonce for r in reqs})
    if foreign:
        raise CheckFailed(f"an answer alone shows another request's nonce: {foreign[0]}", data)
    return data


def lossless_drafting(ctx: CellContext) -> dict:
    """With MTP on, every answer equals the MTP-off twin's (same build, model and KV types)."""
    _enabled(ctx)
    if not ctx.profile.enable_mtp:
        raise CheckSkipped("MTP is off: nothing drafts")
    book = _book(ctx)
    ref = _twins(ctx, "nodraft", book.reqs)
    drafted = sum(a.drafted for a in book.solo.values())
    data: dict[str, Any] = {"reference": "MTP-off twin", "compared": len(book.reqs), "draft_tokens": drafted,
                            "accepted_tokens": sum(a.accepted for a in book.solo.values())}
    verdicts = [_verdict(ctx, ref[r.key], book.solo[r.key], "drafted vs MTP-off") for r in book.reqs]
    if not drafted and all(v.status == Status.PASS for v in verdicts):
        raise CannotJudge("MTP is on but none of the answers drafted (timings.draft_n 0): lossless not shown")
    return _conclude(verdicts, data)


def _stream_tokens(ctx: CellContext, req: AnswerRequest, body: dict[str, Any],
                   on_first: Callable[[], None]) -> tuple[Answer, float]:
    """A streamed ``/completion``: the answer and the time its last chunk came; ``on_first`` runs once,
    when the first generated token has arrived (the request is mid-decode)."""
    tokens: list[int] = []
    text, finish, truncated = "", "", False
    timings: dict[str, Any] = {}
    fired = False
    for ev in sse_events(ctx, req.path, body):
        try:
            d = json.loads(ev.data)
        except ValueError as exc:
            raise CheckFailed(f"{req.key} (stream): data is not JSON: {ev.data[:100]!r}") from exc
        if not isinstance(d, dict):
            continue
        tokens += [t for t in d.get("tokens") or [] if isinstance(t, int)]
        text += str(d.get("content") or "")
        if d.get("stop"):
            finish, truncated = str(d.get("stop_type", "")), bool(d.get("truncated"))
            timings = d["timings"] if isinstance(d.get("timings"), dict) else {}
        if tokens and not fired:
            fired = True
            on_first()
    return Answer(req.key, tokens, text, finish, truncated, None, [], [], timings), time.monotonic()


def slot_isolation(ctx: CellContext) -> dict:
    """N distinct requests on N slots at once, and a long prompt sent while another request decodes:
    each answer equals its solo answer and shows no other request's nonce."""
    _enabled(ctx)
    n = ctx.profile.parallel
    if n < 2:
        raise CheckSkipped("one slot: nothing to isolate")
    book = _book(ctx)
    # as long as concurrent_max_tokens (the profile's "long enough that all slots decode together"): on a
    # fast model 24-token answers can finish before the other request arrives, and nothing is shared
    n_tokens = max(A.SHORT_TOKENS, ctx.profile.harness.concurrent_max_tokens)
    reqs = [replace(A.short_request(i), max_tokens=n_tokens) for i in range(n)]
    solo = {r.key: (book.solo.get(r.key) if n_tokens == A.SHORT_TOKENS else None)
            or _ask(ctx, r, n_probs=book.n_probs) for r in reqs}
    margins = _margin_sources(ctx, book)
    barrier = threading.Barrier(n)

    def together(r: AnswerRequest) -> Answer:
        try:
            barrier.wait(timeout=limit(ctx)[0])
        except threading.BrokenBarrierError:
            pass
        return _ask(ctx, r, n_probs=book.n_probs)

    with ThreadPoolExecutor(max_workers=n) as pool:
        at_once = dict(zip([r.key for r in reqs], pool.map(together, reqs), strict=True))
    verdicts = [_verdict(ctx, solo[k], a, f"{k} with {n} requests at once vs alone", *margins.get(k, []))
                for k, a in at_once.items()]

    # one request mid-decode (as long as concurrent_max_tokens, so it still decodes when the other comes),
    # another (the long prompt: its prefill spans ubatches) joins it
    mid_req = reqs[0]
    mid_solo = solo[mid_req.key]
    joiner = book.req("long") or A.short_request(1)
    sent: list[float] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        joining: list[Future[Answer]] = []

        def join() -> None:
            sent.append(time.monotonic())
            joining.append(pool.submit(_ask, ctx, joiner, n_probs=book.n_probs))

        mid, mid_end = _stream_tokens(ctx, mid_req, mid_req.body(n_probs=0, stream=True, model=ctx.model), join)
        try:
            joined = joining[0].result(timeout=limit(ctx)[0]) if joining else None   # its errors raise here
        except FutureTimeout:
            joined = None
    data: dict[str, Any] = {"slots": n, "at_once": {k: _summary(a) for k, a in at_once.items()}}
    verdicts.append(_verdict(ctx, mid_solo, mid, f"{mid_req.key} (decoding when {joiner.key} was sent) vs alone",
                             *margins.get("short-0", [])))
    if isinstance(joined, Answer):
        verdicts.append(_verdict(ctx, book.solo.get(joiner.key) or solo.get(joiner.key) or joined, joined,
                                 f"{joiner.key} (sent while short-0 decoded) vs alone", *margins.get(joiner.key, [])))
        data["mid_decode"] = {"decoding": mid_req.key, "joined": joiner.key, "mid_tokens": len(mid.tokens),
                              "overlapped": bool(sent) and sent[0] < mid_end, "joined_answer": _summary(joined)}
    nonces = {r.key: r.nonce for r in [*reqs, joiner]}
    shown = {**at_once, **({f"{joiner.key}": joined} if isinstance(joined, Answer) else {})}
    foreign = A.foreign_nonces(shown, nonces) + [
        f for f in A.foreign_nonces({"short-0": mid}, nonces) if not f.startswith("short-0 shows")]
    if foreign:
        data["foreign_nonces"] = foreign
        raise CheckFailed(f"an answer shows another request's nonce: {foreign[0]}", data)
    return _conclude(verdicts, data)


def _margin_sources(ctx: CellContext, book: Book) -> dict[str, list[Answer]]:
    """Answers with probabilities for each key, for the margin at a difference: the cell's own solo
    answers carry them without MTP; with MTP, the MTP-off twin's, when already at hand."""
    if book.n_probs or ctx.references is None:
        return {}
    try:
        twin = ctx.references.get(ctx.profile, "nodraft", book.reqs, ctx.profile.harness.reference_kv)
    except ReferenceFailed:
        return {}
    return {k: [a] for k, a in twin.items()}


def repeat_requests() -> tuple[AnswerRequest, AnswerRequest]:
    """The request that ``repeatable`` asks again and again, and a sibling that shares its prompt but
    for one word in the middle (so the prompt cache can reuse the sibling's prefix)."""
    base = A.short_request(0)
    n = A.nonce("repeat")
    text = f"Note {n}. {A.SUBJECTS[0]}"
    sibling = text.replace(" mountain ", " river ", 1)
    return (AnswerRequest("repeat", base.path, text, n, A.SHORT_TOKENS),
            AnswerRequest("repeat-sibling", base.path, sibling, n, 4))


def repeatable(ctx: CellContext) -> dict:
    """The same request gives the same tokens with the prompt cache on (slot 0) and off.

    Order matters: sibling, request (cache on: it reuses the sibling's prefix, through a context
    checkpoint on sliding-window models), an unrelated request, request (cache on: restored from the
    server's prompt cache, ``--cache-ram``), then the request twice with the cache off. Asked earlier, the request would
    be restored whole at once, and partial reuse, where cache bugs live, would never run.
    """
    _enabled(ctx)
    book = _book(ctx)
    req, sibling = repeat_requests()
    other = AnswerRequest("repeat-other", req.path, f"Unrelated {A.nonce('other')}: count to three.", "", 4)
    on = []
    for before in (sibling, other):   # 1: reuses the sibling's prefix; 2: restored from the prompt cache
        _ask(ctx, before, cache_prompt=False, id_slot=0)     # leaves exactly its own tokens in slot 0
        on.append(_ask(ctx, req, n_probs=book.n_probs, cache_prompt=True, id_slot=0))
    off = [_ask(ctx, req, n_probs=book.n_probs, cache_prompt=False) for _ in range(2)]
    base = off[0]
    margins = _margin_sources(ctx, book).get(req.key, [])
    cached = [int(a.timings.get("cache_n") or 0) for a in on]
    data = {"cache_off": [_summary(a) for a in off], "cache_on": [_summary(a) for a in on], "cache_n": cached}
    off_v = _verdict(ctx, base, off[1], "asked twice, prompt cache off", *margins)
    # never exact: the cache splits the prompt into other batches, which llama.cpp does not promise to be
    # bit-identical (tools/server README, cache_prompt); seen: a top-2 swap at total variation 0.13 with FA
    on_v = [_verdict(ctx, base, a, f"prompt cache on ({c} tokens from the cache) vs off", *margins, exact=False)
            for a, c in zip(on, cached, strict=True)]
    if off_v.status != Status.PASS:
        return _conclude([off_v, *on_v], data, "not repeatable even with the prompt cache off: ")
    worst = [v for v in on_v if v.status != Status.PASS]
    return _conclude(worst, data, "differs only with the prompt cache on: " if worst else "")


def quality_bounds(p: Profile) -> tuple[float, float, str]:
    """(mean KL max, top-1 min, where they come from) for the cell's KV types."""
    q = p.harness.expect_quality
    if q is not None:
        return q.kl_max, q.top1_min, "expect_quality"
    types = {(p.kv_k or "f16").lower(), (p.kv_v or "f16").lower()}
    if types <= HIGH_PRECISION:
        return (*BOUNDS_8BIT, "default for 8-bit KV types")
    return (*BOUNDS_4BIT, "default for 4-bit KV types")


def kv_quality(ctx: CellContext) -> dict:
    """Teacher-forced top-N probe against the f16 twin, on the single-token decode path.

    Without MTP the cell itself is probed; with MTP its MTP-off twin is (the same build, model and KV
    types; drafted tokens carry no probabilities).
    """
    _enabled(ctx)
    p = ctx.profile
    ref_kv = p.harness.reference_kv
    if (p.kv_k or "f16") == ref_kv and (p.kv_v or "f16") == ref_kv:
        raise CheckSkipped(f"this cell's KV is the reference ({ref_kv}/{ref_kv})")
    book = _book(ctx)
    probes = [r for r in book.reqs if r.key.startswith("short-")]
    ref = _twins(ctx, "f16", probes)
    asks = [(r, A.probe_body(r, ref[r.key])) for r in probes]
    where = "this cell"
    if p.enable_mtp:
        where = "the MTP-off twin (same KV types)"
        try:
            cand = ctx.references.answers(p, "nodraft", asks, ref_kv)
        except ReferenceFailed as exc:
            raise CannotJudge(f"no probe on the MTP-off twin: {exc}") from exc
    else:
        cand = {r.key: _post_answer(ctx, r, {**body, "model": ctx.model}) for r, body in asks}
    q = A.Quality([A.probe_result(ref[r.key], cand[r.key]) for r in probes])
    kl_max, top1_min, source = quality_bounds(p)
    tie = p.harness.tie_margin
    data = {"reference_kv": f"{ref_kv}/{ref_kv}", "kv": f"{p.kv_k}/{p.kv_v}", "probed": where,
            "bounds": {"kl_max": kl_max, "top1_min": top1_min, "from": source,
                       "hard_kl_max": HARD_BOUNDS[0], "hard_top1_min": HARD_BOUNDS[1]}, **q.summary(tie)}
    if q.top1 is None or q.mean_kl is None:
        raise CannotJudge(f"the probe compared no positions (forced {data['forced']}: no probabilities where the "
                          "candidate decoded the reference's tokens)")
    figures = f"mean KL {q.mean_kl:.4f}, top-1 {q.top1:.1%} over {len(q.steps)} decode positions"
    if q.mean_kl > HARD_BOUNDS[0] or q.top1 < HARD_BOUNDS[1]:
        raise CheckFailed(f"{figures}: broken (KL > {HARD_BOUNDS[0]} or top-1 < {HARD_BOUNDS[1]:.0%} always fails)", data)
    if q.mean_kl > kl_max:
        raise CheckFailed(f"{figures}: KL above {kl_max} ({source})", data)
    if q.top1 < top1_min:
        clear = len(q.steps) - data["clear_disagreements"]
        if clear / len(q.steps) >= top1_min:
            raise CheckWarned(f"numerics: {figures}: top-1 under {top1_min:.0%} ({source}), but only at near ties "
                              f"(reference top-2 margin under {tie:g})", data)
        raise CheckFailed(f"{figures}: top-1 under {top1_min:.0%} ({source})", data)
    return data


ANSWER_CHECKS: list[tuple[str, Callable[[CellContext], dict]]] = [
    ("answers", answers),
    ("lossless_drafting", lossless_drafting),
    ("slot_isolation", slot_isolation),
    ("repeatable", repeatable),
    ("kv_quality", kv_quality),
]
