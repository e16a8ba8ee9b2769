"""Issue 9 "Inputs": every malformed input, fed through the CLI, gives one line, the table's exit code,
and no traceback. Nothing here builds or starts a server: each input is refused before that."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from llamactl import cli
from llamactl.core.errors import ExitCode
from llamactl.serve import launcher
from llamactl.serve.profiles import ENV_VARS

BAD = ExitCode.BAD_INPUT


def _bomb() -> str:
    text = 'model: m\ndescription: x\nlol: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghi":
        text += f"l{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text


@pytest.fixture
def d(tmp_path: Path, monkeypatch) -> Path:
    """A folder of malformed inputs, and an environment without the run scripts' variables."""
    for var in [*ENV_VARS, "LLAMACTL_DEBUG"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMACTL_NO_PROGRESS", "1")
    monkeypatch.setattr(launcher, "HELP_TIMEOUT_S", 1.0)
    w = {
        "syntax.yaml": "model: m\nparallel: [1,\n",
        "dup.yaml": "model: m\nctx: 1024\nparallel: 1\nctx: 2048\n",
        "unknown.yaml": "model: m\nkv_kk: f16\n",
        "type.yaml": "model: m\nparallel: lots\n",
        "list.yaml": "- a\n- b\n",
        "bomb.yaml": _bomb(),
        "deep.yaml": "model: m\nx: " + "[" * 200 + "\n",
        "cycle.yaml": "extends: cycle\nmodel: m\n",
        "extends-int.yaml": "extends: 3\nmodel: m\n",
        "extends-missing.yaml": "extends: no-such-profile\nmodel: m\n",
        "fa.yaml": "extends: default\nflash_attn: maybe\n",
        "mine.yaml": "extends: default\nctx: 2048\nflash_attn: off\nmetrics: No\n",
        "matrix-list.yaml": "- parallel: 1\n",
        "matrix-key.yaml": "axes:\n  paralel: [1, 2]\n",
        "matrix-empty-axis.yaml": "axes:\n  parallel: []\n",
        "matrix-all-excluded.yaml": "axes: {parallel: [1]}\nexclude: [{parallel: 1}]\n",
        "matrix-dup.yaml": "axes: {parallel: [1]}\naxes: {parallel: [2]}\n",
        "matrix-shape.yaml": "axes: {parallel: 2}\n",
        "matrix-field.yaml": "axez: {parallel: [1]}\n",
        "empty-prompts.txt": "\n\n",
        "bench-a.json": "{not json",
        "bench-b.json": "{\"cells\": 3}",
    }
    for name, body in w.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "latin1.yaml").write_bytes(b"model: m\ndescription: caf\xe9\n")
    (tmp_path / "latin1.txt").write_bytes(b"hello\n\xff\xfe\n")
    (tmp_path / "big.yaml").write_bytes(b"model: m\n" + b"# padding\n" * 500_000)
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    (tmp_path / "cachefiles").mkdir()
    for sub in ("models", "builds", "downloads", "runs", "trees"):
        (tmp_path / "cachefiles" / sub).write_text("")
    scripts = {"hang": "#!/bin/sh\nexec sleep 30\n", "notserver": "#!/bin/sh\necho 'usage: frob [--verbose]'\n",
               "noexec": "#!/bin/sh\necho\n", "garbage": "\x7fELF not really\n"}
    for name, body in scripts.items():
        p = tmp_path / name
        p.write_text(body)
        if name != "noexec":
            p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return tmp_path


