"""Deterministic writer of tiny random-weight Gemma 4 GGUF pairs (target + MTP drafter).

The pair is meant for exercising llama-server's Gemma 4 multi-token-prediction (MTP)
code paths without real weights: a ``gemma4`` target and its "assistant" drafter, both
with the same small SentencePiece ("llama") vocabulary and a Gemma-style chat template.

How the weights are built
-------------------------
The target is a real Gemma 4 graph (sliding-window + full attention layers, GELU FFN,
all the norms) with random weights, but its post-attention and post-FFN norm weights
are small, so the residual stream is dominated by the token embedding. Its output head
is untied (``output.weight``) and is built so that greedy decoding follows a fixed
cycle over ``K`` word tokens ``P``:

* embeddings of the cycle tokens are orthonormal directions ``u[k]`` of a subspace
  ``U``; all other tokens (bytes, specials, other words) live in its orthogonal
  complement, each one sharing one of a few seeded "group" directions;
* the output row of ``p[k+1]`` reads ``u[k]``, so input ``p[k]`` always yields
  ``p[k+1]`` (logit 30, every other logit 0); a group's entry point on the cycle reads
  the group direction, so any other input token yields a fixed cycle token (logit 24,
  others 0); every non-cycle output row (``<eos>``, ``<end_of_turn>``, ...) is zero, so
  an end-of-generation token is never the argmax and the target decodes as many tokens
  as asked for. Chat prompts end in "\\n", so chat replies are a run of the cycle
  (" under near far here there today always never the a an ..." for seed 0).

The MTP drafter receives ``(target embedding of token x[p+1], target hidden h[p])``
and predicts ``x[p+2]``. Drafter kinds:

* ``echo``: its pre-projection maps ``u[k]`` to the drafter code of ``p[k+1]`` and
  its (tied) LM head reads those codes, so it predicts exactly what the target will
  generate (acceptance ~100%);
* ``noisy``: as echo, but a seeded subset (``noise`` fraction) of the cycle positions
  map to a wrong cycle token (partial acceptance; measured on upstream llama-server
  with ``noise=0.35``: 0.44 with the default 3 draft tokens, 0.22 with 8);
* ``random``: all weights random (acceptance ~0%).

Two on-disk drafter layouts: ``upstream`` (llama.cpp, arch ``gemma4-assistant``,
``nextn.*`` projections, ``embedding_length_out`` + ``nextn_predict_layers``) and
``atomic`` (the AtomicBot turboquant fork at 0a635dcd9, arch ``gemma4_assistant``,
``mtp.*`` projections, ``n_embd_backbone`` and friends). The target file is the same
for both layouts and for all drafter kinds.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from typing import TYPE_CHECKING

from llamactl.core.files import atomic_path

if TYPE_CHECKING:
    import numpy as np

    import gguf
else:
    class _OnFirstUse:
        """A module imported on first attribute access: naming a cached tiny model needs neither numpy nor gguf."""

        def __init__(self, name: str) -> None:
            self._name = name

        def __getattr__(self, attr: str):
            import importlib

            return getattr(importlib.import_module(self._name), attr)

    np = _OnFirstUse("numpy")
    gguf = _OnFirstUse("gguf")

__all__ = [
    "ACCEPTANCE_BANDS",
    "CHAT_TEMPLATE",
    "DrafterKind",
    "Layout",
    "TinyPair",
    "TinySpec",
    "build_vocab",
    "cycle_tokens",
    "cycle_words",
    "write_pair",
]

Layout = Literal["upstream", "atomic"]
DrafterKind = Literal["random", "echo", "noisy"]

LAYOUTS: tuple[str, ...] = ("upstream", "atomic")
DRAFTER_KINDS: tuple[str, ...] = ("random", "echo", "noisy")

#: Draft acceptance (accepted / drafted tokens) expected from each drafter kind, with
#: greedy-ish sampling and the default draft length of llama.cpp (3). Bands are loose on
#: purpose: the noisy figure depends on the draft length.
ACCEPTANCE_BANDS: dict[str, tuple[float, float]] = {
    "echo": (0.9, 1.0),
    "noisy": (0.15, 0.75),
    "random": (0.0, 0.1),
}

TARGET_ARCH = "gemma4"
DRAFTER_ARCH: dict[str, str] = {"upstream": "gemma4-assistant", "atomic": "gemma4_assistant"}

# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SOT_TOKEN, EOT_TOKEN = "<start_of_turn>", "<end_of_turn>"
SOT_ID, EOT_ID = 4, 5
BYTE0_ID = 6  # <0x00> .. <0xFF> follow
WORD0_ID = BYTE0_ID + 256

_WORDS = (
    "the a an and or but so then cat dog bird fish tree river stone cloud rain sun moon star "
    "light dark red blue green small big old new quick slow happy quiet loud warm cold soft "
    "hard bright sees finds likes makes takes gives keeps walks runs sings reads writes "
    "draws builds opens closes over under near far here there today always never again "
    "very still just ok yes no hello world model token draft time sky"
).split()
WORDS: tuple[str, ...] = tuple("\u2581" + w for w in _WORDS)  # SPM word-start marker
assert len(WORDS) == len(set(WORDS)) == 78

CHAT_TEMPLATE = (
    # Gemma-style turns; a system message becomes its own "system" turn. Newlines are
    # jinja string literals so that no whitespace control can eat them.
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the shared 340-token SPM vocabulary."""
    T = gguf.TokenType
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", SOT_TOKEN, EOT_TOKEN]
    types = [T.CONTROL, T.CONTROL, T.CONTROL, T.UNKNOWN, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    tokens += list(WORDS)
    types += [T.NORMAL] * len(WORDS)
    scores = [0.0] * WORD0_ID + [-float(i + 1) for i in range(len(WORDS))]
    return tokens, scores, [int(t) for t in types]


N_VOCAB = WORD0_ID + len(WORDS)
# token ids that must never be produced: specials (EOG included)
_NEVER_EMIT = (PAD_ID, EOS_ID, BOS_ID, UNK_ID, SOT_ID, EOT_ID)

# --------------------------------------------------------------------------------------
# spec
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinySpec:
    """All sizes of a tiny pair. Defaults are the standard tiny pair (2.0 MB + 0.64 MB).

    ``scale`` multiplies the target's widths (``n_embd``, ``n_ff``, ``n_head``) so that
    the same code writes benchmark-sized targets, e.g. ``TinySpec(scale=4, n_layer=8)``
    (n_embd 512, 49.6 MB F16; drafter 0.8 MB) where the target's decode dominates.
    Head dims are 128 on sliding-window layers and 256 on full-attention layers (what the
    fork's turbo4 KV cache needs); the drafter uses the same head dims because it attends
    to the target's KV cache.
    """

    layout: Layout = "upstream"
    drafter: DrafterKind = "echo"
    seed: int = 0
    # target
    n_embd: int = 128
    n_layer: int = 4  # pattern must end [..., swa, full]
    n_head: int = 2
    n_head_kv: int = 1  # GQA; not scaled
    head_dim_swa: int = 128
    head_dim_full: int = 256
    n_ff: int = 256
    swa_period: int = 4  # layer i is full attention iff i % swa_period == swa_period - 1
    sliding_window: int = 256
    n_ctx_train: int = 8192
    n_embd_per_layer: int = 0  # Gemma 4 per-layer embeddings (0 = none)
    shared_kv_layers: int = 0  # last N layers reuse earlier layers' KV
    scale: int = 1
    # drafter (MTP assistant)
    draft_n_embd: int = 64
    draft_n_layer: int = 4
    draft_n_head: int = 2
    draft_n_ff: int = 128
    noise: float = 0.35  # fraction of cycle positions the noisy drafter gets wrong
    # atomic layout only: centroid-routed LM head ("ordered embeddings" of the Gemma 4
    # edge assistants): number of centroids (must divide the vocabulary size, 340) and
    # how many of them the head keeps; 0 = dense LM head
    centroids: int = 0
    centroid_top_k: int = 4
    # storage type of 2-D weight matrices (norms and scales are always F32)
    dtype: Literal["f16", "f32"] = "f16"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.drafter not in DRAFTER_KINDS:
            raise ValueError(f"drafter must be one of {DRAFTER_KINDS}, got {self.drafter!r}")
        if self.dtype not in ("f16", "f32"):
            raise ValueError(f"dtype must be f16 or f32, got {self.dtype!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("layout", "drafter", "dtype", "noise", "seed"):
                continue
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{f.name} must be an int, got {v!r}")
            if f.name in ("n_embd_per_layer", "shared_kv_layers", "centroids"):
                if v < 0:
                    raise ValueError(f"{f.name} must be >= 0")
            elif v <= 0:
                raise ValueError(f"{f.name} must be > 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError("seed must be a non-negative int")
        if not 0.0 <= float(self.noise) <= 1.0:
            raise ValueError("noise must be within [0, 1]")
        if self.t_n_embd % 2 or self.t_n_embd < 16:
            raise ValueError("n_embd * scale must be even and >= 16")
        if self.t_n_head % self.n_head_kv or self.draft_n_head % self.n_head_kv:
            raise ValueError("n_head * scale and draft_n_head must be multiples of n_head_kv")
        if self.head_dim_swa % 2 or self.head_dim_full % 2:
            raise ValueError("head dims must be even (RoPE)")
        if self.draft_n_embd == self.t_n_embd:
            raise ValueError("draft_n_embd must differ from the target's n_embd (upstream loader check)")
        if self.draft_n_embd >= N_VOCAB:
            raise ValueError("draft_n_embd must be smaller than the vocabulary")
        pat = self.swa_pattern
        if self.n_layer < 2 or pat[-2:] != (True, False):
            raise ValueError("target layer pattern must end [..., swa, full]; "
                             f"got {pat} (n_layer={self.n_layer}, swa_period={self.swa_period})")
        n_kv = self.n_layer - self.shared_kv_layers
        if self.shared_kv_layers and (n_kv < 2 or pat[n_kv - 2:n_kv] != (True, False)):
            raise ValueError("with shared_kv_layers the last KV layers must be [swa, full]")
        if self.centroids:
            if self.layout != "atomic":
                raise ValueError("centroids (ordered embeddings) exist only in the atomic layout")
            if N_VOCAB % self.centroids or not 1 <= self.centroid_top_k <= self.centroids:
                raise ValueError(f"centroids must divide {N_VOCAB} and 1 <= centroid_top_k <= centroids")
        dpat = self.draft_swa_pattern
        if not (any(dpat) and not all(dpat)):
            raise ValueError("drafter needs at least one swa and one full layer")

    # ---- derived sizes -------------------------------------------------------------
    @property
    def t_n_embd(self) -> int:
        return self.n_embd * self.scale

    @property
    def t_n_ff(self) -> int:
        return self.n_ff * self.scale

    @property
    def t_n_head(self) -> int:
        return self.n_head * self.scale

    @property
    def swa_pattern(self) -> tuple[bool, ...]:
        p = self.swa_period
        return tuple(i % p != p - 1 for i in range(self.n_layer))

    @property
    def draft_swa_pattern(self) -> tuple[bool, ...]:
        n = self.draft_n_layer
        return tuple(i != n - 1 for i in range(n)) if n > 1 else (False,)

    @property
    def n_cycle(self) -> int:
        """Number of word tokens on the target's greedy cycle."""
        return min(len(WORDS), self.t_n_embd // 2, self.draft_n_embd)

    @property
    def n_vocab(self) -> int:
        return N_VOCAB

    # ---- naming --------------------------------------------------------------------
    def _digest(self, names: tuple[str, ...]) -> str:
        default = TinySpec()
        diff = [(n, getattr(self, n)) for n in names if getattr(self, n) != getattr(default, n)]
        if not diff:
            return ""
        return "-" + hashlib.sha256(repr(sorted(diff)).encode()).hexdigest()[:8]

    _HEADLINE = ("layout", "drafter", "seed", "n_embd", "scale", "n_layer")
    _DRAFT_ONLY = ("layout", "drafter", "draft_n_embd", "draft_n_layer", "draft_n_head",
                   "draft_n_ff", "noise", "centroids", "centroid_top_k")

    def key(self) -> str:
        """Short stable string usable in a file name, e.g. ``upstream-echo-s0-e128-l4``."""
        others = tuple(f.name for f in fields(self) if f.name not in self._HEADLINE)
        return (f"{self.layout}-{self.drafter}-s{self.seed}-e{self.t_n_embd}-l{self.n_layer}"
                + self._digest(others))

    def target_key(self) -> str:
        """Key of the target file alone (independent of layout and drafter settings)."""
        others = tuple(f.name for f in fields(self)
                       if f.name not in self._HEADLINE and f.name not in self._DRAFT_ONLY)
        return f"s{self.seed}-e{self.t_n_embd}-l{self.n_layer}" + self._digest(others)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TinyPair:
    target: Path
    drafter: Path


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------


def _orthonormal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random n x n orthogonal matrix (columns orthonormal)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass(frozen=True)
class _TargetDesign:
    cycle: np.ndarray  # token ids p[0..K-1]; target maps p[k] -> p[(k+1) % K]
    u: np.ndarray  # [K, n_embd] orthonormal rows: direction of p[k]'s embedding
    tok_embd: np.ndarray  # [n_vocab, n_embd]
    output: np.ndarray  # [n_vocab, n_embd]


_LOGIT = 30.0  # logit of the intended next token (all other cycle tokens: ~0)


_N_START_GROUPS = 8  # non-cycle input tokens fall into groups, each entering the cycle at its own point


def _target_design(spec: TinySpec, rng: np.random.Generator) -> _TargetDesign:
    n, K, V = spec.t_n_embd, spec.n_cycle, N_VOCAB
    G = min(_N_START_GROUPS, K, (n - K) // 2)
    q = _orthonormal(rng, n)
    u = q[:, :K].T.copy()  # [K, n] directions of the cycle tokens
    z = q[:, K:K + G].T  # [G, n] group directions of the other tokens
    rbasis = q[:, K + G:]  # the rest: token-specific random directions
    cycle = np.arange(WORD0_ID, WORD0_ID + K)
    group = rng.integers(0, G, size=V)
    # every embedding has norm sqrt(n) (elements of unit rms), like a normalised random init
    emb = 0.8 * z[group] + 0.6 * (_unit_rows(rng.standard_normal((V, rbasis.shape[1]))) @ rbasis.T)
    emb[cycle] = u
    tok_embd = emb * np.sqrt(n)
    # after the final RMS norm the hidden state is ~ tok_embd[t] (norm sqrt(n)):
    # input p[k] -> logit _LOGIT for p[k+1], exactly 0 for every other token;
    # other input of group g -> logit 0.8 * _LOGIT for the cycle token starting group g, 0 elsewhere
    alpha = _LOGIT / np.sqrt(n)
    out = np.zeros((V, n))
    nxt = np.roll(cycle, -1)  # nxt[k] = p[k+1]
    out[nxt] = alpha * u
    starts = cycle[(np.arange(G) * K) // G]
    out[starts] += alpha * z
    assert not out[list(_NEVER_EMIT)].any()
    return _TargetDesign(cycle=cycle, u=u, tok_embd=tok_embd, output=out)


def _norm_w(rng: np.random.Generator, n: int, center: float, spread: float = 0.1) -> np.ndarray:
    return (center * (1.0 + spread * rng.standard_normal(n))).astype(np.float32)


def _mat(rng: np.random.Generator, n_out: int, n_in: int) -> np.ndarray:
    return rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)


_POST_NORM = 0.02  # weight of the post-attention / post-FFN norms (keeps the residual ~ embedding)


def _target_tensors(spec: TinySpec) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng([spec.seed, 0x7A26])
    d = _target_design(spec, rng)
    n, H, Hkv = spec.t_n_embd, spec.t_n_head, spec.n_head_kv
    t: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", d.tok_embd),
        ("output.weight", d.output),
        ("output_norm.weight", np.ones(n, dtype=np.float32)),
        ("rope_freqs.weight", np.ones(spec.head_dim_full // 2, dtype=np.float32)),
    ]
    L, ple = spec.n_layer, spec.n_embd_per_layer
    if ple:
        t += [
            ("per_layer_token_embd.weight", rng.standard_normal((N_VOCAB, ple * L)) * 0.5),
            ("per_layer_model_proj.weight", _mat(rng, ple * L, n)),
            ("per_layer_proj_norm.weight", _norm_w(rng, ple, 1.0)),
        ]
    n_kv_layers = L - spec.shared_kv_layers
    for i, swa in enumerate(spec.swa_pattern):
        hd = spec.head_dim_swa if swa else spec.head_dim_full
        b = f"blk.{i}."
        t += [
            (b + "attn_norm.weight", _norm_w(rng, n, 1.0)),
            (b + "attn_q.weight", _mat(rng, H * hd, n)),
        ]
        if i < n_kv_layers:
            t += [
                (b + "attn_k.weight", _mat(rng, Hkv * hd, n)),
                (b + "attn_v.weight", _mat(rng, Hkv * hd, n)),
                (b + "attn_k_norm.weight", _norm_w(rng, hd, 1.0)),
            ]
        t += [
            (b + "attn_q_norm.weight", _norm_w(rng, hd, 1.0)),
            (b + "attn_output.weight", _mat(rng, n, H * hd)),
            (b + "post_attention_norm.weight", _norm_w(rng, n, _POST_NORM)),
            (b + "layer_output_scale.weight", np.ones(1, dtype=np.float32)),
            (b + "ffn_norm.weight", _norm_w(rng, n, 1.0)),
            (b + "ffn_gate.weight", _mat(rng, spec.t_n_ff, n)),
            (b + "ffn_up.weight", _mat(rng, spec.t_n_ff, n)),
            (b + "ffn_down.weight", _mat(rng, n, spec.t_n_ff)),
            (b + "post_ffw_norm.weight", _norm_w(rng, n, _POST_NORM)),
        ]
        if ple:
            t += [
                (b + "inp_gate.weight", _mat(rng, ple, n)),
                (b + "proj.weight", _mat(rng, n, ple)),
                (b + "post_norm.weight", _norm_w(rng, n, _POST_NORM)),
            ]
    return t


def _drafter_tensors(spec: TinySpec) -> list[tuple[str, np.ndarray]]:
    # the echo/noisy drafter must know the target's design: regenerate it from the seed
    design = _target_design(spec, np.random.default_rng([spec.seed, 0x7A26]))
    kind_id = DRAFTER_KINDS.index(spec.drafter)
    rng = np.random.default_rng([spec.seed, 0xD4AF, kind_id])
    B, E, K = spec.t_n_embd, spec.draft_n_embd, spec.n_cycle
    H = spec.draft_n_head
    structured = spec.drafter != "random"

    if structured:
        codes = _orthonormal(rng, E)[:, :K].T  # [K, E] orthonormal drafter codes of p[k]
        nxt = (np.arange(K) + 1) % K  # intended prediction for input p[k]
        if spec.drafter == "noisy":
            n_bad = int(round(spec.noise * K))
            bad = rng.choice(K, size=n_bad, replace=False)
            nxt = nxt.copy()
            nxt[bad] = (nxt[bad] + rng.integers(1, K, size=n_bad)) % K  # a different cycle token
        # LM head (tied token_embd): cycle rows = codes, other rows small random, specials 0
        alpha = _LOGIT / np.sqrt(E)
        tok = _unit_rows(rng.standard_normal((N_VOCAB, E))) * (0.3 * alpha)
        tok[design.cycle] = alpha * codes
        tok[list(_NEVER_EMIT)] = 0.0
        # pre-projection: [x (target embedding * sqrt(B)) ; h] -> E
        # x of p[k] is B * u[k]; map it to sqrt(E) * codes[nxt[k]] (unit rms residual)
        pre_x = (np.sqrt(E) / B) * codes[nxt].T @ design.u  # [E, B]
        pre_h = rng.standard_normal((E, B)) * (1e-3 / B)
        pre = np.concatenate([pre_x, pre_h], axis=1)
        post_norm = _POST_NORM
    else:
        tok = rng.standard_normal((N_VOCAB, E))
        pre = _mat(rng, E, 2 * B)
        post_norm = 1.0
    post = _mat(rng, B, E)

    pre_name = "nextn.pre_projection.weight" if spec.layout == "upstream" else "mtp.pre_projection.weight"
    post_name = "nextn.post_projection.weight" if spec.layout == "upstream" else "mtp.post_projection.weight"
    t: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", tok),
        ("output_norm.weight", np.ones(E, dtype=np.float32) if structured else _norm_w(rng, E, 1.0)),
        ("rope_freqs.weight", np.ones(spec.head_dim_full // 2, dtype=np.float32)),
        (pre_name, pre),
        (post_name, post),
    ]
    if spec.centroids:
        # token_ordering: a permutation of the vocabulary; chunk c (of n_vocab / C ids)
        # lists the tokens of centroid c. For echo/noisy, a centroid reads the codes of
        # the cycle tokens it holds, so the predicted token's centroid wins the top-k.
        C = spec.centroids
        ordering = rng.permutation(N_VOCAB).astype(np.int32)
        if structured:
            cent = np.zeros((C, E))
            where = {int(tok_id): i // (N_VOCAB // C) for i, tok_id in enumerate(ordering)}
            for k, tok_id in enumerate(design.cycle):
                cent[where[int(tok_id)]] += alpha * codes[k]
        else:
            cent = rng.standard_normal((C, E))
        t += [("mtp.centroids.weight", cent), ("mtp.token_ordering.weight", ordering)]
    for i, swa in enumerate(spec.draft_swa_pattern):
        hd = spec.head_dim_swa if swa else spec.head_dim_full
        b = f"blk.{i}."
        t += [
            (b + "attn_norm.weight", _norm_w(rng, E, 1.0)),
            (b + "attn_q.weight", _mat(rng, H * hd, E)),
            (b + "attn_q_norm.weight", _norm_w(rng, hd, 1.0)),
            (b + "attn_output.weight", _mat(rng, E, H * hd)),
            (b + "post_attention_norm.weight", _norm_w(rng, E, post_norm)),
            (b + "layer_output_scale.weight", np.ones(1, dtype=np.float32)),
            (b + "ffn_norm.weight", _norm_w(rng, E, 1.0)),
            (b + "ffn_gate.weight", _mat(rng, spec.draft_n_ff, E)),
            (b + "ffn_up.weight", _mat(rng, spec.draft_n_ff, E)),
            (b + "ffn_down.weight", _mat(rng, E, spec.draft_n_ff)),
            (b + "post_ffw_norm.weight", _norm_w(rng, E, post_norm)),
        ]
    return t


# --------------------------------------------------------------------------------------
# GGUF writing
# --------------------------------------------------------------------------------------


def _add_tokenizer(w: gguf.GGUFWriter) -> None:
    tokens, scores, types = build_vocab()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_eot_token_id(EOT_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)


def _add_attention_kv(w: gguf.GGUFWriter, a: str, spec: TinySpec, n_embd: int, n_layer: int,
                      n_ff: int, n_head: int, pattern: tuple[bool, ...]) -> None:
    w.add_uint32(f"{a}.context_length", spec.n_ctx_train)
    w.add_uint32(f"{a}.embedding_length", n_embd)
    w.add_uint32(f"{a}.block_count", n_layer)
    w.add_uint32(f"{a}.feed_forward_length", n_ff)
    w.add_uint32(f"{a}.attention.head_count", n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", spec.n_head_kv)
    w.add_uint32(f"{a}.attention.key_length", spec.head_dim_full)
    w.add_uint32(f"{a}.attention.value_length", spec.head_dim_full)
    w.add_uint32(f"{a}.attention.key_length_swa", spec.head_dim_swa)
    w.add_uint32(f"{a}.attention.value_length_swa", spec.head_dim_swa)
    w.add_uint32(f"{a}.rope.dimension_count", spec.head_dim_full)
    w.add_uint32(f"{a}.rope.dimension_count_swa", spec.head_dim_swa)
    w.add_float32(f"{a}.rope.freq_base", 1_000_000.0)
    w.add_float32(f"{a}.rope.freq_base_swa", 10_000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(f"{a}.attention.sliding_window", spec.sliding_window)
    w.add_array(f"{a}.attention.sliding_window_pattern", list(pattern))


def _add_tensors(w: gguf.GGUFWriter, tensors: list[tuple[str, np.ndarray]], dtype: str) -> None:
    mat_type = np.float16 if dtype == "f16" else np.float32
    for name, arr in tensors:
        if arr.dtype == np.int32:
            w.add_tensor(name, np.ascontiguousarray(arr))
            continue
        a = np.ascontiguousarray(arr, dtype=mat_type if arr.ndim >= 2 else np.float32)
        w.add_tensor(name, a)


def _write_gguf(path: Path, arch: str, fill) -> None:
    """Write a GGUF file atomically: temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def _fill_target(spec: TinySpec, w: gguf.GGUFWriter) -> None:
    a = TARGET_ARCH
    w.add_type("model")
    w.add_name(f"tiny-gemma4-{spec.target_key()}")
    _add_attention_kv(w, a, spec, spec.t_n_embd, spec.n_layer, spec.t_n_ff, spec.t_n_head,
                      spec.swa_pattern)
    w.add_uint32(f"{a}.embedding_length_per_layer_input", spec.n_embd_per_layer)
    w.add_uint32(f"{a}.attention.shared_kv_layers", spec.shared_kv_layers)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(w)
    _add_tensors(w, _target_tensors(spec), spec.dtype)


def _fill_drafter(spec: TinySpec, w: gguf.GGUFWriter) -> None:
    a = DRAFTER_ARCH[spec.layout]
    w.add_type("model")
    w.add_name(f"tiny-gemma4-assistant-{spec.key()}")
    _add_attention_kv(w, a, spec, spec.draft_n_embd, spec.draft_n_layer, spec.draft_n_ff,
                      spec.draft_n_head, spec.draft_swa_pattern)
    if spec.layout == "upstream":
        # the hidden size of the target (input h / output h_next of the MTP head)
        w.add_uint32(f"{a}.embedding_length_out", spec.t_n_embd)
        # every block of the assistant is an MTP (nextn) block
        w.add_uint32(f"{a}.nextn_predict_layers", spec.draft_n_layer)
    else:
        w.add_uint32(f"{a}.n_embd_backbone", spec.t_n_embd)
        w.add_uint32(f"{a}.n_centroids", spec.centroids)
        w.add_uint32(f"{a}.centroid_top_k", spec.centroid_top_k if spec.centroids else 0)
        w.add_bool(f"{a}.use_ordered_embeddings", spec.centroids > 0)
        w.add_bool(f"{a}.attention.k_eq_v", False)
        w.add_string(f"{a}.requires_target_arch", TARGET_ARCH)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(w)
    _add_tensors(w, _drafter_tensors(spec), spec.dtype)


def target_path(spec: TinySpec, out_dir: Path) -> Path:
    return Path(out_dir) / f"tiny-gemma4-target-{spec.target_key()}.gguf"


def drafter_path(spec: TinySpec, out_dir: Path) -> Path:
    return Path(out_dir) / f"tiny-gemma4-assistant-{spec.key()}.gguf"


def write_pair(spec: TinySpec, out_dir: Path) -> TinyPair:
    """Write the target and drafter GGUFs of ``spec`` into ``out_dir``.

    Each file is written to a temporary file and renamed into place, so concurrent
    writers and readers never see a partial file. The same spec always gives
    byte-identical files. The target's name depends only on the target's settings,
    so pairs that differ only in layout or drafter share one target file.
    """
    out_dir = Path(out_dir)
    pair = TinyPair(target=target_path(spec, out_dir), drafter=drafter_path(spec, out_dir))
    _write_gguf(pair.target, TARGET_ARCH, lambda w: _fill_target(spec, w))
    _write_gguf(pair.drafter, DRAFTER_ARCH[spec.layout], lambda w: _fill_drafter(spec, w))
    return pair


# --------------------------------------------------------------------------------------
# expectations and a numpy reference of the greedy argmax (used by tests; ignores the
# small attention/FFN contributions, which the design keeps far below the logit margins)
# --------------------------------------------------------------------------------------


def cycle_tokens(spec: TinySpec) -> list[int]:
    """Token ids of the target's greedy cycle, in order (p[k] is followed by p[k+1])."""
    return [WORD0_ID + k for k in range(spec.n_cycle)]


def cycle_words(spec: TinySpec) -> list[str]:
    """Detokenized pieces of the cycle, e.g. [" the", " a", ...]: generated text is a run of them."""
    return [WORDS[k].replace("\u2581", " ") for k in range(spec.n_cycle)]


def _rms(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


@functools.lru_cache(maxsize=4)
def _cached_design(spec: TinySpec) -> _TargetDesign:
    return _target_design(spec, np.random.default_rng([spec.seed, 0x7A26]))


@functools.lru_cache(maxsize=4)
def _cached_drafter(spec: TinySpec) -> dict[str, np.ndarray]:
    return dict(_drafter_tensors(spec))


def reference_next_token(spec: TinySpec, token: int) -> int:
    """The target's greedy next token for input ``token``."""
    d = _cached_design(spec)
    h = _rms(d.tok_embd[token] * np.sqrt(spec.t_n_embd))
    return int(np.argmax(d.output @ h))


def reference_draft_token(spec: TinySpec, token: int, h: np.ndarray | None = None) -> int:
    """The drafter's greedy prediction for (input token ``token``, target hidden ``h``)."""
    d = _cached_design(spec)
    t = _cached_drafter(spec)
    pre = t["nextn.pre_projection.weight" if spec.layout == "upstream" else "mtp.pre_projection.weight"]
    x = d.tok_embd[token] * np.sqrt(spec.t_n_embd)
    if h is None:
        h = np.zeros(spec.t_n_embd)
    r = pre @ np.concatenate([x, h])
    r = _rms(r) * t["output_norm.weight"]
    logits = t["token_embd.weight"] @ r
    if spec.centroids:
        groups = t["mtp.token_ordering.weight"].reshape(spec.centroids, -1)
        top = np.argsort(-(t["mtp.centroids.weight"] @ r), kind="stable")[: spec.centroid_top_k]
        masked = np.full_like(logits, -1e30)
        keep = groups[top].ravel()
        masked[keep] = logits[keep]
        logits = masked
    return int(np.argmax(logits))
