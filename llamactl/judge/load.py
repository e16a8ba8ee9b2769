"""`llamactl load`: what a server config can carry. One server per cell, driven at several loads.

A load is a closed loop of C clients (each sends its next request when its last one ends) or an open
loop at R requests/s (Poisson arrivals, whether or not earlier requests finished). Prompt and answer
lengths come from a seeded draw (:class:`traffic.Lengths`; prompt tokens calibrated by the server's
``/tokenize``), answers are greedy and streamed with ``ignore_eos`` so each has exactly its drawn length,
and ``cache_prompt`` is off so that every prompt is evaluated whole. Per load: requests/s, output tok/s (all requests
together, and per request), TTFT, TPOT (time per output token after the first) and end-to-end
latency as p50/p90/p99 (s), errors by kind, draft acceptance from ``/metrics`` (MTP), and the client's
figures cross-checked with the server's own ``timings`` (a gap over ``GAP_SHOWN_PCT`` is shown).
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import httpx

from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.procstat import read_status
from llamactl.judge import metrics, traffic
from llamactl.judge.matrix import Cell, cell_profile, slug
from llamactl.judge.traffic import Lengths, Record, pcts
from llamactl.serve import launcher, profiles
from llamactl.serve.server import ServerDied, ServerProcess

GAP_SHOWN_PCT = 5.0          # client vs server timings: a larger gap is shown with the load
MAX_IN_FLIGHT = 64           # open loop: requests in flight at most (beyond it the client is the bottleneck)


@dataclass(frozen=True)
class Level:
    """One load: ``clients`` (closed loop, C clients) or ``rate`` (open loop, requests/s)."""

    mode: Literal["clients", "rate"]
    value: float

    @property
    def label(self) -> str:
        return f"{int(self.value)} clients" if self.mode == "clients" else f"{self.value:g} req/s"


def parse_levels(clients: list[str], rates: list[str]) -> list[Level]:
    """``--clients 1,2,4`` and ``--rate 0.5,2`` (repeatable, comma-separated) -> levels, closed loops first.
    Raises BadInput for a value that is not a positive number (clients: a whole number)."""
    out: list[Level] = []
    for text, mode in [(t, "clients") for t in clients] + [(t, "rate") for t in rates]:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                v = float(part) if mode == "rate" else int(part)
            except ValueError:
                raise BadInput(f"--{mode} {part!r}: expected a {'number of requests/s' if mode == 'rate' else 'whole number of clients'}") from None
            if not v > 0 or v == float("inf"):
                raise BadInput(f"--{mode} {part!r}: must be a number more than 0")
            if mode == "rate" and v > 1000:
                raise BadInput(f"--rate {part}: at most 1000 requests/s")
            if mode == "clients" and v > 256:
                raise BadInput(f"--clients {part}: at most 256 clients")
            out.append(Level(mode, float(v)))   # type: ignore[arg-type]
    return out or [Level("clients", 1.0), Level("clients", 2.0), Level("clients", 4.0), Level("clients", 8.0)]


@dataclass
class Settings:
    """How each load runs: ``duration_s`` per load (s), at most ``requests`` per load (None: no cap),
    lengths in tokens, ``seed`` for the draws, ``timeout`` per request (s)."""

    prompt_len: Lengths = field(default_factory=lambda: Lengths(128, 128))
    max_tokens: Lengths = field(default_factory=lambda: Lengths(64, 64))
    duration_s: float = 20.0
    requests: int | None = None
    seed: int = 42
    timeout: float = 120.0
    model: str = "model"
    tokens_per_word: float = 1.0     # from the server's /tokenize (traffic.calibrate)
    overhead: int = 12


def slot_tokens(prof: profiles.Profile) -> int | None:
    """Tokens one slot holds, as llama.cpp sizes it (``src/llama-context.cpp``): ``--ctx-size`` padded to 256,
    divided by ``--parallel`` and padded to 256 again, or the whole padded context with ``--kv-unified``;
    None when the context is the model's own (ctx unset or 0: known after launch)."""
    if not prof.ctx:
        return None
    def pad(n: int) -> int:
        return -(-n // 256) * 256
    n_ctx = pad(prof.ctx)
    return n_ctx if prof.kv_unified else pad(n_ctx // prof.parallel)


def check_settings(base: profiles.Resolved, cells: list[Cell], levels: list[Level], s: Settings) -> None:
    """Refuse, before any launch, loads that cannot measure anything: the longest request (prompt HI +
    answer HI + the chat template's ``overhead``, tokens) beyond a cell's slot (:func:`slot_tokens`; the
    server would reject every such request), or an open loop that expects less than one request in
    ``duration_s``. Raises BadInput naming the cell and the figures."""
    need = s.prompt_len.hi + s.max_tokens.hi + s.overhead
    for cell in cells:
        prof = cell_profile(base, cell).profile
        per_slot = slot_tokens(prof)
        if per_slot is not None and need > per_slot:
            where = f"cell {cell.id}: " if cell.id else ""
            split = "" if prof.kv_unified or prof.parallel == 1 else f" / parallel {prof.parallel}, padded to 256"
            raise BadInput(f"{where}a request of up to {need} tokens (--prompt-len {s.prompt_len.hi} + --max-tokens "
                           f"{s.max_tokens.hi} + ~{s.overhead} of chat template) does not fit a slot of {per_slot} tokens "
                           f"(ctx {prof.ctx}{split}): every such request would be refused",
                           hint="shorten --prompt-len/--max-tokens, or give --ctx more")
    for lv in levels:
        if lv.mode == "rate" and lv.value * s.duration_s < 1:
            raise BadInput(f"--rate {lv.value:g} over {s.duration_s:g} s per load: less than one request expected",
                           hint="raise --rate or --duration")


class Draws:
    """The seeded sequence of requests of one load: the n-th request is the same whatever thread sends it."""

    def __init__(self, s: Settings, salt: str) -> None:
        self._rng = random.Random(f"{s.seed}/{salt}")
        self._lock = threading.Lock()
        self._s = s
        self.n = 0

    def next(self) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            if self._s.requests is not None and self.n >= self._s.requests:
                return None
            i = self.n
            self.n += 1
            prompt = traffic.prompt_text(self._s.prompt_len.draw(self._rng), self._rng, tag=f"r{i}",
                                         tokens_per_word=self._s.tokens_per_word, overhead=self._s.overhead)
            n_out = self._s.max_tokens.draw(self._rng)
        return i, traffic.chat_body(prompt, n_out, stream=True, model=self._s.model, cache_prompt=False)


def drive(client: httpx.Client, url: str, level: Level, s: Settings, stop: threading.Event | None = None,
          on_record: Callable[[Record], None] | None = None) -> tuple[list[Record], float]:
    """Run one load for ``s.duration_s`` (or until ``s.requests``); returns every request and the wall time (s).

    Closed loop: ``level.value`` threads, each sending its next request when its last one ended. Open loop:
    exponential gaps at ``level.value`` requests/s; no request is sent after the duration, and the wall
    time runs until the last one ends. ``stop`` ends the load early (Ctrl-C).
    """
    stop = stop or threading.Event()
    draws = Draws(s, level.label)
    t0 = time.monotonic()
    deadline = t0 + s.duration_s
    records: list[Record] = []
    lock = threading.Lock()

    def one(body: dict[str, Any]) -> None:
        rec = traffic.send(client, url, "/v1/chat/completions", body, kind="chat-stream", t0=t0, timeout=s.timeout)
        with lock:
            records.append(rec)
        if on_record:
            on_record(rec)

    if level.mode == "clients":
        def loop() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                nxt = draws.next()
                if nxt is None:
                    return
                one(nxt[1])
        threads = [threading.Thread(target=loop, daemon=True) for _ in range(int(level.value))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    else:
        rng = random.Random(f"{s.seed}/arrivals/{level.value}")
        with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT) as pool:
            t_next = t0
            while not stop.is_set():
                t_next += rng.expovariate(level.value)
                if t_next >= deadline:
                    break
                pause = t_next - time.monotonic()
                if pause > 0 and stop.wait(pause):
                    break
                nxt = draws.next()
                if nxt is None:
                    break
                pool.submit(one, nxt[1])
    return sorted(records, key=lambda r: r.start_s), time.monotonic() - t0


def summarize(level: Level, records: list[Record], wall_s: float, slots: int = 1) -> dict[str, Any]:
    """One load's figures (see the module doc); ``server_check`` holds the client/server comparison."""
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    per_req_tps = [(r.output_tokens - 1) / (r.e2e_s - r.ttft_s) for r in ok
                   if r.output_tokens and r.output_tokens > 1 and r.ttft_s is not None and r.e2e_s > r.ttft_s]
    errors = Counter(r.error for r in records if r.error)
    return {"level": level.label, "mode": level.mode, "value": level.value, "requests": len(records),
            "completed": len(ok), "errors": dict(errors),
            "error_examples": {k: next(r.detail for r in records if r.error == k) for k in errors},
            "wall_s": round(wall_s, 3), "req_per_s": len(ok) / wall_s if wall_s else None,
            "output_tok_per_s": out_tokens / wall_s if wall_s else None, "output_tokens": out_tokens,
            "prompt_tokens": pcts([r.prompt_tokens for r in ok]),
            "per_request_tok_per_s": pcts(per_req_tps), "ttft_s": pcts([r.ttft_s for r in ok]),
            "tpot_s": pcts([r.tpot_s for r in ok]), "e2e_s": pcts([r.e2e_s for r in ok]),
            "queue_s": pcts([r.ttft_s - r.server["prompt_ms"] / 1000 for r in ok
                             if r.ttft_s is not None and r.server.get("prompt_ms") is not None]),
            "server_check": server_check(ok, ttft=level.mode == "clients" and level.value <= slots)}


def server_check(ok: list[Record], ttft: bool = True) -> dict[str, Any]:
    """The client's figures against the server's own ``timings`` of the same requests.

    ``tpot_s``: median client time per output token after the first vs ``predicted_ms / predicted_n``;
    ``ttft_s`` (only with ``ttft``: no more clients than slots, so nothing waits for a slot): median
    client TTFT vs ``prompt_ms``. ``shown``: the comparisons whose gap is over ``GAP_SHOWN_PCT``. Beyond
    the slots, the wait for a slot is the level's ``queue_s`` (client TTFT - ``prompt_ms``), not a gap.
    """
    with_t = [r for r in ok if r.server.get("predicted_ms") and r.server.get("predicted_n")]
    if not with_t:
        return {"requests": 0, "shown": []}
    client_tpot = pcts([r.tpot_s for r in with_t])["p50"]
    server_tpot = pcts([r.server["predicted_ms"] / 1000 / r.server["predicted_n"] for r in with_t])["p50"]
    client_ttft = pcts([r.ttft_s for r in with_t])["p50"]
    server_ttft = pcts([r.server.get("prompt_ms", 0) / 1000 for r in with_t])["p50"]
    out: dict[str, Any] = {"requests": len(with_t)}
    for name, c, sv in (("tpot_s", client_tpot, server_tpot), ("ttft_s", client_ttft, server_ttft)):
        if name == "ttft_s" and not ttft:
            continue
        gap = 100.0 * (c - sv) / sv if c is not None and sv else None
        out[name] = {"client": c, "server": sv, "gap_pct": gap}
    out["shown"] = [f"{name}: client {out[name]['client'] * 1000:.2f} ms vs server {out[name]['server'] * 1000:.2f} ms "
                    f"({out[name]['gap_pct']:+.0f}%)" for name in ("tpot_s", "ttft_s")
                    if name in out and out[name]["gap_pct"] is not None and abs(out[name]["gap_pct"]) > GAP_SHOWN_PCT]
    return out


def _drive_levels(client: httpx.Client, url: str, levels: list[Level], s: Settings, slots: int, out: dict[str, Any],
                  progress: Callable[[str, Record | None], None] | None, stop: threading.Event | None,
                  alive: Callable[[], bool] = lambda: True) -> None:
    """Calibrate prompt lengths, warm up, then every load in turn into ``out["levels"]``."""
    tpw, overhead = traffic.calibrate(client, url, model=s.model)
    s = Settings(**{**s.__dict__, "tokens_per_word": tpw, "overhead": overhead})
    out["tokens_per_word"] = round(tpw, 3)
    traffic.send(client, url, "/v1/chat/completions", traffic.chat_body("Hello.", 8, stream=True, model=s.model),
                 kind="warm-up", t0=time.monotonic())
    for level in levels:
        if stop is not None and stop.is_set():
            break
        before = metrics.fetch_spec(client, url)
        on_record: Callable[[Record], None] | None = None
        if progress is not None:
            on_record = functools.partial(progress, level.label)
        records, wall = drive(client, url, level, s, stop, on_record)
        d = metrics.fetch_spec(client, url).minus(before)
        summary = summarize(level, records, wall, slots)
        summary["acceptance"] = d.acceptance if d.present and d.draft_tokens else None
        summary["records"] = [r.to_dict() for r in records]
        out["levels"].append(summary)
        if not alive():
            break


def load_url(base: profiles.Resolved, url: str, levels: list[Level], s: Settings,
             progress: Callable[[str, Record | None], None] | None = None,
             stop: threading.Event | None = None) -> dict[str, Any]:
    """Every load against a server already running at ``url`` (nothing launched or stopped; its slots
    from ``/props`` ``total_slots``, else the profile's ``parallel``), as one cell named ``url``."""
    prof = base.profile
    url = url.rstrip("/")
    out: dict[str, Any] = {"cell": "url", "url": url, "overrides": {}, "levels": [], "error": None, "log": None,
                           "mtp": bool(prof.enable_mtp and prof.draft_model)}
    headers = {"Authorization": f"Bearer {prof.api_key}"} if prof.api_key else {}
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT + 8, max_keepalive_connections=0)
    with httpx.Client(headers=headers, limits=limits) as client:
        try:
            props = client.get(f"{url}/props", timeout=10).json()
            slots = int(props.get("total_slots") or prof.parallel)
            s = Settings(**{**s.__dict__, "model": prof.alias or "model"})
        except (httpx.HTTPError, ValueError, TypeError, AttributeError) as exc:
            out["error"] = f"{url}/props: {type(exc).__name__}: {exc}"
            return out
        out["parallel"] = slots
        _drive_levels(client, url, levels, s, slots, out, progress, stop)
    return out


def load_cell(base: profiles.Resolved, cell: Cell, binary: launcher.Binary, run_dir: Path, levels: list[Level],
              s: Settings, progress: Callable[[str, Record | None], None] | None = None,
              stop: threading.Event | None = None) -> dict[str, Any]:
    """One server for ``cell``, every load in turn (a short warm-up first, not counted).

    Returns ``{"cell", "overrides", "argv", "log", "levels": [summary + "records"], "peak_rss_mib", "error"}``;
    a server that fails to start or dies is the cell's ``error`` (with its cause), never an exception.
    """
    resolved = cell_profile(base, cell)
    prof = resolved.profile
    s = Settings(**{**s.__dict__, "model": prof.alias or "model"})
    log = run_dir / f"load-{slug(cell.id)}.log"
    out: dict[str, Any] = {"cell": cell.id, "overrides": cell.values, "levels": [], "error": None, "log": str(log),
                           "parallel": prof.parallel, "mtp": bool(prof.enable_mtp and prof.draft_model)}
    sp: ServerProcess | None = None
    try:
        plan = launcher.plan(resolved, binary=binary)
        out["argv"] = plan.argv
        sp = launcher.start(plan, log)
        sp.wait_healthy(prof.health_timeout)
        # a new connection per request (as bench): a kept-alive one the server closed meanwhile would fail
        with sp.client(limits=httpx.Limits(max_connections=MAX_IN_FLIGHT + 8, max_keepalive_connections=0)) as client:
            _drive_levels(client, sp.url, levels, s, prof.parallel, out, progress, stop, sp.alive)
            if not sp.alive():
                out["error"] = sp.crash().summary()
        out["peak_rss_mib"] = _peak_rss_mib(sp.pid)
    except (ServerDied, LlamactlError) as exc:
        out["error"] = str(exc)
    finally:
        if sp is not None:
            sp.stop()
    return out


def _peak_rss_mib(pid: int | None) -> float | None:
    st = read_status(pid) if pid else None
    return st.get("VmHWM") if st else None


def to_json(cells: list[dict[str, Any]], meta: dict[str, Any], keep_records: bool = True) -> dict[str, Any]:
    """The run as ``load --json`` writes it (``kind: load``); ``keep_records`` False drops per-request records."""
    if not keep_records:
        cells = [dict(c, levels=[{k: v for k, v in lv.items() if k != "records"} for lv in c["levels"]]) for c in cells]
    return {"kind": "load", "profile": meta.get("profile"), "meta": meta, "cells": cells}
