"""`llamactl vendor` and `llamactl build`.

Examples:
    llamactl vendor                               # upstream (pinned PyPI sdist), cached
    llamactl vendor --source atomic-turboquant    # the fork, pinned commit (needs GitHub)
    llamactl vendor --source path:~/src/llama.cpp --series atomic-turboquant
    llamactl build                                # CPU llama-server, cached by its inputs
    llamactl build --backend hip --gpu-targets gfx1100 --dry-run
    llamactl build --json
    llamactl build --source path:/tmp/llama.cpp   # another source: a cached tree, vendor/llama.cpp untouched
    llamactl build --backend vulkan --with-tests  # + ggml's test-backend-ops (each op vs the CPU backend)
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Optional

import typer
from rich.text import Text
from rich.table import Table

from llamactl.build import builder as build_lib
from llamactl.core import paths
from llamactl.source import vendor as vendor_lib
from llamactl.cli import options as o
from llamactl.cli.common import stop_on_signals
from llamactl.cli.console import Output, console


def vendor(
    source: o.Source = None,
    series: o.Series = None,
    force: Annotated[bool, typer.Option("--force", help="Re-materialise even if the same source is vendored.")] = False,
    json: o.Json = False,
) -> None:
    """Materialise a pinned llama.cpp source into vendor/llama.cpp/ (git repo with one base commit)."""
    out = Output(json)
    with vendor_lib.vendor_lock():
        prov = vendor_lib.vendor(source, force=force, progress=out.progress, series=series)
    out.result(prov, lambda p: console.print(
        Text.assemble(("vendored", "green"), f" {p.source} {p.version} (hash {p.hash[:16]}) -> {paths.vendor_tree()}  "
                      f"series: {p.series or '-'}")))


def build(
    source: o.Source = None,
    backend: o.Backend = "cpu",
    target: Annotated[str, typer.Option("--target", help="CMake target to build.")] = "llama-server",
    jobs: o.Jobs = os.cpu_count() or 2,
    gpu_targets: o.GpuTargets = None,
    series: o.Series = None,
    no_patches: Annotated[bool, typer.Option("--no-patches", help="Build the pristine source (reverts the series).")] = False,
    cmake_option: Annotated[Optional[list[str]], typer.Option("--cmake-option", "-D", help="Extra CMake option, e.g. -D GGML_AVX512=OFF.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the exact commands; needs no toolchain.")] = False,
    with_tests: Annotated[bool, typer.Option("--with-tests", help="Also build ggml's test-backend-ops in the same build dir "
                                             "(run: test-backend-ops -b Vulkan0 -o MUL_MAT).")] = False,
    json: o.Json = False,
) -> None:
    """Vendor + patch (when needed) and build llama-server with CMake + Ninja, cached by every input."""
    out = Output(json)
    opts = [x if x.startswith("-D") else f"-D{x}" for x in (cmake_option or [])]
    req = build_lib.BuildRequest(source=source, backend=backend, target=target, jobs=jobs,
                                 gpu_targets=gpu_targets, cmake_options=opts, series=series, no_patches=no_patches)
    if dry_run:
        plan = build_lib.dry_run(req)

        def human(d: dict[str, Any]) -> None:
            for line in d["shell"]:
                console.print(line, soft_wrap=True, highlight=False)
        out.result({"configure": plan.configure, "build": plan.build, "env": plan.env, "shell": plan.shell_lines()}, human)
        return
    t0 = time.monotonic()
    stop_on_signals()   # SIGTERM unwinds like Ctrl-C: the compile's process group is stopped
    res = build_lib.build(req, out.progress)
    if with_tests and not (res.manifest.get("tests") and all(os.path.exists(p) for p in res.manifest["tests"]["binaries"].values())):
        build_lib.build_tests(res, out.progress, jobs)
    manifest = dict(res.manifest, cached=res.cached, seconds=round(time.monotonic() - t0, 3))
    out.result(manifest, _show)


def _show(m: dict) -> None:
    state = Text("cached" if m["cached"] else "built", style="green")
    console.print(state, f"{m['target']} ({m['backend']}, {m['source']['source']} {m['source']['version']}) in {m['seconds']:.2f}s")
    t = Table(show_header=False, box=None)
    t.add_row("binary", m["binaries"][m["target"]])
    t.add_row("version", m["version"].splitlines()[0] if m["version"] else "?")
    t.add_row("patches", ", ".join(p["name"] for p in m["patches"]) or "-")
    t.add_row("build dir", m["build_root"])
    for name, path in (m.get("tests") or {}).get("binaries", {}).items():
        t.add_row(name, path)
    console.print(t)
