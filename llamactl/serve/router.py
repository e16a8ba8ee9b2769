"""llama-server in router mode over several profiles' models, through a generated preset.

The router is one llama-server started without ``-m``: ``--models-preset FILE`` (one section per
profile, written by :func:`llamactl.serve.presets.export_ini`), ``--models-max N`` (least recently used
model unloaded beyond N), on 127.0.0.1 and a free port. It loads a model on demand by the request's
``model`` field (POST bodies) or ``?model=`` (GET), each in a child llama-server of its own, and
answers ``GET /models`` and ``POST /models/load|unload`` (tools/server/README.md, "Using multiple
models"). The children are spawned without a new session (sheredom's subprocess.h, posix_spawn), so
they share the router's process group, which :meth:`ServerProcess.stop` signals; they also exit when
the router's pipe to their stdin closes ("EOF on stdin detected").

The router's own argv carries no model flags: llama.cpp gives the router's command-line arguments
precedence over every section, and passes them to each child.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.core.errors import BadInput
from llamactl.core.files import write_atomic
from llamactl.core.progress import ProgressFn
from llamactl.serve import launcher, presets
from llamactl.serve.dialect import Help, server_environment
from llamactl.serve.endpoint import Endpoint
from llamactl.serve.profiles import Resolved
from llamactl.serve.render import Unsupported
from llamactl.serve.server import ServerProcess, free_port

HOST = "127.0.0.1"
ROUTER_FLAGS = ("--models-preset", "--models-max")


def supports_router(help_: Help) -> bool:
    """Whether this llama-server has router mode with presets (``--models-preset`` and ``--models-max`` in its --help)."""
    return all(help_.has(f) for f in ROUTER_FLAGS)


class RouterUnsupported(Unsupported):
    """The build has no router mode (no ``--models-preset`` in its --help): a SKIP for validation."""

    def __init__(self, binary: str) -> None:
        super().__init__("router", True, None, binary)
        self.message = (f"{binary} has no router mode (no --models-preset in its --help; upstream has it since "
                        "December 2025)")
        self.args = (self.message,)


@dataclass
class Member:
    """One model of the router: the section name requests use, and the profile's own launch plan."""

    name: str
    plan: launcher.LaunchPlan

    @property
    def profile(self) -> Any:
        return self.plan.resolved.profile


@dataclass
class RouterPlan:
    """Everything up to the router's start: members, the preset text and file, the router's argv."""

    members: list[Member]
    binary: launcher.Binary
    preset_path: Path
    preset_text: str
    argv: list[str]
    port: int
    models_max: int
    env: dict[str, str] = field(default_factory=dict)
    env_dropped: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(HOST, self.port)

    @property
    def url(self) -> str:
        return self.endpoint.url

    def names(self) -> list[str]:
        return [m.name for m in self.members]


