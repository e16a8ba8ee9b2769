"""The strict, bounded YAML loader every user file and command-line value goes through."""

from __future__ import annotations

import time

import pytest

from llamactl.core import files, yamlio
from llamactl.core.errors import BadInput, ExitCode

# every word YAML 1.1 reads as a boolean, in the cases people type them
YAML11_WORDS = ["on", "On", "ON", "off", "Off", "OFF", "yes", "Yes", "YES", "no", "No", "NO",
                "y", "Y", "n", "N"]


@pytest.mark.parametrize("word", YAML11_WORDS)
def test_yaml11_boolean_words_stay_words(word):
    assert yamlio.loads(f"flash_attn: {word}\n") == {"flash_attn": word}
    assert yamlio.loads(f"axes: {{flash_attn: [{word}]}}\n") == {"axes": {"flash_attn": [word]}}
    assert yamlio.parse_scalar(word) == word


@pytest.mark.parametrize("word,value", [("true", True), ("True", True), ("TRUE", True),
                                        ("false", False), ("False", False), ("FALSE", False)])
def test_true_and_false_are_booleans(word, value):
    assert yamlio.loads(f"a: {word}") == {"a": value}
    assert yamlio.parse_scalar(word) is value


def test_yaml12_numbers():
    data = yamlio.loads("a: 0777\nb: 1:30\nc: 1e-3\nd: 0x10\ne: -3\nf: .5\ng: 8084\nh: 3.0\ni: ~\n")
    assert data == {"a": 777, "b": "1:30", "c": 0.001, "d": 16, "e": -3, "f": 0.5, "g": 8084, "h": 3.0, "i": None}


def test_command_line_values():
    assert yamlio.parse_scalar('["-c","8192"]') == ["-c", "8192"]
    assert yamlio.parse_scalar("[oops") == "[oops"      # not YAML on its own: the text typed
    assert yamlio.parse_scalar("") == ""
    assert yamlio.parse_scalar('"off"') == "off"


def test_duplicate_key_names_both_lines():
    with pytest.raises(BadInput) as exc:
        yamlio.loads("model: m\nctx: 1\nparallel: 2\nctx: 3\n", "p.yaml")
    assert str(exc.value) == "p.yaml:4: invalid YAML: duplicate key 'ctx' (first at line 2)"
    assert exc.value.exit_code == ExitCode.BAD_INPUT


def test_duplicate_nested_key():
    with pytest.raises(BadInput, match=r"p.yaml:3: .*duplicate key 'backend'"):
        yamlio.loads("build:\n  backend: cpu\n  backend: hip\n", "p.yaml")


def test_merge_keys_are_not_duplicates():
    assert yamlio.loads("b: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")["c"] == {"x": 3, "y": 2}


def _laughs(levels: int) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghijk"[:levels]:
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text


def test_billion_laughs_refused_quickly():
    t0 = time.monotonic()
    with pytest.raises(BadInput, match="bomb.yaml:.*expands to more than"):
        yamlio.loads(_laughs(9), "bomb.yaml")
    assert time.monotonic() - t0 < 5
    assert yamlio.loads(_laughs(2), "ok.yaml")["c"][0][0][0] == "lol"   # a few aliases are fine


def test_recursive_alias_and_deep_nesting():
    with pytest.raises(BadInput, match="refers to its own anchor"):
        yamlio.loads("a: &a [*a]\n")
    with pytest.raises(BadInput, match="nested deeper than"):
        yamlio.loads("[" * 5000)


def test_syntax_error_names_line():
    with pytest.raises(BadInput, match=r"^x.yaml:2: invalid YAML: "):
        yamlio.loads("a: [1,\n b: 2", "x.yaml")


def test_files_are_bounded_and_checked(tmp_path, monkeypatch):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (files.MAX_TEXT_BYTES + 10))
    with pytest.raises(BadInput, match="refusing to read more than"):
        yamlio.load_file(big, "profile")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"model: m\ndescription: caf\xe9\n")
    with pytest.raises(BadInput, match=r"latin.yaml:2: not UTF-8 text \(byte 0xe9"):
        yamlio.load_file(latin, "profile")
    with pytest.raises(BadInput, match="is a directory"):
        yamlio.load_file(tmp_path, "profile")
    with pytest.raises(BadInput, match="not found"):
        yamlio.load_file(tmp_path / "nope.yaml", "profile")

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")
    locked = tmp_path / "locked.yaml"
    locked.write_text("a: 1\n")
    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(BadInput, match="cannot read profile .*locked.yaml: Permission denied"):
        files.read_text(locked, "profile")


def test_check_writable(tmp_path):
    assert files.check_writable(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    with pytest.raises(BadInput, match="is a directory"):
        files.check_writable(tmp_path, "--json")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(BadInput, match="is not a directory"):
        files.check_writable(blocker / "r.xml", "--junit")
    with pytest.raises(BadInput, match="cannot be created"):
        files.check_writable("/proc/llamactl-test/r.json", "--json")


def test_write_atomic_replaces_whole_or_leaves_the_old_file(tmp_path):
    from llamactl.core.files import atomic_path, write_atomic

    target = tmp_path / "sub" / "m.json"
    write_atomic(target, "old\n")
    assert target.read_text() == "old\n"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old\n" and [p.name for p in target.parent.iterdir()] == ["m.json"]
    write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
