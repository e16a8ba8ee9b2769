"""Reference answers from a cell's twin: the same build and model with drafting off, one slot, and the
cell's KV types (``nodraft``) or the reference KV type, f16 (``f16``).

A twin is a real llama-server started from the cell's profile with those changes (RPC dropped: the
layers stay local). Its greedy answers, with the top-N probabilities at every position, are what a
cell's answers are compared with: :mod:`llamactl.judge.answer_checks`. A twin is started at most once
per matrix run, for the requests still missing, and each answer is kept on disk
(``<cache>/answers/<key>.json``), keyed by the binary (its content-keyed build directory, size and
mtime), the twin's settings and the exact request body; a cell whose own settings are its twin's
registers its answers instead of starting one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import httpx
from pydantic import ValidationError

from llamactl.core import paths
from llamactl.core.errors import LlamactlError
from llamactl.core.files import write_atomic
from llamactl.judge.answers import N_PROBS, Answer, AnswerRequest, BadAnswer, parse_answer
from llamactl.serve import launcher
from llamactl.serve.profiles import Profile, Resolved
from llamactl.serve.server import ServerDied

log = logging.getLogger(__name__)

KINDS = ("nodraft", "f16")
# what does not change a greedy answer: where it listens, what llamactl expects, how long it waits
_NOT_ANSWERS = {"port", "host", "harness", "description", "matrix", "health_timeout", "alias", "metrics", "slots",
                "api_key", "log_verbosity", "extends", "no_warmup"}
_DRAFT_ONLY = {"draft_model", "kv_k_draft", "kv_v_draft", "draft_n", "draft_block_size", "n_gpu_layers_draft"}


class ReferenceFailed(LlamactlError):
    """The twin could not give its answers (did not start, crashed, answered badly)."""


def twin_profile(prof: Profile, kind: str, reference_kv: str = "f16") -> Profile:
    """``prof`` as its ``kind`` twin: MTP off, one slot, no RPC, and for ``f16`` the reference KV types.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown twin kind {kind!r}")
    data = prof.model_dump(exclude={"matrix"})
    data.update({"enable_mtp": False, "parallel": 1, "rpc": None, "kv_unified": None, "port": "auto"})
    if prof.rpc is not None:
        data["n_gpu_layers"] = None
    if kind == "f16":
        data["kv_k"] = data["kv_v"] = reference_kv
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:   # the cell validated; its twin only drops settings
        raise ReferenceFailed(f"cannot make the {kind} twin of this cell: {exc.errors()[0]['msg']}") from exc


def signature(prof: Profile) -> dict[str, Any]:
    """The settings of ``prof`` that can change a greedy answer (draft settings only with MTP on)."""
    d = prof.model_dump(mode="json", exclude={"matrix"})
    drop = _NOT_ANSWERS | (set() if prof.enable_mtp else _DRAFT_ONLY)
    out = {k: v for k, v in d.items() if k not in drop}
    if prof.parallel == 1:
        out.pop("kv_unified", None)   # one slot: unified or not is the same cache
    return out


def is_own_twin(prof: Profile, kind: str, reference_kv: str = "f16") -> bool:
    """True when ``prof`` is already its ``kind`` twin (its answers can stand for the twin's)."""
    try:
        return signature(prof) == signature(twin_profile(prof, kind, reference_kv))
    except ReferenceFailed:
        return False


def _binary_id(binary: launcher.Binary) -> str:
    try:
        st = binary.path.stat()
        return f"{binary.path}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return str(binary.path)


