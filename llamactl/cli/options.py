"""Shared option aliases (Annotated), so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
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


def cli_overrides(
    parallel: int | None = None, ctx: int | None = None, batch: int | None = None, ubatch: int | None = None,
    kv_k: str | None = None, kv_v: str | None = None, mtp: bool | None = None, port: str | None = None,
    model: str | None = None, draft_model: str | None = None, sets: list[str] | None = None,
) -> dict:
    from llamactl.serve.profiles import merge, parse_set

    direct = {
        "parallel": parallel, "ctx": ctx, "batch": batch, "ubatch": ubatch, "kv_k": kv_k, "kv_v": kv_v,
        "enable_mtp": mtp, "port": port, "model": model, "draft_model": draft_model,
    }
    out = {k: v for k, v in direct.items() if v is not None}
    if sets:
        out = merge(out, parse_set(sets), {}, "")
    return out
