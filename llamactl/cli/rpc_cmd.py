"""`llamactl rpc-worker`: an RPC worker (llama.cpp's rpc-server) from the profile's own cached build.

Examples:
    llamactl rpc-worker                                   # default profile's build, 127.0.0.1:50052
    llamactl rpc-worker tiny-gemma4-mtp --port 50053
    llamactl rpc-worker default --host 0.0.0.0 --allow-remote --device CPU
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.markup import escape

from llamactl.cli import options as o
from llamactl.cli.common import stop_on_signals
from llamactl.cli.console import Output, console, err_console
from llamactl.core.errors import BadInput, ServerFailed
from llamactl.serve import launcher, rpc
from llamactl.serve.server import ensure_port_free, free_port

DEFAULT_PORT = 50052   # rpc-server's own default


@o.with_overrides(exclude=o.ONLY_SET)
def rpc_worker(
    name: Annotated[str, typer.Argument(help="Profile whose build the worker comes from.")] = "default",
    overrides: o.Overrides = o.Overrides(),
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[str, typer.Option("--port", "-p", help="Port, or 0/'auto' for a free one.")] = str(DEFAULT_PORT),
    device: Annotated[Optional[list[str]], typer.Option("--device", "-d", help="Backend device(s) to serve, e.g. CPU, Vulkan0 (repeatable).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads.", min=1)] = None,
    cache: Annotated[bool, typer.Option("--cache", help="Keep a local tensor cache (rpc-server -c).")] = False,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Bind a non-loopback address (the RPC protocol has no authentication).")] = False,
    json: o.Json = False,
) -> None:
    """Start an RPC worker from the profile's cached build (same source, series, backend); Ctrl-C stops it."""
    warning = rpc.check_bind(host, allow_remote)
    text = port.strip().lower()
    if text in ("0", "auto"):
        port_n = free_port(host if rpc.is_loopback(host) else "0.0.0.0")
    elif text.isdigit() and 0 < int(text) < 65536:
        port_n = int(text)
        ensure_port_free(host, port_n)
    else:
        raise BadInput(f"--port must be a number 1-65535, or 0/'auto' for a free one; got {port!r}")
    out = Output(json)
    r = overrides.resolve(name)
    binary = launcher.ensure_binary(r.profile, out.progress)
    wbin = rpc.worker_binary(binary.path, binary.manifest)
    key = rpc.build_key(binary.manifest, binary.path)
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True, markup=True)
    run_dir = launcher.new_run_dir(f"rpc-worker-{r.name}")
    w = rpc.RpcWorker(wbin, host, port_n, run_dir / "rpc-worker.log", key, devices=list(device or []),
                      threads=threads, cache=cache,
                      echo=None if json else (lambda ln: err_console.print(f"[dim]{escape(ln)}[/]", highlight=False, markup=True)))
    stop_on_signals()
    try:
        secs = w.start()
        info = {"profile": r.name, "endpoint": w.endpoint, "pid": w.pid, "build_key": key, "binary": str(wbin),
                "log": str(w.log_path), "ready_s": round(secs, 3)}
        out.result(info, lambda d: console.print(
            Text.assemble(("rpc worker", "green"), f" {d['endpoint']} ready in {d['ready_s']:.2f}s (pid {d['pid']}, "
                          f"build {d['build_key']}, log {d['log']})\n  use it: rpc: {{workers: [{d['endpoint']}]}}")))
        rc = w.process.proc.wait() if w.process and w.process.proc else None
        raise ServerFailed(f"rpc worker {w.endpoint} exited (code {rc})", hint=f"log: {w.log_path}")
    except KeyboardInterrupt:
        err_console.print("[yellow]stopping rpc worker ...[/]", markup=True)
        raise
    finally:
        w.stop()
