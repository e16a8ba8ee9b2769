from pathlib import Path

import pytest

from llamactl.serve.dialect import parse_help
from llamactl.serve.profiles import Profile
from llamactl.serve.render import Unsupported, check_supported, render_argv

SEED = dict(model="m.gguf", draft_model="d.gguf", ctx=4096, parallel=2, batch=128, ubatch=64, split_mode="layer",
            kv_k="turbo4", kv_v="turbo4", reasoning_budget=1024, enable_mtp=True, no_warmup=True, port=8084)


def test_parse_upstream_help(upstream_help_text):
    h = parse_help(upstream_help_text)
    assert h.get("--ctx-size").names == ("-c", "--ctx-size")
    assert "q8_0" in h.allowed("--cache-type-k") and "turbo4" not in h.allowed("--cache-type-k")
    assert "draft-mtp" in h.allowed("--spec-type")
    assert h.allowed("--flash-attn") == ["on", "off", "auto"]
    # upstream still lists --draft-max, only to say it was removed: it must not count as supported
    assert h.by_name["--draft-max"].removed and not h.has("--draft-max")
    assert h.first(["--spec-draft-n-max", "--draft-max"]) == "--spec-draft-n-max"


def test_render_upstream_mtp(upstream_help_text):
    h = parse_help(upstream_help_text)
    p = Profile(**dict(SEED, kv_k="f16", kv_v="f16", draft_n=4))
    argv = render_argv(p, h, Path("/b/llama-server"), port=8084)
    assert argv[0] == "/b/llama-server"
    joined = " ".join(argv)
    assert "--spec-type draft-mtp" in joined
    assert "--model-draft d.gguf" in joined
    assert "--spec-draft-n-max 4" in joined
    assert "--parallel 2" in joined and "--ctx-size 4096" in joined and "--ubatch-size 64" in joined
    assert "--host 127.0.0.1" in joined and "--port 8084" in joined
    assert "--no-warmup" in argv and "--metrics" in argv


def test_render_without_mtp_drops_draft_flags(upstream_help_text):
    h = parse_help(upstream_help_text)
    p = Profile(**dict(SEED, kv_k="f16", kv_v="f16", enable_mtp=False, kv_k_draft="q8_0"))
    argv = render_argv(p, h, Path("llama-server"), port=1)
    assert "--spec-type" not in argv and "--model-draft" not in argv and "--cache-type-k-draft" not in argv


def test_turbo4_refused_on_upstream_with_source_hint(upstream_help_text):
    h = parse_help(upstream_help_text)
    with pytest.raises(Unsupported) as exc:
        render_argv(Profile(**SEED), h, Path("llama-server"), port=1)
    msg = str(exc.value)
    assert "kv_k=turbo4" in msg and "q8_0" in msg and "atomic-turboquant" in msg


def test_mtp_refused_when_build_lacks_it(upstream_help_text):
    text = upstream_help_text.replace("draft-mtp,", "")
    h = parse_help(text)
    err = check_supported(Profile(**dict(SEED, kv_k="f16", kv_v="f16")), h)
    assert err is not None and err.field == "enable_mtp"


def test_fork_dialect(fork_help_text):
    h = parse_help(fork_help_text)
    assert "turbo4" in h.allowed("--cache-type-k")
    argv = render_argv(Profile(**dict(SEED, draft_n=3)), h, Path("llama-server"), port=8084)
    joined = " ".join(argv)
    assert "--spec-type mtp" in joined
    assert "--cache-type-k turbo4 --cache-type-v turbo4" in joined
    assert "draft-mtp" not in joined


def test_bad_enum_value_refused(upstream_help_text):
    h = parse_help(upstream_help_text)
    with pytest.raises(Unsupported):
        render_argv(Profile(model="m", kv_k="q9_9"), h, Path("llama-server"), port=1)


def test_switch_and_onoff(upstream_help_text):
    h = parse_help(upstream_help_text)
    argv = render_argv(Profile(model="m", slots=False, kv_unified=False, metrics=False), h, Path("x"), port=1)
    assert "--no-slots" in argv and "--no-kv-unified" in argv and "--metrics" not in argv


def test_seed_profile_renders_on_the_fork(fork_help_text):
    """Every key of the shipped seed profile has a flag in the fork's dialect (no surprise refusal on the GPU box)."""
    from llamactl.serve.profiles import resolve

    p = resolve("gemma4-26b-a4b-mtp", environ={}).profile
    argv = render_argv(p.model_copy(update={"parallel": 2}), parse_help(fork_help_text), Path("llama-server"), port=8084)
    joined = " ".join(argv)
    for expected in ("--ctx-size 4096", "--parallel 2", "--batch-size 128", "--ubatch-size 64", "--split-mode layer",
                     "--cache-type-k turbo4", "--cache-type-v turbo4", "--reasoning-budget 1024", "--spec-type mtp",
                     "--port 8084", "--host 127.0.0.1", "--no-warmup", "--metrics"):
        assert expected in joined, expected
