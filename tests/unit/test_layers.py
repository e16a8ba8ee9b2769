"""Layers keep their jobs: the library reports through logging and progress callbacks, only the CLI draws."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import llamactl
from llamactl.cli import console
from llamactl.cli import options as o
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


def _module_name(path: Path) -> str:
    parts = ["llamactl", *path.relative_to(PKG).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(source: str, name: str, modules: set[str], is_package: bool = False) -> set[str]:
    """The llamactl modules that ``source`` (module ``name``) imports, anywhere in it: top level, inside
    functions, under ``if TYPE_CHECKING``. ``from P import m`` counts as module P.m when that is a module."""
    found: set[str] = set()
    here = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from .x import y
                pkg = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{pkg}.{base}" if base else pkg
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(f): f for f in sorted(PKG.rglob("*.py"))}
    return {name: _module_imports(f.read_text(), name, set(files), f.name == "__init__.py") for name, f in files.items()}


def test_the_import_walker_sees_imports_inside_functions_and_type_checking():
    src = ("from typing import TYPE_CHECKING\nfrom llamactl.serve import endpoint\n"
           "if TYPE_CHECKING:\n    from llamactl.serve.early import Early\n"
           "def f():\n    import llamactl.core.paths\n    from llamactl.serve.server import ServerProcess\n"
           "    from . import render\n")
    mods = {"llamactl.serve.endpoint", "llamactl.serve.early", "llamactl.core.paths", "llamactl.serve.server",
            "llamactl.serve.render", "llamactl.serve"}
    assert _module_imports(src, "llamactl.serve.x", mods) == mods - {"llamactl.serve"}


def test_no_two_modules_import_each_other():
    """Any import counts (top level, in a function, under TYPE_CHECKING): a pair that imports each other
    works only by the order modules happen to load in; the shared piece belongs in a module below both."""
    graph = _import_graph()
    assert len(graph) > 50 and "llamactl.serve.server" in graph["llamactl.serve.quickstart"]   # inside serve_fast
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph.get(b, set())})
    assert not pairs, "modules that import each other: " + "; ".join(f"{a} <-> {b}" for a, b in pairs)


def test_no_import_cycles_through_more_modules():
    """Nor a longer ring (a -> b -> c -> a): the same problem, spread over more files."""
    graph = _import_graph()
    state: dict[str, int] = {}      # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (ring := visit(d)):
                return ring
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            ring = visit(m)
            assert ring is None, "import cycle: " + " -> ".join(ring)


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


@pytest.mark.parametrize("command,has,lacks", [
    (["run"], {"parallel", "ctx", "mtp", "port", "set_", "no_env"}, set()),
    (["profile", "show"], {"parallel", "mtp", "model", "set_", "no_env"}, set()),
    (["profile", "cmd"], {"parallel", "mtp", "model", "set_", "no_env"}, set()),
    (["validate"], {"parallel", "ctx", "kv_k", "set_", "no_env"}, set()),
    (["bench"], {"parallel", "ctx", "set_", "no_env"}, {"mtp", "port"}),
    (["rpc-worker"], {"set_", "no_env", "port"}, {"parallel", "ctx"}),   # its own --port: the worker's
])
def test_override_options_are_declared_once_and_reach_each_command(command, has, lacks):
    from llamactl.cli import load_command

    cmd = load_command(command[0])
    for sub in command[1:]:
        cmd = cmd.commands[sub]
    names = {p.name for p in cmd.params}
    assert has <= names and not (lacks & names) and "overrides" not in names


def test_overrides_become_profile_keys_with_the_cli_origin():
    seen = {}

    @o.with_overrides()
    def cmd(name: str, overrides: o.Overrides) -> None:
        seen["o"] = overrides

    cmd("default", parallel=2, mtp=True, set_=["ctx=512"], no_env=True)
    assert seen["o"] == o.Overrides({"parallel": 2, "enable_mtp": True, "ctx": 512}, True)
    r = seen["o"].resolve("default")
    assert (r.profile.parallel, r.profile.ctx, r.origin("ctx")) == (2, 512, "cli")


def test_the_older_json_file_spelling_gets_a_hint(tmp_path, capsys):
    from llamactl import cli

    rc = cli.run(["validate", "default", "--json", str(tmp_path / "v.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "unexpected extra argument" in err and "--json-out FILE" in err
