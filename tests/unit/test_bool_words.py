"""Issue 16 item 1: words YAML 1.1 takes for booleans mean what the user typed, everywhere."""

from __future__ import annotations

import pytest

from llamactl.core.errors import BadInput
from llamactl.judge.matrix import expand, load_matrix_file, select
from llamactl.serve import profiles
from llamactl.serve.profiles import MatrixSpec

ON_WORDS = ["on", "On", "ON"]
OFF_WORDS = ["off", "Off", "OFF"]
TRUE_WORDS = ["on", "On", "ON", "yes", "Yes", "YES", "y", "Y", "true", "True", "TRUE", "1"]
FALSE_WORDS = ["off", "Off", "OFF", "no", "No", "NO", "n", "N", "false", "False", "FALSE", "0"]


@pytest.fixture
def pdir(tmp_path):
    (tmp_path / "base.yaml").write_text("model: m.gguf\nctx: 1024\n")
    return tmp_path


def _profile(pdir, body: str, **kw) -> profiles.Profile:
    (pdir / "p.yaml").write_text("extends: base\n" + body)
    return profiles.resolve("p", environ=kw.get("environ", {}), cli=kw.get("cli"), root=pdir).profile


@pytest.mark.parametrize("word,want", [(w, "on") for w in ON_WORDS] + [(w, "off") for w in OFF_WORDS])
def test_flash_attn_words_in_profile_set_and_env(pdir, word, want):
    assert _profile(pdir, f"flash_attn: {word}\n").flash_attn == want                        # unquoted in YAML
    assert _profile(pdir, "", cli=profiles.parse_set([f"flash_attn={word}"])).flash_attn == want   # --set
    assert _profile(pdir, "", environ={"FA": word}).flash_attn == want                       # the fork scripts' FA


@pytest.mark.parametrize("word", ["yes", "no", "y", "n", "maybe"])
def test_flash_attn_other_words_are_refused_as_typed(pdir, word):
    with pytest.raises(BadInput) as exc:
        _profile(pdir, f"flash_attn: {word}\n")
    assert "key 'flash_attn'" in str(exc.value) and "'on', 'off' or 'auto'" in str(exc.value)
    assert "p.yaml:2" in str(exc.value)


def test_real_yaml_booleans_still_reach_flash_attn(pdir):
    assert _profile(pdir, "flash_attn: true\n").flash_attn == "on"
    assert _profile(pdir, "flash_attn: false\n").flash_attn == "off"


@pytest.mark.parametrize("key", ["enable_mtp", "metrics", "slots", "no_warmup", "kv_unified"])
@pytest.mark.parametrize("word,want", [(w, True) for w in TRUE_WORDS] + [(w, False) for w in FALSE_WORDS])
def test_bool_keys_take_every_word(pdir, key, word, want):
    assert getattr(_profile(pdir, f"{key}: {word}\n"), key) is want
    assert getattr(_profile(pdir, "", cli=profiles.parse_set([f"{key}={word}"])), key) is want


def test_bool_key_refuses_other_words(pdir):
    with pytest.raises(BadInput, match=r"key 'metrics': expected a boolean .*got 'maybe'"):
        _profile(pdir, "metrics: maybe\n")
    with pytest.raises(BadInput, match=r"key 'build.no_patches'"):
        _profile(pdir, "build: {no_patches: perhaps}\n")
    assert _profile(pdir, "build: {no_patches: yes}\n").build.no_patches is True


def test_enum_words_that_are_not_booleans(pdir):
    p = _profile(pdir, "split_mode: none\nalias: yes\ndescription: no\nkv_k: f16\n")
    assert (p.split_mode, p.alias, p.description) == ("none", "yes", "no")


@pytest.mark.parametrize("word,want", [("on", "on"), ("OFF", "off"), ("Off", "off"), ("auto", "auto")])
def test_matrix_axes_and_cell_filters(word, want):
    cells = expand(MatrixSpec(axes={"flash_attn": ["on", "off"], "mtp": ["yes", "no"]}))
    assert [c.values for c in cells][1] == {"flash_attn": "on", "enable_mtp": False}
    if want == "auto":
        with pytest.raises(BadInput, match="no matrix cell matches"):
            select(cells, [f"flash_attn={word}"])
        return
    picked = select(cells, [f"flash_attn={word}", "mtp=Y"])
    assert [c.values for c in picked] == [{"flash_attn": want, "enable_mtp": True}]


@pytest.mark.parametrize("word", TRUE_WORDS + FALSE_WORDS)
def test_mtp_cell_filter_words(word):
    cells = expand(MatrixSpec(axes={"mtp": [True, False]}))
    assert [c.values["enable_mtp"] for c in select(cells, [f"mtp={word}"])] == [word in TRUE_WORDS]


def test_matrix_file_with_yaml11_words(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("axes:\n  flash_attn: [on, off]\n  no_warmup: [yes]\nexclude:\n  - {flash_attn: off}\n")
    cells = expand(load_matrix_file(f))
    assert [c.values for c in cells] == [{"flash_attn": "on", "no_warmup": True}]
