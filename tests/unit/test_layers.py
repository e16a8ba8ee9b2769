"""Layers keep their jobs: the library reports through logging and progress callbacks, only the CLI draws."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import llamactl
from llamactl.cli import console
from llamactl.core.progress import Progress

PKG = Path(llamactl.__file__).parent
ORDER = ["core", "models", "source", "build", "serve", "judge", "report", "cli"]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("stage", ORDER[:-1])
def test_the_library_never_imports_the_cli_or_draws_progress(stage):
    for f in sorted((PKG / stage).rglob("*.py")):
        mods = _imports(f)
        assert not any(m.startswith("llamactl.cli") for m in mods), f"{f.relative_to(PKG)} imports the CLI"
        assert "rich.progress" not in mods and "rich.console" not in mods, f"{f.relative_to(PKG)} draws on the terminal"


@pytest.mark.parametrize("stage", ORDER)
def test_imports_go_only_downward(stage):
    allowed = ORDER[:ORDER.index(stage) + 1]
    for f in sorted((PKG / stage).rglob("*.py")):
        for m in _imports(f):
            parts = m.split(".")
            if parts[0] == "llamactl" and len(parts) > 1 and parts[1] in ORDER:
                assert parts[1] in allowed, f"{f.relative_to(PKG)} imports {m} (above {stage})"


def test_library_log_lines_reach_the_current_output_and_json_keeps_stdout_clean(capsys):
    console.Output(json_mode=True)
    logging.getLogger("llamactl.source.vendor").info("vendored [x] upstream")
    captured = capsys.readouterr()
    assert captured.out == "" and "vendored [x] upstream" in captured.err


def test_a_compile_without_a_terminal_prints_a_line_every_tenth(capsys):
    out = console.Output(json_mode=False)
    assert not console.err_console.is_terminal
    for done in range(1, 21):
        out.progress(Progress("building llama-server", done, 20, "steps"))
    out.progress(Progress("building llama-server", 20, None, "steps", finished=True))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("building llama-server: [")]
    assert lines[0] == "building llama-server: [1/20]" and lines[-1] == "building llama-server: [20/20]"
    assert len(lines) == 11   # the first step, then each tenth
