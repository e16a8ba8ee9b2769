"""Unit tests of llamactl.models.tiny_gemma4: layouts, keys, shapes, determinism, behaviour."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import pytest

from llamactl.models import tiny_gemma4 as tg
from llamactl.models.tiny_gemma4 import TinyPair, TinySpec, write_pair

EOG_AND_SPECIALS = (tg.PAD_ID, tg.EOS_ID, tg.BOS_ID, tg.UNK_ID, tg.SOT_ID, tg.EOT_ID)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


_CACHE: dict[tuple[TinySpec, Path], TinyPair] = {}


def pair_of(spec: TinySpec, out: Path) -> TinyPair:
    if (spec, out) not in _CACHE:
        _CACHE[(spec, out)] = write_pair(spec, out)
    return _CACHE[(spec, out)]


def fields_of(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def tensors_of(path: Path) -> dict[str, tuple[tuple[int, ...], int, np.ndarray]]:
    """name -> (ne shape, ggml type, data as float64/int numpy in row-major [ne1, ne0])."""
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        data = np.array(t.data)
        if data.dtype != np.int32:
            data = data.astype(np.float64)
        out[t.name] = (tuple(int(x) for x in t.shape), int(t.tensor_type), data)
    return out


def rms(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def expected_target_tensors(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    """What llama.cpp's gemma4 loader creates (both trees), as ne shapes."""
    n, V, H, Hkv = spec.t_n_embd, spec.n_vocab, spec.t_n_head, spec.n_head_kv
    t = {
        "token_embd.weight": (n, V),
        "output.weight": (n, V),
        "output_norm.weight": (n,),
        "rope_freqs.weight": (spec.head_dim_full // 2,),
    }
    for i, swa in enumerate(spec.swa_pattern):
        hd = spec.head_dim_swa if swa else spec.head_dim_full
        b = f"blk.{i}."
        t.update({
            b + "attn_norm.weight": (n,),
            b + "attn_q.weight": (n, H * hd),
            b + "attn_k.weight": (n, Hkv * hd),
            b + "attn_v.weight": (n, Hkv * hd),
            b + "attn_output.weight": (H * hd, n),
            b + "attn_q_norm.weight": (hd,),
            b + "attn_k_norm.weight": (hd,),
            b + "post_attention_norm.weight": (n,),
            b + "layer_output_scale.weight": (1,),
            b + "ffn_norm.weight": (n,),
            b + "ffn_gate.weight": (n, spec.t_n_ff),
            b + "ffn_up.weight": (n, spec.t_n_ff),
            b + "ffn_down.weight": (spec.t_n_ff, n),
            b + "post_ffw_norm.weight": (n,),
        })
    return t


def expected_drafter_tensors(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    """What the assistant loader of each tree creates, as ne shapes."""
    E, B, V, H = spec.draft_n_embd, spec.t_n_embd, spec.n_vocab, spec.draft_n_head
    prefix = "nextn" if spec.layout == "upstream" else "mtp"
    t = {
        "token_embd.weight": (E, V),
        "output_norm.weight": (E,),
        "rope_freqs.weight": (spec.head_dim_full // 2,),
        f"{prefix}.pre_projection.weight": (2 * B, E),
        f"{prefix}.post_projection.weight": (E, B),
    }
    if spec.centroids:
        t["mtp.centroids.weight"] = (E, spec.centroids)
        t["mtp.token_ordering.weight"] = (V,)
    for i, swa in enumerate(spec.draft_swa_pattern):
        hd = spec.head_dim_swa if swa else spec.head_dim_full
        b = f"blk.{i}."
        t.update({
            b + "attn_norm.weight": (E,),
            b + "attn_q.weight": (E, H * hd),
            b + "attn_output.weight": (H * hd, E),
            b + "attn_q_norm.weight": (hd,),
            b + "post_attention_norm.weight": (E,),
            b + "layer_output_scale.weight": (1,),
            b + "ffn_norm.weight": (E,),
            b + "ffn_gate.weight": (E, spec.draft_n_ff),
            b + "ffn_up.weight": (E, spec.draft_n_ff),
            b + "ffn_down.weight": (spec.draft_n_ff, E),
            b + "post_ffw_norm.weight": (E,),
        })
    return t


def target_logits(tpath: Path) -> np.ndarray:
    """[n_vocab (input), n_vocab (logits)] of the target with the residual = embedding."""
    t = tensors_of(tpath)
    emb, out_w, norm = t["token_embd.weight"][2], t["output.weight"][2], t["output_norm.weight"][2]
    h = rms(emb * np.sqrt(emb.shape[1])) * norm
    return h @ out_w.T


def drafter_predictions(spec: TinySpec, pair: TinyPair) -> np.ndarray:
    """The drafter's greedy prediction for every cycle token, computed from the files."""
    tt, dt = tensors_of(pair.target), tensors_of(pair.drafter)
    prefix = "nextn" if spec.layout == "upstream" else "mtp"
    pre = dt[f"{prefix}.pre_projection.weight"][2]
    emb_t = tt["token_embd.weight"][2]
    B = emb_t.shape[1]
    cyc = tg.cycle_tokens(spec)
    x = emb_t[cyc] * np.sqrt(B)
    h = rms(x) * tt["output_norm.weight"][2]  # stand-in for the target hidden state
    r = rms(np.concatenate([x, h], axis=1) @ pre.T) * dt["output_norm.weight"][2]
    logits = r @ dt["token_embd.weight"][2].T
    if spec.centroids:
        groups = dt["mtp.token_ordering.weight"][2].reshape(spec.centroids, -1)
        cl = r @ dt["mtp.centroids.weight"][2].T
        masked = np.full_like(logits, -1e30)
        for i in range(len(cyc)):
            keep = groups[np.argsort(-cl[i], kind="stable")[: spec.centroid_top_k]].ravel()
            masked[i, keep] = logits[i, keep]
        logits = masked
    return np.argmax(logits, axis=1)


def draft_hit_rate(spec: TinySpec, out: Path) -> float:
    pair = pair_of(spec, out)
    cyc = np.array(tg.cycle_tokens(spec))
    return float(np.mean(drafter_predictions(spec, pair) == np.roll(cyc, -1)))


# ---------------------------------------------------------------------------------------
# spec and naming
# ---------------------------------------------------------------------------------------


def test_default_key_and_target_key():
    s = TinySpec()
    assert s.key() == "upstream-echo-s0-e128-l4"
    assert TinySpec(layout="atomic", drafter="noisy", seed=3).key() == "atomic-noisy-s3-e128-l4"
    assert s.target_key() == "s0-e128-l4"
    # the target does not depend on layout or drafter settings
    assert TinySpec(layout="atomic", drafter="random", noise=0.5).target_key() == s.target_key()


def test_keys_distinguish_specs_and_are_stable():
    specs = [
        TinySpec(),
        TinySpec(noise=0.5),
        TinySpec(drafter="noisy"),
        TinySpec(scale=2),
        TinySpec(n_ff=512),
        TinySpec(draft_n_embd=32),
        TinySpec(dtype="f32"),
        TinySpec(layout="atomic", centroids=17),
    ]
    keys = [s.key() for s in specs]
    assert len(set(keys)) == len(keys)
    assert all(k.replace("-", "").replace("_", "").isalnum() for k in keys)
    assert TinySpec(noise=0.5).key() == TinySpec(noise=0.5).key()
    assert TinySpec(scale=2).key().startswith("upstream-echo-s0-e256-l4")
    # a drafter-only setting does not rename the target
    assert TinySpec(noise=0.5).target_key() == "s0-e128-l4"
    assert TinySpec(n_ff=512).target_key() != "s0-e128-l4"


def test_spec_is_hashable_and_frozen():
    assert len({TinySpec(), TinySpec(), TinySpec(seed=1)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        TinySpec().seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_layer": 5},  # pattern [swa, swa, swa, full, swa] does not end [swa, full]
        {"n_layer": 1},
        {"draft_n_embd": 128},  # upstream requires embedding_length_out != n_embd
        {"n_head_kv": 3},  # 2 heads cannot share 3 KV heads
        {"layout": "fork"},
        {"drafter": "perfect"},
        {"noise": 1.5},
        {"centroids": 17},  # centroids exist only in the atomic layout
        {"layout": "atomic", "centroids": 7},  # 340 % 7 != 0
        {"n_layer": 6, "swa_period": 2, "shared_kv_layers": 1},  # KV layers end [swa, swa]
    ],
)
def test_invalid_specs_raise(kwargs):
    with pytest.raises(ValueError):
        TinySpec(**kwargs)


def test_scale_multiplies_target_widths_only():
    s = TinySpec(scale=4, n_layer=8)
    assert (s.t_n_embd, s.t_n_ff, s.t_n_head, s.n_head_kv) == (512, 1024, 8, 1)
    assert s.draft_n_embd == 64
    assert s.swa_pattern == (True, True, True, False) * 2


# ---------------------------------------------------------------------------------------
# files: arch, keys, tensors
# ---------------------------------------------------------------------------------------


def test_target_arch_keys_and_tokenizer(out):
    spec = TinySpec()
    f = fields_of(pair_of(spec, out).target)
    assert f["general.architecture"] == "gemma4"
    expect = {
        "gemma4.embedding_length": 128,
        "gemma4.block_count": 4,
        "gemma4.feed_forward_length": 256,
        "gemma4.attention.head_count": 2,
        "gemma4.attention.head_count_kv": 1,
        "gemma4.attention.key_length": 256,
        "gemma4.attention.value_length": 256,
        "gemma4.attention.key_length_swa": 128,
        "gemma4.attention.value_length_swa": 128,
        "gemma4.rope.dimension_count": 256,
        "gemma4.rope.dimension_count_swa": 128,
        "gemma4.attention.sliding_window": 256,
        "gemma4.embedding_length_per_layer_input": 0,
        "gemma4.attention.shared_kv_layers": 0,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.eot_token_id": 5,
    }
    for k, v in expect.items():
        assert f[k] == v, k
    assert f["gemma4.attention.sliding_window_pattern"] == [True, True, True, False]
    assert f["gemma4.rope.freq_base"] == pytest.approx(1e6)
    assert f["gemma4.rope.freq_base_swa"] == pytest.approx(1e4)
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == 340 == len(f["tokenizer.ggml.scores"]) == len(f["tokenizer.ggml.token_type"])
    assert tokens[:6] == ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    assert tokens[6] == "<0x00>" and tokens[6 + 255] == "<0xFF>"
    types = f["tokenizer.ggml.token_type"]
    assert types[4] == types[5] == int(gguf.TokenType.CONTROL)
    assert set(types[6:262]) == {int(gguf.TokenType.BYTE)}
    tmpl = f["tokenizer.chat_template"]
    for piece in ("<start_of_turn>", "<end_of_turn>", "add_generation_prompt", "bos_token", "model"):
        assert piece in tmpl
    # no upstream-only or fork-only drafter keys leak into the target
    assert not any("nextn" in k or "backbone" in k for k in f)


def test_target_tensors_match_loader(out):
    spec = TinySpec()
    t = tensors_of(pair_of(spec, out).target)
    assert {k: v[0] for k, v in t.items()} == expected_target_tensors(spec)
    assert t["token_embd.weight"][1] == int(gguf.GGMLQuantizationType.F16)
    assert t["output_norm.weight"][1] == int(gguf.GGMLQuantizationType.F32)


def test_upstream_drafter_arch_keys_tensors(out):
    spec = TinySpec(layout="upstream")
    p = pair_of(spec, out)
    f = fields_of(p.drafter)
    a = "gemma4-assistant"
    assert f["general.architecture"] == a
    assert f[f"{a}.embedding_length"] == 64
    assert f[f"{a}.embedding_length_out"] == 128  # == target n_embd, != own n_embd
    assert f[f"{a}.nextn_predict_layers"] == f[f"{a}.block_count"] == 4
    assert f[f"{a}.attention.key_length"] == 256 and f[f"{a}.attention.key_length_swa"] == 128
    assert f[f"{a}.attention.head_count_kv"] == 1
    assert f[f"{a}.attention.sliding_window_pattern"] == [True, True, True, False]
    assert not any(k.startswith("gemma4_assistant.") or "backbone" in k for k in f)
    t = tensors_of(p.drafter)
    assert {k: v[0] for k, v in t.items()} == expected_drafter_tensors(spec)
    assert not any(k.startswith("mtp.") for k in t)


def test_atomic_drafter_arch_keys_tensors(out):
    spec = TinySpec(layout="atomic")
    p = pair_of(spec, out)
    f = fields_of(p.drafter)
    a = "gemma4_assistant"
    assert f["general.architecture"] == a
    assert f[f"{a}.embedding_length"] == 64
    assert f[f"{a}.n_embd_backbone"] == 128
    assert f[f"{a}.requires_target_arch"] == "gemma4"
    assert f[f"{a}.use_ordered_embeddings"] is False
    assert f[f"{a}.attention.k_eq_v"] is False
    assert f[f"{a}.attention.sliding_window_pattern"] == [True, True, True, False]
    assert f"{a}.embedding_length_out" not in f and f"{a}.nextn_predict_layers" not in f
    assert not any(k.startswith("gemma4-assistant.") for k in f)
    t = tensors_of(p.drafter)
    assert {k: v[0] for k, v in t.items()} == expected_drafter_tensors(spec)
    assert not any(k.startswith("nextn.") for k in t)
    # the fork's verify script: token_embd's smaller dim == embedding_length
    assert min(t["token_embd.weight"][0]) == f[f"{a}.embedding_length"]


def test_atomic_centroid_head(out):
    spec = TinySpec(layout="atomic", centroids=17, centroid_top_k=4)
    p = pair_of(spec, out)
    f = fields_of(p.drafter)
    assert f["gemma4_assistant.use_ordered_embeddings"] is True
    assert f["gemma4_assistant.n_centroids"] == 17 and f["gemma4_assistant.centroid_top_k"] == 4
    t = tensors_of(p.drafter)
    assert {k: v[0] for k, v in t.items()} == expected_drafter_tensors(spec)
    shape, ttype, ordering = t["mtp.token_ordering.weight"]
    assert ttype == int(gguf.GGMLQuantizationType.I32)
    assert sorted(ordering.tolist()) == list(range(340))  # a permutation, not zeros
    assert draft_hit_rate(spec, out) == 1.0


def test_target_same_for_all_layouts_and_drafters(out):
    pairs = [pair_of(TinySpec(layout=lay, drafter=d), out)
             for lay in ("upstream", "atomic") for d in ("echo", "noisy", "random")]
    assert len({p.target for p in pairs}) == 1
    assert len({p.drafter for p in pairs}) == 6
    assert pairs[0].target.name == "tiny-gemma4-target-s0-e128-l4.gguf"
    assert pairs[0].drafter.name == "tiny-gemma4-assistant-upstream-echo-s0-e128-l4.gguf"


def test_optional_variants_write_expected_tensors(tmp_path):
    spec = TinySpec(n_layer=6, swa_period=2, shared_kv_layers=2, n_embd_per_layer=32, dtype="f32")
    p = write_pair(spec, tmp_path)
    f = fields_of(p.target)
    assert f["gemma4.attention.shared_kv_layers"] == 2
    assert f["gemma4.embedding_length_per_layer_input"] == 32
    assert f["gemma4.attention.sliding_window_pattern"] == [True, False] * 3
    t = tensors_of(p.target)
    assert t["per_layer_token_embd.weight"][0] == (32 * 6, 340)
    assert t["per_layer_model_proj.weight"][0] == (128, 32 * 6)
    assert "blk.3.attn_k.weight" in t and "blk.4.attn_k.weight" not in t  # shared-KV layers
    assert "blk.5.inp_gate.weight" in t and "blk.5.post_norm.weight" in t
    assert t["blk.0.attn_q.weight"][1] == int(gguf.GGMLQuantizationType.F32)


# ---------------------------------------------------------------------------------------
# determinism, atomic writes, sizes
# ---------------------------------------------------------------------------------------


def test_same_spec_same_bytes_different_seed_different_bytes(tmp_path):
    a = write_pair(TinySpec(), tmp_path / "a")
    b = write_pair(TinySpec(), tmp_path / "b")
    c = write_pair(TinySpec(seed=1), tmp_path / "c")
    assert a.target.read_bytes() == b.target.read_bytes()
    assert a.drafter.read_bytes() == b.drafter.read_bytes()
    assert a.target.read_bytes() != c.target.read_bytes()
    assert a.drafter.read_bytes() != c.drafter.read_bytes()
    assert c.target.name != a.target.name


def test_rewrite_is_atomic_and_leaves_no_temp_files(tmp_path):
    p1 = write_pair(TinySpec(), tmp_path)
    before = p1.target.read_bytes()
    inode = p1.target.stat().st_ino
    p2 = write_pair(TinySpec(), tmp_path)
    assert p2 == p1
    assert p2.target.read_bytes() == before
    assert p2.target.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([p1.target.name, p1.drafter.name])


def test_write_error_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tg.gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError):
        write_pair(TinySpec(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_sizes_stay_small(out):
    p = pair_of(TinySpec(), out)
    assert 0.3e6 < p.target.stat().st_size < 3e6
    assert 0.1e6 < p.drafter.stat().st_size < 1.5e6


def test_scaled_target_is_bigger(tmp_path):
    small = write_pair(TinySpec(), tmp_path)
    big = write_pair(TinySpec(scale=2, n_layer=8), tmp_path)
    assert big.target.stat().st_size > 4 * small.target.stat().st_size
    assert fields_of(big.target)["gemma4.embedding_length"] == 256
    f = fields_of(big.drafter)
    assert f["gemma4-assistant.embedding_length_out"] == 256
    assert tensors_of(big.drafter)["nextn.pre_projection.weight"][0] == (512, 64)
    # drafter stays small: the target's decode dominates
    assert big.drafter.stat().st_size < big.target.stat().st_size / 10


# ---------------------------------------------------------------------------------------
# behaviour (numpy on the stored weights)
# ---------------------------------------------------------------------------------------


def test_target_follows_cycle_and_never_emits_specials(out):
    spec = TinySpec()
    logits = target_logits(pair_of(spec, out).target)
    nxt = logits.argmax(axis=1)
    cyc = tg.cycle_tokens(spec)
    assert len(cyc) == 64
    assert [int(nxt[c]) for c in cyc] == cyc[1:] + cyc[:1]
    # every input token leads onto the cycle; no special / end-of-generation token is ever the argmax
    assert set(nxt.tolist()) <= set(cyc)
    assert not set(nxt.tolist()) & set(EOG_AND_SPECIALS)
    # clear margins (robust to the small attention/FFN contributions and to quantized KV)
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 10.0
    assert cyc[0] + 0 == tg.WORD0_ID and tg.cycle_words(spec)[0] == " the"


def test_target_layers_are_random_but_damped(out):
    t = tensors_of(pair_of(TinySpec(), out).target)
    q0, q1 = t["blk.0.attn_q.weight"][2], t["blk.1.attn_q.weight"][2]
    assert q0.std() > 0.01 and not np.allclose(q0, q1)
    post = t["blk.0.post_attention_norm.weight"][2]
    assert 0 < np.abs(post).max() < 0.1


@pytest.mark.parametrize("layout", ["upstream", "atomic"])
def test_drafter_kinds_hit_rates(out, layout):
    echo = draft_hit_rate(TinySpec(layout=layout, drafter="echo"), out)
    noisy = draft_hit_rate(TinySpec(layout=layout, drafter="noisy"), out)
    rand = draft_hit_rate(TinySpec(layout=layout, drafter="random"), out)
    assert echo == 1.0
    assert noisy == pytest.approx(1 - 0.35, abs=0.02)
    assert rand < 0.1


def test_noise_knob_changes_hit_rate(out):
    assert draft_hit_rate(TinySpec(drafter="noisy", noise=0.7), out) == pytest.approx(0.3, abs=0.02)


def test_drafter_kinds_differ_but_share_vocab(out):
    ps = {d: pair_of(TinySpec(drafter=d), out) for d in ("echo", "noisy", "random")}
    blobs = {d: p.drafter.read_bytes() for d, p in ps.items()}
    assert len(set(blobs.values())) == 3
    emb = {d: tensors_of(p.drafter)["token_embd.weight"][2] for d, p in ps.items()}
    assert not np.allclose(emb["echo"], emb["random"])
    toks = {tuple(fields_of(p.drafter)["tokenizer.ggml.tokens"]) for p in ps.values()}
    toks.add(tuple(fields_of(ps["echo"].target)["tokenizer.ggml.tokens"]))
    assert len(toks) == 1  # the fork rejects a drafter whose vocabulary differs


def test_reference_helpers_agree_with_files(out):
    spec = TinySpec(drafter="noisy")
    pair = pair_of(spec, out)
    logits = target_logits(pair.target)
    preds = drafter_predictions(spec, pair)
    for i, c in enumerate(tg.cycle_tokens(spec)[:16]):
        assert tg.reference_next_token(spec, c) == int(logits[c].argmax())
        assert tg.reference_draft_token(spec, c) == int(preds[i])


def test_chat_template_keeps_newlines_and_handles_content_parts():
    tmpl = tg.CHAT_TEMPLATE
    # whitespace control once swallowed the newline after the role; keep it out
    assert "{%-" not in tmpl and "-%}" not in tmpl
    assert "'<start_of_turn>' + role + '\\n'" in tmpl
    assert "'<end_of_turn>\\n'" in tmpl
    assert "message['content'] is string" in tmpl and "part['text']" in tmpl


def test_chat_template_renders_gemma_turns():
    jinja2 = pytest.importorskip("jinja2")
    render = jinja2.Environment().from_string(tg.CHAT_TEMPLATE).render
    text = render(
        bos_token="<bos>",
        add_generation_prompt=True,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": " hi "}]},
            {"role": "assistant", "content": "yo"},
        ],
    )
    assert text == (
        "<bos><start_of_turn>system\nBe brief.<end_of_turn>\n"
        "<start_of_turn>user\nhi<end_of_turn>\n"
        "<start_of_turn>model\nyo<end_of_turn>\n<start_of_turn>model\n"
    )