# (case id, argv with {d} for the folder, exit code, text the one line must hold)
CASES = [
    # profiles
    ("profile-syntax", ["profile", "show", "{d}/syntax.yaml"], BAD, "syntax.yaml:3: invalid YAML"),
    ("profile-duplicate-key", ["profile", "show", "{d}/dup.yaml"], BAD, "dup.yaml:4: invalid YAML: duplicate key 'ctx' (first at line 2)"),
    ("profile-unknown-key", ["profile", "show", "{d}/unknown.yaml"], BAD, "unknown.yaml:2: key 'kv_kk': unknown key"),
    ("profile-bad-type", ["run", "{d}/type.yaml"], BAD, "type.yaml:2: key 'parallel'"),
    ("profile-not-mapping", ["profile", "show", "{d}/list.yaml"], BAD, "must be a mapping"),
    ("profile-yaml-bomb", ["profile", "show", "{d}/bomb.yaml"], BAD, "expands to more than"),
    ("profile-deep", ["profile", "show", "{d}/deep.yaml"], BAD, "nested deeper than"),
    ("profile-huge", ["profile", "show", "{d}/big.yaml"], BAD, "refusing to read more than"),
    ("profile-not-utf8", ["profile", "show", "{d}/latin1.yaml"], BAD, "latin1.yaml:2: not UTF-8"),
    ("profile-directory", ["profile", "show", "{d}/dir.yaml"], BAD, "is a directory"),
    ("profile-directory-noext", ["run", "{d}/adir"], BAD, "is a directory"),
    ("profile-missing", ["profile", "show", "no-such-profile"], BAD, "profile 'no-such-profile' not found"),
    ("profile-missing-path", ["profile", "show", "{d}/nope.yaml"], BAD, "not found"),
    ("profile-extends-cycle", ["profile", "show", "{d}/cycle.yaml"], BAD, "extends forms a cycle"),
    ("profile-extends-int", ["profile", "show", "{d}/extends-int.yaml"], BAD, "extends '3': no such profile"),
    ("profile-extends-missing", ["profile", "show", "{d}/extends-missing.yaml"], BAD, "extends-missing.yaml:1: extends 'no-such-profile': no such profile"),
    ("profile-enum-word", ["profile", "show", "{d}/fa.yaml"], BAD, "fa.yaml:2: key 'flash_attn': Input should be 'on', 'off' or 'auto'"),
    # --set
    ("set-no-equals", ["profile", "show", "default", "--set", "ctx"], BAD, "--set 'ctx': expected key=value"),
    ("set-empty-key", ["profile", "show", "default", "--set", "=3"], BAD, "empty key name"),
    ("set-not-mapping", ["profile", "show", "default", "--set", "build=3", "--set", "build.backend=hip"], BAD, "not a mapping"),
    ("set-bad-value", ["profile", "show", "default", "--set", "parallel=abc"], BAD, "key 'parallel'"),
    ("set-unknown-key", ["profile", "show", "default", "--set", "paralel=2"], BAD, "key 'paralel': unknown key"),
    ("set-enum", ["profile", "show", "default", "--set", "flash_attn=maybe"], BAD, "key 'flash_attn'"),
    ("set-bool", ["profile", "show", "default", "--set", "metrics=perhaps"], BAD, "key 'metrics': expected a boolean"),
    ("set-extra-args-type", ["profile", "show", "default", "--set", "extra_args={{a: 1}}"], BAD, "key 'extra_args'"),
    ("set-backend", ["profile", "show", "default", "--set", "build.backend=metal"], BAD, "key 'build.backend'"),
    # ports
    ("port-word", ["profile", "show", "default", "--port", "abc"], BAD, "port must be a number 1-65535"),
    ("port-too-big", ["profile", "show", "default", "--port", "70000"], BAD, "got 70000 [cli]"),
    ("port-negative", ["profile", "show", "default", "--port", "-1"], BAD, "got -1 [cli]"),
    ("port-float", ["profile", "show", "default", "--set", "port=80.5"], BAD, "port must be a number"),
    ("port-env", ["profile", "show", "default"], BAD, "[env PORT]"),
    # command line itself
    ("option-not-int", ["run", "default", "--parallel", "x"], BAD, "Invalid value for '--parallel'"),
    ("option-unknown", ["validate", "default", "--bogus"], BAD, "No such option: --bogus"),
    ("command-unknown", ["frobnicate"], BAD, "No such command"),
    ("bench-repeat", ["bench", "default", "--repeat", "0"], BAD, "--repeat must be >= 1"),
    # --cell and matrices
    ("cell-unknown-key", ["validate", "default", "--cell", "paralel=1"], BAD, "--cell 'paralel=1': unknown key 'paralel'"),
    ("cell-bad-kv", ["validate", "default", "--cell", "kv=a/b/c"], BAD, "kv must be 'K/V'"),
    ("cell-bad-bool", ["validate", "tiny-gemma4-mtp", "--cell", "mtp=maybe"], BAD, "expected a boolean"),
    ("cell-no-match", ["validate", "default", "--cell", "parallel=9"], BAD, "no matrix cell matches parallel=9"),
    ("cell-yaml-junk", ["validate", "default", "--cell", "parallel=[", "--cell", "kv=f16/f16"], BAD, "no matrix cell matches"),
    ("matrix-missing", ["validate", "default", "--matrix", "{d}/none.yaml"], BAD, "matrix file {d}/none.yaml not found"),
    ("matrix-directory", ["validate", "default", "--matrix", "{d}/adir"], BAD, "is a directory"),
    ("matrix-not-utf8", ["validate", "default", "--matrix", "{d}/latin1.yaml"], BAD, "not UTF-8"),
    ("matrix-list", ["validate", "default", "--matrix", "{d}/matrix-list.yaml"], BAD, "must be a mapping"),
    ("matrix-unknown-axis", ["validate", "default", "--matrix", "{d}/matrix-key.yaml"], BAD, "matrix-key.yaml: unknown key 'paralel'"),
    ("matrix-empty-axis", ["validate", "default", "--matrix", "{d}/matrix-empty-axis.yaml"], BAD, "axis 'parallel' has no values"),
    ("matrix-all-excluded", ["validate", "default", "--matrix", "{d}/matrix-all-excluded.yaml"], BAD, "no cells"),
    ("matrix-duplicate-key", ["validate", "default", "--matrix", "{d}/matrix-dup.yaml"], BAD, "matrix-dup.yaml:2: invalid YAML: duplicate key 'axes'"),
    ("matrix-shape", ["validate", "default", "--matrix", "{d}/matrix-shape.yaml"], BAD, "matrix-shape.yaml:1: invalid matrix: key 'axes.parallel'"),
    ("matrix-field", ["validate", "default", "--matrix", "{d}/matrix-field.yaml"], BAD, "key 'axez': unknown key"),
    ("matrix-bomb", ["bench", "default", "--matrix", "{d}/bomb.yaml"], BAD, "expands to more than"),
    # report paths, checked before the run
    ("json-is-directory", ["validate", "default", "--json-out", "{d}/adir"], BAD, "--json-out path {d}/adir is a directory"),
    ("junit-under-file", ["validate", "default", "--junit", "{d}/afile/r.xml"], BAD, "is not a directory"),
    ("json-unwritable", ["validate", "default", "--json-out", "/proc/llamactl/r.json"], BAD, "cannot be created"),
    ("bench-json-dir", ["bench", "default", "--json-out", "{d}/adir"], BAD, "is a directory"),
    ("bench-plot-under-file", ["bench", "default", "--plot", "{d}/afile/p.png"], BAD, "is not a directory"),
    ("bisect-json-dir", ["bisect", "default", "--cell", "parallel=2", "--good", "a", "--bad", "b", "--json-out", "{d}/adir"], BAD,
     "--json-out path {d}/adir is a directory"),
    ("bisect-json-under-file", ["bisect", "no-such-profile", "--cell", "x", "--json-out", "{d}/afile/b.json"], BAD, "is not a directory"),
    # prompts and saved bench runs
    ("prompts-directory", ["bench", "default", "--prompts", "{d}/adir"], BAD, "prompts file {d}/adir is a directory"),
    ("prompts-not-utf8", ["bench", "default", "--prompts", "{d}/latin1.txt"], BAD, "latin1.txt:2: not UTF-8"),
    ("prompts-missing", ["bench", "default", "--prompts", "{d}/none.txt"], BAD, "not found"),
    ("prompts-empty", ["bench", "default", "--prompts", "{d}/empty-prompts.txt"], BAD, "holds no prompts"),
    ("compare-not-json", ["bench", "--compare", "{d}/bench-a.json", "{d}/bench-b.json"], BAD, "not JSON"),
    ("compare-wrong-shape", ["bench", "--compare", "{d}/bench-b.json", "{d}/bench-b.json"], BAD, "not llamactl bench JSON"),
    # server_binary
    ("binary-missing", ["profile", "cmd", "default", "--set", "server_binary={d}/none"], BAD, "server_binary (LLAMA_SERVER) {d}/none does not exist"),
    ("binary-directory", ["profile", "cmd", "default", "--set", "server_binary={d}/adir"], BAD, "is a directory"),
    ("binary-not-executable", ["profile", "cmd", "default", "--set", "server_binary={d}/noexec"], BAD, "is not executable"),
    ("binary-cannot-run", ["profile", "cmd", "default", "--set", "server_binary={d}/garbage"], BAD, "cannot be run"),
    ("binary-hangs", ["profile", "cmd", "default", "--set", "server_binary={d}/hang"], BAD, "did not answer --help within 1s"),
    ("binary-not-llama-server", ["run", "default", "--set", "server_binary={d}/notserver"], BAD, "is not a llama-server: its --help lacks --port"),
    ("binary-env", ["profile", "cmd", "default"], BAD, "{d}/notserver is not a llama-server"),
    # places given through the environment that cannot be directories
    ("cache-is-a-file", ["profile", "cmd", "default"], BAD, "LLAMACTL_CACHE={d}/afile: cannot use {d}/afile as a directory"),
    ("cache-under-a-file", ["validate", "default"], BAD, "LLAMACTL_CACHE={d}/afile/c: cannot use {d}/afile/c as a directory"),
    ("xdg-cache-is-a-file", ["profile", "cmd", "default"], BAD, "XDG_CACHE_HOME={d}/afile: cannot use {d}/afile/llamactl"),
    ("cache-sub-is-a-file", ["run", "default"], BAD, "the cache's models/: cannot use {d}/cachefiles/models as a directory"),
]

