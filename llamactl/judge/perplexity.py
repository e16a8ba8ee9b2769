"""Running llama.cpp's ``llama-perplexity``: its binary, the cached reference logits, KL-divergence runs.

``llama-perplexity`` is built from the same source, patches, backend and CMake options as the profile's
llama-server (:class:`llamactl.build.builder.BuildRequest` with ``target="llama-perplexity"``: its own
content-keyed build directory, compiled in the same work directory, so after llama-server only the tool
itself is compiled and linked).

The reference run (``--kl-divergence-base FILE``) writes the reference KV type's log-probabilities of
every scored token: for Gemma 3 (a 262 144-token vocabulary) about 512 KiB per token, 2 GiB for 8 192
tokens of text at ``--ctx 512``. It is kept in ``<cache>/kld/<key>/base.kld`` with ``meta.json`` (its
PPL, size, time), keyed by the llama-perplexity build, the model, the text's sha256, ``ctx``, ``chunks``,
the batch size, flash attention and the reference KV types: a second ``quality`` run with the same
inputs computes only the candidates. Each candidate run reads it (``--kl-divergence``).

Every run is one child process (:func:`llamactl.core.proc.spawn`: its own session, dies with llamactl);
Ctrl-C or an error stops it, and an interrupted reference leaves no logits file behind (it is written as
``base.kld.part`` and renamed when the run succeeded).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamactl.build.builder import BuildRequest, build
from llamactl.core import locks, paths, proc
from llamactl.core.errors import BadInput, BuildFailed, LlamactlError
from llamactl.core.files import write_atomic
from llamactl.core.hashing import stable_key
from llamactl.core.progress import ProgressFn, report
from llamactl.judge.perplexity_output import BaseOutput, KldOutput, PerplexityOutputError, first_error, parse_base, \
    parse_kld, progress as output_progress
from llamactl.models import catalog
from llamactl.serve import launcher
from llamactl.serve.dialect import server_environment
from llamactl.serve.profiles import Profile

log = logging.getLogger(__name__)

TARGET = "llama-perplexity"
QUANTIZED_V_NEEDS_FA = "a quantized V cache needs flash attention"
KEY_VERSION = 1
UNQUANTIZED = {"f32", "f16", "bf16"}


@dataclass(frozen=True)
class KvPair:
    """K and V cache types, written ``K/V`` (``q8_0/q8_0``); a single type names both (``q8_0``)."""

    k: str
    v: str

    @property
    def label(self) -> str:
        return f"{self.k}/{self.v}"

    @property
    def quantized_v(self) -> bool:
        return self.v.lower() not in UNQUANTIZED

    @classmethod
    def parse(cls, text: str, what: str = "--kv") -> KvPair:
        """``K/V`` or ``T`` -> KvPair. Raises BadInput for an empty or malformed value."""
        parts = [p.strip() for p in text.strip().split("/")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(parts) or any(not p.replace("_", "").isalnum() for p in parts):
            raise BadInput(f"{what} {text!r}: expected K/V cache types, e.g. q8_0/q8_0 (or one type for both)")
        return cls(parts[0].lower(), parts[1].lower())


@dataclass
class PerplexityBinary:
    """A llama-perplexity program and what identifies it: the build key of a llamactl build, or for a
    program given by path, its path, size and mtime."""

    path: Path
    key: str
    manifest: dict[str, Any] | None = None


@dataclass(frozen=True)
class Settings:
    """How llama-perplexity runs: ``ctx`` tokens per chunk (the second half of each is scored), ``chunks``
    (at most), ``batch`` (llama-perplexity's ``-b``; None: its default, 2048, which evaluates
    ``batch // ctx`` chunks at once), threads, flash attention (on|off|auto), GPU layers."""

    ctx: int = 512
    chunks: int = 16
    batch: int | None = None
    threads: int | None = None
    flash_attn: str = "on"
    n_gpu_layers: int | str | None = None     # a number, or llama.cpp's words (auto, all)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def scored_tokens(self) -> int:
        """Tokens that enter the statistics: ``chunks * (ctx - 1 - ctx // 2)``."""
        return self.chunks * (self.ctx - 1 - self.ctx // 2)

    def check(self) -> None:
        """Raises BadInput for a context or chunk count llama-perplexity cannot use."""
        if self.ctx < 16:
            raise BadInput(f"--ctx {self.ctx}: llama-perplexity needs a context of at least 16 tokens")
        if self.chunks < 1:
            raise BadInput(f"--chunks {self.chunks}: at least 1")
        if self.scored_tokens < 100:
            raise BadInput(f"--ctx {self.ctx} --chunks {self.chunks} score {self.scored_tokens} tokens; llama-perplexity "
                           "prints KL statistics from 100 on", hint="raise --ctx or --chunks")
        if self.batch is not None and self.batch < self.ctx and self.ctx % self.batch:
            raise BadInput(f"--batch {self.batch}: must divide --ctx {self.ctx} or be a multiple of it")
        if self.batch is not None and self.batch > self.ctx and self.batch % self.ctx:
            raise BadInput(f"--batch {self.batch}: must be a multiple of --ctx {self.ctx} (or divide it)")


def settings_for(profile: Profile, ctx: int, chunks: int, batch: int | None = None) -> Settings:
    """Settings from the profile's threads, flash attention, GPU layers and ``env:``."""
    return Settings(ctx, chunks, batch, profile.threads, str(profile.flash_attn or "on"), profile.n_gpu_layers,
                    dict(profile.env or {}))


def build_request(profile: Profile, jobs: int | None = None) -> BuildRequest:
    """The profile's llama-server build request with ``target="llama-perplexity"``."""
    req = launcher.build_request(profile)
    req.target = TARGET
    req.jobs = jobs or os.cpu_count() or 2
    return req


def ensure_binary(profile: Profile, progress: ProgressFn | None = None, jobs: int | None = None) -> PerplexityBinary:
    """llama-perplexity from the profile's source, series, backend and CMake options (built, or cached).

    Raises:
        BuildFailed: the tree has no llama-perplexity target, or the build failed (first error line).
    """
    req = build_request(profile, jobs)
    try:
        res = build(req, progress)
    except LlamactlError as exc:
        if "unknown target" in str(exc) and TARGET in str(exc):
            raise BuildFailed(f"this source has no {TARGET} target (tools/perplexity): {exc.message}",
                              hint="a llama.cpp tree from 2023 on has it") from exc
        raise
    path = res.binary
    if not path.is_file():
        raise BuildFailed(f"the build of {TARGET} finished but {path} is missing", hint=f"see {res.build_root / 'build.log'}")
    return PerplexityBinary(path, str(res.manifest.get("key")), res.manifest)


def binary_at(path: Path) -> PerplexityBinary:
    """A llama-perplexity given by path (or a directory holding one).

    Raises:
        BadInput: no such file, not executable, or a directory without llama-perplexity.
    """
    path = path.expanduser()
    if path.is_dir():
        path = path / TARGET
    if not path.is_file():
        raise BadInput(f"{TARGET} {path} does not exist")
    if not os.access(path, os.X_OK):
        raise BadInput(f"{TARGET} {path} is not executable", hint=f"chmod +x {path}")
    st = path.stat()
    return PerplexityBinary(path.resolve(), f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}", None)


def model_identity(ref: str, path: Path) -> str:
    """What names a model's content cheaply: a catalogue model's pinned sha256, else path, size and mtime."""
    spec = catalog.CATALOG.get(ref)
    if spec is not None:
        return f"sha256:{spec.sha256}"
    st = path.stat()
    return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def argv(binary: PerplexityBinary, model: Path, text: Path, s: Settings, kv: KvPair, base: Path,
         kl_divergence: bool) -> list[str]:
    """The exact llama-perplexity command line (a reference run without ``kl_divergence``)."""
    out = [str(binary.path), "-m", str(model), "-f", str(text), "-c", str(s.ctx), "--chunks", str(s.chunks),
           "-ctk", kv.k, "-ctv", kv.v, "-fa", s.flash_attn]
    if s.batch is not None:
        out += ["-b", str(s.batch)]
    if s.threads:
        out += ["-t", str(s.threads)]
    if s.n_gpu_layers is not None:
        out += ["-ngl", str(s.n_gpu_layers)]
    if kl_divergence:
        out.append("--kl-divergence")
    return [*out, "--kl-divergence-base", str(base)]


def check_kv(kv: KvPair, s: Settings) -> None:
    """Raises BadInput for a quantized V cache without flash attention (llama.cpp refuses it)."""
    if kv.quantized_v and s.flash_attn == "off":
        raise BadInput(f"KV {kv.label}: {QUANTIZED_V_NEEDS_FA}, and the profile sets flash_attn: off",
                       hint="--set flash_attn=on")


def run(cmd: list[str], s: Settings, log_path: Path, what: str, progress: ProgressFn | None = None) -> str:
    """Run one llama-perplexity command; return its output (stdout and stderr as one stream).

    ``progress`` hears ``what`` in chunks done (items). The output is also written to ``log_path``.
    Ctrl-C (KeyboardInterrupt) or any error stops the process and re-raises.

    Raises:
        LlamactlError: the program exited non-zero or was killed (with the first error line it printed).
    """
    env, _dropped = server_environment(dict(os.environ), s.env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        p = proc.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    except (FileNotFoundError, PermissionError) as exc:
        raise LlamactlError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from exc
    chunks: list[bytes] = []
    report(progress, what, 0, None, "items")
    done = -1
    try:
        assert p.stdout is not None
        fd = p.stdout.fileno()
        with open(log_path, "wb") as logf:
            logf.write(("$ " + " ".join(cmd) + "\n").encode())
            seen = ""          # the output so far (a few kB to a few hundred kB)
            while True:
                block = os.read(fd, 65536)
                if not block:
                    break
                chunks.append(block)
                logf.write(block)
                logf.flush()
                seen += block.decode("utf-8", "replace")
                d, total = output_progress(seen)
                if d != done:
                    done = d
                    report(progress, what, d, total, "items")
        rc = p.wait()
    except BaseException:
        proc.terminate(p, grace=5)
        raise
    finally:
        report(progress, what, max(done, 0), None, "items", finished=True)
    text = b"".join(chunks).decode("utf-8", "replace")
    if rc != 0:
        why = first_error(text) or (text.strip().splitlines() or ["(no output)"])[-1]
        sig = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
        raise LlamactlError(f"{Path(cmd[0]).name} failed ({sig}): {why}", hint=f"log: {log_path}")
    return text


# --- the reference logits ---------------------------------------------------------------------


@dataclass
class Reference:
    """The reference run: its logits file (cached), size in bytes, PPL, and whether it was computed now."""

    kv: KvPair
    path: Path
    key: str
    size_bytes: int
    base: BaseOutput
    cached: bool
    seconds: float          # this run's wall time (0 when cached); ``computed_s`` is the original run's
    computed_s: float
    log: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(kv=self.kv.label, path=str(self.path), base=self.base.to_dict())
        return d


def logits_root() -> Path:
    """``<cache>/kld``: one directory per reference key."""
    return paths.cache_root() / "kld"


def reference_key(binary: PerplexityBinary, model_id: str, text_sha256: str, s: Settings, kv: KvPair) -> str:
    """The cache key of reference logits: build, model, text, ctx, chunks, batch, flash attention, KV."""
    return stable_key({"v": KEY_VERSION, "binary": binary.key, "model": model_id, "text": text_sha256, "ctx": s.ctx,
                       "chunks": s.chunks, "batch": s.batch, "fa": s.flash_attn, "kv": kv.label,
                       "ngl": s.n_gpu_layers}, 24)


def reference(binary: PerplexityBinary, model: Path, model_id: str, text: Path, text_sha256: str, s: Settings,
              kv: KvPair, run_dir: Path, progress: ProgressFn | None = None) -> Reference:
    """The reference logits for these inputs: from the cache, else computed now (one llamactl at a time
    per key: a second waits for the first, then finds them cached).

    Raises:
        BadInput: a quantized V type without flash attention.
        LlamactlError / PerplexityOutputError: the run failed, or its output lacks a line (named).
    """
    check_kv(kv, s)
    key = reference_key(binary, model_id, text_sha256, s, kv)
    d = logits_root() / key
    found = _load_reference(d, key, kv)
    if found is not None:
        return found
    with locks.hold(d, f"the reference logits {key}"):
        found = _load_reference(d, key, kv)
        if found is not None:
            return found
        d.mkdir(parents=True, exist_ok=True)
        part = d / "base.kld.part"
        part.unlink(missing_ok=True)
        log_path = run_dir / f"perplexity-reference-{kv.label.replace('/', '-')}.log"
        t0 = time.monotonic()
        try:
            out = run(argv(binary, model, text, s, kv, part, kl_divergence=False), s, log_path,
                      f"llama-perplexity reference {kv.label}", progress)
            base = parse_base(out)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        seconds = round(time.monotonic() - t0, 1)
        if not part.is_file() or part.stat().st_size == 0:
            raise LlamactlError(f"llama-perplexity wrote no logits to {part}", hint=f"log: {log_path}")
        final = d / "base.kld"
        part.replace(final)
        size = final.stat().st_size
        meta = {"key": key, "kv": kv.label, "base": base.to_dict(), "size_bytes": size,
                "computed_s": seconds, "binary": str(binary.path), "binary_key": binary.key, "model": model_id,
                "text_sha256": text_sha256, "settings": {"ctx": s.ctx, "chunks": s.chunks, "batch": s.batch,
                                                          "flash_attn": s.flash_attn},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_atomic(d / "meta.json", json.dumps(meta, indent=2) + "\n")
        return Reference(kv, final, key, size, base, False, seconds, seconds, str(log_path))


def _load_reference(d: Path, key: str, kv: KvPair) -> Reference | None:
    f, m = d / "base.kld", d / "meta.json"
    try:
        meta = json.loads(m.read_text())
        size = f.stat().st_size
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("size_bytes") != size:
        return None
    try:
        os.utime(d)   # last use, for `cache list`
    except OSError:
        pass
    b = meta.get("base") or {}
    try:
        base = BaseOutput(float(b["ppl"]), float(b["ppl_err"]), int(b["chunks"]), int(b["n_ctx"]))
    except (KeyError, TypeError, ValueError):
        return None
    return Reference(kv, f, key, int(size), base, True, 0.0, float(meta.get("computed_s") or 0.0))


# --- a candidate ------------------------------------------------------------------------------


@dataclass
class KldRun:
    """One candidate's run against the reference: parsed statistics, wall time (s), log file."""

    kv: KvPair
    out: KldOutput
    seconds: float
    log: str


def kl_divergence(binary: PerplexityBinary, model: Path, text: Path, s: Settings, kv: KvPair, ref: Reference,
                  run_dir: Path, label: str, progress: ProgressFn | None = None) -> KldRun:
    """Run ``kv`` against the reference logits and parse the statistics.

    Raises:
        BadInput: a quantized V type without flash attention.
        LlamactlError / PerplexityOutputError: the run failed, or its output lacks a line (named).
    """
    check_kv(kv, s)
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in label)
    log_path = run_dir / f"perplexity-{safe}.log"
    t0 = time.monotonic()
    out = run(argv(binary, model, text, s, kv, ref.path, kl_divergence=True), s, log_path,
              f"llama-perplexity {label}", progress)
    try:
        parsed = parse_kld(out)
    except PerplexityOutputError as exc:
        raise PerplexityOutputError(f"{label}: {exc.message}", hint=f"log: {log_path}") from exc
    if parsed.chunks != ref.base.chunks:
        raise LlamactlError(f"{label}: ran {parsed.chunks} chunks, the reference {ref.base.chunks}", hint=f"log: {log_path}")
    return KldRun(kv, parsed, round(time.monotonic() - t0, 1), str(log_path))
