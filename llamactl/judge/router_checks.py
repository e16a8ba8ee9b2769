"""Validation of llama-server's router mode over several profiles (``llamactl validate --router A B``).

The router (:mod:`llamactl.serve.router`) serves each profile's model under the profile's name, loaded on
demand in a child process. The checks, each against the live router, in this order:

- ``member_view``: each model's server, as the router runs it, is the profile: slots and per-slot
  context from ``/props?model=`` and ``/slots?model=``, KV cache types from the child's log lines (the
  router forwards them as ``[PORT] ...``).
- ``routing``: a greedy ``/completion`` with ``"model": NAME`` is answered by NAME (the answer's
  ``model`` field) and with the same text and tokens as the same request to a single-model
  llama-server of that profile (started here, its own argv).
- ``load_evict``: models load on demand (``GET /models`` status ``unloaded`` -> ``loaded``) and with
  ``--models-max N`` the least recently used one is unloaded when N+1 are asked for.
- ``crash_isolation``: SIGKILL to one model's child (found in the process tree by its ``--alias``)
  leaves the router healthy and the other models answering; the killed one is reported (``/models``)
  and loads again on the next request.
- ``load_failure``: a model that cannot load (a probe section whose file is not a GGUF) is an error
  answer, ``/models`` marks it ``failed`` with its exit code, and the child's own log line gives the
  cause; the router and the other models keep serving.

A build without router mode (no ``--models-preset`` in its --help) makes every check a SKIP with that reason.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from llamactl.core.progress import ProgressFn
from llamactl.judge.checks import CheckFailed, CheckResult, CheckSkipped, CheckWarned, kv_types_from_log, run_check
from llamactl.judge.status import BAD, Status
from llamactl.serve import router as router_lib
from llamactl.serve.presets import Section
from llamactl.serve.profiles import Resolved
from llamactl.serve.router import Member, RouterPlan, RouterUnsupported
from llamactl.serve.server import ServerProcess, root_cause

PROMPT = "The list of colours, sizes and animals goes like this:"
N_PREDICT = 16
PROBE = "llamactl-probe-unloadable"      # the section of a model that cannot load (load_failure)
LOAD_WAIT_S = 60.0
EVICT_WAIT_S = 5.0     # the router unloads the LRU model before it answers the request that needs room


@dataclass
class RouterContext:
    """What the router checks share: the live router, its plan, and where solo servers log. Seconds throughout."""

    url: str
    client: httpx.Client
    plan: RouterPlan
    router: ServerProcess
    run_dir: Path
    probe: str | None = None            # section name of the model that must fail to load
    request_timeout: float = 120.0
    state: dict[str, Any] = field(default_factory=dict)

    def members(self) -> list[Member]:
        return self.plan.members


def completion_body(model: str | None) -> dict[str, Any]:
    """A greedy, uncached /completion request (``model`` routes it; None for a single-model server)."""
    body: dict[str, Any] = {"prompt": PROMPT, "n_predict": N_PREDICT, "temperature": 0, "seed": 1,
                            "cache_prompt": False, "return_tokens": True}
    return {"model": model, **body} if model else body


def models(ctx: RouterContext) -> dict[str, dict[str, Any]]:
    """``GET /models`` as name -> status object. Raises CheckFailed on a non-router answer."""
    r = ctx.client.get(f"{ctx.url}/models", timeout=ctx.request_timeout)
    if r.status_code != 200:
        raise CheckFailed(f"GET /models: HTTP {r.status_code}: {r.text[:160]}")
    try:
        return router_lib.model_states(r.json())
    except ValueError as exc:
        raise CheckFailed(f"GET /models: {exc}") from exc


def values(states: dict[str, dict[str, Any]]) -> dict[str, str]:
    """name -> status word (``loaded``, ``unloaded``, ``loading``, ...)."""
    return {k: str(v.get("value")) for k, v in states.items()}


def wait_state(ctx: RouterContext, want: dict[str, str], timeout: float = LOAD_WAIT_S) -> dict[str, dict[str, Any]]:
    """Poll ``/models`` until every named model has the wanted status word; returns the last states.

    Raises:
        CheckFailed: not reached within ``timeout`` seconds (the message gives the statuses seen).
    """
    end = time.monotonic() + timeout
    while True:
        st = models(ctx)
        got = values(st)
        if all(got.get(k) == v for k, v in want.items()):
            return st
        if time.monotonic() > end:
            raise CheckFailed(f"/models after {timeout:g}s: {got}, expected {want}", {"models": got})
        time.sleep(0.1)


def complete(ctx: RouterContext, name: str) -> dict[str, Any]:
    """POST /completion routed to ``name``; the answer's body. Raises CheckFailed on a non-200 answer."""
    r = ctx.client.post(f"{ctx.url}/completion", json=completion_body(name), timeout=ctx.request_timeout)
    if r.status_code != 200:
        raise CheckFailed(f"POST /completion model={name}: HTTP {r.status_code}: {r.text[:200]}")
    return r.json()