ENV = {"port-env": {"PORT": "http"}, "binary-env": {"LLAMA_SERVER": "{d}/notserver"},
       "cache-is-a-file": {"LLAMACTL_CACHE": "{d}/afile"}, "cache-under-a-file": {"LLAMACTL_CACHE": "{d}/afile/c"},
       "xdg-cache-is-a-file": {"LLAMACTL_CACHE": "", "XDG_CACHE_HOME": "{d}/afile"},
       "cache-sub-is-a-file": {"LLAMACTL_CACHE": "{d}/cachefiles"}}


@pytest.mark.parametrize("case,argv,code,needle", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line(d, capsys, monkeypatch, case, argv, code, needle):
    for k, v in ENV.get(case, {}).items():
        monkeypatch.setenv(k, v.format(d=d))
    rc = cli.run([a.format(d=d) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle.format(d=d) in lines[0], lines[0]
    assert "Traceback" not in err
    if os.environ.get("SHOW_LINES"):
        print(f"\n{case}: rc={rc} {lines[0]}")


def test_profile_outside_profiles_extends_a_shipped_one(d, capsys):
    import json
    assert cli.run(["profile", "show", str(d / "mine.yaml"), "--json"]) == 0
    values = {r["key"]: r for r in json.loads(capsys.readouterr().out)["values"]}
    assert values["model"]["value"] == "gemma3-270m" and values["model"]["origin"] == "profile default.yaml"
    assert values["ctx"]["value"] == 2048 and values["ctx"]["origin"] == "profile mine.yaml"
    assert values["flash_attn"]["value"] == "off" and values["metrics"]["value"] is False


def test_profile_show_lists_dropped_environment(d, capsys, monkeypatch):
    import json
    monkeypatch.setenv("LLAMA_API_KEY", "secret")
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "8192")
    assert cli.run(["profile", "show", "default", "--json"]) == 0
    dropped = json.loads(capsys.readouterr().out)["env_dropped"]
    assert "LLAMA_API_KEY" in dropped and "LLAMA_ARG_CTX_SIZE" in dropped and "PATH" not in dropped
    assert cli.run(["profile", "show", "default"]) == 0
    assert "not passed to llama-server" in capsys.readouterr().out


def test_internal_error_is_one_line_and_debug_shows_the_chain(d, capsys, monkeypatch):
    from llamactl.serve import profiles

    def boom(*a, **k):
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("exploded") from exc
    monkeypatch.setattr(profiles, "resolve", boom)
    assert cli.run(["profile", "show", "default"]) == ExitCode.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: exploded" in err and "Traceback" not in err
    assert "--debug" in err
    assert cli.run(["--debug", "profile", "show", "default"]) == ExitCode.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "caused by: builtins.KeyError: 'missing'" in err


def test_debug_shows_the_cause_of_a_user_error(d, capsys, monkeypatch):
    monkeypatch.setenv("LLAMACTL_DEBUG", "1")
    assert cli.run(["profile", "show", str(d / "dup.yaml")]) == BAD
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "caused by: yaml.constructor.ConstructorError" in err and "Traceback" in err


def test_exit_code_table_is_in_the_readme():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} " in readme and code.name in readme, code


def test_stage_errors_map_to_the_table(d, capsys):
    from llamactl.core.errors import LlamactlError

    assert cli.run(["vendor", "--source", f"path:{d}/no-such-tree"]) == ExitCode.BUILD_FAILED   # raised in llamactl.source
    assert "does not exist" in capsys.readouterr().err
    assert cli.exit_code(LlamactlError("plain")) == ExitCode.FAILED


def test_a_copy_named_like_a_shipped_profile_extends_it(tmp_path, capsys, monkeypatch):
    import json
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "default.yaml").write_text("extends: default\nparallel: 2\n")
    assert cli.run(["profile", "show", str(tmp_path / "default.yaml"), "--json", "--no-env"]) == 0
    values = {r["key"]: r["value"] for r in json.loads(capsys.readouterr().out)["values"]}
    assert values["parallel"] == 2 and values["model"] == "gemma3-270m"


def test_corrupt_run_records_are_skipped_with_a_warning(d, capsys):
    runs = d / "cache" / "runs"
    for name, body in (("cut", '{"pid": 1, "url": "http://x"'), ("list", "[1]"), ("pid", '{"pid": "x"}'),
                       ("nopid", "{}"), ("latin", b"\xff\xfe")):
        (runs / name).mkdir(parents=True)
        p = runs / name / "run.json"
        p.write_bytes(body) if isinstance(body, bytes) else p.write_text(body)
    assert cli.run(["ps", "--all", "--json"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "[]" and out.err.count("skipping corrupt run record") == 5 and "Traceback" not in out.err
    assert cli.run(["stop", "--all"]) == 0
