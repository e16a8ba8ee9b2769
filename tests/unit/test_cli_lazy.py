"""The CLI loads command modules lazily; `--help` still lists every command with its one-line help."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llamactl
from llamactl.cli import COMMANDS, load_command

HEAVY = ("typer", "pydantic", "numpy", "gguf", "httpx", "matplotlib", "prometheus_client", "yaml", "llamactl.cli.run_cmd")


def run_main(*args: str, env: dict[str, str] | None = None, watch: tuple[str, ...] = HEAVY) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom llamactl.cli import main\nsys.argv = ['llamactl', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            f"print('LOADED', sorted(m for m in {watch!r} if m in sys.modules), file=sys.stderr)\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "NO_COLOR": "1", **(env or {})})


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
    assert "--version  -V" in cp.stdout
    assert "LOADED []" in cp.stderr


def test_root_help_drawn_without_typer_is_typers_own(tmp_path):
    """The fast path draws the root help itself; Typer (reached with --debug) draws the same panels."""
    fast = run_main("--help", env={"LLAMACTL_CACHE": str(tmp_path)})
    typer_drawn = run_main("--debug", "--help", env={"LLAMACTL_CACHE": str(tmp_path)})
    assert fast.returncode == typer_drawn.returncode == 0
    assert fast.stdout == typer_drawn.stdout and "--version" in fast.stdout


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_one_line_and_loads_nothing(tmp_path, flag):
    cp = run_main(flag, env={"LLAMACTL_CACHE": str(tmp_path)}, watch=(*HEAVY, "rich", "click", "llamactl.core.paths"))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == f"llamactl {llamactl.__version__}\n"
    assert "LOADED []" in cp.stderr and not (tmp_path / "help").exists()


@pytest.mark.parametrize("argv", [["--version"], ["-V"], ["--debug", "--version"], ["--version", "--debug"]])
def test_version_through_typer_too(capsys, argv):
    from llamactl import cli

    assert cli.run(argv) == 0
    out = capsys.readouterr()
    assert out.out == f"llamactl {llamactl.__version__}\n" and out.err == ""


def test_the_version_is_the_installed_packages():
    from importlib.metadata import version

    assert llamactl.__version__ == version("llamactl")


def test_root_help_is_kept_per_terminal_and_read_back_without_rich(tmp_path):
    cache = {"LLAMACTL_CACHE": str(tmp_path)}
    first = run_main("--help", env=cache)
    kept = list((tmp_path / "help").glob("root-*.txt"))
    assert first.returncode == 0 and len(kept) == 1 and kept[0].read_text() == first.stdout
    second = run_main("--help", env=cache)
    code = "import sys\nfrom llamactl.cli import main\nsys.argv=['llamactl','--help']\ntry:\n    main()\nexcept SystemExit:\n    pass\n" \
           "print('RICH', 'rich.console' in sys.modules, file=sys.stderr)\n"
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "NO_COLOR": "1", **cache})
    assert second.stdout == first.stdout == cp.stdout and "RICH False" in cp.stderr
    narrow = run_main("--help", env={**cache, "COLUMNS": "90"})      # another width: rendered for it, kept apart
    assert narrow.stdout != first.stdout and len(list((tmp_path / "help").glob("root-*.txt"))) == 2


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