def unload_all(ctx: RouterContext) -> None:
    """Unload every loaded model (``POST /models/unload``) and wait until none is loaded."""
    st = values(models(ctx))
    for name, v in st.items():
        if v in ("loaded", "loading", "sleeping"):
            ctx.client.post(f"{ctx.url}/models/unload", json={"model": name}, timeout=ctx.request_timeout)
    wait_state(ctx, {n: "unloaded" for n, v in st.items() if v in ("loaded", "loading", "sleeping")})


# --- the server's own view ---------------------------------------------------------------------

_PORT_PREFIX = re.compile(r"^\[\s*(?P<port>\d+)\] ")


def child_port(status: dict[str, Any]) -> int | None:
    """The port the router gave a model's child (``--port N`` in its ``/models`` status args)."""
    args = status.get("args") or []
    for i, a in enumerate(args[:-1]):
        if a == "--port" and str(args[i + 1]).isdigit() and int(args[i + 1]) > 0:
            return int(args[i + 1])
    return None


def child_log(lines: list[str], port: int | None) -> list[str]:
    """The log lines of one child in the router's log (forwarded as ``[PORT] line``), prefix removed."""
    out = []
    for ln in lines:
        m = _PORT_PREFIX.match(ln)
        if m and (port is None or int(m.group("port")) == port):
            out.append(ln[m.end():])
    return out


def server_view(client: httpx.Client, url: str, log: list[str], model: str | None = None,
                timeout: float = 60.0) -> dict[str, Any]:
    """A server's own view of itself: ``n_slots`` and ``n_ctx_slot`` (``/props`` total_slots,
    default_generation_settings.n_ctx), ``slots_n_ctx`` (``/slots``, one per slot) and ``kv_k``/``kv_v``
    (llama.cpp's ``llama_kv_cache: ... K (f16) ... V (f16)`` log line). ``model`` routes it through a router.

    Raises:
        CheckFailed: /props or /slots answer with an error.
    """
    q = {"model": model} if model else None
    r = client.get(f"{url}/props", params=q, timeout=timeout)
    if r.status_code != 200:
        raise CheckFailed(f"GET /props{'?model=' + model if model else ''}: HTTP {r.status_code}: {r.text[:160]}")
    props = r.json()
    view: dict[str, Any] = {"n_slots": props.get("total_slots"),
                            "n_ctx_slot": (props.get("default_generation_settings") or {}).get("n_ctx")}
    r = client.get(f"{url}/slots", params=q, timeout=timeout)
    if r.status_code == 200 and isinstance(r.json(), list):
        view["slots_n_ctx"] = [s.get("n_ctx") for s in r.json()]
    kv = kv_types_from_log(log)
    view["kv_k"], view["kv_v"] = kv if kv else (None, None)
    return view


def routed_view(ctx: RouterContext, name: str) -> dict[str, Any]:
    """:func:`server_view` of model ``name`` through the router (loaded first, by a request)."""
    complete(ctx, name)
    st = models(ctx).get(name, {})
    return server_view(ctx.client, ctx.url, child_log(ctx.router.log_lines(), child_port(st)), name, ctx.request_timeout)


