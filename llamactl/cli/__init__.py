"""llamactl command line: thin Typer layer over library functions.

Every error becomes one red line on stderr and an exit code from the one table in
``llamactl.core.errors.ExitCode``, here and only here: a LlamactlError its own code, a usage
error BAD_INPUT, Ctrl-C INTERRUPTED, anything unexpected INTERNAL_ERROR. ``--debug`` (or
LLAMACTL_DEBUG=1) adds the cause chain and the traceback.

Command modules are imported only when their command runs: `llamactl --help` lists every command
from the one-line helps in COMMANDS below (a unit test keeps them equal to the modules' own), and
`llamactl --version` (``-V``) prints one line without loading Typer, rich or any command.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from llamactl.core.errors import ExitCode, LlamactlError

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

HELP = "Vendor, patch, build, run and validate llama.cpp's llama-server, reproducibly."
DEBUG_HELP = "On an error, show its cause chain and traceback."
VERSION_HELP = "Show llamactl's version and exit."
VERSION_ARGS = (["--version"], ["-V"])
_debug = False

# name -> (module under llamactl.cli, function or None for a sub-app, words picking examples, one-line help)
COMMANDS: dict[str, tuple[str, str | None, tuple[str, ...], str]] = {
    "vendor": ("build_cmd", "vendor", ("vendor",),
               "Materialise a pinned llama.cpp source into vendor/llama.cpp/ (git repo with one base commit)."),
    "build": ("build_cmd", "build", ("build",),
              "Vendor + patch (when needed) and build llama-server with CMake + Ninja, cached by every input."),
    "run": ("run_cmd", "run", ("run",), "Launch llama-server from a profile; Ctrl-C stops it (nothing is left running)."),
    "rpc-worker": ("rpc_cmd", "rpc_worker", (),
                   "Start an RPC worker from the profile's cached build (same source, series, backend); Ctrl-C stops it."),
    "ps": ("procs_cmd", "ps", ("ps",),
           "Servers started with `run --detach` (each PID checked: start time and argv, not just 'a process exists')."),
    "stop": ("procs_cmd", "stop", ("stop",),
             "Stop detached servers (SIGTERM, then SIGKILL after 10 s); a stale record is cleaned up, never signalled."),
    "validate": ("validate_cmd", "validate", (),
                 "Start the server for each matrix cell, run the HTTP checks, report; exit 0 only if all ran cells pass."),
    "bisect": ("bisect_cmd", "bisect", (),
               "Find the first commit, version or patch where one cell of a profile breaks (or, --fixed, passes)."),
    "bench": ("bench_cmd", "bench", (),
              "Decode/prompt speed, TTFT, all-slots throughput, peak RSS and MTP acceptance; MTP on vs off, interleaved."),
    "quality": ("quality_cmd", "quality", (),
                "KL divergence, PPL and top-token agreement of KV types or builds against an f16 reference (llama-perplexity)."),
    "load": ("load_cmd", "load", (),
             "Throughput (req/s, output tok/s) and latency (TTFT, TPOT, end to end: p50/p90/p99) per load, one server per cell."),
    "soak": ("soak_cmd", "soak", (),
             "Hours of mixed agent traffic: memory slope, slots released, acceptance and tok/s drift, errors, answers under load."),
    "sync": ("sync_cmd", "sync", (),
             "Rebase the profile's series onto a new base, build and validate before and after, one table; exit says if it is safe."),
    "report": ("report_cmd", "report", (),
               "Render runs as one self-contained HTML page and/or Markdown; Markdown on stdout when no file is named."),
    "history": ("history_cmd", "history", (),
                "List recorded runs: id, time, kind, profile, result, build and machine; --cell for per-cell numbers."),
    "patch": ("patch_cmd", None, (), "Status, apply, check, revert, export and rebase the patch series."),
    "source": ("source_cmd", None, (), "Pinned llama.cpp sources and recorded upstream versions."),
    "profile": ("profile_cmd", None, (), "List, show and render profiles."),
    "models": ("models_cmd", None, (), "Named models: fetch, list, make tiny Gemma 4 pairs."),
    "cache": ("cache_cmd", None, (), "What the cache holds (builds, downloads, models, trees, runs) and pruning it."),
}


def examples(module: ModuleType, *words: str) -> str:
    """The module docstring's example lines (those naming one of ``words``), as a help epilog."""
    from rich.markup import escape

    doc = (module.__doc__ or "").split("Examples:", 1)[-1]
    lines = [ln.strip() for ln in doc.splitlines() if ln.strip().startswith(("llamactl", "CTX", "cd ", "LLAMACTL"))]
    picked = [ln for ln in lines if not words or any(w in ln for w in words)]
    return "Examples:\n\n" + "\n\n".join(f"  [dim]$[/] {escape(ln)}" for ln in picked) if picked else ""   # typer help: rich markup


