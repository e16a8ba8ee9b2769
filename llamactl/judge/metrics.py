"""Parse llama-server /metrics (Prometheus text) and read the speculative-decoding counters.

Two naming schemes exist: the AtomicBot fork's (and our series')
``llamacpp:speculative_*_total{spec_type="..."}`` and upstream's unlabelled
``llamacpp:spec_decode_num_*_total``. Both map onto :class:`SpecCounters`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    import httpx

LABELLED = {
    "llamacpp:speculative_drafts_generated_total": "drafts",
    "llamacpp:speculative_drafts_accepted_total": "drafts_accepted",
    "llamacpp:speculative_draft_tokens_generated_total": "draft_tokens",
    "llamacpp:speculative_draft_tokens_accepted_total": "accepted_tokens",
}
UPSTREAM = {
    "llamacpp:spec_decode_num_drafts_total": "drafts",
    "llamacpp:spec_decode_num_draft_tokens_total": "draft_tokens",
    "llamacpp:spec_decode_num_accepted_tokens_total": "accepted_tokens",
}
PER_POS = "llamacpp:spec_decode_num_accepted_tokens_per_pos_total"


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append(Sample(s.name, dict(s.labels), float(s.value)))
    return out


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


@dataclass
class SpecCounters:
    scheme: str | None = None                  # "labelled", "upstream" or None (no counters)
    spec_type: str | None = None
    drafts: float | None = None
    drafts_accepted: float | None = None
    draft_tokens: float | None = None
    accepted_tokens: float | None = None
    accepted_per_pos: dict[str, float] = field(default_factory=dict)

    @property
    def present(self) -> bool:
        return self.scheme is not None

    @property
    def acceptance(self) -> float | None:
        if self.draft_tokens and self.accepted_tokens is not None:
            return self.accepted_tokens / self.draft_tokens
        return None

    def minus(self, before: "SpecCounters") -> "SpecCounters":
        def d(a: float | None, b: float | None) -> float | None:
            return None if a is None else a - (b or 0.0)
        return SpecCounters(
            self.scheme, self.spec_type, d(self.drafts, before.drafts), d(self.drafts_accepted, before.drafts_accepted),
            d(self.draft_tokens, before.draft_tokens), d(self.accepted_tokens, before.accepted_tokens),
            {k: v - before.accepted_per_pos.get(k, 0.0) for k, v in self.accepted_per_pos.items()},
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["acceptance"] = self.acceptance
        return d


def spec_counters(samples: list[Sample]) -> SpecCounters:
    """Prefer the labelled scheme; sum over spec_type labels if several are present."""
    labelled = [s for s in samples if s.name in LABELLED]
    if labelled:
        c = SpecCounters(scheme="labelled")
        types = sorted({s.labels.get("spec_type", "") for s in labelled})
        c.spec_type = ",".join(t for t in types if t) or None
        for s in labelled:
            attr = LABELLED[s.name]
            setattr(c, attr, (getattr(c, attr) or 0.0) + s.value)
        c.accepted_per_pos = {s.labels.get("position", "?"): s.value for s in samples if s.name == PER_POS}
        return c
    up = [s for s in samples if s.name in UPSTREAM]
    if up:
        c = SpecCounters(scheme="upstream")
        for s in up:
            setattr(c, UPSTREAM[s.name], s.value)
        c.accepted_per_pos = {s.labels.get("position", "?"): s.value for s in samples if s.name == PER_POS}
        return c
    return SpecCounters()



def fetch_spec(client: "httpx.Client", url: str) -> SpecCounters:
    """The speculative counters from ``GET url/metrics`` (bench, load: deltas around samples); empty
    counters when /metrics is off, not 200, or unreachable."""
    import httpx

    try:
        r = client.get(f"{url}/metrics", timeout=10)
        return spec_counters(parse(r.text)) if r.status_code == 200 else SpecCounters()
    except httpx.HTTPError:
        return SpecCounters()