def body_digest(body: dict[str, Any]) -> str:
    """A request body's identity for the answer cache (the model name left out: twins share it)."""
    return hashlib.sha256(json.dumps({k: v for k, v in body.items() if k != "model"}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:20]


Ask = tuple[AnswerRequest, dict[str, Any]]     # a request and the exact body to send


class References:
    """Twin answers for the cells of one matrix run (one object per run, used by one check at a time).

    :meth:`answers` returns ``{request key: Answer}`` for request bodies sent to a twin: from memory,
    from the disk cache, or from a twin server started now for the bodies still missing.
    :meth:`register` records a cell's own answers as its twin's.
    """

    def __init__(self, binary: launcher.Binary, run_dir: Path, name: str = "reference",
                 on_start: Callable[[str], None] | None = None, use_disk: bool = True) -> None:
        self.binary, self.run_dir, self.name = binary, run_dir, name
        self.on_start = on_start
        self.use_disk = use_disk and not os.environ.get("LLAMACTL_NO_ANSWER_CACHE")
        self._memo: dict[str, Answer] = {}
        self.started: list[dict[str, Any]] = []     # twins started in this run: kind, log, argv, start_s

    def _key(self, twin: Profile, body: dict[str, Any]) -> str:
        material = {"binary": _binary_id(self.binary), "twin": signature(twin), "body": body_digest(body), "v": 2}
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def _disk(self, key: str) -> Path:
        return paths.cache_root() / "answers" / key[:2] / f"{key}.json"

    def register(self, prof: Profile, kind: str, reqs: list[AnswerRequest], answers: dict[str, Answer],
                 reference_kv: str = "f16") -> bool:
        """Keep a cell's own answers (asked with ``N_PROBS``, cache off) as its ``kind`` twin's; False
        when the cell is not its own twin."""
        if not is_own_twin(prof, kind, reference_kv):
            return False
        twin = twin_profile(prof, kind, reference_kv)
        for req in reqs:
            if req.key in answers:
                key = self._key(twin, req.body(n_probs=N_PROBS))
                if key not in self._memo:
                    self._memo[key] = answers[req.key]
                    self._save(key, answers[req.key])
        return True

    def get(self, prof: Profile, kind: str, reqs: list[AnswerRequest], reference_kv: str = "f16") -> dict[str, Answer]:
        """The ``kind`` twin's greedy answers to ``reqs`` with their top-``N_PROBS`` probabilities.

        Raises:
            ReferenceFailed: the twin did not start or did not answer.
        """
        return self.answers(prof, kind, [(r, r.body(n_probs=N_PROBS)) for r in reqs], reference_kv)

    def answers(self, prof: Profile, kind: str, asks: list[Ask], reference_kv: str = "f16") -> dict[str, Answer]:
        """The ``kind`` twin's answers to these exact bodies, keyed by request key.

        Raises:
            ReferenceFailed: the twin did not start or did not answer.
        """
        twin = twin_profile(prof, kind, reference_kv)
        out: dict[str, Answer] = {}
        missing: list[tuple[str, AnswerRequest, dict[str, Any]]] = []
        for req, body in asks:
            key = self._key(twin, body)
            found = self._memo.get(key) or self._load(key)
            if found is not None:
                self._memo[key] = out[req.key] = found
            else:
                missing.append((key, req, body))
        if missing:
            got = self._run_twin(twin, kind, missing)
            for key, req, _ in missing:
                self._memo[key] = out[req.key] = got[key]
                self._save(key, got[key])
        return out

    def _load(self, key: str) -> Answer | None:
        if not self.use_disk:
            return None
        try:
            return Answer.from_dict(json.loads(self._disk(key).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save(self, key: str, answer: Answer) -> None:
        if not self.use_disk:
            return
        try:
            path = self._disk(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(answer.to_dict()) + "\n")
        except OSError as exc:   # a cache that cannot be written costs a restart next time, nothing more
            log.warning("cannot keep reference answers: %s", exc)

    def _run_twin(self, twin: Profile, kind: str,
                  asks: list[tuple[str, AnswerRequest, dict[str, Any]]]) -> dict[str, Answer]:
        what = f"the {kind} twin (MTP off, 1 slot, KV {twin.kv_k or 'default'}/{twin.kv_v or 'default'})"
        if self.on_start:
            self.on_start(what)
        log_path = self.run_dir / f"reference-{kind}-{len(self.started) + 1}.log"
        try:
            plan = launcher.plan(Resolved(self.name, twin, {}, None), binary=self.binary)
        except LlamactlError as exc:
            raise ReferenceFailed(f"{what}: {exc}") from exc
        sp = launcher.start(plan, log_path)
        entry: dict[str, Any] = {"kind": kind, "log": str(log_path), "argv": plan.argv}
        self.started.append(entry)
        try:
            try:
                entry["start_s"] = round(sp.wait_healthy(twin.health_timeout), 3)
            except ServerDied as exc:
                raise ReferenceFailed(f"{what} died before /health: {exc.crash.summary()} (log {log_path})") from exc
            except LlamactlError as exc:
                raise ReferenceFailed(f"{what}: {exc} (log {log_path})") from exc
            out: dict[str, Answer] = {}
            with sp.client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
                for key, req, body in asks:
                    try:
                        r = client.post(f"{plan.base_url}{req.path}", json=body, timeout=twin.harness.request_timeout)
                        if r.status_code != 200:
                            raise BadAnswer(f"HTTP {r.status_code}: {r.text[:200]}")
                        out[key] = parse_answer(req, r.json())
                    except (BadAnswer, ValueError, httpx.HTTPError) as exc:
                        why = sp.crash().summary() if not sp.alive() else f"{type(exc).__name__}: {exc}"
                        raise ReferenceFailed(f"{what} did not answer {req.key}: {why} (log {log_path})") from exc
            return out
        finally:
            sp.stop()
