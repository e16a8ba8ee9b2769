"""What llama.cpp requires of a target model and its MTP drafter, known from their GGUF headers.

llama-server loads both models and starts; a pair that does not fit aborts it later, on the first
draft (a ``GGML_ASSERT`` in a graph or a row copy), or at the start of speculation. Every fact those
checks depend on is in the two headers, so the pair is refused before launch instead, with one line
naming both models and what differs:

- the vocabulary: the drafter proposes token ids of its own vocabulary and the target verifies them,
  so both must be the same one (tokenizer model, token count, the tokens themselves, bos/eos ids);
- the width of the target's hidden state the MTP head reads: upstream's ``gemma4-assistant``
  carries it as ``<arch>.embedding_length_out`` and llama.cpp asserts it equals the target's
  ``n_embd_out`` ("MTP input row width must match the target h_nextn width"); the fork's
  ``gemma4_assistant`` as ``<arch>.n_embd_backbone``;
- the target architecture a drafter names (the fork's ``<arch>.requires_target_arch``).

A fact missing from either header is not judged (llama.cpp reports what it cannot load itself).
"""

from __future__ import annotations

from llamactl.core.errors import BadInput
from llamactl.models.gguf_info import Header, array_bytes, strings, vocab


class DraftMismatch(BadInput):
    """A target and MTP drafter llama-server cannot run together; ``key`` is the profile key to change."""

    key = "draft_model"


def _arch(h: Header) -> str:
    return str(h.kv.get("general.architecture") or "")


def _int(h: Header, key: str) -> int | None:
    v = h.kv.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _same_tokens(target: Header, draft: Header) -> str | None:
    """None when both token lists are the same (or cannot be compared); else where they first differ."""
    key = "tokenizer.ggml.tokens"
    if target.byte_order == draft.byte_order:
        a, b = array_bytes(target, key), array_bytes(draft, key)
        if a is not None and b is not None and a == b:
            return None
    ta, tb = strings(target, key), strings(draft, key)
    if ta is None or tb is None or ta == tb:
        return None
    i = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), None)
    return None if i is None else f"token {i} is {tb[i]!r} in the draft, {ta[i]!r} in the target"


def vocab_problem(target: Header, draft: Header, target_name: str, draft_name: str) -> str | None:
    """Why the two vocabularies differ, in one clause naming both models; None when they are the same."""
    tv, dv = vocab(target), vocab(draft)
    if tv is None or dv is None:
        return None
    if (tv.model, tv.size) != (dv.model, dv.size):
        return f"draft model {draft_name} has a {dv}, target {target_name} has a {tv}"
    differs = [f"{what} token id {d} in the draft, {t} in the target"
               for what, d, t in (("bos", dv.bos, tv.bos), ("eos", dv.eos, tv.eos))
               if d is not None and t is not None and d != t]
    tokens = _same_tokens(target, draft)
    if tokens:
        differs.insert(0, tokens)
    if differs:
        return (f"draft model {draft_name} and target {target_name} both have a {tv}, but not the same one: "
                f"{', '.join(differs)}")
    return None


def width_problem(target: Header, draft: Header, target_name: str, draft_name: str) -> str | None:
    """The MTP head reads the target's hidden state: the width it was made for must be the target's."""
    arch, tarch = _arch(draft), _arch(target)
    for key in (f"{arch}.embedding_length_out", f"{arch}.n_embd_backbone"):
        want = _int(draft, key)
        if want is None:
            continue
        have_key = f"{tarch}.embedding_length_out" if _int(target, f"{tarch}.embedding_length_out") else f"{tarch}.embedding_length"
        have = _int(target, have_key)
        if have is not None and have != want:
            return (f"draft model {draft_name} is an MTP head for a target of width {want} ({key}), target "
                    f"{target_name} has width {have} ({have_key})")
        return None
    return None


def arch_problem(target: Header, draft: Header, target_name: str, draft_name: str) -> str | None:
    """A drafter that names the architecture of its target (``<arch>.requires_target_arch``) gets that one."""
    need = draft.kv.get(f"{_arch(draft)}.requires_target_arch")
    if isinstance(need, str) and need and need != _arch(target):
        return f"draft model {draft_name} requires a {need} target, target {target_name} is {_arch(target) or 'unknown'}"
    return None


RULES = (vocab_problem, width_problem, arch_problem)


def check_pair(target: Header, draft: Header, target_name: str | None = None, draft_name: str | None = None) -> None:
    """Refuse a target and MTP drafter that llama-server cannot run together, before launch.

    ``target``/``draft`` are the headers of each model's first shard; the names (default: the file
    paths) are how the message names them, e.g. the profile's ``model``/``draft_model`` values.

    Raises:
        DraftMismatch: one line with every problem (:data:`RULES`), naming both models.
    """
    tname, dname = target_name or str(target.path), draft_name or str(draft.path)
    problems = [p for rule in RULES if (p := rule(target, draft, tname, dname))]
    if problems:
        raise DraftMismatch("; ".join(problems) + ": llama-server cannot run this pair (it would abort after launch)",
                            hint="set draft_model to the drafter made for this target, or model to the target it was made for")
