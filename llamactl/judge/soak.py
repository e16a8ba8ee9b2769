"""`llamactl soak`: hours of mixed agent traffic on one server per cell, and whether the server lasts.

Traffic (seeded; ``clients`` threads, each an agent whose conversation grows turn by turn and starts
again at half the slot's context), as coding agents send it: short and long turns, streaming and not,
``/v1/messages`` with system blocks and tools, clients that leave mid-stream, prompts longer than the
slot's context (an error is the right answer there), and right-answer probes: a reference request (``judge/answers.py``) whose answer under
load must equal its answer alone.

A sampler reads, every ``sample_s``: the server process from /proc (VmRSS, VmHWM, RssAnon, VmSwap,
threads, open files), busy slots (``/slots`` ``is_processing``) against the requests the clients have in
flight, and the prompt cache's own size from the server log (``cache state: N prompts, X MiB``).

Verdicts (thresholds: the profile's ``harness.soak``, :class:`SoakBounds`):

- ``memory``: slope of RssAnon + VmSwap less the prompt cache's size after warm-up, MiB per hour (the
  host prompt cache grows with distinct prompts by design, llama.cpp #25740; swap hides leaks from RSS);
- ``slots_released``: no slot busy beyond the requests in flight for longer than ``slot_release_s``;
- ``drift``: draft acceptance and server decode tok/s of the last tenth against the first tenth;
- ``errors``: no 5xx, no crash, no timeout; every request answered, or failed with the reason it should;
- ``answers``: the probes' answers under load equal their answers alone (the validate rule for numerics).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from llamactl.core.errors import LlamactlError
from llamactl.core.procstat import anon_swap_mib, open_files, read_status
from llamactl.judge import answers as A, traffic
from llamactl.judge.matrix import Cell, cell_profile, slug
from llamactl.judge.status import Status
from llamactl.judge.traffic import Record, pcts, percentile
from llamactl.serve import launcher, profiles
from llamactl.serve.profiles import SoakBounds
from llamactl.serve.server import ServerDied, ServerProcess

# the traffic mix: kind -> weight
MIX = {"chat": 4, "chat-stream": 3, "long-stream": 2, "messages": 2, "messages-stream": 2, "disconnect": 2,
       "overrun": 1, "answer": 2}
CACHE_STATE = re.compile(r"cache state: (\d+) prompts, ([\d.]+) MiB \(limits: ([\d.]+) MiB")
PER_ENTRY = re.compile(r"(update|load): +- prompt (0x|with length)")
# bookkeeping a prompt-cache entry may hold beyond its logged size (token ids, checkpoints' metadata, heap
# slack): 64 KiB, 32 bytes per token of the slot's context and 3% of the entry's own size (seen: tiny Gemma 4
# 36-42 KiB per ~3 MiB entry at 2k context, ~100 KiB at 8k; Gemma 3 270M ~0.75-1 MiB per ~48 MiB entry)
CACHE_ENTRY_KIB, CACHE_ENTRY_BYTES_PER_TOKEN, CACHE_ENTRY_SHARE = 64.0, 32, 0.03
LEAVE_AFTER = 3          # content chunks a leaving client reads first
LONG_ANSWER = 256        # max_tokens of the answers clients walk away from; every other request asks for fewer
CHURN_AT = 0.95          # the prompt cache at this share of its --cache-ram limit evicts as it adds: it churns
HARD_FACTOR = 4.0        # growth over this many times the bound fails whatever the prompt cache does


@dataclass
class Sample:
    """One reading of the server (times in s since the soak's start, memory in MiB)."""

    t: float
    rss: float | None = None
    hwm: float | None = None
    anon_swap: float | None = None
    swap: float | None = None
    threads: float | None = None
    open_files: int | None = None
    busy: int | None = None
    in_flight: int = 0
    busy_long: int | None = None      # busy slots decoding a walk-away answer (n_predict >= LONG_ANSWER)
    in_flight_long: int = 0           # walk-away requests whose client has not left yet
    cache_mib: float = 0.0
    cache_prompts: int = 0
    cache_limit_mib: float | None = None


@dataclass
class Verdict:
    name: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "data": self.data}


@dataclass
class Settings:
    """``duration_s`` of traffic (s), ``clients`` (None: the cell's slots), ``sample_s`` between readings."""

    duration_s: float = 1800.0
    clients: int | None = None
    sample_s: float = 1.0
    seed: int = 42
    timeout: float = 120.0


