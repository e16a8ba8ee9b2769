import pytest

from llamactl.serve import profiles
from llamactl.core.errors import LlamactlError


@pytest.fixture
def pdir(tmp_path):
    (tmp_path / "base.yaml").write_text("model: base.gguf\nctx: 1024\nparallel: 1\nbuild: {backend: cpu}\nenv: {A: '1'}\n")
    (tmp_path / "child.yaml").write_text("extends: base\nparallel: 3\nbuild: {source: atomic-turboquant}\nenv: {B: '2'}\n")
    return tmp_path


def test_extends_merges_and_records_origins(pdir):
    r = profiles.resolve("child", environ={}, root=pdir)
    p = r.profile
    assert (p.model, p.ctx, p.parallel) == ("base.gguf", 1024, 3)
    assert p.build.backend == "cpu" and p.build.source == "atomic-turboquant"
    assert p.env == {"A": "1", "B": "2"}
    assert r.origin("ctx") == "profile base.yaml"
    assert r.origin("parallel") == "profile child.yaml"
    assert r.origin("port") == "default"


def test_precedence_profile_env_cli(pdir):
    env = {"CTX": "2048", "PARALLEL": "2", "KV_K": "q8_0", "ENABLE_MTP": "1", "PORT": "0", "MAIN_GGUF": "/m.gguf"}
    r = profiles.resolve("child", environ=env, cli={"parallel": 4}, root=pdir)
    p = r.profile
    assert p.ctx == 2048 and r.origin("ctx") == "env CTX"
    assert p.parallel == 4 and r.origin("parallel") == "cli"
    assert p.kv_k == "q8_0" and p.enable_mtp is True and p.port == "auto"
    assert p.model == "/m.gguf" and r.origin("model") == "env MAIN_GGUF"


def test_unrelated_env_ignored(pdir):
    r = profiles.resolve("base", environ={"HOST": "0.0.0.0", "TEMP": "/tmp"}, root=pdir)
    assert r.profile.host == "127.0.0.1"


def test_set_parses_yaml_values_and_dotted_keys():
    assert profiles.parse_set(["parallel=2", "enable_mtp=true", "build.backend=hip", "kv_k=turbo4"]) == {
        "parallel": 2, "enable_mtp": True, "build": {"backend": "hip"}, "kv_k": "turbo4"}
    with pytest.raises(LlamactlError):
        profiles.parse_set(["novalue"])


@pytest.mark.parametrize("body,needle", [
    ("model: m\nparallel: two\n", "key 'parallel'"),
    ("model: m\nsplit_mode: diagonal\n", "'none', 'layer', 'row' or 'tensor'"),
    ("model: m\nkv_kk: f16\n", "unknown key (allowed:"),
    ("ctx: 10\n", "key 'model': required key is missing"),
    ("model: m\nbuild: {backend: metal}\n", "key 'build.backend'"),
    ("model: m\n  bad: [\n", "invalid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("model: m\nport: 70000\n", "key 'port'"),
])
def test_schema_errors_are_one_line(tmp_path, body, needle):
    (tmp_path / "bad.yaml").write_text(body)
    with pytest.raises(LlamactlError) as exc:
        profiles.resolve("bad", environ={}, root=tmp_path)
    msg = str(exc.value)
    assert needle in msg, msg
    assert "\n" not in msg and str(tmp_path / "bad.yaml") in msg


def test_env_error_names_the_variable(pdir):
    with pytest.raises(LlamactlError) as exc:
        profiles.resolve("base", environ={"PARALLEL": "many"}, root=pdir)
    assert "env PARALLEL" in str(exc.value)


def test_extends_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b\nmodel: m\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(LlamactlError, match="cycle"):
        profiles.resolve("a", environ={}, root=tmp_path)


def test_missing_profile_lists_known(pdir):
    with pytest.raises(LlamactlError) as exc:
        profiles.resolve("nope", environ={}, root=pdir)
    assert "base" in str(exc.value) and "child" in str(exc.value)


def test_shipped_profiles_validate():
    for name in profiles.list_profiles():
        r = profiles.resolve(name, environ={})
        assert r.profile.host == "127.0.0.1"


def test_seed_profile_values():
    p = profiles.resolve("gemma4-26b-a4b-mtp", environ={}).profile
    assert (p.ctx, p.batch, p.ubatch, p.split_mode, p.kv_k, p.kv_v, p.reasoning_budget, p.enable_mtp, p.port, p.no_warmup) == \
        (4096, 128, 64, "layer", "turbo4", "turbo4", 1024, True, 8084, True)
    assert p.build.backend == "hip" and p.build.source == "atomic-turboquant"


def test_the_shipped_schema_is_current_and_names_every_key_the_profiles_use():
    import json

    from llamactl.core import paths, yamlio

    shipped = json.loads((paths.profiles_dir() / "profile.schema.json").read_text())
    assert shipped == json.loads(json.dumps(profiles.file_schema())), "run: llamactl profile schema --output profiles/profile.schema.json"
    assert shipped["properties"]["ctx"]["x-flags"] == ["--ctx-size"] and "CTX" in shipped["properties"]["ctx"]["x-env"]
    harness = shipped["$defs"]["Harness"]["properties"]
    for path in paths.profiles_dir().glob("*.yaml"):
        text = path.read_text()
        assert text.startswith("# yaml-language-server: $schema=profile.schema.json"), path
        data = yamlio.load_file(path, "profile")
        assert set(data) <= set(shipped["properties"]), path
        assert not set(data) & set(profiles.HARNESS_KEYS), f"{path}: harness keys belong in its harness: block"
        assert set(data.get("harness") or {}) <= set(harness), path


def test_flat_harness_keys_still_load_into_the_block_and_a_cell_wins():
    p = profiles.Profile.model_validate({"model": "m", "expect_backend": "cpu", "harness": {"expect_offload": 3,
                                                                                            "expect_backend": "hip"}})
    assert (p.harness.expect_backend, p.harness.expect_offload, p.log_verbosity) == ("cpu", 3, 4)
    r = profiles.resolve("tiny-gemma4-mtp", environ={}, cli={"expect_acceptance": [0.1, 0.2]})
    assert r.profile.harness.expect_acceptance == (0.1, 0.2) and r.origin("harness.expect_acceptance") == "cli"
    assert r.profile.harness.concurrent_max_tokens == 400 and r.origin("harness.concurrent_max_tokens") == "profile tiny-gemma4-mtp.yaml"


@pytest.mark.parametrize("line,key,want", [
    ("api_key: 0755", "api_key", "0755"), ("alias: 1e3", "alias", "1e3"), ("host: 0x7f000001", "host", "0x7f000001"),
    ("alias: true", "alias", "true"), ("alias: .inf", "alias", ".inf"), ("alias: 0o17", "alias", "0o17"),
])
def test_a_profile_file_keeps_text_as_written_where_a_key_takes_text(tmp_path, line, key, want):
    p = tmp_path / "p.yaml"
    p.write_text(f"model: gemma3-270m\n{line}\nparallel: 2\nbuild:\n  source: 123\n")
    r = profiles.resolve(str(p), environ={})
    assert getattr(r.profile, key) == want
    assert r.profile.parallel == 2 and r.profile.build.source == "123"   # numbers stay numbers where they are numbers
