"""`llamactl bench`: does MTP pay off here, for this KV type and slot count?

For each cell, two servers start side by side (MTP off and MTP on, same everything else).
Samples are interleaved (off, on, off, on, ...) so machine drift cannot pose as a
speed-up. Each sample streams one fixed prompt with greedy sampling and records client
timings (TTFT, decode tok/s), the server's own ``timings``, and /metrics draft deltas.
Then all slots are filled at once for aggregate throughput; peak RSS comes from /proc.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import httpx
from pydantic import ValidationError

from llamactl.serve import launcher
from llamactl.judge import metrics, sse
from llamactl.serve import profiles
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.files import read_text
from llamactl.core.procstat import read_status
from llamactl.judge.matrix import Cell, cell_profile, slug
from llamactl.serve.endpoint import split_hosts
from llamactl.serve.server import ServerDied, ServerProcess
from llamactl.judge.stats import pct_change, ratio, summarize

# Does MTP pay off? The cell's decode speed-up (MTP on / off, medians of interleaved samples, the
# server's own timings): at or above PAYS_OFF_AT it pays off, at or below COSTS_AT it costs time,
# between the two it makes no measurable difference (5%: about the spread of repeated medians here).
PAYS_OFF_AT = 1.05
COSTS_AT = 0.95
MtpVerdictName = Literal["pays-off", "costs", "no-difference"]


@dataclass(frozen=True)
class MtpVerdict:
    """One cell's answer to "does MTP pay off here", as ``bench --json`` carries it (``mtp_verdict``)."""

    verdict: MtpVerdictName
    speedup: float                 # decode tok/s MTP on / MTP off
    acceptance: float | None       # accepted / drafted tokens of the MTP-on variant
    line: str                      # the plain sentence people read
    pays_off_at: float = PAYS_OFF_AT
    costs_at: float = COSTS_AT


def mtp_verdict(cell: str, speedup: float | None, acceptance: float | None,
                pays_off_at: float = PAYS_OFF_AT, costs_at: float = COSTS_AT) -> MtpVerdict | None:
    """The verdict on one cell from its speed-up (None without both variants: no verdict)."""
    if not isinstance(speedup, (int, float)) or isinstance(speedup, bool):
        return None
    acc_s = "n/a" if acceptance is None else f"{acceptance:.0%}"
    verdict: MtpVerdictName
    if speedup >= pays_off_at:
        verdict, line = "pays-off", f"{cell}: MTP pays off here: {speedup:.2f}x decode speed at {acc_s} draft acceptance"
    elif speedup <= costs_at:
        verdict, line = "costs", f"{cell}: MTP costs time here: {speedup:.2f}x decode speed (acceptance {acc_s}); leave it off"
    else:
        verdict, line = "no-difference", f"{cell}: MTP makes no measurable difference ({speedup:.2f}x, acceptance {acc_s})"
    return MtpVerdict(verdict, float(speedup), acceptance, line, pays_off_at, costs_at)


BUILTIN_PROMPTS = [
    "Hi.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain, step by step and in plain words, how a hash table handles collisions, what load factor means, "
    "why resizing matters, and how open addressing differs from chaining. Give a small example for each.",
]


@dataclass
class Sample:
    cell: str
    variant: str            # "mtp-off" | "mtp-on"
    repeat: int
    prompt: int
    prompt_tokens: int | None = None
    tokens: int | None = None
    ttft_s: float | None = None
    client_decode_tps: float | None = None
    server_decode_tps: float | None = None
    server_prompt_tps: float | None = None
    draft_tokens: float | None = None
    accepted_tokens: float | None = None
    accepted_per_pos: dict[str, float] = field(default_factory=dict)


@dataclass
class VariantResult:
    variant: str
    argv: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    aggregate_tps: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        s: dict[str, Any] = {k: asdict(summarize([getattr(x, k) for x in self.samples])) for k in
             ("client_decode_tps", "server_decode_tps", "server_prompt_tps", "ttft_s")}
        s["aggregate_tps"] = asdict(summarize(self.aggregate_tps))
        drafted = sum(x.draft_tokens or 0 for x in self.samples)
        accepted = sum(x.accepted_tokens or 0 for x in self.samples)
        s["draft_tokens"], s["accepted_tokens"] = drafted, accepted
        s["acceptance"] = accepted / drafted if drafted else None
        return s


