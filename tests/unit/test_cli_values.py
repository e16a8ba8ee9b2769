"""Values typed on the command line (--set, --cell) and in the environment: a key that takes text gets the
text typed, whatever YAML would make of it; numeric and boolean keys get typed values."""

from __future__ import annotations

import json

import pytest

from llamactl import cli
from llamactl.judge.matrix import expand, select
from llamactl.serve import profiles
from llamactl.serve.profiles import ENV_VARS, MatrixSpec, cli_value, field_annotation, parse_set, takes_text

# text YAML 1.2 (or 1.1) would make into something else: a float, an int (hex, octal, decimal), a date,
# a timestamp, a list, a mapping, a comment, a 1.1 boolean word
LOOKALIKES = ["127.1", "0x7f000001", "0o17", "123", "1e3", "-5", ".5", "2026-01-01", "2026-01-01 10:00:00",
              "no", "on", "off", "yes", "[a, b]", "{a: 1}", "a: b", "foo #bar", "#x", "true", "False", ".inf"]


def _text_keys() -> list[str]:
    """Every profile key that takes text, dotted for nested blocks: found from the schema, so a new one is covered."""
    keys = [k for k, f in profiles.Profile.model_fields.items() if takes_text(f.annotation)]
    for block, model in (("build", profiles.BuildSpec), ("harness", profiles.Harness)):
        keys += [f"{block}.{k}" for k, f in model.model_fields.items() if takes_text(f.annotation)]
    return keys


TEXT_KEYS = _text_keys()
# keys that take text alone (or None): any text validates, so the whole profile can be checked
FREE_TEXT = [k for k in TEXT_KEYS if k not in ("server_binary", "n_gpu_layers", "n_gpu_layers_draft", "extends")]


def test_the_schema_walk_finds_the_text_keys():
    assert {"host", "model", "alias", "kv_k", "api_key", "description", "server_binary", "n_gpu_layers",
            "build.source", "build.gpu_targets", "build.series", "harness.expect_failure"} <= set(TEXT_KEYS)
    assert not {"ctx", "parallel", "port", "metrics", "enable_mtp", "flash_attn", "build.backend",
                "build.no_patches", "tensor_split", "extra_args"} & set(TEXT_KEYS)
    assert field_annotation("expect_failure") == field_annotation("harness.expect_failure") == (str | None)
    assert field_annotation("build.nope") is None and field_annotation("nope") is None


@pytest.mark.parametrize("raw", LOOKALIKES)
@pytest.mark.parametrize("key", TEXT_KEYS)
def test_a_text_key_keeps_the_text_typed(key, raw):
    value = cli_value(key, raw)
    if key.startswith("n_gpu_layers") and isinstance(value, int):   # int | str: a number stays a number
        assert raw in ("0x7f000001", "0o17", "123", "-5")
        return
    assert value == raw


@pytest.mark.parametrize("raw", LOOKALIKES)
@pytest.mark.parametrize("key", FREE_TEXT)
def test_set_reaches_the_profile_as_the_text_typed(key, raw):
    r = profiles.resolve("default", environ={}, cli=parse_set([f"{key}={raw}"]))
    obj = r.profile
    for part in key.split("."):
        obj = getattr(obj, part)
    assert obj == raw and r.origin(key) == "cli"


@pytest.mark.parametrize("item,key,expected", [
    ("host=127.1", "host", "127.1"),
    ("host=0x7f000001", "host", "0x7f000001"),
    ("alias=no", "alias", "no"),
    ("alias=on", "alias", "on"),
    ("alias=2026-01-01", "alias", "2026-01-01"),
    ("kv_k=1e3", "kv_k", "1e3"),
    ("model=123", "model", "123"),
    ("api_key=12345", "api_key", "12345"),
    ("build.source=2026.01", "build.source", "2026.01"),
    ("build.gpu_targets=86", "build.gpu_targets", "86"),
    # null unsets what may be unset; where a key must be set, and quoted, it is the word
    ("alias=null", "alias", None),
    ("alias=~", "alias", None),
    ("build.series=NULL", "build.series", None),
    ("model=null", "model", "null"),
    ("alias='null'", "alias", "null"),
    ('alias="2026-01-01"', "alias", "2026-01-01"),
    # numeric and boolean keys: typed as before
    ("ctx=0x10", "ctx", 16),
    ("ctx=1e3", "ctx", 1000),
    ("parallel=2", "parallel", 2),
    ("temperature=0.5", "temperature", 0.5),
    ("metrics=off", "metrics", False),
    ("enable_mtp=true", "enable_mtp", True),
    ("build.no_patches=yes", "build.no_patches", True),
    ("n_gpu_layers=99", "n_gpu_layers", 99),
    ("n_gpu_layers=all", "n_gpu_layers", "all"),
    ("port=8080", "port", 8080),
    ("harness.request_timeout=30", "harness.request_timeout", 30.0),
    ("env.OMP_NUM_THREADS=04", "env.OMP_NUM_THREADS", "04"),
])
def test_set_values(item, key, expected):
    p = profiles.resolve("default", environ={}, cli=parse_set([item])).profile
    obj = p
    for part in key.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    assert obj == expected and type(obj) is type(expected)


