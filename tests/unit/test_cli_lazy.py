"""The CLI loads command modules lazily; `--help` still lists every command with its one-line help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llamactl.cli import COMMANDS, load_command

HEAVY = ("typer", "pydantic", "numpy", "gguf", "httpx", "matplotlib", "prometheus_client", "yaml", "llamactl.cli.run_cmd")


def run_main(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom llamactl.cli import main\nsys.argv = ['llamactl', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"})


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listed_help_is_the_commands_own(name):
    cmd = load_command(name)
    assert cmd.name == name
    own = (cmd.help or "").strip().split("\n\n")[0].replace("\n", " ")
    assert own == COMMANDS[name][3]


def test_help_lists_every_command_without_loading_any():
    cp = run_main("--help")
    assert cp.returncode == 0
    for name, (_m, _f, _w, short) in COMMANDS.items():
        assert f" {name} " in cp.stdout and short in cp.stdout
    assert "LOADED []" in cp.stderr


def test_no_args_shows_help_and_exits_2():
    cp = run_main()
    assert cp.returncode == 2 and "Commands" in cp.stdout and "LOADED []" in cp.stderr


def test_a_command_loads_only_its_module():
    cp = run_main("patch", "--help")
    assert cp.returncode == 0 and "revert" in cp.stdout and "Examples:" in cp.stdout
    assert "llamactl.cli.run_cmd" not in cp.stderr.split("LOADED")[-1]


def test_unknown_command_is_a_usage_error():
    cp = run_main("frobnicate")
    assert cp.returncode == 2 and "No such command" in cp.stderr and "Traceback" not in cp.stderr
