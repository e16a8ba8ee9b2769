"""Issue 21: llama-server INI presets both ways (serve/presets.py, `profile export --ini`, `profile import`).

No server runs here: argv is rendered from the recorded --help of upstream, model paths are stand-ins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llamactl.core.errors import BadInput, ExitCode
from llamactl.serve import presets, profiles
from llamactl.serve.dialect import parse_help
from llamactl.serve.launcher import recorded_help_path
from llamactl.serve.render import render_argv

HELP = parse_help(recorded_help_path("upstream").read_text())
MODELS = {"model": Path("/m/target.gguf"), "draft_model": Path("/m/drafter.gguf")}


def _argv(prof: profiles.Profile, models: dict | None = None) -> list[str]:
    return render_argv(prof, HELP, Path("llama-server"), port=8080, model_paths=models)


def _without_host_port(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a in ("--host", "--port"):
            skip = True
        else:
            out.append(a)
    return out


@pytest.mark.parametrize("cli", [
    {},
    {"parallel": 2, "kv_k": "q8_0", "kv_v": "q8_0", "flash_attn": "on", "kv_unified": False, "slots": False},
    {"enable_mtp": False, "metrics": False, "extra_args": ["--top-k", "5", "--jinja"], "api_key": "0x1"},
])
def test_export_then_import_renders_the_same_argv(cli):
    r = profiles.resolve("tiny-gemma4-mtp", environ={}, cli=cli)
    text = presets.export_ini([("tiny", r.profile, _argv(r.profile, MODELS))], HELP, "test")
    [imp] = presets.import_preset(text, "t.ini", HELP)
    assert imp.name == "tiny" and imp.data["alias"] == r.profile.alias
    back = profiles.Profile.model_validate(imp.data)
    assert _without_host_port(_argv(back)) == _without_host_port(_argv(r.profile, MODELS))


def test_export_names_what_a_section_cannot_carry_and_leaves_host_port_to_the_router():
    r = profiles.resolve("tiny-gemma4-mtp", environ={}, cli={"env": {"OMP_NUM_THREADS": "2"}})
    text = presets.export_ini([("tiny", r.profile, _argv(r.profile, MODELS))], HELP, "test")
    assert "\n[tiny]\n" in text and "model         = /m/target.gguf" in text and "spec-type     = draft-mtp" in text
    assert "; env: OMP_NUM_THREADS" in text and "; build: upstream/cpu" in text and "; matrix: not exported" in text
    assert "port" not in presets.parse_ini(text).sections[0].values
    assert "host" not in presets.parse_ini(text).sections[0].values


def test_export_refuses_a_value_the_ini_format_cannot_carry():
    r = profiles.resolve("default", environ={}, cli={"alias": "a;b"})
    with pytest.raises(BadInput, match=r"alias = 'a;b' cannot be written in a preset \(';' ends a value"):
        presets.export_ini([("d", r.profile, _argv(r.profile, MODELS))], HELP, "test")


def test_export_refuses_a_flag_given_twice():
    r = profiles.resolve("default", environ={}, cli={"extra_args": ["--top-k", "5", "--top-k", "6"]})
    with pytest.raises(BadInput, match="--top-k is given twice"):
        presets.export_ini([("d", r.profile, _argv(r.profile, MODELS))], HELP, "test")


def test_shared_section_applies_to_every_section_and_the_section_wins_in_any_spelling():
    text = "[*]\nc = 2048\nthreads = 3\n[a]\nmodel = /a.gguf\nctx-size = 1024\n[b]\nmodel = /b.gguf\n"
    a, b = presets.import_preset(text, "p.ini", HELP)
    assert (a.data["ctx"], a.data["threads"]) == (1024, 3)
    assert (b.data["ctx"], b.data["threads"]) == (2048, 3)


def test_keys_by_short_name_env_name_and_negative_spelling():
    text = ("[a]\nm = /a.gguf\nLLAMA_ARG_N_PARALLEL = 3\nno-slots = true\nno-warmup = true\nkv-unified = off\n"
            "no-perf = true\ntop-k = 4\n")
    [a] = presets.import_preset(text, "p.ini", HELP)
    d = a.data
    assert (d["model"], d["parallel"], d["slots"], d["no_warmup"], d["kv_unified"]) == ("/a.gguf", 3, False, True, False)
    assert d["extra_args"] == ["--no-perf", "--top-k", "4"]
    assert d["metrics"] is False        # llama-server's default, not the profile schema's


@pytest.mark.parametrize("key,value,field", [
    ("alias", "on", "alias"), ("alias", "08", "alias"), ("api-key", "0x1", "api_key"), ("cache-type-k", "1e3", "kv_k"),
    ("alias", "2026-01-01", "alias"), ("alias", "123", "alias"), ("host", "1e3", "host"), ("alias", "null", "alias"),
])
def test_text_values_stay_text_through_the_written_yaml(tmp_path, key, value, field):
    text = f"[p]\nmodel = /p.gguf\n{key} = {value}\n"
    [imp] = presets.import_preset(text, "p.ini", HELP)
    path = tmp_path / "p.yaml"
    path.write_text(presets.profile_yaml(imp, "p.ini"))
    prof = profiles.resolve(str(path), environ={}).profile
    assert getattr(prof, field) == value and isinstance(getattr(prof, field), str)


def test_numbers_are_typed_by_the_schema(tmp_path):
    [imp] = presets.import_preset("[p]\nmodel = /p.gguf\nctx-size = 08\nn-gpu-layers = 99\ntemp = 1e-1\n", "p.ini", HELP)
    assert (imp.data["ctx"], imp.data["n_gpu_layers"], imp.data["temperature"]) == (8, 99, 0.1)


@pytest.mark.parametrize("text,match", [
    ("[a]\nmodel = /a.gguf\nctx-sise = 4\n", r"p.ini:3: \[a\] key 'ctx-sise' is not a llama-server option of this build"),
    ("[*]\nbogus = 1\n[a]\nmodel = /a.gguf\n", r"p.ini:2: \[\*\] key 'bogus' is not a llama-server option"),
    ("[a]\nmodel = /a.gguf\n[a]\nctx-size = 4\n", r"p.ini:3: section \[a\] given twice \(first at line 1\)"),
    ("[a]\nmodel = /a.gguf\nmodel = /b.gguf\n", r"p.ini:3: key 'model' given twice in \[a\] \(first at line 2\)"),
    ("[a]\nmodel = /a.gguf\nc = 1\nctx-size = 2\n", r"p.ini:4: \[a\] key 'ctx-size' sets the same option as 'c'"),
    ("[a]\nmodel /a.gguf\n", r"p.ini:2: not a preset line"),
    ("[a]\n  model = /a.gguf\n", r"p.ini:2: not a preset line \(a key must start in column 1\)"),
    ("[a\nmodel = /a.gguf\n", r"p.ini:1: not a preset line"),
    ("[]\n", r"p.ini:1: empty section name"),
    ("[a]\nctx-size = 4\n", r"p.ini:1: \[a\] has no model key"),
    ("[a]\nmodel = /a.gguf\nparallel = many\n", r"p.ini:3: \[a\] profile key 'parallel'"),
    ("[a]\nmodel = /a.gguf\nslots = maybe\n", r"expected true/false"),
    ("[a]\nmodel = /a.gguf\nspec-type = ngram-simple\n", r"spec-type = ngram-simple has no profile key"),
    ("[*]\nc = 1\n", r"no model sections"),
    ("[a/b]\nmodel = /a.gguf\n[a:b]\nmodel = /b.gguf\n", r"both make profile 'a-b'"),
])
def test_bad_presets_are_one_line_errors(text, match):
    with pytest.raises(BadInput, match=match) as e:
        presets.import_preset(text, "p.ini", HELP)
    assert "\n" not in str(e.value)


def test_comments_and_values_follow_llama_cpp_grammar():
    p = presets.parse_ini("version = 1\n; c\n# c\n[a] ; note\nmodel = /a.gguf ; trailing\ntemp=0.5\n\n", "p.ini")
    assert [s.name for s in p.sections] == ["a"] and p.sections[0].values == {"model": "/a.gguf", "temp": "0.5"}


def test_preset_only_keys_are_named_not_dropped_silently():
    [a] = presets.import_preset("[a]\nmodel = /a.gguf\nload-on-startup = true\n", "p.ini", HELP)
    assert any("load-on-startup = true not kept" in n for n in a.notes)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamactl", *args], capture_output=True, text=True, cwd=cwd,
                          env={"LLAMACTL_NO_PROGRESS": "1", "NO_COLOR": "1", "PATH": "/usr/bin:/bin",
                               "HOME": str(Path.home())}, timeout=60)


def test_cli_import_unknown_key_is_one_line_exit_2_nothing_written(tmp_path):
    ini = tmp_path / "m.ini"
    ini.write_text("[good]\nmodel = /g.gguf\n[bad]\nmodel = /b.gguf\nnot-a-flag = 1\n")
    cp = _cli("profile", "import", str(ini), "--out-dir", str(tmp_path / "out"))
    assert cp.returncode == ExitCode.BAD_INPUT
    assert "Traceback" not in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    assert "m.ini:5: [bad] key 'not-a-flag' is not a llama-server option" in cp.stderr
    assert not (tmp_path / "out").exists()


def test_cli_import_refuses_to_overwrite_without_force(tmp_path):
    ini = tmp_path / "m.ini"
    ini.write_text("[a]\nmodel = /a.gguf\nalias = on\n[b]\nmodel = /b.gguf\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.yaml").write_text("model: keep-me\n")
    cp = _cli("profile", "import", str(ini), "--out-dir", str(out))
    assert cp.returncode == ExitCode.BAD_INPUT and "already exist" in cp.stderr and "Traceback" not in cp.stderr
    assert (out / "b.yaml").read_text() == "model: keep-me\n" and not (out / "a.yaml").exists()
    cp = _cli("profile", "import", str(ini), "--out-dir", str(out), "--force", "--json")
    assert cp.returncode == 0, cp.stderr
    assert 'model: "/b.gguf"' in (out / "b.yaml").read_text() and 'alias: "on"' in (out / "a.yaml").read_text()


def test_cli_export_without_a_format_is_bad_input():
    cp = _cli("profile", "export", "default")
    assert cp.returncode == ExitCode.BAD_INPUT and "choose a format: --ini" in cp.stderr and "Traceback" not in cp.stderr


def test_cli_more_profiles_without_router_is_bad_input():
    cp = _cli("run", "default", "tiny-gemma4-mtp")
    assert cp.returncode == ExitCode.BAD_INPUT and "needs --router" in cp.stderr and "Traceback" not in cp.stderr
    assert "unexpected extra argument" in cp.stderr
