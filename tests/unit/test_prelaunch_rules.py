"""Rules llama-server enforces at start, refused before launch with the key to change."""

from pathlib import Path

import pytest

from llamactl.serve.dialect import parse_help
from llamactl.serve.profiles import Profile
from llamactl.serve.render import Refused, Unsupported, check_supported, prelaunch_rules, render_argv

BASE = dict(model="m.gguf", ctx=4096, parallel=1)


@pytest.mark.parametrize("kv_v", ["q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"])
def test_quantized_v_with_fa_off_is_refused_upstream(upstream_help_text, kv_v):
    h = parse_help(upstream_help_text)
    p = Profile(**BASE, kv_k="f16", kv_v=kv_v, flash_attn="off")
    with pytest.raises(Refused) as exc:
        render_argv(p, h, Path("llama-server"), port=1)
    assert exc.value.key == "flash_attn"
    msg = str(exc.value)
    assert f"kv_v={kv_v}" in msg and "flash_attn=off" in msg and "flash_attn: on" in msg


@pytest.mark.parametrize("fa", ["on", "auto", None])
@pytest.mark.parametrize("kv_v", ["q8_0", "f16", "bf16", "f32"])
def test_allowed_combinations_render(upstream_help_text, fa, kv_v):
    h = parse_help(upstream_help_text)
    argv = render_argv(Profile(**BASE, kv_k="q8_0", kv_v=kv_v, flash_attn=fa), h, Path("llama-server"), port=1)
    assert argv[argv.index("--cache-type-v") + 1] == kv_v


def test_quantized_k_alone_is_fine_with_fa_off(upstream_help_text):
    """Upstream's non-FA attention reads a quantized K; only V needs flash attention."""
    h = parse_help(upstream_help_text)
    argv = render_argv(Profile(**BASE, kv_k="q8_0", kv_v="f16", flash_attn="off"), h, Path("llama-server"), port=1)
    assert argv[argv.index("--flash-attn") + 1] == "off"


def test_yaml_boolean_false_counts_as_off():
    """An unquoted `flash_attn: off` reaches the profile as False from YAML 1.1 (whoever coerces it)."""
    p = Profile.model_construct(**BASE, kv_k="f16", kv_v="q8_0", flash_attn=False, enable_mtp=False)
    with pytest.raises(Refused, match="kv_v=q8_0"):
        prelaunch_rules(p)


@pytest.mark.parametrize("key", ["kv_k", "kv_v"])
@pytest.mark.parametrize("turbo", ["turbo2", "turbo3", "turbo4"])
def test_fork_turbo_types_need_flash_attention(fork_help_text, key, turbo):
    h = parse_help(fork_help_text)
    kv = {"kv_k": "f16", "kv_v": "f16", key: turbo}
    with pytest.raises(Refused) as exc:
        render_argv(Profile(**BASE, **kv, flash_attn="off"), h, Path("llama-server"), port=1)
    assert f"{key}={turbo}" in str(exc.value) and "turn it on" in str(exc.value)
    render_argv(Profile(**BASE, **kv, flash_attn="on"), h, Path("llama-server"), port=1)   # no raise


def test_draft_kv_checked_only_with_mtp(upstream_help_text):
    h = parse_help(upstream_help_text)
    p = dict(BASE, draft_model="d.gguf", kv_k="f16", kv_v="f16", kv_v_draft="q8_0", flash_attn="off")
    with pytest.raises(Refused, match="kv_v_draft=q8_0"):
        render_argv(Profile(**p, enable_mtp=True), h, Path("llama-server"), port=1)
    render_argv(Profile(**p, enable_mtp=False), h, Path("llama-server"), port=1)


def test_unsupported_wins_over_refused(upstream_help_text):
    """turbo4 on upstream is a SKIP (this build lacks it), not a refusal of the combination."""
    h = parse_help(upstream_help_text)
    p = Profile(**BASE, kv_k="turbo4", kv_v="turbo4", flash_attn="off")
    assert isinstance(check_supported(p, h), Unsupported)


def test_check_supported_lets_refused_through(upstream_help_text):
    """A refusal is not 'unsupported': validate reports it as the cell's error, not a skip."""
    h = parse_help(upstream_help_text)
    with pytest.raises(Refused):
        check_supported(Profile(**BASE, kv_v="q8_0", flash_attn="off"), h)
