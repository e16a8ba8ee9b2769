"""`llamactl quality`: what a KV cache type, a patch or a build costs in answer quality.

One reference run of llama-perplexity (the reference KV types, f16/f16, on the first build) writes the
log-probabilities of a pinned text (:mod:`llamactl.models.texts`); each candidate (a KV pair, on a build)
runs against them with ``--kl-divergence`` (:mod:`llamactl.judge.perplexity`). Per candidate: PPL ± its
error and the change against the reference (ΔPPL %), KL divergence (mean, median, 99th percentile,
maximum; nats), how often the top token is the same (%), the RMS of the change in the probability of the
right token (RMS Δp, %), and, with the decode probe (:mod:`llamactl.judge.decode_probe`), top-1 agreement
and mean KL through single-token decode on a llama-server.

Nothing here draws or prints: long runs report to a progress callback, one-line notes to ``on_line``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.progress import ProgressFn
from llamactl.judge import perplexity as P
from llamactl.judge.decode_probe import Prober
from llamactl.judge.references import ReferenceFailed
from llamactl.serve import launcher
from llamactl.serve.profiles import Profile

log = logging.getLogger(__name__)

KIND = "quality"
DEFAULT_KVS = ("q8_0/q8_0", "q4_0/q4_0")
DEFAULT_REFERENCE = "f16/f16"
DEFAULT_CTX = 512
DEFAULT_CHUNKS = 16


@dataclass
class Arm:
    """One build: its label, its profile (the ``build:`` section says what is built), its llama-perplexity,
    and (decode probe) its llama-server."""

    label: str
    profile: Profile
    perplexity: P.PerplexityBinary
    server: launcher.Binary | None = None


@dataclass(frozen=True)
class Candidate:
    """One row: a KV pair on an arm."""

    label: str
    arm: Arm
    kv: P.KvPair


def candidates(arms: list[Arm], kvs: list[P.KvPair], reference_kv: P.KvPair) -> list[Candidate]:
    """Every (arm, KV pair) but the reference itself (the first arm at the reference KV types).

    Rows are labelled by the KV pair, or ``ARM K/V`` when several builds are compared.

    Raises:
        BadInput: no arms, or nothing left to compare.
    """
    if not arms:
        raise BadInput("no build to measure")
    out: list[Candidate] = []
    for i, arm in enumerate(arms):
        for kv in dict.fromkeys(kvs):
            if i == 0 and kv == reference_kv:
                continue
            out.append(Candidate(kv.label if len(arms) == 1 else f"{arm.label} {kv.label}", arm, kv))
    if not out:
        raise BadInput(f"nothing to compare: the only candidate is the reference ({reference_kv.label})",
                       hint="add --kv q8_0/q8_0, or a second --build")
    return out


@dataclass
class Row:
    """One candidate's figures (``kld``: :meth:`KldOutput.to_dict`; ``decode``: :meth:`Quality.summary`)."""

    cell: str
    kv: str
    build: str
    status: str = "ok"               # ok | error
    error: str | None = None
    seconds: float | None = None
    log: str | None = None
    kld: dict[str, Any] | None = None
    decode: dict[str, Any] | None = None
    decode_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"cell": self.cell, "kv": self.kv, "build": self.build, "status": self.status, "error": self.error,
                "seconds": self.seconds, "log": self.log, "kld": self.kld, "decode": self.decode,
                "decode_error": self.decode_error}


@dataclass
class Inputs:
    """What every run of one ``quality`` invocation reads: the model, the text and the settings."""

    model_ref: str
    model: Path
    text_name: str
    text: Path
    text_sha256: str
    settings: P.Settings
    reference_kv: P.KvPair = field(default_factory=lambda: P.KvPair("f16", "f16"))


