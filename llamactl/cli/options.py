"""Shared option aliases (Annotated), so every command spells them the same way."""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional, TypeVar, cast

import typer

if TYPE_CHECKING:
    from llamactl.serve.profiles import Resolved

F = TypeVar("F", bound=Callable[..., Any])

# One meaning for --json in every command: print JSON on stdout (and nothing else there; people's output
# goes to stderr). A command that also writes its JSON to a file takes --json-out FILE, beside --junit,
# --html, --markdown and --plot.
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout (the rest goes to stderr).")]
JsonOut = Annotated[Optional[Path], typer.Option("--json-out", help="Also write the JSON report to this file.", show_default=False)]
Source = Annotated[Optional[str], typer.Option("--source", "-s", help="Source from vendor/sources.yaml (upstream, atomic-turboquant) or path:/dir.")]
Series = Annotated[Optional[str], typer.Option("--series", help="Patch series under patches/ (default: the vendored source's own).")]
Backend = Annotated[str, typer.Option("--backend", "-b", help="cpu | hip | cuda | vulkan.")]
Jobs = Annotated[int, typer.Option("--jobs", "-j", help="Parallel compile jobs.")]
GpuTargets = Annotated[Optional[str], typer.Option("--gpu-targets", help="gfx targets for hip (gfx1100;gfx1030) or CUDA architectures.")]

Parallel = Annotated[Optional[int], typer.Option("--parallel", "-np", help="Server slots (PARALLEL).")]
Ctx = Annotated[Optional[int], typer.Option("--ctx", "-c", help="Context size (CTX).")]
Batch = Annotated[Optional[int], typer.Option("--batch", help="Logical batch (BATCH).")]
Ubatch = Annotated[Optional[int], typer.Option("--ubatch", help="Physical batch (UBATCH).")]
KvK = Annotated[Optional[str], typer.Option("--kv-k", help="K cache type, e.g. f16, q8_0, turbo4 (KV_K).")]
KvV = Annotated[Optional[str], typer.Option("--kv-v", help="V cache type (KV_V).")]
Mtp = Annotated[Optional[bool], typer.Option("--mtp/--no-mtp", help="Gemma 4 MTP speculative decoding (ENABLE_MTP).", show_default=False)]
Port = Annotated[Optional[str], typer.Option("--port", "-p", help="Port, or 'auto'/0 for a free one (PORT).")]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Model path or name (MAIN_GGUF).")]
DraftModel = Annotated[Optional[str], typer.Option("--draft-model", help="MTP assistant GGUF (DRAFT_GGUF).")]
Set = Annotated[Optional[list[str]], typer.Option("--set", help="Any profile key: --set key=value (repeatable; build.backend=cpu).")]
NoEnv = Annotated[bool, typer.Option("--no-env", help="Ignore CTX/PARALLEL/... environment overrides.")]
History = Annotated[Optional[Path], typer.Option("--history", help="Run history SQLite file (default: LLAMACTL_HISTORY, else ~/.local/share/llamactl/history.sqlite).", show_default=False)]
Html = Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML report here.")]
Markdown = Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown report here (fits a CI job summary).")]
ProfileName = Annotated[str, typer.Argument(help="Profile name (profiles/NAME.yaml) or a path to a YAML file.")]
RouterMembers = Annotated[Optional[list[str]], typer.Argument(
    help="With --router: the other profiles the router serves (each model is named by its profile).", show_default=False)]


def cli_overrides(
    parallel: int | None = None, ctx: int | None = None, batch: int | None = None, ubatch: int | None = None,
    kv_k: str | None = None, kv_v: str | None = None, mtp: bool | None = None, port: str | None = None,
    model: str | None = None, draft_model: str | None = None, sets: list[str] | None = None,
) -> dict:
    """The profile keys the override options name (``--mtp`` is ``enable_mtp``), with ``--set`` merged in."""
    from llamactl.serve.profiles import merge, parse_set

    direct = {
        "parallel": parallel, "ctx": ctx, "batch": batch, "ubatch": ubatch, "kv_k": kv_k, "kv_v": kv_v,
        "enable_mtp": mtp, "port": port, "model": model, "draft_model": draft_model,
    }
    out = {k: v for k, v in direct.items() if v is not None}
    if sets:
        out = merge(out, parse_set(sets), {}, "")
    return out


@dataclass(frozen=True)
class Overrides:
    """What a command was told about its profile on the command line: override values (profile keys;
    ``cli`` is their origin) and whether to ignore CTX/PARALLEL/... in the environment."""

    values: dict[str, Any] = field(default_factory=dict)
    no_env: bool = False

    def resolve(self, name: str) -> Resolved:
        """The profile ``name`` with the environment (unless ``no_env``) and these values applied.

        Raises what :func:`llamactl.serve.profiles.resolve` raises (BadInput naming the key or file).
        """
        from llamactl.serve import profiles

        return profiles.resolve(name, environ={} if self.no_env else dict(os.environ), cli=self.values)


# (parameter name, option, default): declared once, added to a command by :func:`with_overrides`
OVERRIDE_OPTIONS: list[tuple[str, Any, Any]] = [
    ("parallel", Parallel, None), ("ctx", Ctx, None), ("batch", Batch, None), ("ubatch", Ubatch, None),
    ("kv_k", KvK, None), ("kv_v", KvV, None), ("mtp", Mtp, None), ("port", Port, None), ("model", Model, None),
    ("draft_model", DraftModel, None), ("set_", Set, None), ("no_env", NoEnv, False),
]
ALWAYS = ("set_", "no_env")
ONLY_SET = tuple(n for n, _, _ in OVERRIDE_OPTIONS if n not in ALWAYS)   # exclude=ONLY_SET: just --set and --no-env


def _is_argument(p: inspect.Parameter) -> bool:
    """A positional argument of the command: no default, or a ``typer.Argument``."""
    if p.default is inspect.Parameter.empty:
        return True
    return any(isinstance(m, typer.models.ArgumentInfo) for m in getattr(p.annotation, "__metadata__", ()))


def with_overrides(exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give a command the profile override options (``--parallel ... --draft-model``, ``--set``,
    ``--no-env``; less those named in ``exclude``), declared once here. The command takes one
    ``overrides: Overrides`` parameter instead; the options appear after its leading arguments."""
    chosen = [x for x in OVERRIDE_OPTIONS if x[0] not in exclude or x[0] in ALWAYS]

    def decorate(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "overrides"]
        lead = next((i for i, p in enumerate(own) if not _is_argument(p)), len(own))
        added = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=a, default=d) for n, a, d in chosen]
        params = [*own[:lead], *added, *own[lead:]]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            given = {n: kwargs.pop(n, d) for n, _, d in chosen}
            sets, no_env = given.pop("set_"), given.pop("no_env")
            kwargs["overrides"] = Overrides(cli_overrides(**given, sets=sets), bool(no_env))
            return func(*args, **kwargs)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return cast(F, command)
    return decorate
