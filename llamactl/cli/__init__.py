"""llamactl command line: thin Typer layer over library functions.

Every LlamactlError becomes one red line on stderr and a non-zero exit, here and only here.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from llamactl.cli import bench_cmd, build_cmd, models_cmd, patch_cmd, profile_cmd, run_cmd, validate_cmd
from llamactl.core.console import err_console
from llamactl.core.errors import LlamactlError

app = typer.Typer(
    name="llamactl",
    help="Vendor, patch, build, run and validate llama.cpp's llama-server, reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def examples(module, *words: str) -> str:
    """The module docstring's example lines (those naming one of ``words``), as a help epilog."""
    doc = (module.__doc__ or "").split("Examples:", 1)[-1]
    lines = [ln.strip() for ln in doc.splitlines() if ln.strip().startswith(("llamactl", "CTX", "cd ", "LLAMACTL"))]
    picked = [ln for ln in lines if not words or any(w in ln for w in words)]
    return "Examples:\n\n" + "\n\n".join(f"  [dim]$[/] {escape(ln)}" for ln in picked) if picked else ""


app.command("vendor", epilog=examples(build_cmd, "vendor"))(build_cmd.vendor)
app.command("build", epilog=examples(build_cmd, "build"))(build_cmd.build)
app.add_typer(patch_cmd.app, name="patch", epilog=examples(patch_cmd))
app.add_typer(profile_cmd.app, name="profile", epilog=examples(profile_cmd))
app.add_typer(models_cmd.app, name="models", epilog=examples(models_cmd))
app.command("run", epilog=examples(run_cmd, "run"))(run_cmd.run)
app.command("ps", epilog=examples(run_cmd, "ps"))(run_cmd.ps)
app.command("stop", epilog=examples(run_cmd, "stop"))(run_cmd.stop)
app.command("validate", epilog=examples(validate_cmd))(validate_cmd.validate)
app.command("bench", epilog=examples(bench_cmd))(bench_cmd.bench)


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