def version_line() -> str:
    """``llamactl <version>``: the package's own version (``llamactl.__version__``, the one in pyproject.toml)."""
    from llamactl import __version__

    return f"llamactl {__version__}"


def load_command(name: str) -> Any:
    """The real click command for ``name``: imports its module (and what that needs) now."""
    import typer

    modname, func, words, _help = COMMANDS[name]
    module = importlib.import_module(f"llamactl.cli.{modname}")
    if func is None:
        group = typer.main.get_group(module.app)
        group.name = name
        group.epilog = examples(module)
        return group
    one = typer.Typer(rich_markup_mode="rich", add_completion=False, pretty_exceptions_enable=False)
    one.command(name, epilog=examples(module, *words))(getattr(module, func))
    return typer.main.get_command(one)


def make_app() -> Any:
    """The Typer app: a group listing every command from COMMANDS, loading each when it runs."""
    import typer
    from typer.core import TyperCommand, TyperGroup

    class LazyGroup(TyperGroup):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for name, (_m, _f, _w, short) in COMMANDS.items():
                self.commands.setdefault(name, TyperCommand(name, help=short, rich_markup_mode="rich"))

        def resolve_command(self, ctx: Any, args: list[str]) -> Any:
            name, cmd, rest = super().resolve_command(ctx, args)
            if name in COMMANDS:
                cmd = self.commands[name] = load_command(name)
            return name, cmd, rest

    app = typer.Typer(name="llamactl", help=HELP, cls=LazyGroup, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, rich_markup_mode="rich")

    def show_version(value: bool) -> None:
        if value:
            typer.echo(version_line())
            raise typer.Exit(ExitCode.OK)

    def root(debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
             version: bool = typer.Option(False, "--version", "-V", help=VERSION_HELP, is_eager=True,
                                          callback=show_version)) -> None:
        global _debug
        _debug = _debug or debug

    app.callback()(root)
    return app


def _help_cache_file() -> "Path | None":
    """Where the root help, as rendered for this terminal, is kept: keyed by everything rich looks at
    (TTY or not, width, colour variables, TERM) and by this module's own file (size, mtime)."""
    import shutil
    from pathlib import Path

    try:
        st = os.stat(__file__)
    except OSError:
        return None
    from llamactl.core import paths
    from llamactl.core.hashing import stable_key

    tty = sys.stdout.isatty()
    key = stable_key([tty, shutil.get_terminal_size().columns if tty else os.environ.get("COLUMNS"),
                      *(os.environ.get(k) for k in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLORTERM", "TTY_COMPATIBLE",
                                                    "TTY_INTERACTIVE", "JUPYTER_COLUMNS", "LINES")),
                      st.st_size, st.st_mtime_ns], 24)
    return Path(paths.cache_root()) / "help" / f"root-{key}.txt"


def print_root_help() -> None:
    """`llamactl --help` without importing Typer or any command: the same panels Typer draws.

    The rendering is kept per terminal (see ``_help_cache_file``), so a repeated call is a file read.
    """
    cached = _help_cache_file()
    try:
        if cached is not None:
            sys.stdout.write(cached.read_text())
            sys.stdout.flush()
            return
    except OSError:
        pass
    text = _render_root_help()
    sys.stdout.write(text)
    sys.stdout.flush()
    if cached is not None:
        try:
            from llamactl.core.files import write_atomic

            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, text)
        except OSError:
            pass


def _render_root_help() -> str:
    """The root help as rich renders it for this terminal (ANSI codes included when it would colour)."""
    from rich.console import Console

    console = Console(highlight=False)
    with console.capture() as cap:
        _draw_root_help(console)
    return cap.get()


def _draw_root_help(console: "Console") -> None:
    from rich import box
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console.print(Padding(Text.assemble(("Usage: ", "yellow"), "llamactl [OPTIONS] COMMAND [ARGS]..."), 1),
                  style="bold")
    console.print(Padding(HELP, (0, 1, 1, 1)))
    opts = Table(highlight=False, show_header=False, expand=True, box=None, pad_edge=False, padding=(0, 1))
    width = max(len(n) for n in COMMANDS)
    # Typer's columns: long and short names, their negative forms (none here), metavar, help
    for style in ("bold cyan", "bold green", "", "", "bold yellow"):
        opts.add_column(style=style, no_wrap=True)
    opts.add_column(ratio=10)
    opts.add_row("--debug", "", "", "", "<bool>", DEBUG_HELP)
    opts.add_row("--version", "-V", "", "", "<bool>", VERSION_HELP)
    opts.add_row("--help", "", "", "", "<bool>", "Show this message and exit.")
    console.print(Panel(opts, border_style="dim", title="Options", title_align="left", box=box.ROUNDED))
    cmds = Table(highlight=False, show_header=False, expand=True, box=None, pad_edge=False, padding=(0, 1))
    cmds.add_column(style="bold cyan", no_wrap=True, width=width)
    cmds.add_column("Description", justify="left", no_wrap=False, ratio=10)
    for name, (_m, _f, _w, short) in COMMANDS.items():
        cmds.add_row(name, short)
    console.print(Panel(cmds, border_style="dim", title="Commands", title_align="left", box=box.ROUNDED))
    console.print()