@dataclass
class CellBench:
    cell: str
    overrides: dict[str, Any]
    variants: dict[str, VariantResult] = field(default_factory=dict)

    def speedup(self) -> float | None:
        on, off = self.variants.get("mtp-on"), self.variants.get("mtp-off")
        if not on or not off or on.error or off.error:
            return None
        return ratio(decode_median(on.summary()), decode_median(off.summary()))


def decode_median(summary: dict) -> float | None:
    """The decode rate verdicts use: the server's own timings, else the client's.

    On a fast model the stream arrives in bursts (MTP accepts several tokens per step), so
    client-side rates over a few milliseconds are noise; the server times generation itself.
    """
    return summary["server_decode_tps"]["median"] or summary["client_decode_tps"]["median"]


def without_mtp_axis(cells: list[Cell]) -> list[Cell]:
    """Bench runs MTP off and on itself, so cells that differ only in enable_mtp become one."""
    out: list[Cell] = []
    for c in cells:
        reduced = Cell(tuple((k, v) for k, v in c.overrides if k != "enable_mtp"), c.name)
        if all(reduced.overrides != o.overrides for o in out):
            out.append(reduced)
    return out


def load_prompts(path: Path | None) -> list[str]:
    if path is None:
        return list(BUILTIN_PROMPTS)
    text = read_text(path, "prompts file")   # BadInput: missing, a directory, unreadable, too big, not UTF-8
    prompts = [p.strip() for p in text.split("\n\n") if p.strip()] if "\n\n" in text else [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise BadInput(f"{path} holds no prompts (one per line, or blocks separated by blank lines)")
    return prompts


def stream_one(client: httpx.Client, url: str, model: str, prompt: str, n_predict: int, seed: int) -> dict:
    """Stream one chat completion; return client timings and the server's own timings."""
    t0 = time.monotonic()
    first = last = None
    timings: dict = {}
    with client.stream("POST", f"{url}/v1/chat/completions", timeout=600, json={
            "model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": n_predict, "temperature": 0, "seed": seed, "ignore_eos": True}) as r:
        if r.status_code != 200:
            r.read()
            raise LlamactlError(f"bench request failed: HTTP {r.status_code} {r.text[:200]}")
        for ev in sse.events(r.iter_lines()):
            if ev.done:
                continue
            try:
                chunk = json.loads(ev.data)
            except ValueError:
                continue
            if chunk.get("timings"):
                timings = chunk["timings"]
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                now = time.monotonic()
                first = first or now
                last = now
    n = timings.get("predicted_n")
    decode = (n - 1) / (last - first) if n and first and last and last > first else None
    return {"ttft_s": (first - t0) if first else None, "client_decode_tps": decode, "tokens": n,
            "prompt_tokens": timings.get("prompt_n"), "server_decode_tps": timings.get("predicted_per_second"),
            "server_prompt_tps": timings.get("prompt_per_second")}


def _beside(prof: profiles.Profile, variant: str) -> profiles.Profile:
    """``prof`` for a second server running next to the first: a free port, ``NAME-<variant>.sock`` sockets."""
    hosts = [f"{h[:-len('.sock')]}-{variant}.sock" if h.endswith(".sock") else h for h in split_hosts(prof.host)]
    return prof.model_copy(update={"host": ",".join(hosts), "port": "auto"})


def peak_rss_mb(pid: int) -> float | None:
    """Peak RSS (MiB, ``VmHWM`` from /proc); None when the process is gone."""
    st = read_status(pid)
    return st.get("VmHWM") if st else None


def _aggregate(client: httpx.Client, url: str, model: str, slots: int, n_predict: int, seed: int, prompts: list[str]) -> float:
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        res = list(pool.map(lambda i: stream_one(client, url, model, prompts[i % len(prompts)], n_predict, seed), range(slots)))
    wall = time.monotonic() - t0
    return sum(r["tokens"] or 0 for r in res) / wall if wall else 0.0


@dataclass
class Arm:
    """One server per cell: its label, MTP on/off (None: as the cell says) and its binary (None: the run's)."""

    label: str
    enable_mtp: bool | None = None
    binary: launcher.Binary | None = None


def mtp_arms(profile: profiles.Profile) -> list[Arm]:
    """The default comparison: MTP off vs on (only off without a draft model)."""
    return [Arm("mtp-off", False), Arm("mtp-on", True)] if profile.draft_model else [Arm("mtp-off", False)]


BUILD_SHORTHAND = {"series": {}, "no-series": {"no_patches": True}}


def parse_build(text: str) -> tuple[str, dict[str, Any]]:
    """``--build`` text -> (label, BuildSpec updates).

    ``series`` (the profile's build, patches applied), ``no-series`` (no patches), or
    ``key=value,...`` over build keys (source, series, no_patches, backend, gpu_targets,
    cmake_options as ``a;b``), or ``binary=PATH`` (a llama-server built elsewhere),
    optionally labelled ``name=LABEL``. Raises LlamactlError.
    """
    text = text.strip()
    if text in BUILD_SHORTHAND:
        return text, dict(BUILD_SHORTHAND[text])
    label = text
    updates: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise BadInput(f"--build {text!r}: expected series, no-series or key=value[,key=value] "
                                f"(keys: name, binary, {', '.join(profiles.BuildSpec.model_fields)})")
        if key == "name":
            label = value.strip()
        elif key in ("binary", "server_binary"):
            updates["server_binary"] = value.strip()
        elif key not in profiles.BuildSpec.model_fields:
            raise BadInput(f"--build {text!r}: unknown build key {key!r} (keys: name, binary, {', '.join(profiles.BuildSpec.model_fields)})")
        elif key == "cmake_options":
            updates[key] = [o for o in value.split(";") if o]
        elif key == "no_patches":
            updates[key] = value.strip().lower() in ("1", "true", "yes", "on")
        else:
            updates[key] = value.strip() or None
    return label, updates


def build_profile(base: profiles.Profile, updates: dict[str, Any], label: str) -> profiles.Profile:
    """The profile for one ``--build`` arm: its ``build`` section updated, ``server_binary`` only when given."""
    updates = dict(updates)
    binary = updates.pop("server_binary", None)
    try:
        spec = profiles.BuildSpec.model_validate({**base.build.model_dump(), **updates})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadInput(f"--build {label}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from exc
    return base.model_copy(update={"build": spec, "server_binary": Path(binary).expanduser() if binary else None})


def bench_cell(base: profiles.Resolved, cell: Cell, binary: launcher.Binary, run_dir: Path, prompts: list[str],
               n_predict: int, repeat: int, seed: int = 42,
               progress: Callable[[str], None] | None = None, arms: list[Arm] | None = None) -> CellBench:
    """Bench one cell: one server per arm (default MTP off/on), samples interleaved across arms (ABBA order)."""
    resolved = cell_profile(base, cell)
    out = CellBench(cell.id, cell.values)
    arms = arms or mtp_arms(resolved.profile)
    variants = [a.label for a in arms]
    servers: dict[str, ServerProcess] = {}
    try:
        for arm in arms:
            v = arm.label
            mtp = resolved.profile.enable_mtp if arm.enable_mtp is None else arm.enable_mtp
            prof = resolved.profile.model_copy(update={"enable_mtp": bool(mtp and resolved.profile.draft_model)})
            if servers:   # side by side with the first server: not on its fixed port or socket
                prof = _beside(prof, slug(v))
            r = profiles.Resolved(resolved.name, prof, resolved.origins, resolved.path)
            vr = VariantResult(v)
            out.variants[v] = vr
            try:
                plan = launcher.plan(r, binary=arm.binary or binary)
            except LlamactlError as exc:
                vr.error = str(exc)
                continue
            vr.argv = plan.argv
            sp = launcher.start(plan, run_dir / f"bench-{slug(cell.id)}-{v}.log")
            servers[v] = sp
            try:
                sp.wait_healthy(prof.health_timeout)
            except (ServerDied, LlamactlError) as exc:
                vr.error = str(exc)
        model = resolved.profile.alias or "model"
        live = [v for v in variants if v in servers and servers[v].alive() and not out.variants[v].error]
        # one client per server: each has its own endpoint (a unix socket needs its own transport)
        with ExitStack() as stack:
            clients = {v: stack.enter_context(servers[v].client(limits=httpx.Limits(max_keepalive_connections=0)))
                       for v in live}
            for v in live:   # warm-up, excluded
                stream_one(clients[v], servers[v].url, model, prompts[0], min(16, n_predict), seed)
            for rep in range(repeat):
                for pi, prompt in enumerate(prompts):
                    # interleaved across arms, and the order alternates (A B, B A, A B ...) so that
                    # going first or second after another server's burst cannot favour one arm
                    for v in (live if (rep * len(prompts) + pi) % 2 == 0 else live[::-1]):
                        url, client = servers[v].url, clients[v]
                        before = metrics.fetch_spec(client, url)
                        res = stream_one(client, url, model, prompt, n_predict, seed)
                        d = metrics.fetch_spec(client, url).minus(before)
                        out.variants[v].samples.append(Sample(cell.id, v, rep, pi, draft_tokens=d.draft_tokens,
                                                              accepted_tokens=d.accepted_tokens,
                                                              accepted_per_pos=d.accepted_per_pos, **res))
                        if progress:
                            progress(f"{cell.id} {v} r{rep} p{pi}")
                for v in live:
                    out.variants[v].aggregate_tps.append(
                        _aggregate(clients[v], servers[v].url, model, resolved.profile.parallel, n_predict, seed, prompts))
        for v, sp in servers.items():
            out.variants[v].peak_rss_mb = peak_rss_mb(sp.pid) if sp.pid else None
            if not sp.alive() and not out.variants[v].error:
                out.variants[v].error = sp.crash().summary()
    finally:
        for sp in servers.values():
            sp.stop()
    return out


def to_json(cells: list[CellBench], meta: dict) -> dict:
    """The run as ``bench --json`` writes it; each cell with its ``mtp_verdict`` (None without MTP on and off)."""
    out = []
    for c in cells:
        on = c.variants.get("mtp-on")
        verdict = mtp_verdict(c.cell, c.speedup(), on.summary()["acceptance"] if on else None)
        out.append({"cell": c.cell, "overrides": c.overrides, "speedup": c.speedup(),
                    "mtp_verdict": asdict(verdict) if verdict else None,
                    "variants": {v: {"argv": r.argv, "error": r.error, "peak_rss_mb": r.peak_rss_mb,
                                     "aggregate_tps": r.aggregate_tps, "summary": r.summary(),
                                     "samples": [asdict(s) for s in r.samples]}
                                 for v, r in c.variants.items()}})
    return {"meta": meta, "cells": out}


def compare(a: dict, b: dict) -> list[dict]:
    """Differences in medians between two saved runs (A = before, B = after)."""
    rows = []
    index = {(c["cell"], v): r for c in a["cells"] for v, r in c["variants"].items()}
    for c in b["cells"]:
        for v, r in c["variants"].items():
            old = index.get((c["cell"], v))
            if old is None:
                continue
            row = {"cell": c["cell"], "variant": v}
            for metric in ("client_decode_tps", "server_decode_tps", "aggregate_tps", "ttft_s"):
                x, y = old["summary"][metric]["median"], r["summary"][metric]["median"]
                row[metric] = {"a": x, "b": y, "change_pct": pct_change(y, x)}
            row["acceptance"] = {"a": old["summary"]["acceptance"], "b": r["summary"]["acceptance"]}
            rows.append(row)
    return rows


def plot(data: dict, path: Path) -> None:
    """Bars of median decode tok/s per cell and variant, with min-max whiskers."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LlamactlError("--plot needs matplotlib", hint="pip install 'llamactl[plot]'") from exc
    cells = data["cells"]
    labels = [c["cell"] for c in cells]
    variants = list(dict.fromkeys(v for c in cells for v in c["variants"])) or ["mtp-off", "mtp-on"]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(cells) + 2), 4.5))
    width = 0.76 / len(variants)
    for i, v in enumerate(variants):
        meds, lo, hi = [], [], []
        for c in cells:
            summ = (c["variants"].get(v) or {}).get("summary", {})
            s = summ.get("server_decode_tps") if (summ.get("server_decode_tps") or {}).get("median") else summ.get("client_decode_tps", {})
            s = s or {}
            m = s.get("median") or 0.0
            meds.append(m)
            lo.append(m - (s.get("min") or m))
            hi.append((s.get("max") or m) - m)
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(cells))]
        bars = ax.bar(xs, meds, width, yerr=[lo, hi], capsize=4, label=v,
                      color=("#8c8c8c" if v == "mtp-off" else "#2a7ab9" if v == "mtp-on" else f"C{i}"))
        for b, c in zip(bars, cells, strict=True):
            acc = ((c["variants"].get(v) or {}).get("summary") or {}).get("acceptance")
            if v == "mtp-on" and acc is not None:
                ax.annotate(f"acc {acc:.0%}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels(labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("decode tokens/s (server timings, median; whiskers min-max)")
    ax.set_title(f"llamactl bench {data['meta'].get('profile', '')}: {' vs '.join(variants)}")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
