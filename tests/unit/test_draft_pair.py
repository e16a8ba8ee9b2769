"""A target and MTP drafter that llama-server cannot run together are refused before launch, from their
GGUF headers: another vocabulary, another hidden width, another target architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llamactl import cli
from llamactl.core.errors import BadInput, ExitCode
from llamactl.models import tiny_gemma4 as tg
from llamactl.models.draft_pair import DraftMismatch, check_pair
from llamactl.models.gguf_info import array_bytes, read_header, strings, vocab
from llamactl.serve import launcher


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tg.TinyPair]:
    d = tmp_path_factory.mktemp("tiny")
    return {layout: tg.write_pair(tg.TinySpec(layout=layout, drafter="echo"), d) for layout in tg.LAYOUTS}


def write_model(path: Path, arch: str = "gemma4-assistant", tokens: list[str] | None = None, model: str = "llama",
                bos: int = tg.BOS_ID, eos: int = tg.EOS_ID, kv: dict | None = None) -> Path:
    """A small GGUF with a tokenizer (by default the tiny pair's 340 tokens) and the given uint32/string keys."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(path.stem)
    w.add_uint32(f"{arch}.embedding_length", 64)
    for k, v in (kv or {}).items():
        (w.add_string if isinstance(v, str) else w.add_uint32)(k, v)
    w.add_tokenizer_model(model)
    w.add_token_list(tg.build_vocab()[0] if tokens is None else tokens)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def refusal(target: Path, draft: Path) -> str:
    with pytest.raises(DraftMismatch) as exc:
        check_pair(read_header(target), read_header(draft), "T", "D")
    assert isinstance(exc.value, BadInput) and exc.value.key == "draft_model"
    msg = str(exc.value)
    assert "\n" not in msg and "llama-server cannot run this pair" in msg
    return msg


@pytest.mark.parametrize("layout", tg.LAYOUTS)
def test_the_tiny_pairs_are_a_pair(pairs, layout):
    pair = pairs[layout]
    check_pair(read_header(pair.target), read_header(pair.drafter))     # no raise


def test_the_vocabulary_is_read_and_compared_without_decoding(pairs):
    t, d = read_header(pairs["upstream"].target), read_header(pairs["atomic"].drafter)
    assert str(vocab(t)) == "340-token llama vocabulary" and (vocab(t).bos, vocab(t).eos) == (tg.BOS_ID, tg.EOS_ID)
    assert array_bytes(t, "tokenizer.ggml.tokens") == array_bytes(d, "tokenizer.ggml.tokens") is not None
    assert strings(t, "tokenizer.ggml.tokens") == tg.build_vocab()[0]
    assert array_bytes(t, "general.architecture") is None and strings(t, "gemma4.block_count") is None


def test_another_size_and_tokenizer(pairs, tmp_path):
    draft = write_model(tmp_path / "d.gguf", tokens=[f"t{i}" for i in range(5000)], model="gpt2",
                        kv={"gemma4-assistant.embedding_length_out": 128})
    msg = refusal(pairs["upstream"].target, draft)
    assert msg.startswith("draft model D has a 5000-token gpt2 vocabulary, target T has a 340-token llama vocabulary")


@pytest.mark.parametrize("model,size", [("gpt2", 340), ("llama", 339), ("llama", 341)])
def test_another_size_or_tokenizer_model_alone(pairs, tmp_path, model, size):
    tokens = (tg.build_vocab()[0] + ["extra"])[:size]
    msg = refusal(pairs["upstream"].target, write_model(tmp_path / "d.gguf", tokens=tokens, model=model))
    assert f"D has a {size}-token {model} vocabulary, target T has a 340-token llama vocabulary" in msg


def test_same_size_other_tokens(pairs, tmp_path):
    tokens = tg.build_vocab()[0]
    tokens[300] = "\u2581zebra"
    msg = refusal(pairs["upstream"].target, write_model(tmp_path / "d.gguf", tokens=tokens))
    assert "both have a 340-token llama vocabulary, but not the same one: token 300 is '▁zebra' in the draft" in msg
    assert repr(tg.build_vocab()[0][300]) in msg


@pytest.mark.parametrize("which", ["bos", "eos"])
def test_other_special_ids(pairs, tmp_path, which):
    right = {"bos": tg.BOS_ID, "eos": tg.EOS_ID}
    msg = refusal(pairs["upstream"].target, write_model(tmp_path / "d.gguf", **{**right, which: 3}))
    assert f"{which} token id 3 in the draft, {right[which]} in the target" in msg


def test_short_vocabularies_are_compared_too(tmp_path):
    """Up to 16 tokens the header decodes them (a list, not a skipped array): compared all the same."""
    words = [f"w{i}" for i in range(8)]
    target = write_model(tmp_path / "t.gguf", arch="llama", tokens=words, bos=1, eos=2)
    check_pair(read_header(target), read_header(write_model(tmp_path / "same.gguf", tokens=list(words), bos=1, eos=2)))
    other = write_model(tmp_path / "d.gguf", tokens=[*words[:5], "x", *words[6:]], bos=1, eos=2)
    assert "token 5 is 'x' in the draft, 'w5' in the target" in refusal(target, other)


def test_upstream_head_for_another_width(pairs, tmp_path):
    draft = write_model(tmp_path / "d.gguf", kv={"gemma4-assistant.embedding_length_out": 256})
    msg = refusal(pairs["upstream"].target, draft)
    assert ("draft model D is an MTP head for a target of width 256 (gemma4-assistant.embedding_length_out), "
            "target T has width 128 (gemma4.embedding_length)") in msg
    assert "vocabulary" not in msg        # the vocabulary is the same: only what differs is named


def test_fork_head_for_another_width_and_architecture(pairs, tmp_path):
    draft = write_model(tmp_path / "d.gguf", arch="gemma4_assistant",
                        kv={"gemma4_assistant.n_embd_backbone": 512, "gemma4_assistant.requires_target_arch": "gemma4"})
    assert "width 512 (gemma4_assistant.n_embd_backbone), target T has width 128" in refusal(pairs["atomic"].target, draft)
    llama = write_model(tmp_path / "t.gguf", arch="llama", kv={"llama.embedding_length": 128})
    fork = write_model(tmp_path / "f.gguf", arch="gemma4_assistant",
                       kv={"gemma4_assistant.n_embd_backbone": 128, "gemma4_assistant.requires_target_arch": "gemma4"})
    assert "draft model D requires a gemma4 target, target T is llama" in refusal(llama, fork)


def test_every_problem_in_one_line(pairs, tmp_path):
    draft = write_model(tmp_path / "d.gguf", tokens=["a"] * 20, kv={"gemma4-assistant.embedding_length_out": 96})
    msg = refusal(pairs["upstream"].target, draft)
    assert "20-token llama vocabulary" in msg and "width 96" in msg and msg.count(";") == 1


def test_facts_a_header_lacks_are_not_judged(pairs, tmp_path):
    import gguf

    bare = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(bare), "gemma4-assistant")
    w.add_tensor("x", np.zeros((2, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    check_pair(read_header(pairs["upstream"].target), read_header(bare))    # no tokenizer, no width: no raise


def test_refused_before_launch_through_the_cli(pairs, tmp_path, monkeypatch, capsys):
    """`profile cmd` (as run, validate, bench) plans the launch: the pair is refused before any build."""
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))

    def no_build(*_a, **_kw):
        raise AssertionError("built before the pair was checked")
    monkeypatch.setattr(launcher, "ensure_binary", no_build)
    draft = write_model(tmp_path / "other-drafter.gguf", tokens=[f"t{i}" for i in range(1000)],
                        kv={"gemma4-assistant.embedding_length_out": 128})
    target = pairs["upstream"].target
    rc = cli.run(["profile", "cmd", "tiny-gemma4-mtp", "--no-env", "--model", str(target), "--draft-model", str(draft)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == ExitCode.BAD_INPUT and len(lines) == 1, err
    assert lines[0].startswith(f"error: draft model {draft} has a 1000-token llama vocabulary, target {target} has a "
                               "340-token llama vocabulary")
    assert "Traceback" not in err
    # without MTP the drafter is not used, so not checked: the plan goes on (nothing built here: the argv
    # comes from the recorded --help; with --build it goes to the build, stopped here)
    rc = cli.run(["profile", "cmd", "tiny-gemma4-mtp", "--no-env", "--no-mtp", "--model", str(target),
                  "--draft-model", str(draft)])
    assert rc == 0 and "not built yet" in capsys.readouterr().err
    rc = cli.run(["profile", "cmd", "tiny-gemma4-mtp", "--no-env", "--no-mtp", "--build", "--model", str(target),
                  "--draft-model", str(draft)])
    assert rc == ExitCode.INTERNAL_ERROR and "built before the pair was checked" in capsys.readouterr().err
