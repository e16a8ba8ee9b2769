"""The command line prints user text as written: rich markup only where llamactl styles its own words.

The consoles read no markup (``markup=False``), so a profile value, a path, a log line or a check's
detail that holds ``[a, b]`` or ``[/x]`` is printed as it is (before, ``[a, b]`` vanished and ``[/x]``
was an internal MarkupError). Styled output opts in per call (``markup=True`` or ``Text.from_markup``),
and there every value put into the markup goes through ``escape()`` (or is a number format, or a style
name between ``[`` and ``]``). Checked on the source of every module of ``llamactl/cli``.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from llamactl import cli
from tests.unit.test_cli_values import FREE_TEXT

CLI = Path(__file__).resolve().parents[2] / "llamactl" / "cli"
CLOSING_TAG = re.compile(r"\[/[a-z ]*\]")
SAFE_CALLS = {"escape", "len", "int", "round"}


def _opts_in(call: ast.Call) -> bool:
    f = call.func
    if isinstance(f, ast.Attribute) and f.attr == "from_markup":
        return True
    return any(k.arg == "markup" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def _unescaped(node: ast.AST) -> list[str]:
    """Values interpolated into a markup string without escape(): the f-strings under ``node``."""
    out: list[str] = []
    for js in (n for n in ast.walk(node) if isinstance(n, ast.JoinedStr)):
        parts = js.values
        for i, v in enumerate(parts):
            if not isinstance(v, ast.FormattedValue) or v.format_spec is not None:
                continue
            val = v.value
            if isinstance(val, ast.Call) and isinstance(val.func, ast.Name) and val.func.id in SAFE_CALLS:
                continue
            if isinstance(val, ast.JoinedStr):
                continue   # checked on its own
            if isinstance(val, ast.IfExp) and all(isinstance(b, ast.Constant) for b in (val.body, val.orelse)):
                continue   # one of two words of llamactl's own
            before = parts[i - 1] if i else None
            after = parts[i + 1] if i + 1 < len(parts) else None
            if (isinstance(before, ast.Constant) and str(before.value).endswith("[")
                    and isinstance(after, ast.Constant) and str(after.value).startswith("]")):
                continue   # a style name: [{style}]
            out.append(ast.unparse(val))
    return out


def _sources() -> list[Path]:
    """The command line's modules and every other module that builds rich output (report tables)."""
    pkg = CLI.parent
    return sorted(p for p in pkg.rglob("*.py") if p.parent == CLI or "from rich" in p.read_text())


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.parent.name + "/" + p.name)
def test_styled_output_escapes_every_value_and_nothing_else_reads_markup(path: Path):
    text = path.read_text()
    tree, lines = ast.parse(text), text.splitlines()
    parent: dict[ast.AST, ast.AST] = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _opts_in(node):
            for arg in [*node.args, *(k.value for k in node.keywords if k.arg is None)]:
                problems += [f"line {node.lineno}: {u} is not escaped" for u in _unescaped(arg)]
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and CLOSING_TAG.search(node.value)
                and not isinstance(parent.get(node), ast.Expr)):   # a docstring is not output
            up = node
            while up in parent and not (isinstance(up, ast.Call) and _opts_in(up)):
                up = parent[up]
            if not (isinstance(up, ast.Call) and _opts_in(up)) and "# typer help: rich markup" not in lines[node.lineno - 1]:
                problems.append(f"line {node.lineno}: markup {node.value!r} outside markup=True / Text.from_markup")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "escape":
            up = node
            while up in parent and not (isinstance(up, ast.Call) and _opts_in(up)):
                up = parent[up]
            if not (isinstance(up, ast.Call) and _opts_in(up)) and "# typer help: rich markup" not in lines[node.lineno - 1]:
                problems.append(f"line {node.lineno}: escape() outside markup prints its backslashes")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


MARKUP_LIKE = ["[a, b]", "[/x]", "[bold]x[/bold]", "[red]", "[link=x]y", "a[/]b", "\\[x]"]


@pytest.mark.parametrize("value", MARKUP_LIKE)
@pytest.mark.parametrize("key", FREE_TEXT)
def test_user_text_with_brackets_is_printed_as_written(key: str, value: str, tmp_path, monkeypatch, capsys):
    """Every text key, shown by `profile show` (the table) and quoted by an error (a number key given it)."""
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")
    rc = cli.run(["profile", "show", "default", "--no-env", "--set", f"{key}={value}"])
    out, err = capsys.readouterr()
    assert rc == 0 and "internal error" not in err, err
    row = next(ln for ln in out.splitlines() if ln.startswith(f"│ {key} "))
    assert f"│ {value} " in row, row
    rc = cli.run(["profile", "show", "default", "--no-env", "--set", f"ctx={value}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "internal error" not in err, err
    assert "got " in err and "\n" not in err.strip(), err


def test_harness_and_build_keys_are_shown_under_their_own_block(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path))
    rc = cli.run(["profile", "show", "default", "--no-env", "--json", "--set", "harness.tie_margin=0.2"])
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)["values"]}
    assert rc == 0 and rows["harness.tie_margin"]["value"] == 0.2 and rows["harness.tie_margin"]["origin"] == "cli"
    assert "build.backend" in rows and "build.tie_margin" not in rows and "harness.backend" not in rows