def linear_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y) points (y units per x unit); None below 3 points or no spread in x."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


class _CacheState:
    """The prompt cache's size as the server last logged it (``cache state: N prompts, X MiB``, a trace
    line: the soak runs the server at ``--log-verbosity 4``). Fed every output line by the server's reader."""

    def __init__(self) -> None:
        self.mib, self.prompts = 0.0, 0
        self.limit: float | None = None

    def on_line(self, line: str) -> None:
        if "cache state:" in line:
            m = CACHE_STATE.search(line)
            if m:
                self.prompts, self.mib = int(m.group(1)), float(m.group(2))
                self.limit = float(m.group(3)) or None


def keep_line(line: str) -> bool:
    """Log lines a soak keeps: all but the prompt cache's per-entry listings (``update:    - prompt 0x...``,
    ``load:    - prompt with length ...``), which the server repeats for every entry at every request
    (gigabytes over a long soak)."""
    return "- prompt " not in line or not PER_ENTRY.search(line)


# ---- verdicts -------------------------------------------------------------------------------------


def _corr(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else 0.0


def entry_allowance_kib(n_ctx_slot: int | None, entry_mib: float = 0.0) -> float:
    """KiB a prompt-cache entry of ``entry_mib`` (its logged size) may hold beyond that size, for a slot
    context of ``n_ctx_slot`` tokens."""
    return CACHE_ENTRY_KIB + CACHE_ENTRY_BYTES_PER_TOKEN * (n_ctx_slot or 0) / 1024 + CACHE_ENTRY_SHARE * entry_mib * 1024


def memory_verdict(samples: list[Sample], b: SoakBounds, duration_s: float, n_requests: int,
                   n_ctx_slot: int | None = None) -> Verdict:
    """The memory slope after warm-up (MiB/h) of RssAnon+VmSwap less the prompt cache's logged size.

    Over the bound (and under ``HARD_FACTOR`` times it: beyond, always FAIL), the growth is judged
    against the cache. While it churns at its ``--cache-ram`` limit (``CHURN_AT``: evicting as it adds),
    the heap that evicted entries leave behind grows too: WARN (seen on clean servers: ~0.5 GiB/h with an
    8 GiB cache). While entries are added (the cache has not reached its limit), each holds some
    bookkeeping beyond its logged size: growth of at most :func:`entry_allowance_kib` per new entry is
    WARN. Anything else over the bound is FAIL (a leak beside the cache).
    """
    start = b.warmup * duration_s
    after = [s for s in samples if s.t >= start and s.anon_swap is not None]
    pts = [(s.t, (s.anon_swap or 0.0) - s.cache_mib) for s in after]
    raw = [(s.t, s.rss) for s in samples if s.t >= start and s.rss is not None]
    cache = [(s.t, s.cache_mib) for s in samples if s.t >= start]
    slope = linear_slope(pts)
    data: dict[str, Any] = {
        "slope_mib_per_h": None if slope is None else round(slope * 3600, 1),
        "rss_slope_mib_per_h": None if (r := linear_slope(raw)) is None else round(r * 3600, 1),
        "cache_slope_mib_per_h": None if (c := linear_slope(cache)) is None else round(c * 3600, 1),
        "bound_mib_per_h": b.memory_slope_mib_per_h, "after_s": round(start, 1), "samples": len(pts),
        "peak_rss_mib": max((s.hwm or 0 for s in samples), default=None),
        "swap_mib": max((s.swap or 0 for s in samples), default=None),
        "growth_mib": round(pts[-1][1] - pts[0][1], 1) if len(pts) > 1 else None,
        "cache_entries": [after[0].cache_prompts, after[-1].cache_prompts] if after else None}
    if slope is None:
        return Verdict("memory", Status.SKIP, f"too few samples after warm-up ({len(pts)}): run longer", data)
    if n_requests and len(pts) > 1:
        data["kib_per_request"] = round(1024 * (pts[-1][1] - pts[0][1]) / n_requests, 1)
    line = (f"RssAnon+VmSwap less the prompt cache grows {slope * 3600:+.0f} MiB/h after warm-up (bound "
            f"{b.memory_slope_mib_per_h:g}; RSS {data['rss_slope_mib_per_h']:+.0f}, prompt cache "
            f"{data['cache_slope_mib_per_h']:+.0f} MiB/h)")
    if slope * 3600 <= b.memory_slope_mib_per_h:
        return Verdict("memory", Status.PASS, line, data)
    if slope * 3600 > HARD_FACTOR * b.memory_slope_mib_per_h:
        return Verdict("memory", Status.FAIL, f"{line}: more than {HARD_FACTOR:g}x the bound", data)
    churn = [s for s in after if s.cache_limit_mib and s.cache_mib >= CHURN_AT * s.cache_limit_mib]
    data["cache_churn_s"] = round(len(churn) * (after[-1].t - after[0].t) / max(1, len(after) - 1), 1)
    if churn:
        return Verdict("memory", Status.WARN, f"{line}, while the prompt cache churned at its {churn[0].cache_limit_mib:.0f} MiB "
                       f"limit for {data['cache_churn_s']:.0f} s (evicting as it adds): heap left by evicted entries, or "
                       "a leak; a lower --cache-ram or MALLOC_ARENA_MAX=2 tells them apart", data)
    new_entries = after[-1].cache_prompts - after[0].cache_prompts
    if new_entries > 0 and len(pts) > 1:
        per_entry = 1024 * slope * (pts[-1][0] - pts[0][0]) / new_entries   # the fitted growth, not two noisy ends
        tracks = _corr([float(s.cache_prompts) for s in after], [y for _, y in pts])
        data.update(kib_per_new_cache_entry=round(per_entry, 1), tracks_cache_entries=round(tracks, 3))
        allowance = entry_allowance_kib(n_ctx_slot, after[-1].cache_mib / max(1, after[-1].cache_prompts))
        data["entry_allowance_kib"] = allowance
        if per_entry <= allowance:
            return Verdict("memory", Status.WARN, f"{line}: it tracks the {new_entries} prompt-cache entries added "
                           f"({per_entry:.0f} KiB each, within the cache's bookkeeping of {allowance:.0f}); cap "
                           "--cache-ram or soak until the cache is full to tell it from a leak", data)
        line += f"; {per_entry:.0f} KiB per new prompt-cache entry, more than its bookkeeping ({allowance:.0f})"
    return Verdict("memory", Status.FAIL, line, data)


def slots_verdict(samples: list[Sample], b: SoakBounds, departures: list[float]) -> Verdict:
    """FAIL when, for longer than ``slot_release_s`` in a row, more slots were busy than requests in flight,
    or more slots decoded a walk-away answer (``/slots`` ``params.n_predict`` >= ``LONG_ANSWER``) than such
    requests still had a client (queued requests cannot hide a slot kept for a client that left)."""
    longest, since, worst_at = 0.0, None, None
    for s in samples:
        if (s.busy is not None and s.busy > s.in_flight) or (s.busy_long is not None and s.busy_long > s.in_flight_long):
            since = s.t if since is None else since
            if s.t - since > longest:
                longest, worst_at = s.t - since, since
        else:
            since = None
    data = {"longest_s": round(longest, 2), "at_s": None if worst_at is None else round(worst_at, 1),
            "bound_s": b.slot_release_s, "clients_left": len(departures),
            "samples": sum(1 for s in samples if s.busy is not None)}
    if not data["samples"]:
        return Verdict("slots_released", Status.SKIP, "no /slots samples (slots: false?)", data)
    if longest > b.slot_release_s:
        return Verdict("slots_released", Status.FAIL, f"a slot stayed busy with no client for {longest:.1f} s from "
                       f"{worst_at:.0f} s (bound {b.slot_release_s:g} s; {len(departures)} clients left mid-stream)", data)
    return Verdict("slots_released", Status.PASS, f"busy slots never outlived their clients by more than "
                   f"{b.slot_release_s:g} s ({len(departures)} clients left mid-stream; longest {longest:.1f} s)", data)


def _tenths(records: list[Record], duration_s: float, warmup: float = 0.0) -> tuple[list[Record], list[Record]]:
    """Requests of the first tenth after warm-up (conversations have grown to their usual lengths) and of
    the last tenth; a tenth is at least a third of the run or 60 s, whichever is less (a short soak's
    tenth holds too few requests to compare)."""
    tenth = max(duration_s / 10, min(duration_s / 3, 60.0))
    start = warmup * duration_s
    first = [r for r in records if r.ok and start <= r.start_s and r.end_s <= start + tenth]
    last = [r for r in records if r.ok and r.start_s >= duration_s - tenth]
    return first, last


def _acceptance(rs: list[Record]) -> float | None:
    drafted = sum(r.server.get("draft_n") or 0 for r in rs)
    return sum(r.server.get("draft_n_accepted") or 0 for r in rs) / drafted if drafted else None


def _context_bin(r: Record) -> int | None:
    """Requests of like context length (prompt + answer tokens, within a factor of 2) decode alike: a
    conversation that grew decodes slower by design, not by drift."""
    n = (r.prompt_tokens or 0) + (r.output_tokens or 0)
    return n.bit_length() if r.prompt_tokens else None


def _tps_ratio(first: list[Record], last: list[Record]) -> tuple[float | None, float | None, float | None, str, bool]:
    """(ratio, first tok/s, last tok/s, how, outside the noise).

    Each request's server decode tok/s is divided by the first tenth's median for its context length
    (bins where both tenths have 2+ requests; else all requests in one bin). ``ratio`` is the median of
    the last tenth's normalised values; "outside the noise" when the interquartile ranges of the two
    tenths' normalised values do not overlap (bench's gate rule: one loaded core moves single requests
    a lot on a small machine)."""
    def tps_of(rs: list[Record]) -> list[float]:
        return [float(r.server["predicted_per_second"]) for r in rs
                if (r.output_tokens or 0) > 1 and isinstance(r.server.get("predicted_per_second"), (int, float))]
    a, b = pcts(tps_of(first))["p50"], pcts(tps_of(last))["p50"]
    bins = {_context_bin(r) for r in first} & {_context_bin(r) for r in last}
    groups = [([r for r in first if _context_bin(r) == k], [r for r in last if _context_bin(r) == k])
              for k in sorted(x for x in bins if x is not None)]
    groups = [(f, la) for f, la in groups if len(tps_of(f)) >= 2 and len(tps_of(la)) >= 2]
    how = f"like context lengths, {len(groups)} bin(s)"
    if not groups:
        groups, how = [(first, last)], "all requests (no context length in both tenths)"
    norm_first: list[float] = []
    norm_last: list[float] = []
    for f, la in groups:
        base = pcts(tps_of(f))["p50"]
        if base:
            norm_first += [x / base for x in tps_of(f)]
            norm_last += [x / base for x in tps_of(la)]
    if not norm_first or not norm_last:
        return None, a, b, how, False
    q_first = (percentile(norm_first, 25), percentile(norm_first, 75))
    q_last = (percentile(norm_last, 25), percentile(norm_last, 75))
    overlap = q_last[0] <= q_first[1] and q_first[0] <= q_last[1]   # type: ignore[operator]
    return pcts(norm_last)["p50"], a, b, how, not overlap


def drift_verdict(records: list[Record], b: SoakBounds, duration_s: float) -> Verdict:
    """Draft acceptance and server decode tok/s (``timings.predicted_per_second``) of requests in the last
    tenth against the first tenth after warm-up; tok/s compared between requests of like context length."""
    first, last = _tenths(records, duration_s, b.warmup)
    ratio, t0, t1, how, outside = _tps_ratio(first, last)
    acc = [_acceptance(rs) for rs in (first, last)]
    data: dict[str, Any] = {"tok_per_s": {"first": t0, "last": t1}, "acceptance": {"first": acc[0], "last": acc[1]},
                            "requests": {"first": len(first), "last": len(last)}, "tps_ratio_min": b.tps_ratio_min,
                            "acceptance_drop_max": b.acceptance_drop_max, "tps_ratio": ratio, "compared": how,
                            "outside_noise": outside}
    problems = []
    if ratio is not None and ratio < b.tps_ratio_min and outside:
        problems.append(f"decode tok/s fell to {ratio:.0%} of the first tenth's ({how}; interquartile ranges apart)")
    if acc[0] is not None and acc[1] is not None and acc[0] - acc[1] > b.acceptance_drop_max:
        problems.append(f"draft acceptance fell from {acc[0]:.0%} to {acc[1]:.0%}")
    if problems:
        return Verdict("drift", Status.FAIL, "; ".join(problems), data)
    if ratio is None:
        return Verdict("drift", Status.SKIP, "too few requests in the first or last tenth to compare", data)
    acc_s = "" if acc[0] is None or acc[1] is None else f", acceptance {acc[0]:.0%} -> {acc[1]:.0%}"
    noise = "; within the noise: interquartile ranges overlap" if ratio < b.tps_ratio_min else ""
    return Verdict("drift", Status.PASS, f"last tenth decode tok/s {ratio:.0%} of the first's ({how}{noise}){acc_s}", data)


def errors_verdict(records: list[Record], crash: str | None) -> Verdict:
    """No crash, 5xx, timeout or broken stream; an error only where one is the answer (a prompt over the
    slot's context); every request accounted for."""
    kinds = Counter(r.error for r in records if r.error)
    unexpected = [r for r in records if r.error and not r.expected_error]
    wrong_ok = [r for r in records if r.expected_error and r.ok]
    data: dict[str, Any] = {"requests": len(records), "answered": sum(1 for r in records if r.ok and not r.left),
            "left": sum(1 for r in records if r.left), "errors": dict(kinds),
            "expected_errors": sum(1 for r in records if r.error and r.expected_error),
            "examples": [f"{r.kind} at {r.start_s:.0f} s: {r.error} {r.detail[:120]}" for r in unexpected[:5]],
            "overrun_answered": len(wrong_ok)}
    if crash:
        return Verdict("errors", Status.FAIL, f"the server died: {crash}", data)
    if unexpected:
        top = Counter(r.error for r in unexpected).most_common()
        return Verdict("errors", Status.FAIL, f"{len(unexpected)} of {len(records)} requests failed: "
                       + ", ".join(f"{n} {k}" for k, n in top) + f" (first: {data['examples'][0]})", data)
    return Verdict("errors", Status.PASS, f"{len(records)} requests: {data['answered']} answered, {data['left']} "
                   f"left on purpose, {data['expected_errors']} refused as they should be", data)


def answers_verdict(probes: list[tuple[A.Answer, A.Answer, float]], exact: bool, tie_margin: float) -> Verdict:
    """Each probe's answer under load (cache off) against its answer alone, judged as validate judges."""
    if not probes:
        return Verdict("answers", Status.SKIP, "no answer probes ran (too short a soak?)", {"probes": 0})
    verdicts = [(A.judge(A.first_divergence(alone, got, alone), exact=exact, tie_margin=tie_margin,
                         what=f"{got.key} at {t:.0f} s under load vs alone"), t) for alone, got, t in probes]
    data: dict[str, Any] = {"probes": len(probes), "differ": [v.divergence.to_dict() for v, _ in verdicts if v.divergence]}
    for status in (Status.FAIL, Status.WARN):
        hit = [v for v, _ in verdicts if v.status == status]
        if hit:
            return Verdict("answers", status, f"{len(hit)}/{len(probes)} probes differ: {hit[0].detail}", data)
    return Verdict("answers", Status.PASS, f"{len(probes)} answers under load equal their answers alone", data)


# ---- the run --------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the terminal shows while a soak runs (the CLI draws it)."""

    cell: str
    elapsed_s: float
    duration_s: float
    requests: int
    errors: int
    rss_mib: float | None


class _Session:
    """One agent's conversation: a system prompt and the turns so far, growing until half the slot's
    context, then a new one (as agents send it: each request repeats the conversation, so the slot and the
    prompt cache reuse its prefix)."""

    def __init__(self, client_no: int) -> None:
        self.client_no = client_no
        self.restart(0)

    def restart(self, i: int) -> None:
        self.tag = f"c{self.client_no}s{i}"
        self.system = f"You are coding agent {self.tag}. Answer briefly."
        self.turns: list[dict[str, str]] = []
        self.tokens = 0

    def add(self, user: str, answer: str, tokens: int) -> None:
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        self.tokens = tokens


class _Traffic:
    """The soak's clients: seeded request kinds and lengths, every request recorded."""

    def __init__(self, client: httpx.Client, url: str, model: str, n_ctx_slot: int, s: Settings, t0: float,
                 probes: dict[str, tuple[A.AnswerRequest, A.Answer]], calib: tuple[float, int]) -> None:
        self.client, self.url, self.model, self.n_ctx_slot, self.s, self.t0 = client, url, model, n_ctx_slot, s, t0
        self.probes = probes
        self.tpw, self.overhead = calib
        self.lock = threading.Lock()
        self.records: list[Record] = []
        self.probe_results: list[tuple[A.Answer, A.Answer, float]] = []
        self.departures: list[float] = []
        self.in_flight = 0
        self.in_flight_long = 0
        self.errors = 0

    def prompt(self, rng: random.Random, n: int, tag: str) -> str:
        return traffic.prompt_text(n, rng, tag, self.tpw, self.overhead)

    def one(self, rng: random.Random, i: int, session: "_Session") -> None:
        """One request of ``session``'s conversation (or a one-off: overrun, probe), recorded."""
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        short_max = max(8, min(96, self.n_ctx_slot // 8))
        long_max = max(short_max + 1, min(1024, self.n_ctx_slot // 4))
        path, leave, expected = "/v1/chat/completions", None, False
        if kind == "answer":
            self._probe(rng.choice(sorted(self.probes)))
            return
        if kind == "overrun":   # a prompt longer than the slot's context; the server must refuse it with a reason
            body = traffic.chat_body(self.prompt(rng, self.n_ctx_slot + 64, f"x{i}"), 16, stream=False, model=self.model)
            expected = True
        else:
            n_new = rng.randint(short_max, long_max) if kind == "long-stream" else rng.randint(16, short_max)
            if session.tokens + 2 * n_new + 128 > self.n_ctx_slot // 2:   # the conversation is full: a new one
                session.restart(i)
            user = self.prompt(rng, n_new, f"{session.tag} turn {len(session.turns) // 2 + 1}")
            n_out = rng.randint(8, 48) if kind != "long-stream" else rng.randint(16, 64)
            if kind == "disconnect":   # a long answer the client walks away from
                n_out = max(LONG_ANSWER, self.n_ctx_slot - 2 * (session.tokens + n_new) - 64)
                leave = LEAVE_AFTER
            stream = kind in ("chat-stream", "long-stream", "messages-stream", "disconnect")
            if kind.startswith("messages"):
                path = "/v1/messages"
                body = traffic.messages_body("", n_out, stream=stream, model=self.model)
                body["messages"] = [*session.turns, {"role": "user", "content": user}]
            else:
                body = traffic.chat_body("", n_out, stream=stream, model=self.model, system=session.system)
                body["messages"] = [body["messages"][0], *session.turns, {"role": "user", "content": user}]
        long = int(leave is not None)
        with self.lock:
            self.in_flight += 1
            self.in_flight_long += long
        try:
            rec = traffic.send(self.client, self.url, path, body, kind=kind, t0=self.t0, timeout=self.s.timeout,
                               leave_after_tokens=leave)
        finally:
            with self.lock:
                self.in_flight -= 1
                self.in_flight_long -= long
        rec.expected_error = expected and rec.error == traffic.HTTP_4XX   # refused with a reason: right
        self._keep(rec)
        if rec.left:
            with self.lock:
                self.departures.append(rec.end_s)
        elif rec.ok and not expected:
            # the conversation's length: the server's count of the whole prompt where the answer has one (usage),
            # never less than the sum of the turns (a streamed answer may carry only the evaluated tokens)
            session.add(user, rec.text or ".", max(rec.prompt_tokens or 0, session.tokens + n_new + 16) + (rec.output_tokens or 0))

    def _keep(self, rec: Record) -> None:
        with self.lock:
            self.records.append(rec)
            if rec.error and not rec.expected_error:
                self.errors += 1

    def _probe(self, key: str) -> None:
        req, alone = self.probes[key]
        with self.lock:
            self.in_flight += 1
        t = time.monotonic() - self.t0
        rec = Record("answer", t)
        try:
            r = self.client.post(f"{self.url}{req.path}", json=req.body(n_probs=A.N_PROBS,
                                                                          model=self.model), timeout=self.s.timeout)
            rec.status = r.status_code
            if r.status_code != 200:
                rec.error, rec.detail = traffic._kind_of_status(r.status_code), r.text[:200]
            else:
                got = A.parse_answer(req, r.json())
                rec.output_tokens = len(got.tokens)
                with self.lock:
                    self.probe_results.append((alone, got, t))
        except httpx.TimeoutException as exc:
            rec.error, rec.detail = traffic.TIMEOUT, type(exc).__name__
        except httpx.TransportError as exc:
            rec.error, rec.detail = traffic.CONNECT, f"{type(exc).__name__}: {exc}"[:200]
        except (ValueError, A.BadAnswer) as exc:
            rec.error, rec.detail = traffic.STREAM, str(exc)[:200]
        finally:
            with self.lock:
                self.in_flight -= 1
        rec.end_s = time.monotonic() - self.t0
        self._keep(rec)


def _alone(client: httpx.Client, url: str, model: str, timeout: float) -> dict[str, tuple[A.AnswerRequest, A.Answer]]:
    """The probes' answers alone (nothing else in flight, cache off), before the traffic starts."""
    out = {}
    for req in (A.short_request(0, "soak"), A.short_request(1, "soak"), A.chat_request("soak")):
        r = client.post(f"{url}{req.path}", json=req.body(n_probs=A.N_PROBS,
                                                          model=model), timeout=timeout)
        if r.status_code != 200:
            raise LlamactlError(f"soak: the answer probe {req.key} failed alone: HTTP {r.status_code} {r.text[:150]}")
        out[req.key] = (req, A.parse_answer(req, r.json()))
    return out


def _slot_busy(client: httpx.Client, url: str) -> tuple[int | None, int | None]:
    """(busy slots, busy slots decoding a walk-away answer) from ``/slots``; (None, None) when unreadable."""
    try:
        r = client.get(f"{url}/slots", timeout=5)
        slots = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None, None
    if not isinstance(slots, list):
        return None, None
    busy = [s for s in slots if isinstance(s, dict) and s.get("is_processing")]
    long = [s for s in busy if int((s.get("params") or {}).get("n_predict") or 0) >= LONG_ANSWER]
    return len(busy), len(long)


def soak_cell(base: profiles.Resolved, cell: Cell, binary: launcher.Binary, run_dir: Path, s: Settings,
              progress: Callable[[Progress], None] | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """One server for ``cell``, ``s.duration_s`` of mixed traffic, the verdicts.

    Returns ``{"cell", "status", "reason", "verdicts", "samples", "kinds", "latency", "log", "argv"}``; a
    server that fails to start is the cell's ``error`` status with its cause; ``stop`` (Ctrl-C) ends the
    traffic early and the verdicts are made on what ran (``interrupted``).
    """
    stop = stop or threading.Event()
    resolved = cell_profile(base, cell)
    # the prompt cache's size is a trace line (verbosity 4): without it, the cache's growth looks like a leak
    prof = resolved.profile.model_copy(update={"log_verbosity": max(resolved.profile.log_verbosity or 0, 4)})
    resolved = profiles.Resolved(resolved.name, prof, resolved.origins, resolved.path)
    bounds = prof.harness.soak
    model = prof.alias or "model"
    log = run_dir / f"soak-{slug(cell.id)}.log"
    out: dict[str, Any] = {"cell": cell.id, "overrides": cell.values, "status": Status.ERROR.value, "reason": "",
                           "verdicts": [], "samples": [], "log": str(log), "bounds": bounds.model_dump()}
    sp: ServerProcess | None = None
    try:
        plan = launcher.plan(resolved, binary=binary)
        out["argv"] = plan.argv
        cache = _CacheState()
        sp = launcher.start(plan, log, echo=cache.on_line, keep=keep_line)
        sp.wait_healthy(prof.health_timeout)
        clients = s.clients or prof.parallel
        # a new connection per request: a kept-alive one the server closed meanwhile fails the next request
        # ("Server disconnected without sending a response"), a client artefact, not the server's fault
        limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=0)
        with sp.client(limits=limits) as client, sp.client() as side:
            n_ctx_slot = _n_ctx_slot(side, sp.url) or max(256, (prof.ctx or 4096) // max(1, prof.parallel))
            calib = traffic.calibrate(side, sp.url, model=model)
            probes = _alone(client, sp.url, model, s.timeout)
            t0 = time.monotonic()
            tr = _Traffic(client, sp.url, model, n_ctx_slot, s, t0, probes, calib)
            samples = _run_traffic(tr, sp, side, cache, s, clients, stop, cell.id, progress)
        duration = min(s.duration_s, samples[-1].t if samples else s.duration_s)
        crash = None if sp.alive() else sp.crash().summary()
        records = sorted(tr.records, key=lambda r: r.start_s)
        verdicts = [memory_verdict(samples, bounds, duration, len(records), n_ctx_slot),
                    slots_verdict(samples, bounds, tr.departures),
                    drift_verdict(records, bounds, duration),
                    errors_verdict(records, crash),
                    answers_verdict(tr.probe_results, prof.harness.exact_answers, prof.harness.tie_margin)]
        out.update(verdicts=[v.to_dict() for v in verdicts], samples=[vars(x) for x in samples],
                   duration_s=round(duration, 1), interrupted=stop.is_set(), clients=clients, n_ctx_slot=n_ctx_slot,
                   kinds=dict(Counter(r.kind for r in records)), latency=_latency(records),
                   series=_series(records, duration))
        bad = [v for v in verdicts if v.status == Status.FAIL]
        warn = [v for v in verdicts if v.status == Status.WARN]
        out["status"] = (Status.FAIL if bad else Status.WARN if warn else Status.PASS).value
        out["reason"] = "; ".join(f"{v.name}: {v.detail}" for v in bad or warn)
    except (ServerDied, LlamactlError) as exc:
        out["reason"] = str(exc)
    finally:
        if sp is not None:
            sp.stop()
    return out


def _n_ctx_slot(client: httpx.Client, url: str) -> int | None:
    try:
        slots = client.get(f"{url}/slots", timeout=5).json()
        return int(slots[0]["n_ctx"]) if isinstance(slots, list) and slots else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError):
        return None


def _run_traffic(tr: _Traffic, sp: ServerProcess, side: httpx.Client, cache: _CacheState, s: Settings, clients: int,
                 stop: threading.Event, cell: str, progress: Callable[[Progress], None] | None) -> list[Sample]:
    deadline = tr.t0 + s.duration_s
    counter = {"i": 0}
    lock = threading.Lock()

    def worker(k: int) -> None:
        rng = random.Random(f"{s.seed}/client{k}")
        session = _Session(k)
        while not stop.is_set() and time.monotonic() < deadline and sp.alive():
            with lock:
                counter["i"] += 1
                i = counter["i"]
            tr.one(rng, i, session)
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for th in threads:
        th.start()
    samples: list[Sample] = []
    while True:
        now = time.monotonic()
        st = read_status(sp.pid) if sp.pid else None
        with tr.lock:
            in_flight, in_flight_long = tr.in_flight, tr.in_flight_long
        busy, busy_long = _slot_busy(side, sp.url)
        with tr.lock:   # a request sent while /slots was read counts: the larger in-flight number
            in_flight, in_flight_long = max(in_flight, tr.in_flight), max(in_flight_long, tr.in_flight_long)
        samples.append(Sample(round(now - tr.t0, 3), st.get("VmRSS") if st else None, st.get("VmHWM") if st else None,
                              anon_swap_mib(st) if st else None, st.get("VmSwap") if st else None,
                              st.get("Threads") if st else None, open_files(sp.pid) if sp.pid else None,
                              busy, in_flight, busy_long, in_flight_long, cache.mib, cache.prompts, cache.limit))
        if progress:
            progress(Progress(cell, now - tr.t0, s.duration_s, len(tr.records), tr.errors, samples[-1].rss))
        alive = any(th.is_alive() for th in threads)
        if not alive or not sp.alive():
            break
        stop.wait(max(0.0, s.sample_s - (time.monotonic() - now)))
    for th in threads:
        th.join(timeout=s.timeout)
    return samples


def _latency(records: list[Record]) -> dict[str, Any]:
    ok = [r for r in records if r.ok and not r.left]
    return {"ttft_s": pcts([r.ttft_s for r in ok]), "e2e_s": pcts([r.e2e_s for r in ok]),
            "tpot_s": pcts([r.tpot_s for r in ok])}


def _series(records: list[Record], duration: float, buckets: int = 30) -> dict[str, list[tuple[float, float | None]]]:
    """Per time bucket (its middle, s): server decode tok/s (median), acceptance, e2e p50 (s), requests."""
    width = max(duration / buckets, 1e-6)
    out: dict[str, list[tuple[float, float | None]]] = {"tok_per_s": [], "acceptance": [], "e2e_p50_s": [], "requests": []}
    for k in range(buckets):
        lo, hi = k * width, (k + 1) * width
        rs = [r for r in records if r.ok and lo <= r.end_s < hi]
        mid = round(lo + width / 2, 2)
        out["tok_per_s"].append((mid, pcts([r.server.get("predicted_per_second") for r in rs if (r.output_tokens or 0) > 1])["p50"]))
        out["acceptance"].append((mid, _acceptance(rs)))
        out["e2e_p50_s"].append((mid, pcts([r.e2e_s for r in rs if not r.left])["p50"]))
        out["requests"].append((mid, float(len(rs))))
    return out


def to_json(cells: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The run as ``soak --json`` writes it (``kind: soak``)."""
    return {"kind": "soak", "profile": meta.get("profile"), "meta": meta, "cells": cells,
            "ok": all(c.get("status") in ("pass", "warn") for c in cells)}
