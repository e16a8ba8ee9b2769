"""llamactl command line: thin Typer layer over library functions.

Every LlamactlError becomes one red line on stderr and a non-zero exit, here and only here.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from llamactl.cli import bench_cmd, build_cmd, models_cmd, patch_cmd, profile_cmd, run_cmd, validate_cmd
from llamactl.console import err_console
from llamactl.errors import LlamactlError

app = typer.Typer(
    name="llamactl",
    help="Vendor, patch, build, run and validate llama.cpp's llama-server, reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("vendor")(build_cmd.vendor)
app.command("build")(build_cmd.build)
app.add_typer(patch_cmd.app, name="patch")
app.add_typer(profile_cmd.app, name="profile")
app.add_typer(models_cmd.app, name="models")
app.command("run")(run_cmd.run)
app.command("ps")(run_cmd.ps)
app.command("stop")(run_cmd.stop)
app.command("validate")(validate_cmd.validate)
app.command("bench")(bench_cmd.bench)


def main() -> None:
    try:
        app()
    except LlamactlError as exc:
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}" + (f" [dim]({escape(exc.hint)})[/]" if exc.hint else ""),
                          highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
