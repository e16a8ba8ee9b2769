"""`llamactl run` (`ps` and `stop` live in procs_cmd.py).

Examples:
    llamactl run default
    llamactl run gemma4-26b-a4b-mtp --parallel 2
    CTX=2048 PARALLEL=2 llamactl run default --port 0
    llamactl run default --detach && llamactl ps && llamactl stop --all
    llamactl run --router tiny-gemma4-mtp tiny-gemma4-bench --models-max 1
    llamactl run --router default tiny-gemma4-mtp --set ctx=2048
"""

from __future__ import annotations

import json as jsonlib
from typing import Annotated, Optional

import typer
from rich.markup import escape

from llamactl.serve import launcher, quickstart
from llamactl.core import runrecords
from llamactl.cli import options as o
from llamactl.cli.common import stop_on_signals, warn_exposure
from llamactl.cli.console import Output, console, err_console, progress_bar
from llamactl.core.errors import BadInput, LlamactlError
from llamactl.serve.server import ServerDied


def _echo(line: str) -> None:
    low = line.lower()
    style = "red" if ("error" in low or "assert" in low or "abort" in low) else "yellow" if "warn" in low else "dim"
    err_console.print(f"[{style}]{escape(line)}[/]", highlight=False, soft_wrap=True, markup=True)


@o.with_overrides()
def run(
    name: o.ProfileName,
    more: o.RouterMembers = None,
    overrides: o.Overrides = o.Overrides(),
    router: Annotated[bool, typer.Option("--router", help="One llama-server in router mode over these profiles' models "
                                         "(a generated --models-preset; the model name is the profile name), e.g. "
                                         "`run --router tiny-gemma4-mtp tiny-gemma4-bench`.")] = False,
    models_max: Annotated[Optional[int], typer.Option("--models-max", help="With --router: models loaded at once, the "
                                                      "least recently used unloaded beyond it (default: all; 0 = "
                                                      "unlimited), e.g. --models-max 1.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not echo the server log (it is still written).")] = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Leave the server running; see `ps`/`stop`.")] = False,
    json: o.Json = False,
) -> None:
    """Launch llama-server from a profile; Ctrl-C stops it (nothing is left running)."""
    out = Output(json)
    if router or more:
        if not router:   # a usage error, as click words it (the older `run --json FILE` gets its hint)
            raise typer.BadParameter(f"Got unexpected extra argument ({' '.join(more or [])}); more than one "
                                     f"profile needs --router: llamactl run --router {name} {' '.join(more or [])}")
        if detach:
            raise BadInput("--router cannot be combined with --detach (yet)", hint="run it in the foreground")
        _run_router([name, *(more or [])], overrides, models_max, quiet, out)
        return
    if models_max is not None:
        raise BadInput("--models-max is for --router", hint=f"llamactl run --router {name} OTHER --models-max 1")
    r = overrides.resolve(name)
    plan = launcher.plan(r, out.progress)
    run_dir = launcher.new_run_dir(r.name)
    log = run_dir / "server.log"
    (run_dir / "argv.json").write_text(jsonlib.dumps(plan.argv))
    out.info(f"[dim]$ {escape(plan.shell())}[/]", markup=True)
    warn_exposure(r.profile.host)
    stop_on_signals()
    quickstart.note_cli(quiet=quiet, json_mode=json)
    sp = launcher.start(plan, log, echo=None if (quiet or json or detach) else _echo, detach=detach)
    record: dict | None = None
    if detach:   # recorded at once, so that `ps`/`stop` find it even while it starts
        ident = sp.identity.to_json() if sp.identity else {"pid": sp.pid, "argv": plan.argv}
        record = dict(ident, state="starting", profile=r.name, url=plan.url, log=str(log),
                      sockets=[str(e.uds) for e in plan.endpoints if e.uds])
        runrecords.write(run_dir, record)
    ready = False
    try:
        with progress_bar(f"waiting for /health on {plan.url}", total=None) as (progress, task):
            secs = sp.wait_healthy(r.profile.health_timeout)
        ep, base = plan.endpoint, plan.base_url
        info = {"profile": r.name, "url": plan.url, "pid": sp.pid, "log": str(log), "ready_s": round(secs, 3),
                "early_start": sp.adopted,
                "socket": str(ep.uds) if ep.uds else None, "sockets": [str(e.uds) for e in plan.endpoints if e.uds],
                "endpoints": [f"{base}{e}" for e in plan.endpoint_paths]}
        if record is not None:
            runrecords.write(run_dir, dict(record, **info, state="running"))
        ready = True
        out.result(info, lambda d: console.print(
            f"[green]ready[/] {escape(d['url'])} in {d['ready_s']:.2f}s (pid {int(d['pid'])}, log {escape(d['log'])})\n  "
            + "\n  ".join(escape(e) for e in d["endpoints"])
            + (f"\n  [dim]{escape(ep.curl_hint())}[/]" if ep.uds else ""), highlight=False, soft_wrap=True, markup=True))
        if detach:
            return
        rc = sp.proc.wait() if sp.proc else None
        crash = sp.crash()
        raise ServerDied(crash) if rc != 0 else LlamactlError("llama-server exited (code 0)")
    except ServerDied as exc:
        c = exc.crash
        err_console.print(f"[red]{escape(c.summary())}[/]", markup=True)
        for ln in c.frames[:8]:
            err_console.print(f"  [red]{escape(ln)}[/]", markup=True)
        if not c.frames:
            for ln in c.last_lines[-8:]:
                err_console.print(f"  [dim]{escape(ln)}[/]", markup=True)
        raise
    except KeyboardInterrupt:
        err_console.print("[yellow]stopping llama-server ...[/]", markup=True)
        raise
    finally:
        if not (detach and ready):   # a detached server that never got ready is stopped too
            sp.stop()
            if record is not None:
                runrecords.write(run_dir, dict(record, state="stopped", stopped_why="did not become ready"))


