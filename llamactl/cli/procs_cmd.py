"""`llamactl ps` and `llamactl stop`: the servers started with `run --detach`, from their run records.

Kept apart from `run` so that scripts calling them in loops import only the run records (no launcher,
build or profile machinery): `stop` in about 0.2 s.

Examples:
    llamactl ps
    llamactl ps --all --json
    llamactl stop --all
    llamactl stop 20261206-1745
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from llamactl.cli import options as o
from llamactl.cli.common import warn as _warn
from llamactl.cli.console import Output, console
from llamactl.core import runrecords
from llamactl.core.errors import LlamactlError


def _row(rec: runrecords.RunRecord, alive: bool) -> dict:
    return dict(rec.model_dump(), id=rec.id, alive=alive)


def ps(all_: Annotated[bool, typer.Option("--all", "-a", help="Include stopped runs.")] = False, json: o.Json = False) -> None:
    """Servers started with `run --detach` (each PID checked: start time and argv, not just 'a process exists')."""
    rows = []
    for rec in runrecords.load_all(_warn):
        alive = runrecords.verify(rec, _warn)
        if alive or all_:
            rows.append(_row(rec, alive))

    def human(rs: list[dict]) -> None:
        t = Table("id", "pid", "url", "state", "log")
        for r in rs:
            state = Text(r["state"], "green") if r["alive"] else \
                Text.assemble("stopped ", (f"({r.get('stopped_why') or ''})", "dim"))
            t.add_row(r["id"], str(r["pid"]), r["url"] or "-", state, r["log"] or "-")
        console.print(t)

    Output(json).result(rows, human)


def remove_socket_if_stale(path: str) -> None:
    """Remove a detached server's unix socket file once nobody listens on it."""
    from llamactl.serve.endpoint import Endpoint   # only when a record names a socket

    try:
        Endpoint.parse(path, None).clear_stale()
    except LlamactlError:
        pass


def stop(
    run_id: Annotated[Optional[str], typer.Argument(help="Run id from `llamactl ps` (prefix is enough).")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Stop every detached server.")] = False,
    json: o.Json = False,
) -> None:
    """Stop detached servers (SIGTERM, then SIGKILL after 10 s); a stale record is cleaned up, never signalled."""
    if not run_id and not all_:
        raise LlamactlError("name a run id or pass --all")
    recs = [r for r in runrecords.load_all(_warn) if r.state != "stopped" and (all_ or r.id.startswith(run_id or ""))]
    stopped = [r.id for r in recs if runrecords.stop(r, on_warning=_warn)]
    for r in recs:   # llama-server leaves its unix socket file behind; removed once nobody listens
        extra = r.model_extra or {}
        for sock in extra.get("sockets") or ([extra["socket"]] if extra.get("socket") else []):
            remove_socket_if_stale(str(sock))
    if not stopped and not all_:
        raise LlamactlError(f"no running server matches {run_id!r}", hint="see `llamactl ps --all`")
    Output(json).result(stopped, lambda ids: console.print(f"stopped {len(ids)} server(s)"))