def plan_router(members: list[Resolved], preset_path: Path, *, models_max: int | None = None,
                port: int | str = "auto", progress: ProgressFn | None = None,
                extra_sections: list[presets.Section] | None = None,
                binary: launcher.Binary | None = None) -> RouterPlan:
    """Plan a router over ``members`` (each a resolved profile; its name is the model name) and write the preset.

    ``models_max``: models loaded at once (default: all members; 0 = unlimited). ``extra_sections`` are
    added to the preset as given (validation's probe of a model that cannot load).

    Raises:
        BadInput: fewer than one member, a name twice, members on different builds, an ``rpc.local_workers``
            member, members whose ``env:`` differ, a bad ``models_max`` or port.
        RouterUnsupported: the build has no router mode.
        (and what :func:`launcher.plan` raises for a member: a bad model file, an unsupported value).
    """
    if not members:
        raise BadInput("a router needs at least one profile", hint="llamactl run --router PROFILE_A PROFILE_B")
    names = [r.name for r in members]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise BadInput(f"profile {dup!r} named twice for the router")
    if models_max is not None and models_max < 0:
        raise BadInput(f"--models-max must be 0 (unlimited) or more, got {models_max}")
    planned: list[Member] = []
    for r in members:
        if r.profile.rpc is not None and r.profile.rpc.local_workers:
            raise BadInput(f"profile {r.name}: rpc.local_workers cannot be started per router child",
                           hint="start workers with `llamactl rpc-worker` and name them in rpc.workers")
        p = launcher.plan(r, progress, binary=binary)
        binary = binary or p.binary
        if p.binary.path != binary.path:
            raise BadInput(f"router members must share one llama-server: {planned[0].name} runs {binary.path}, "
                           f"{r.name} runs {p.binary.path}", hint="give them the same build: (source, backend)")
        planned.append(Member(r.name, p))
    assert binary is not None
    if not supports_router(binary.help):
        raise RouterUnsupported(str(binary.path))
    envs = {tuple(sorted(m.profile.env.items())) for m in planned}
    if len(envs) > 1:
        raise BadInput("router members set different env: blocks; every child gets the router's environment",
                       hint="give the profiles the same env:")
    env = dict(planned[0].profile.env)
    origin = " + ".join(f"profile {m.name}" for m in planned) + f" ({binary.path})"
    text = presets.export_ini([(m.name, m.profile, _router_argv(m, planned)) for m in planned], binary.help, origin,
                              extra=extra_sections)
    write_atomic(preset_path, text)
    n_max = len(planned) if models_max is None else models_max
    tcp = free_port(HOST) if port in ("auto", 0, "0") else int(port)
    argv = [str(binary.path), "--models-preset", str(preset_path), "--models-max", str(n_max),
            "--host", HOST, "--port", str(tcp)]
    _, dropped = server_environment(dict(os.environ), env, binary.help)
    return RouterPlan(planned, binary, preset_path, text, argv, tcp, n_max, env, dropped)


def _router_argv(m: Member, members: list[Member]) -> list[str]:
    """A member's argv for its section: its ``--alias`` kept (the router routes by it too) unless another member
    has that alias or name (the router refuses to start on such a conflict: "alias ... conflicts with ...")."""
    argv = m.plan.argv
    alias = m.profile.alias
    if alias is None or "--alias" not in argv:
        return argv
    clash = [o.name for o in members if o is not m and (o.profile.alias == alias or o.name == alias)]
    if not clash:
        return argv
    i = argv.index("--alias")
    return argv[:i] + argv[i + 2:]


def start(plan: RouterPlan, log_path: Path, echo: Callable[[str], None] | None = None) -> ServerProcess:
    """Start the router (own process group, parent-death signal, no shell); ``stop()`` ends it and its children.

    Raises:
        LlamactlError: the binary cannot be run.
    """
    plan.endpoint.probe_bind()
    sp = ServerProcess(plan.argv, HOST, plan.port, log_path, env=plan.env, echo=echo,
                       drop_env=tuple(plan.env_dropped), endpoint=plan.endpoint)
    sp.start()
    return sp


def child_processes(router_pid: int) -> dict[str, int]:
    """The router's running model children: section name -> pid (from the process tree: each child is a
    llama-server whose argv has ``--alias NAME``, which the router sets to the section name)."""
    import psutil

    out: dict[str, int] = {}
    try:
        kids = psutil.Process(router_pid).children(recursive=False)
    except psutil.Error:
        return out
    for k in kids:
        try:
            argv = k.cmdline()
            if k.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        for i, a in enumerate(argv[:-1]):
            if a in ("--alias", "-a"):
                out[argv[i + 1]] = k.pid
    return out


def model_states(body: Any) -> dict[str, dict[str, Any]]:
    """``GET /models`` of a router as name -> status object (``{"value": "loaded", "failed": true, "exit_code": 1, ...}``).

    Raises:
        ValueError: the body is not the router's model list (``{"data": [{"id": ..., "status": {...}}]}``).
    """
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError(f"not a router's /models answer: {str(body)[:120]}")
    out: dict[str, dict[str, Any]] = {}
    for m in body["data"]:
        if isinstance(m, dict) and "id" in m:
            st = m.get("status")
            out[str(m["id"])] = st if isinstance(st, dict) else {"value": st}
    return out
