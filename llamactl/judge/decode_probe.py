"""The decode-path figures of ``llamactl quality``: top-1 agreement and mean KL through single-token decode.

llama-perplexity evaluates whole batches, so it never reaches the kernels that write one token at a time
into the KV cache (turboquant_plus #99: a quantized-V write that loses half of each row only on the
single-token path). This probe does what validate's ``kv_quality`` check does, against a llama-server:
the reference KV's greedy continuation of a few prompts (:func:`llamactl.judge.answers.short_request`)
is forced on a server with the candidate's KV types by a grammar of its text
(:func:`~llamactl.judge.answers.probe_body`), while ``n_probs`` reads the candidate's own top-N at each
forced token; :func:`~llamactl.judge.answers.probe_result` and :class:`~llamactl.judge.answers.Quality`
turn that into top-1 agreement and KL (nats, over the reference's top-N plus the rest).

The servers are twins (:class:`llamactl.judge.references.References`: MTP off, one slot, the profile's
build, model and flags, the KV types of the row); answers are cached on disk by binary, settings and
request body, so a second run with the same inputs starts no server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llamactl.judge import answers as A
from llamactl.judge.perplexity import KvPair
from llamactl.judge.references import References
from llamactl.serve import launcher
from llamactl.serve.profiles import Profile

PROMPTS = len(A.SUBJECTS)        # 8 short prompts, 24 forced tokens each
SALT = "quality"


def requests(n: int = PROMPTS) -> list[A.AnswerRequest]:
    """The probe's prompts: ``n`` short factual sentences (1..8), nonce-tagged."""
    return [A.short_request(i, SALT) for i in range(max(1, min(n, PROMPTS)))]


def with_kv(profile: Profile, kv: KvPair) -> Profile:
    """``profile`` with these K/V cache types (everything else as it is)."""
    return profile.model_copy(update={"kv_k": kv.k, "kv_v": kv.v})


@dataclass
class Prober:
    """Decode probes for one run: the reference answers once (per reference binary), then one probe per row.

    ``on_start`` hears a line each time a twin server starts (``the nodraft twin (...)``).
    """

    run_dir: Path
    profile_name: str
    n_prompts: int = PROMPTS
    on_start: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._refs: dict[str, References] = {}
        self.reqs = requests(self.n_prompts)

    def _references(self, binary: launcher.Binary) -> References:
        key = str(binary.path)
        if key not in self._refs:
            self._refs[key] = References(binary, self.run_dir, self.profile_name, on_start=self.on_start)
        return self._refs[key]

    def reference(self, profile: Profile, binary: launcher.Binary, kv: KvPair) -> dict[str, A.Answer]:
        """The reference KV's greedy answers with their top-N probabilities.

        Raises:
            ReferenceFailed: its server did not start or did not answer.
        """
        prof = with_kv(profile, kv)
        return self._references(binary).get(prof, "nodraft", self.reqs, kv.k)

    def probe(self, profile: Profile, binary: launcher.Binary, kv: KvPair,
              ref: dict[str, A.Answer]) -> dict[str, Any]:
        """Force ``ref`` on a server with ``kv``; the :meth:`Quality.summary` of what it said.

        Raises:
            ReferenceFailed: its server did not start or did not answer.
        """
        prof = with_kv(profile, kv)
        asks = [(r, A.probe_body(r, ref[r.key])) for r in self.reqs]
        cand = self._references(binary).answers(prof, "nodraft", asks, kv.k)
        q = A.Quality([A.probe_result(ref[r.key], cand[r.key]) for r in self.reqs])
        return q.summary(profile.harness.tie_margin)

    @property
    def started(self) -> list[dict[str, Any]]:
        """Every twin server started in this run (kind, log, argv, start_s)."""
        return [s for r in self._refs.values() for s in r.started]