def _run_router(names: list[str], overrides: o.Overrides, models_max: int | None, quiet: bool, out: Output) -> None:
    """`run --router A B ...`: the router on 127.0.0.1 until Ctrl-C; its children stop with it."""
    from llamactl.serve import router as router_lib
    from llamactl.serve.profiles import Resolved

    port = overrides.values.get("port", "auto")
    member_overrides = o.Overrides({k: v for k, v in overrides.values.items() if k != "port"}, overrides.no_env)
    members: list[Resolved] = [member_overrides.resolve(n) for n in names]
    run_dir = launcher.new_run_dir("router-" + "-".join(r.name for r in members)[:80])
    plan = router_lib.plan_router(members, run_dir / "models.ini", models_max=models_max, port=port,
                                  progress=out.progress)
    log = run_dir / "server.log"
    (run_dir / "argv.json").write_text(jsonlib.dumps(plan.argv))
    out.info(f"[dim]$ {escape(' '.join(plan.argv))}[/]", markup=True)
    stop_on_signals()
    sp = router_lib.start(plan, log, echo=None if (quiet or out.json_mode) else _echo)
    try:
        secs = sp.wait_healthy(max(m.profile.health_timeout for m in plan.members))
        info = {"router": plan.names(), "url": plan.url, "pid": sp.pid, "log": str(log), "preset": str(plan.preset_path),
                "models_max": plan.models_max, "ready_s": round(secs, 3),
                "endpoints": [f"{plan.url}{e}" for e in ("/models", "/models/load", "/models/unload",
                                                         "/v1/chat/completions", "/completion")]}
        out.result(info, lambda d: console.print(
            f"[green]router ready[/] {escape(d['url'])} in {d['ready_s']:.2f}s (pid {int(d['pid'])}, log {escape(d['log'])})\n"
            f"  models (the request's \"model\"): {escape(', '.join(d['router']))}; at most {int(d['models_max'])} loaded\n"
            f"  preset {escape(d['preset'])}\n  " + "\n  ".join(escape(e) for e in d["endpoints"]),
            highlight=False, soft_wrap=True, markup=True))
        rc = sp.proc.wait() if sp.proc else None
        crash = sp.crash()
        raise ServerDied(crash) if rc != 0 else LlamactlError("llama-server (router) exited (code 0)")
    except KeyboardInterrupt:
        err_console.print("[yellow]stopping the router and its models ...[/]", markup=True)
        raise
    finally:
        sp.stop()
