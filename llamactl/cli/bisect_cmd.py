"""`llamactl bisect`: the first commit, version or patch that broke (or fixed) one validation cell.

Examples:
    llamactl bisect default --cell parallel=2,kv=f16/f16 --source path:~/src/llama.cpp --good b5000 --bad b5100
    llamactl bisect tiny-gemma4-mtp --cell parallel=2,enable_mtp=0 --patches
    llamactl bisect tiny-gemma4-mtp --cell parallel=2,enable_mtp=0 --patches --series ./my-series --json
    llamactl bisect tiny-gemma4-mtp --cell parallel=2,enable_mtp=0 --patches --json-out reports/bisect.json
    llamactl bisect tiny-gemma4-mtp-atomic --cell parallel=2,enable_mtp=1,kv=f16/f16 --fixed --no-patches --source path:~/fork --bad 0a635dcd9 --good b7b5a3bf9
    llamactl bisect default --cell parallel=2,kv=f16/f16 --source path:~/src/llama.cpp --good A --bad B --signature "GGML_ASSERT(ggml_nelements"
    llamactl bisect default --cell parallel=1,kv=f16/f16 --source path:~/src/llama.cpp --good A --bad B --metric decode_tok_s --below 40
    llamactl bisect default --cell parallel=2,kv=f16/f16 --source path:~/src/llama.cpp --good A --bad B --resume
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from llamactl.cli import options as o
from llamactl.cli.common import check_outputs, stop_on_signals
from llamactl.cli.console import Output, console, err_console, to_json
from llamactl.core.errors import ExitCode
from llamactl.core.files import write_atomic
from llamactl.judge import bisect as lib


@o.with_overrides(exclude=o.ONLY_SET)
def bisect(
    name: o.ProfileName,
    overrides: o.Overrides,
    cell: Annotated[list[str], typer.Option("--cell", help="The one matrix cell to judge: key=value filters or its name (repeatable).")],
    good: Annotated[Optional[str], typer.Option("--good", help="A ref where the cell passes (commit, version, or with --patches a count/patch).")] = None,
    bad: Annotated[Optional[str], typer.Option("--bad", help="A ref where it fails (with --fixed: the older, still broken one).")] = None,
    source: Annotated[Optional[str], typer.Option("--source", "-s", help="What to bisect: path:/dir (its commits); default: the profile's build.source.")] = None,
    patches: Annotated[bool, typer.Option("--patches", help="Bisect the patch series: which patch breaks it (prefixes 0..N).")] = False,
    series: o.Series = None,
    no_patches: Annotated[bool, typer.Option("--no-patches", help="Build each commit without the series.")] = False,
    fixed: Annotated[bool, typer.Option("--fixed", help="Find the first ref that fixes it (git's old/new terms).")] = False,
    signature: Annotated[Optional[str], typer.Option("--signature", help="Bad only when the failure shows this text (assert line, frame, log line); other failures are skipped.")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="Judge a number instead of pass/fail: decode_tok_s.")] = None,
    below: Annotated[Optional[float], typer.Option("--below", help="With --metric: bad when the value is below this.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Go on from the state an interrupted run with the same arguments saved.")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Parallel compile jobs (default: the cores).")] = None,
    json_path: o.JsonOut = None,
    json: o.Json = False,
) -> None:
    """Find the first commit, version or patch where one cell of a profile breaks (or, --fixed, passes).

    Each step builds incrementally (only what changed since the step before) and runs the one cell;
    a step that cannot be built or cannot start is skipped (git bisect skip), not blamed. The state
    is saved after every step: Ctrl-C, then the same command with --resume. --json-out writes the
    result (what --json prints) to a file, its path checked before anything runs.
    """
    check_outputs((json_path, "--json-out"))   # before the profile, the search space and any build
    if series and ("/" in series or series.startswith(".")):   # a directory of patches, not a name under patches/
        series = str(Path(series).expanduser().resolve())
    base = overrides.resolve(name)
    the_cell = lib.one_cell(base, cell)
    req = lib.Request(profile=base.name, cell=the_cell.id, good=good or "", bad=bad or "",
                      source=source or base.profile.build.source, space="patches" if patches else "history",
                      fixed=fixed, signature=signature, metric=metric, below=below, series=series, no_patches=no_patches)
    lib.Oracle(signature, metric, below)     # bad --metric/--below: one line before anything runs
    space = lib.make_space(req, base)
    out = Output(json)
    stop_on_signals()
    out.info(f"bisecting {escape(space.kind)} of {escape(req.source)} for [bold]{escape(base.name)}[/] cell "
             f"{escape(the_cell.id)}: {'broken' if fixed else 'good'} {escape(space.old.ref[:12])} .. "
             f"{'fixed' if fixed else 'bad'} {escape(space.new.ref[:12])}", markup=True)
    try:
        result = lib.bisect(req, base=base, cell=the_cell, space=space, resume=resume, progress=_printer(out), jobs=jobs,
                            build_progress=out.progress)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: the steps so far are saved; go on with the same command and --resume",
                          highlight=False, markup=True)
        sys.exit(ExitCode.INTERRUPTED)
    data = result.to_dict()
    if json_path is not None:
        write_atomic(json_path, to_json(data) + "\n")
        out.info(f"result: {str(json_path)}")
    out.result(data, lambda _d: _human(result))
    if result.first is None:
        sys.exit(ExitCode.FAILED)


def _printer(out: Output):
    def show(ev: lib.Event) -> None:
        if ev.kind == "step" and ev.candidate is not None:
            left = f" (~{ev.left} left)" if ev.left else ""
            out.info(f"step{left}: {ev.candidate.ref[:12]} {ev.candidate.label[:70]}".rstrip())
        elif ev.kind == "built" and ev.step is not None:
            out.info(f"  build: {_build_words(ev.step)}")
        elif ev.kind == "verdict" and ev.step is not None:
            s = ev.step
            cell = f"cell {s.cell_s:.1f}s, " if s.cell_s is not None else ""
            out.info(f"  {escape(cell)}[bold]{escape(s.verdict)}[/]: {escape(s.why[:160])}", markup=True)
    return show


def _build_words(s: lib.Step) -> str:
    if s.build_s is None:
        return "failed"
    if s.build_cached:
        return f"cached ({s.build_s:.1f}s)"
    return f"{s.build_s:.1f}s, {s.ninja_steps} ninja steps, {s.files_written} source file(s) changed"


def _human(r: lib.Result) -> None:
    t = Table("#", "ref", "verdict", "build", "cell", "step", "why")
    for i, s in enumerate(r.steps, 1):
        t.add_row(str(i), f"{s.ref[:12]} {s.label[:40]}".strip(), s.verdict, _build_words(s),
                  f"{s.cell_s:.1f}s" if s.cell_s is not None else "-", f"{s.seconds:.1f}s", s.why[:80])
    console.print(t)
    what = "fixed" if r.fixed else "bad"
    if r.first is not None:
        console.print(f"first {escape(what)} {escape(r.space[:-1] if r.space != 'patches' else 'patch')}: [bold]{escape(r.first)}[/] "
                      f"{escape(r.first_label or '')}", highlight=False, markup=True)
        if r.signature:
            console.print(f"  signature: {r.signature}", highlight=False, markup=False)
        if r.log:
            console.print(f"  log:       {r.log}", highlight=False, markup=False)
        if r.build_log:
            console.print(f"  build log: {r.build_log}", highlight=False, markup=False)
    elif r.could_be:
        console.print(f"only skipped steps are left: the first {what} is one of "
                      + ", ".join(shlex.quote(c[:12]) for c in r.could_be), highlight=False)
    if r.note:
        console.print(f"[yellow]{escape(r.note)}[/]", highlight=False, markup=True)
    console.print(f"bisect: {len(r.steps)} step(s), {r.builds} build(s), {r.wall_s:.0f}s; state {r.state_file}",
                  highlight=False)
