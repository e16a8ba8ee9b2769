"""Greedy answers as evidence: the reference request set, asking it over HTTP, and comparing answers.

An :class:`Answer` holds what the server generated for one request: token ids (``/completion`` with
``return_tokens``; ``/v1/chat/completions`` with ``logprobs``), text, the top-N probabilities per
generated position when asked (``n_probs`` / ``top_logprobs``; llama-server leaves them out for
tokens accepted from a draft), how it finished (``stop_type`` / ``finish_reason``; ``truncated``
when the slot's context cut it) and the server's ``timings`` (``draft_n``, ``draft_n_accepted``,
``cache_n``, ``prompt_n``).

Every request carries a unique nonce, so an answer that shows another request's nonce proves a leak
between slots whatever its tokens say. :func:`first_divergence` finds where two answers part, with
both continuations and the reference's top-2 margin there; :func:`judge` turns that into PASS, WARN
("numerics": a near tie) or FAIL.

Nothing here starts a server: the checks (:mod:`llamactl.judge.answer_checks`) and the reference
twins (:mod:`llamactl.judge.references`) do.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from llamactl.judge.status import Status

N_PROBS = 10             # top-N probabilities asked per position (reference answers, the KV probe)
SHORT_TOKENS = 24        # tokens asked of each short answer
LONG_TOKENS = 16         # tokens asked of the long-prompt answer (its prefill is the point)
CHAT_TOKENS = 24
EPS = 1e-10

SUBJECTS = [
    "The tallest mountain on Earth is",
    "The largest ocean on Earth is the",
    "The chemical symbol for gold is",
    "The planet closest to the Sun is",
    "The longest river in Africa is the",
    "The inventor of the telephone was",
    "The capital city of Japan is",
    "Water boils at a temperature of",
]
LONG_PARAGRAPH = (
    "The river rises in the high mountains, where snow melts each spring and feeds a hundred small "
    "streams. They join in the valley, turn the old mills, and carry the water past farms, towns and "
    "a great city before the river reaches the sea. Travellers have written about it for centuries. "
)


def nonce(key: str, salt: str = "") -> str:
    """A token-unlikely tag for one request, stable for its key: ``ZQ-`` plus 6 hex digits."""
    return "ZQ-" + hashlib.sha256(f"{salt}/{key}".encode()).hexdigest()[:6].upper()


@dataclass(frozen=True)
class AnswerRequest:
    """One greedy request of the reference set. ``path`` is ``/completion`` or ``/v1/chat/completions``."""

    key: str
    path: str
    prompt: str
    nonce: str
    max_tokens: int

    def body(self, *, n_probs: int = 0, cache_prompt: bool = False, id_slot: int | None = None,
             stream: bool = False, model: str = "model") -> dict[str, Any]:
        """The request body: greedy (temperature 0, top_k 1), fixed seed, token ids returned."""
        common: dict[str, Any] = {"temperature": 0.0, "top_k": 1, "seed": 42, "cache_prompt": cache_prompt,
                                  "stream": stream}
        if id_slot is not None:
            common["id_slot"] = id_slot
        if self.path == "/completion":
            body = {**common, "prompt": self.prompt, "n_predict": self.max_tokens, "return_tokens": True}
            if n_probs:
                body["n_probs"] = n_probs
            return body
        body = {**common, "model": model, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": self.prompt}], "logprobs": True,
                "top_logprobs": max(n_probs, 1)}
        return body

    def ident(self) -> dict[str, Any]:
        return {"key": self.key, "path": self.path, "prompt": self.prompt, "max_tokens": self.max_tokens}


@dataclass
class Answer:
    """What the server answered to one :class:`AnswerRequest`.

    ``top``: per generated position, the top-N (token id, probability) pairs, or None where the
    server gave none (drafted tokens, ``n_probs`` 0). ``finish``: ``eos``, ``limit``, ``word``
    (``/completion``'s ``stop_type``) or ``stop``/``length`` (chat). ``truncated``: the slot's
    context ended it (``truncated`` in ``/completion``; for chat, prompt + answer reached n_ctx_slot).
    """

    key: str
    tokens: list[int]
    text: str
    finish: str = ""
    truncated: bool = False
    n_prompt: int | None = None
    top: list[list[tuple[int, float]] | None] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def drafted(self) -> int:
        return int(self.timings.get("draft_n") or 0)

    @property
    def accepted(self) -> int:
        return int(self.timings.get("draft_n_accepted") or 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Answer":
        top = [None if t is None else [(int(i), float(p)) for i, p in t] for t in d.get("top", [])]
        return cls(d["key"], [int(t) for t in d["tokens"]], d.get("text", ""), d.get("finish", ""),
                   bool(d.get("truncated")), d.get("n_prompt"), top, list(d.get("pieces", [])),
                   dict(d.get("timings") or {}))


class BadAnswer(Exception):
    """The response does not carry what an answer needs (HTTP error, no tokens, malformed JSON)."""


def _probs(entries: Any) -> tuple[list[int], list[str], list[list[tuple[int, float]] | None]]:
    """Token ids, pieces and top-N (id, prob) lists from ``completion_probabilities`` /
    ``logprobs.content`` (llama-server's pre-sampling ``top_logprobs``, or ``top_probs``)."""
    ids: list[int] = []
    pieces: list[str] = []
    top: list[list[tuple[int, float]] | None] = []
    for e in entries or []:
        if not isinstance(e, dict) or "id" not in e:
            raise BadAnswer(f"a probability entry lacks the token id: {str(e)[:100]}")
        ids.append(int(e["id"]))
        pieces.append(str(e.get("token", "")))
        cands = e.get("top_logprobs", e.get("top_probs"))
        if not isinstance(cands, list) or not cands:
            top.append(None)
            continue
        row = []
        for c in cands:
            if "logprob" in c:
                p = math.exp(c["logprob"]) if c["logprob"] is not None and c["logprob"] > -1e30 else 0.0
            else:
                p = float(c.get("prob", 0.0))
            row.append((int(c["id"]), p))
        top.append(row)
    return ids, pieces, top


def parse_answer(req: AnswerRequest, body: Any, n_ctx_slot: int | None = None) -> Answer:
    """An :class:`Answer` from a response body of ``req.path``.

    Raises:
        BadAnswer: not an object, or no token ids.
    """
    if not isinstance(body, dict):
        raise BadAnswer(f"{req.path}: the answer is not a JSON object: {str(body)[:120]}")
    raw = body.get("timings")
    timings: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if req.path == "/completion":
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise BadAnswer(f"/completion: no token ids in the answer (return_tokens): {str(body)[:150]}")
        _, pieces, top = _probs(body.get("completion_probabilities"))
        if top and len(top) != len(tokens):   # drafted tokens carry no probabilities
            top = [*top, *[None] * (len(tokens) - len(top))][:len(tokens)]
        return Answer(req.key, list(tokens), str(body.get("content", "")), str(body.get("stop_type", "")),
                      bool(body.get("truncated")), body.get("tokens_evaluated"), top, pieces, timings)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadAnswer(f"{req.path}: no choices[0] in {str(body)[:150]}")
    ch = choices[0]
    msg: dict[str, Any] = ch["message"] if isinstance(ch.get("message"), dict) else {}
    lp: dict[str, Any] = ch["logprobs"] if isinstance(ch.get("logprobs"), dict) else {}
    ids, pieces, top = _probs(lp.get("content"))
    usage: dict[str, Any] = body["usage"] if isinstance(body.get("usage"), dict) else {}
    n_prompt = usage.get("prompt_tokens")
    n_out = usage.get("completion_tokens", len(ids))
    if not ids and n_out:
        raise BadAnswer(f"{req.path}: no token ids in logprobs.content for {n_out} tokens")
    finish = str(ch.get("finish_reason") or "")
    cut = bool(finish == "length" and n_ctx_slot and isinstance(n_prompt, int)
               and n_prompt + int(n_out) + 1 >= n_ctx_slot and int(n_out) < req.max_tokens)
    return Answer(req.key, ids, str(msg.get("content") or ""), finish, cut, n_prompt, top, pieces, timings)


# ---- the reference request set --------------------------------------------------------------------


def short_request(i: int, salt: str = "") -> AnswerRequest:
    """Short prompt ``i``: a nonce-tagged note and one factual sentence to continue."""
    key = f"short-{i}"
    n = nonce(key, salt)
    return AnswerRequest(key, "/completion", f"Note {n}. {SUBJECTS[i % len(SUBJECTS)]}", n, SHORT_TOKENS)


def long_request(n_paragraphs: int, salt: str = "") -> AnswerRequest:
    """A prompt of ``n_paragraphs`` paragraphs, long enough that prefill spans several ubatches."""
    n = nonce("long", salt)
    body = "".join(f"[{n} part {k + 1}] {LONG_PARAGRAPH}" for k in range(n_paragraphs))
    return AnswerRequest("long", "/completion", body + "In one sentence, the river", n, LONG_TOKENS)


def chat_request(salt: str = "") -> AnswerRequest:
    n = nonce("chat", salt)
    return AnswerRequest("chat", "/v1/chat/completions",
                         f"Request {n}: name the three primary colours, then count to five.", n, CHAT_TOKENS)


def long_paragraphs(ubatch: int, tokens_per_paragraph: int, budget: int) -> int:
    """Paragraphs for a prompt whose prefill spans 2 ubatches or more (a quarter ubatch past the first,
    and at least 2 paragraphs), within ``budget`` tokens (the slot's context less the answer); 0 when
    that does not fit."""
    want = max(2, math.ceil((ubatch + ubatch // 4 + 8) / max(1, tokens_per_paragraph)))
    fit = budget // max(1, tokens_per_paragraph)
    return want if want <= fit else 0


def reference_set(ubatch: int, tokens_per_paragraph: int, n_ctx_slot: int, salt: str = "",
                  long: bool = True) -> list[AnswerRequest]:
    """The requests a cell answers alone: two short prompts, one chat request and, with ``long``, one
    long prompt whose prefill spans 2 ubatches or more (when the slot's context holds it)."""
    out = [short_request(0, salt), short_request(1, salt)]
    n = long_paragraphs(ubatch, tokens_per_paragraph, n_ctx_slot - LONG_TOKENS - 16) if long else 0
    if n:
        out.append(long_request(n, salt))
    out.append(chat_request(salt))
    return out


def set_digest(reqs: list[AnswerRequest]) -> str:
    return hashlib.sha256(json.dumps([r.ident() for r in reqs], sort_keys=True).encode()).hexdigest()[:16]


# ---- comparing -----------------------------------------------------------------------------------


@dataclass
class Divergence:
    """Where ``got`` parts from ``ref``: position (0 = first generated token), both continuations
    from there (token ids and text), and the reference's top-2 probability margin at that position
    (None when the reference carries no probabilities there)."""

    key: str
    pos: int
    ref_tokens: list[int]
    got_tokens: list[int]
    ref_text: str
    got_text: str
    margin: float | None
    top2: list[tuple[int, float]] | None = None
    length_only: bool = False      # one answer is a prefix of the other (it ended earlier)
    swap_tv: float | None = None   # top two swapped: total variation distance of the two distributions there

    def describe(self) -> str:
        m = f", reference top-2 margin {self.margin:.3f}" if self.margin is not None else ""
        if self.length_only:
            return (f"{self.key}: answers agree for {self.pos} tokens, then one ends "
                    f"(reference {self.ref_tokens[:8]} {self.ref_text!r}, got {self.got_tokens[:8]} {self.got_text!r})")
        return (f"{self.key}: differs from token {self.pos}{m}: reference {self.ref_tokens[:8]} {self.ref_text!r}, "
                f"got {self.got_tokens[:8]} {self.got_text!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_of(a: Answer, start: int, n: int = 12) -> str:
    if a.pieces and len(a.pieces) >= len(a.tokens):
        return "".join(a.pieces[start:start + n])
    return ""


def row_at(pos: int, *sources: Answer, prefix: list[int] | None = None) -> list[tuple[int, float]] | None:
    """The top-N at ``pos`` of the first source with probabilities there whose tokens before ``pos``
    equal ``prefix`` (the same context), highest first; None when no source has them."""
    for s in sources:
        if pos < len(s.top) and s.top[pos] and (prefix is None or s.tokens[:pos] == prefix[:pos]):
            return sorted(s.top[pos] or [], key=lambda x: -x[1])
    return None


def margin_at(pos: int, *sources: Answer, prefix: list[int] | None = None) -> tuple[float | None, list[tuple[int, float]] | None]:
    """The top-2 margin (p1 - p2) at ``pos`` from :func:`row_at`, and its top-2. With only the top
    token's probability known (``top_logprobs: 1``), its lower bound ``max(0, 2 p1 - 1)``: p2 may be as
    large as what p1 leaves, so a difference there is not claimed to be far from a tie."""
    row = row_at(pos, *sources, prefix=prefix)
    if not row:
        return None, None
    if len(row) >= 2:
        return round(row[0][1] - row[1][1], 6), row[:2]
    return round(max(0.0, 2 * row[0][1] - 1), 6), row[:1]


def first_divergence(ref: Answer, got: Answer, *margin_sources: Answer) -> Divergence | None:
    """None when ``got`` has exactly ``ref``'s tokens; else where they part (see :class:`Divergence`).

    The margin comes from ``ref`` or, failing that, from ``margin_sources`` that share the context.
    """
    if ref.tokens == got.tokens:
        return None
    n = min(len(ref.tokens), len(got.tokens))
    pos = next((i for i in range(n) if ref.tokens[i] != got.tokens[i]), n)
    margin, top2 = margin_at(pos, ref, *margin_sources, prefix=ref.tokens)
    ref_row = row_at(pos, ref, *margin_sources, prefix=ref.tokens)
    got_row = got.top[pos] if pos < len(got.top) else None
    return Divergence(ref.key, pos, ref.tokens[pos:pos + 8], got.tokens[pos:pos + 8], _text_of(ref, pos),
                      _text_of(got, pos), margin, top2, length_only=pos == n,
                      swap_tv=top2_swap_distance(ref_row, got_row, ref.tokens[pos] if pos < len(ref.tokens) else None,
                                                 got.tokens[pos] if pos < len(got.tokens) else None))


def top2_swap_distance(ref_row: list[tuple[int, float]] | None, got_row: list[tuple[int, float]] | None,
                       ref_tok: int | None, got_tok: int | None) -> float | None:
    """When the two answers' top two tokens are the same pair in swapped order at the position where
    they part, the total variation distance between their top-N distributions there; else None.

    A swap between close distributions is what batch-size-dependent kernels do to a near tie; a bug
    (a corrupted cache, another slot's logits) moves the distribution far or puts other tokens on top.
    """
    if not ref_row or not got_row or ref_tok is None or got_tok is None:
        return None
    r2 = [t for t, _ in sorted(ref_row, key=lambda x: -x[1])[:2]]
    g2 = [t for t, _ in sorted(got_row, key=lambda x: -x[1])[:2]]
    if sorted(r2) != sorted(g2) or r2[0] != ref_tok or g2[0] != got_tok:
        return None
    rp, gp = dict(ref_row), dict(got_row)
    return round(0.5 * sum(abs(rp.get(t, 0.0) - gp.get(t, 0.0)) for t in set(rp) | set(gp)), 6)


@dataclass
class Verdict:
    status: Status
    detail: str
    divergence: Divergence | None = None


SWAP_TV_MAX = 0.25     # top two swapped between distributions this close: numerics (seen: 0.13, FA prompt batches)


def judge(div: Divergence | None, *, exact: bool, tie_margin: float, what: str) -> Verdict:
    """PASS for equal answers. A difference is WARN "numerics" when the profile does not demand
    ``exact`` answers and, at the first differing token, either the reference's top-2 margin is under
    ``tie_margin`` or the two answers' top two tokens swapped between close distributions (total
    variation under ``SWAP_TV_MAX``): near ties that batch-size-dependent kernels flip (llama.cpp
    #23335, #25618). Anything else is FAIL, and so is an answer that merely ends earlier or later (a
    prefix of the other): ``what`` names the pair."""
    if div is None:
        return Verdict(Status.PASS, "")
    if div.length_only:
        return Verdict(Status.FAIL, f"{what}: {div.describe()}", div)
    if div.margin is not None and div.margin < tie_margin and not exact:
        return Verdict(Status.WARN, f"numerics: {what}: {div.describe()} (a near tie, under {tie_margin:g})", div)
    if div.swap_tv is not None and div.swap_tv < SWAP_TV_MAX and not exact:
        return Verdict(Status.WARN, f"numerics: {what}: {div.describe()} (the top two swapped between close "
                                    f"distributions: total variation {div.swap_tv:.3f})", div)
    why = " (exact_answers: any difference fails)" if exact and div.margin is not None and div.margin < tie_margin \
        else "" if div.margin is not None else " (no reference probabilities there)"
    return Verdict(Status.FAIL, f"{what}: {div.describe()}{why}", div)


def foreign_nonces(answers: dict[str, Answer], nonces: dict[str, str]) -> list[str]:
    """``"<key> shows <other>'s nonce <N>"`` for each answer that contains another request's nonce."""
    out = []
    for key, a in answers.items():
        for other, n in nonces.items():
            if other != key and n and n in a.text:
                out.append(f"{key} shows {other}'s nonce {n}")
    return out


# ---- the KV probe: teacher-forced top-N against a reference --------------------------------------


def kl_top(ref: list[tuple[int, float]], cand: list[tuple[int, float]]) -> float:
    """KL(ref || cand) in nats over the reference's top-N tokens plus one bucket for the rest.

    A reference token missing from the candidate's top-N counts at the candidate's smallest listed
    probability (an upper bound of its probability, so this KL is a lower bound of the true one).
    """
    cmap = dict(cand)
    floor = min(cmap.values()) if cmap else EPS
    kl = 0.0
    p_rest = max(0.0, 1.0 - sum(p for _, p in ref))
    q_used = 0.0
    for tok, p in ref:
        q = cmap.get(tok, floor)
        q_used += q
        if p > 0:
            kl += p * math.log(p / max(q, EPS))
    q_rest = max(EPS, 1.0 - q_used)
    if p_rest > EPS:
        kl += p_rest * math.log(p_rest / q_rest)
    return max(0.0, kl)


@dataclass
class ProbeStep:
    pos: int
    ref_top1: int
    cand_top1: int | None
    kl: float | None
    margin: float | None


@dataclass
class ProbeResult:
    """Per-position comparison of a candidate's top-N with the reference's, over the reference's greedy
    continuation. ``forced``: positions the candidate decoded with the reference's tokens (the rest of
    the continuation, after a tokenisation difference, is not compared)."""

    key: str = ""
    steps: list[ProbeStep] = field(default_factory=list)
    forced: int = 0
    length: int = 0

    @property
    def judged(self) -> list[ProbeStep]:
        return [s for s in self.steps if s.cand_top1 is not None and s.kl is not None]

    def disagreements(self, tie_margin: float = 0.0) -> list[ProbeStep]:
        """Positions whose top-1 differs, at a reference top-2 margin of at least ``tie_margin``."""
        return [s for s in self.judged if s.cand_top1 != s.ref_top1 and (s.margin or 0.0) >= tie_margin]


def grammar_literal(text: str) -> str:
    """A GBNF rule ``root ::= "<text>"`` matching exactly ``text`` (llama.cpp's grammar syntax)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return 'root ::= "' + "".join(out) + '"'


def probe_body(req: AnswerRequest, ref: Answer, n_probs: int = N_PROBS) -> dict[str, Any]:
    """A ``/completion`` body that makes the candidate decode ``ref``'s text token by token.

    A grammar that admits only the reference's text forces the continuation while ``n_probs`` reports
    the candidate's own distribution before sampling (llama-server's pre-sampling ``top_logprobs``,
    which the grammar does not touch). Each forced token is a single-token decode: the path batched
    perplexity runs never reach (turboquant_plus #99). Use it on a server that does not draft (drafted
    tokens carry no probabilities)."""
    body = req.body(n_probs=n_probs)
    body["n_predict"] = max(1, len(ref.tokens))
    body["grammar"] = grammar_literal(ref.text)
    return body


def probe_result(ref: Answer, cand: Answer) -> ProbeResult:
    """Compare ``cand`` (the answer to :func:`probe_body`) with ``ref`` position by position, while the
    forced tokens are the reference's own."""
    res = ProbeResult(ref.key, length=len(ref.tokens))
    for pos in range(min(len(ref.tokens), len(cand.tokens))):
        parted = cand.tokens[pos] != ref.tokens[pos]
        if not parted:
            res.forced = pos + 1
        # where the grammar chose another tokenisation of the same text, this position still shares the
        # reference's context (its top-N was read before sampling); the contexts differ after it
        row = ref.top[pos] if pos < len(ref.top) else None
        crow = cand.top[pos] if pos < len(cand.top) else None
        if not row:
            if parted:
                break
            continue
        r = sorted(row, key=lambda x: -x[1])
        margin = round(r[0][1] - r[1][1], 6) if len(r) > 1 else None
        if not crow:
            res.steps.append(ProbeStep(pos, r[0][0], None, None, margin))
            if parted:
                break
            continue
        c = sorted(crow, key=lambda x: -x[1])
        res.steps.append(ProbeStep(pos, r[0][0], c[0][0], round(kl_top(r, c), 6), margin))
        if parted:
            break
    return res


@dataclass
class Quality:
    """The KV probe over several prompts: top-1 agreement (fraction) and KL (nats) per position."""

    results: list[ProbeResult] = field(default_factory=list)

    @property
    def steps(self) -> list[ProbeStep]:
        return [s for r in self.results for s in r.judged]

    @property
    def top1(self) -> float | None:
        st = self.steps
        return sum(s.cand_top1 == s.ref_top1 for s in st) / len(st) if st else None

    @property
    def mean_kl(self) -> float | None:
        st = self.steps
        return sum(s.kl or 0.0 for s in st) / len(st) if st else None

    def summary(self, tie_margin: float = 0.0) -> dict[str, Any]:
        kls = sorted(s.kl or 0.0 for s in self.steps)
        dis = [asdict(s) | {"key": r.key} for r in self.results for s in r.judged if s.cand_top1 != s.ref_top1]
        return {"positions": len(kls),
                "top1_agreement": None if self.top1 is None else round(self.top1, 4),
                "mean_kl": None if self.mean_kl is None else round(self.mean_kl, 6),
                "median_kl": round(kls[len(kls) // 2], 6) if kls else None,
                "max_kl": round(kls[-1], 6) if kls else None,
                "clear_disagreements": sum(1 for r in self.results for _ in r.disagreements(tie_margin)),
                "forced": {r.key: f"{r.forced}/{r.length}" for r in self.results},
                "disagreements": dis[:8]}