STAGE_CODES = {"llamactl.source.": ExitCode.BUILD_FAILED, "llamactl.build.": ExitCode.BUILD_FAILED}


def exit_code(exc: LlamactlError) -> int:
    """The table's code for ``exc``: its class's own, or, for a plain LlamactlError, the stage that raised it
    (vendor/patch/build -> BUILD_FAILED), so every stage lands in the one table without a subclass per message."""
    if type(exc) is not LlamactlError or exc.__traceback__ is None:
        return int(exc.exit_code)
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return int(next((code for prefix, code in STAGE_CODES.items() if module.startswith(prefix)), exc.exit_code))


def _error_line(message: str, hint: str | None = None) -> None:
    from rich.markup import escape

    from llamactl.cli.console import err_console

    err_console.print(f"[bold red]error:[/] {escape(message)}" + (f" [dim]({escape(hint)})[/]" if hint else ""),
                      highlight=False, soft_wrap=True, markup=True)


def _cause_chain(exc: BaseException) -> None:
    """--debug: each cause, outermost first, then the traceback."""
    from rich.markup import escape

    from llamactl.cli.console import err_console

    import traceback

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        err_console.print(f"[dim]{'error' if cur is exc else '  caused by'}: {escape(type(cur).__module__)}."
                          f"{escape(type(cur).__qualname__)}: {escape(str(cur))}[/]", highlight=False, soft_wrap=True, markup=True)
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    sys.stderr.write("".join(traceback.format_exception(exc)))


def _interrupted() -> int:
    from llamactl.cli.console import err_console

    err_console.print("[yellow]interrupted[/]", markup=True)
    return ExitCode.INTERRUPTED


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: sys.argv[1:]); return the exit code (the ExitCode table)."""
    import typer

    global _debug
    args = list(sys.argv[1:] if argv is None else argv)
    _debug = os.environ.get("LLAMACTL_DEBUG", "") not in ("", "0") or "--debug" in args[:1]
    try:
        rv = make_app()(args=args, prog_name="llamactl", standalone_mode=False)
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else ExitCode.OK
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return _interrupted()
    except typer.TyperException as exc:   # click usage errors: unknown option, bad int, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":   # the help was printed already
            return ExitCode.BAD_INPUT
        ctx = getattr(exc, "ctx", None)
        hint = f"see '{ctx.command_path} --help'" if ctx is not None else None
        message = " ".join(exc.format_message().split())
        if "unexpected extra argument" in message and "--json" in args:   # the older `validate --json FILE`
            hint = "--json prints JSON on stdout; write a file with --json-out FILE"
        _error_line(message, hint)
        return ExitCode.BAD_INPUT
    except LlamactlError as exc:
        _error_line(exc.message, exc.hint)
        if _debug:
            _cause_chain(exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or ExitCode.OK
        _error_line(str(exc.code))
        return ExitCode.FAILED
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected exception becomes a line
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {os.path.basename(where.filename)}:{where.lineno}" if where else ""
        _error_line(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}{at}",
                    None if _debug else "a bug in llamactl; run again with --debug for the traceback and report it")
        if _debug:
            _cause_chain(exc)
        return ExitCode.INTERNAL_ERROR


def main() -> None:
    args = sys.argv[1:]
    if args in VERSION_ARGS:           # one line, nothing loaded
        sys.stdout.write(version_line() + "\n")
        sys.exit(ExitCode.OK)
    if args in ([], ["--help"]):       # the commonest call answered without loading Typer
        print_root_help()
        sys.exit(0 if args else ExitCode.BAD_INPUT)     # as click's no_args_is_help
    if args[:1] == ["run"] and not os.environ.get("LLAMACTL_NO_EARLY_START"):   # a remembered server now; adopted if the plan agrees
        from llamactl.serve import quickstart

        quickstart.early_start(args[1:])
        code = quickstart.serve_fast()      # every input unchanged: supervised without re-planning
        if code is not None:
            sys.exit(code)
    sys.exit(run(args))