def member_view(ctx: RouterContext) -> dict:
    """Each model as the router runs it has the profile's slots, per-slot context and KV types."""
    out: dict[str, Any] = {}
    fails: list[str] = []
    for m in ctx.members():
        p = m.profile
        v = out[m.name] = routed_view(ctx, m.name)
        if v["n_slots"] != p.parallel:
            fails.append(f"{m.name}: {v['n_slots']} slot(s), the profile says parallel={p.parallel}")
        unified = bool(p.kv_unified) or p.parallel == 1
        if p.ctx and v["n_ctx_slot"] not in (p.ctx if unified else p.ctx // p.parallel, None):
            fails.append(f"{m.name}: n_ctx per slot {v['n_ctx_slot']}, the profile says ctx={p.ctx}")
        for side, want in (("kv_k", p.kv_k), ("kv_v", p.kv_v)):
            if want and v[side] and v[side] != want:
                fails.append(f"{m.name}: {side}={want} in the profile, the child's KV cache is {v[side]}")
            if want and not v[side]:
                fails.append(f"{m.name}: no KV cache line of its child in the router's log")
    if fails:
        raise CheckFailed("; ".join(fails), out)
    return out


# --- routing -----------------------------------------------------------------------------------

def solo_answer(ctx: RouterContext, m: Member) -> dict[str, Any]:
    """The same request to a single-model llama-server of member ``m`` (its own argv), started and stopped here."""
    p = m.plan
    sp = ServerProcess(p.argv, p.host, p.port, ctx.run_dir / f"solo-{m.name}.log", env=p.env,
                       drop_env=tuple(p.env_dropped), endpoint=p.endpoint)
    sp.start()
    try:
        sp.wait_healthy(m.profile.health_timeout)
        with sp.client(timeout=ctx.request_timeout) as c:
            r = c.post(f"{sp.url}/completion", json=completion_body(None))
        if r.status_code != 200:
            raise CheckFailed(f"{m.name} served alone: HTTP {r.status_code}: {r.text[:160]}")
        return r.json()
    finally:
        sp.stop()


def routing(ctx: RouterContext) -> dict:
    """Requests reach the model they name: the ``model`` field, and the answer of that profile served alone."""
    out: dict[str, Any] = {}
    fails: list[str] = []
    warns: list[str] = []
    for m in ctx.members():
        got = complete(ctx, m.name)
        alone = solo_answer(ctx, m)
        row = out[m.name] = {"model": got.get("model"), "content": got.get("content"),
                             "alone": alone.get("content"), "tokens": got.get("tokens"), "alone_tokens": alone.get("tokens")}
        if got.get("model") != m.name:
            fails.append(f"asked for {m.name}, answered by model {got.get('model')!r}")
        same = row["content"] == row["alone"] and (row["tokens"] or None) == (row["alone_tokens"] or None)
        if not same:
            what = (f"{m.name} through the router answers {str(row['content'])[:40]!r}, served alone "
                    f"{str(row['alone'])[:40]!r}")
            (fails if m.profile.harness.exact_answers else warns).append(what)
    if fails:
        raise CheckFailed("; ".join(fails), out)
    if warns:
        raise CheckWarned("; ".join(warns) + " (numerics: exact_answers is off)", out)
    return out


# --- load on demand, eviction ------------------------------------------------------------------

def load_evict(ctx: RouterContext) -> dict:
    """On-demand load (``unloaded`` -> ``loaded`` by a request) and ``--models-max`` LRU eviction."""
    names = [m.name for m in ctx.members()]
    n_max = ctx.plan.models_max
    unload_all(ctx)
    steps: list[dict[str, Any]] = [{"after": "unload all", "models": values(models(ctx))}]
    fit = len(names) if n_max == 0 else min(n_max, len(names))
    for name in names[:fit]:
        complete(ctx, name)
        st = values(models(ctx))
        steps.append({"after": f"request {name}", "models": st})
        if st.get(name) != "loaded":
            raise CheckFailed(f"{name} is {st.get(name)} after a request to it (on-demand load)", {"steps": steps})
    if n_max == 0 or n_max >= len(names):
        raise CheckSkipped(f"loaded on demand: {', '.join(names[:fit])}; --models-max {n_max} >= {len(names)} "
                           "models: nothing to evict")
    extra = names[fit]
    complete(ctx, extra)
    try:
        after = wait_state(ctx, {names[0]: "unloaded", extra: "loaded"}, timeout=EVICT_WAIT_S)
    except CheckFailed as exc:
        loaded = [k for k, v in values(models(ctx)).items() if v == "loaded"]
        steps.append({"after": f"request {extra}", "models": values(models(ctx))})
        raise CheckFailed(f"--models-max {n_max}: after asking for {extra}, {len(loaded)} model(s) loaded "
                          f"({', '.join(loaded)}); the least recently used, {names[0]}, should be unloaded ({exc})",
                          {"steps": steps}) from exc
    steps.append({"after": f"request {extra}", "models": values(after)})
    loaded = [k for k, v in values(after).items() if v == "loaded"]
    if len(loaded) > n_max:
        raise CheckFailed(f"{len(loaded)} models loaded with --models-max {n_max}: {', '.join(loaded)}", {"steps": steps})
    return {"steps": steps, "evicted": names[0]}


# --- one model's crash -------------------------------------------------------------------------

def crash_isolation(ctx: RouterContext) -> dict:
    """SIGKILL one model's child: the router and the other models keep serving; the killed one comes back."""
    names = [m.name for m in ctx.members()]
    n_max = ctx.plan.models_max
    fit = len(names) if n_max == 0 else max(1, min(n_max, len(names)))
    for name in names[:fit]:
        complete(ctx, name)
    victim, others = names[0], names[1:]
    kids = router_lib.child_processes(ctx.router.pid or 0)
    if victim not in kids:
        raise CheckFailed(f"no child process of the router runs {victim} (children: {kids})")
    before = {n: kids.get(n) for n in names}
    os.kill(kids[victim], signal.SIGKILL)
    st = wait_state(ctx, {victim: "unloaded"}, timeout=15)
    reported = {k: v for k, v in st.get(victim, {}).items() if k in ("value", "failed", "exit_code")}
    if not ctx.router.alive():
        raise CheckFailed(f"the router died when {victim}'s child was killed")
    if ctx.client.get(f"{ctx.url}/health", timeout=ctx.request_timeout).status_code != 200:
        raise CheckFailed(f"the router is not healthy after {victim}'s child was killed")
    served: dict[str, Any] = {}
    for name in others:
        try:
            served[name] = complete(ctx, name).get("content")
        except CheckFailed as exc:
            raise CheckFailed(f"after {victim}'s child was killed, {name} does not answer: {exc}",
                              {"killed": victim, "pid": before[victim], "reported": reported}) from exc
    kept = [n for n in others[:fit - 1] if before.get(n) and router_lib.child_processes(ctx.router.pid or 0).get(n) == before[n]]
    back = complete(ctx, victim).get("content")
    return {"killed": victim, "pid": before[victim], "reported": reported, "others_answered": list(served),
            "others_kept_process": kept, "victim_reloaded": back is not None}


# --- a model that cannot load -------------------------------------------------------------------

def probe_section(run_dir: Path) -> Section:
    """A preset section whose model file is not a GGUF (written under ``run_dir``): it must fail to load."""
    bad = run_dir / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file\n")
    return Section(PROBE, 0, {"model": str(bad), "ctx-size": "256"})


def load_failure(ctx: RouterContext) -> dict:
    """The probe model fails to load: an error answer, ``failed`` and its exit code in /models, the child's cause line."""
    if ctx.probe is None:
        raise CheckSkipped("no unloadable probe model in this router's preset")
    mark = len(ctx.router.log_lines())
    r = ctx.client.post(f"{ctx.url}/completion", json=completion_body(ctx.probe), timeout=ctx.request_timeout)
    if r.status_code == 200:
        raise CheckFailed(f"{ctx.probe} (a file that is not a GGUF) was loaded and answered; expected a load failure")
    st = wait_state(ctx, {ctx.probe: "unloaded"}, timeout=15).get(ctx.probe, {})
    lines = ctx.router.log_lines()[mark:]
    cause = root_cause(child_log(lines, None)) or root_cause(lines)
    evidence = {"http": r.status_code, "answer": r.text[:200], "status": {k: v for k, v in st.items() if k != "args"},
                "cause": cause}
    if not st.get("failed") and not st.get("exit_code"):
        raise CheckFailed(f"/models does not report {ctx.probe}'s failure (status {evidence['status']})", evidence)
    if not cause:
        raise CheckFailed(f"{ctx.probe} failed to load, but no log line says why", evidence)
    if not ctx.router.alive() or ctx.client.get(f"{ctx.url}/health").status_code != 200:
        raise CheckFailed("the router stopped serving after a model failed to load", evidence)
    complete(ctx, ctx.members()[0].name)
    return evidence


ROUTER_CHECKS: list[tuple[str, Callable[[RouterContext], dict]]] = [
    ("member_view", member_view),
    ("routing", routing),
    ("load_evict", load_evict),
    ("crash_isolation", crash_isolation),
    ("load_failure", load_failure),
]


@dataclass
class RouterReport:
    """The outcome of :func:`run_router`: one result per check, the router's plan facts, and its log."""

    members: list[str]
    models_max: int | None = None
    checks: list[CheckResult] = field(default_factory=list)
    url: str | None = None
    log: str | None = None
    preset: str | None = None
    skipped: str | None = None          # why every check was skipped (a build without router mode)

    @property
    def ok(self) -> bool:
        return not any(c.status in BAD for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"router": self.members, "models_max": self.models_max, "url": self.url, "log": self.log,
                "preset": self.preset, "skipped": self.skipped, "ok": self.ok,
                "checks": [{"name": c.name, "status": str(c.status), "seconds": c.seconds, "detail": c.detail,
                            "data": c.data} for c in self.checks]}


def run_router(members: list[Resolved], run_dir: Path, *, models_max: int | None = None,
               progress: ProgressFn | None = None, on_check: Callable[[CheckResult], None] | None = None,
               checks: list[str] | None = None) -> RouterReport:
    """Start a router over ``members`` (with the unloadable probe section), run the checks, stop it.

    ``models_max`` defaults to one less than the members (at least 1), so that eviction is exercised.
    ``checks`` picks checks by name (default: all). ``on_check`` hears each result as it comes.

    Raises:
        BadInput / LlamactlError: as :func:`llamactl.serve.router.plan_router` (a build without router
            mode is not raised: every check is SKIP with the reason).
    """
    n_max = max(1, len(members) - 1) if models_max is None else models_max
    report = RouterReport([r.name for r in members], n_max)
    chosen = [(n, f) for n, f in ROUTER_CHECKS if checks is None or n in checks]
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        plan = router_lib.plan_router(members, run_dir / "models.ini", models_max=n_max, progress=progress,
                                      extra_sections=[probe_section(run_dir)])
    except RouterUnsupported as exc:
        report.skipped = str(exc)
        for name, _ in chosen:
            res = CheckResult(name, Status.SKIP, 0.0, str(exc))
            report.checks.append(res)
            if on_check:
                on_check(res)
        return report
    log = run_dir / "server.log"
    report.url, report.log, report.preset = plan.url, str(log), str(plan.preset_path)
    sp = router_lib.start(plan, log)
    try:
        sp.wait_healthy(max(m.profile.health_timeout for m in plan.members))
        timeout = max(m.profile.harness.request_timeout for m in plan.members)
        # one connection per request: the router (cpp-httplib) was seen closing a reused keep-alive connection
        # without an answer right after a child was killed or evicted (RemoteProtocolError)
        with sp.client(timeout=timeout, headers={"Connection": "close"}) as client:
            ctx = RouterContext(sp.url, client, plan, sp, run_dir, PROBE, timeout)
            for name, fn in chosen:
                res = run_check(name, fn, ctx)
                report.checks.append(res)
                if on_check:
                    on_check(res)
    finally:
        sp.stop()
    return report