@pytest.mark.parametrize("var,key,text", [
    ("MAIN_GGUF", "model", "123"), ("MAIN_GGUF", "model", "2026-01-01"), ("DRAFT_GGUF", "draft_model", "1e3"),
    ("KV_K", "kv_k", "0x10"), ("CTV", "kv_v", "1.5"), ("CTKD", "kv_k_draft", "null"), ("DRAFT_GGUF", "draft_model", "on"),
])
def test_environment_values_are_the_text_set(var, key, text):
    assert ENV_VARS[var] == key
    r = profiles.resolve("default", environ={var: text})
    assert getattr(r.profile, key) == text and r.origin(key) == f"env {var}"


def test_environment_numbers_and_booleans_are_still_typed():
    p = profiles.resolve("default", environ={"CTX": "2048", "ENABLE_METRICS": "off", "NGL": "12"}).profile
    assert (p.ctx, p.metrics, p.n_gpu_layers) == (2048, False, 12)


@pytest.mark.parametrize("flt,cell_id", [
    ("alias=127.10", "alias=127.10"), ("alias=0x10", "alias=0x10"), ("alias=2026-01-01", "alias=2026-01-01"),
    ("kv_k=1e3", "kv_k=1e3"), ("parallel=0x2", "parallel=2"),
])
def test_cell_filters_type_values_as_set_does(flt, cell_id):
    spec = MatrixSpec(axes={"alias": ["127.10", "0x10", "2026-01-01"]},
                      include=[{"kv_k": "1e3"}, {"parallel": 2}])
    picked = select(expand(spec), [flt])
    assert [c.id for c in picked] == [cell_id]


def test_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path))
    rc = cli.run(["profile", "show", "default", "--no-env", "--json", "--set", "alias=2026-01-01",
                  "--set", "api_key=12345", "--set", "kv_k=1e3", "--set", "build.gpu_targets=86", "--set", "ctx=0x800"])
    assert rc == 0, capsys.readouterr().err
    values = {r["key"]: r["value"] for r in json.loads(capsys.readouterr().out)["values"]}
    assert values["alias"] == "2026-01-01" and values["api_key"] == "12345" and values["kv_k"] == "1e3"
    assert values["ctx"] == 2048


def _float_keys() -> list[str]:
    """Every profile key that takes a float (alone, in a union, or in a list), dotted for nested blocks."""
    def floaty(ann) -> bool:
        return "float" in str(ann)
    keys = [k for k, f in profiles.Profile.model_fields.items() if floaty(f.annotation)]
    for block, model in (("build", profiles.BuildSpec), ("harness", profiles.Harness),
                         ("harness.soak", profiles.SoakBounds)):
        keys += [f"{block}.{k}" for k, f in model.model_fields.items() if floaty(f.annotation)]
    return keys


@pytest.mark.parametrize("raw", [".nan", ".inf", "-.inf", ".NaN", "[.nan]", "[0.5, .inf]"])
@pytest.mark.parametrize("key", _float_keys())
def test_yaml_infinity_and_nan_are_no_setting(key, raw):
    """.inf and .nan are YAML floats: accepted, they reached llama-server as "inf" and the JSON output as
    NaN (which is not JSON). Every float key refuses them, naming the key and the value."""
    cli_set = parse_set([f"{key}={raw}"])
    with pytest.raises(profiles.BadInput) as e:
        profiles.resolve("default", environ={}, cli=cli_set)
    assert f"key '{key}" in str(e.value) and ("finite" in str(e.value) or "valid" in str(e.value)), str(e.value)