def measure(inputs: Inputs, arms: list[Arm], kvs: list[P.KvPair], run_dir: Path,
            progress: ProgressFn | None = None, prober: Prober | None = None,
            on_line: Callable[[str], None] | None = None) -> tuple[P.Reference, list[Row], dict[str, Any] | None]:
    """The reference (cached or computed), then each candidate; returns (reference, rows, decode reference).

    A candidate whose run fails is a row with ``status: error`` and the reason; the others still run.
    The decode probe (``prober``) runs after the batched figures.

    Raises:
        BadInput: nothing to compare, a quantized V type without flash attention.
        LlamactlError: the reference run failed (nothing can be compared then).
        KeyboardInterrupt: Ctrl-C (the running llama-perplexity or llama-server is stopped).
    """
    say = on_line or log.info
    cands = candidates(arms, kvs, inputs.reference_kv)
    s = inputs.settings
    s.check()
    for c in cands:
        P.check_kv(c.kv, s)
    model_id = P.model_identity(inputs.model_ref, inputs.model)
    ref_arm = arms[0]
    ref = P.reference(ref_arm.perplexity, inputs.model, model_id, inputs.text, inputs.text_sha256, s,
                      inputs.reference_kv, run_dir, progress)
    size_mb = ref.size_bytes / 2**20
    if ref.cached:
        say(f"reference {inputs.reference_kv.label}: cached logits {ref.path} ({size_mb:.0f} MiB, PPL {ref.base.ppl:.4f})")
    else:
        say(f"reference {inputs.reference_kv.label}: PPL {ref.base.ppl:.4f} ± {ref.base.ppl_err:.4f} in {ref.seconds:.1f}s; "
            f"logits {ref.path} ({size_mb:.0f} MiB)")
    rows: list[Row] = []
    for c in cands:
        row = Row(c.label, c.kv.label, c.arm.label)
        try:
            res = P.kl_divergence(c.arm.perplexity, inputs.model, inputs.text, s, c.kv, ref, run_dir, c.label, progress)
        except BadInput:
            raise
        except LlamactlError as exc:
            row.status, row.error = "error", str(exc)
            say(f"{c.label}: {exc}")
        else:
            row.kld, row.seconds, row.log = res.out.to_dict(), res.seconds, res.log
            say(f"{c.label}: mean KL {res.out.kld_mean:.6f}, same top {res.out.same_top:.2f}%, "
                f"ΔPPL {res.out.delta_ppl_pct:+.2f}% in {res.seconds:.1f}s")
        rows.append(row)
    decode_ref = None
    if prober is not None:
        decode_ref = probe_all(prober, arms[0], inputs.reference_kv, cands, rows, say)
    return ref, rows, decode_ref


def probe_all(prober: Prober, ref_arm: Arm, reference_kv: P.KvPair, cands: list[Candidate], rows: list[Row],
              say: Callable[[str], None]) -> dict[str, Any] | None:
    """The decode probe of every row (its ``decode`` or ``decode_error``); the reference's summary."""
    if ref_arm.server is None:
        raise LlamactlError("the decode probe needs the reference build's llama-server")
    t0 = time.monotonic()
    try:
        ref = prober.reference(ref_arm.profile, ref_arm.server, reference_kv)
    except ReferenceFailed as exc:
        for row in rows:
            row.decode_error = f"no reference answers: {exc}"
        say(f"decode probe: no reference answers: {exc}")
        return None
    for c, row in zip(cands, rows, strict=True):
        if c.arm.server is None:
            row.decode_error = "no llama-server for this build"
            continue
        try:
            row.decode = prober.probe(c.arm.profile, c.arm.server, c.kv, ref)
        except ReferenceFailed as exc:
            row.decode_error = str(exc)
            say(f"{c.label}: decode probe: {exc}")
            continue
        d = row.decode
        if d.get("top1_agreement") is not None:
            say(f"{c.label}: decode top-1 {100 * d['top1_agreement']:.1f}%, mean KL {d['mean_kl']:.4f} "
                f"over {d['positions']} positions")
    return {"prompts": len(prober.reqs), "tokens": sum(len(a.tokens) for a in ref.values()),
            "seconds": round(time.monotonic() - t0, 1), "servers": prober.started}


def to_json(profile: str, inputs: Inputs, ref: P.Reference, rows: list[Row], meta: dict[str, Any],
            decode_ref: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run as ``quality --json`` writes it (``kind: quality``), without gates or history."""
    s = inputs.settings
    return {
        "kind": KIND,
        "profile": profile,
        "meta": {"profile": profile, "model": str(inputs.model), "text": inputs.text_name, "text_path": str(inputs.text),
                 "text_sha256": inputs.text_sha256, "ctx": s.ctx, "chunks": s.chunks, "batch": s.batch,
                 "scored_tokens": s.scored_tokens, "flash_attn": s.flash_attn, "threads": s.threads,
                 "reference_kv": inputs.reference_kv.label, **meta},
        "reference": {"cell": inputs.reference_kv.label, "kv": inputs.reference_kv.label,
                      "ppl": ref.base.ppl, "ppl_err": ref.base.ppl_err, "chunks": ref.base.chunks,
                      "logits": str(ref.path), "logits_bytes": ref.size_bytes, "cached": ref.cached,
                      "seconds": ref.seconds, "computed_s": ref.computed_s, "key": ref.key, "log": ref.log,
                      "decode": decode_ref},
        "cells": [r.to_dict() for r in rows],
    }
