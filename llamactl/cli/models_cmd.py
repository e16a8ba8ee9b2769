"""`llamactl models`: fetch the embedded model, write tiny Gemma 4 + MTP pairs.

Examples:
    llamactl models list
    llamactl models fetch gemma3-270m
    llamactl models info gemma3-270m
    llamactl models tiny-gemma4 --layout upstream --drafter echo
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from llamactl.models import gguf_info
from llamactl.models import catalog as models
from llamactl.cli import options as o
from llamactl.cli.console import Output, console

app = typer.Typer(help="Named models: fetch, list, make tiny Gemma 4 pairs.", no_args_is_help=True)


@app.command("list")
def list_(json: o.Json = False) -> None:
    """Models llamactl can fetch or make."""
    rows = [{"name": m.name, "sha256": m.sha256, "description": m.description} for m in models.CATALOG.values()]
    rows.append({"name": "tiny-gemma4/<upstream|atomic>-<random|echo|noisy>[-s<seed>][-bench]/<target|drafter>",
                 "sha256": "(generated, deterministic)", "description": "tiny random-weight Gemma 4 + MTP assistant pair"})

    def human(rs: list[dict]) -> None:
        t = Table("name", "description")
        for r in rs:
            t.add_row(r["name"], r["description"])
        console.print(t)

    Output(json).result(rows, human)


@app.command()
def fetch(name: Annotated[str, typer.Argument(help="A model name from `models list`.")], json: o.Json = False) -> None:
    """Fetch (or generate) a named model into the cache and print its path."""
    out = Output(json)
    path = models.resolve(name, out.progress)
    out.result({"name": name, "path": str(path)}, lambda d: console.print(d["path"]))


@app.command()
def info(name: Annotated[str, typer.Argument(help="A model name or a path to a GGUF file.")], json: o.Json = False) -> None:
    """Architecture, sizes and tokenizer from the GGUF header (every shard of a split model; no tensor data read)."""
    data = gguf_info.info(models.resolve(name))

    def human(d: dict) -> None:
        t = Table(show_header=False, box=None)
        for k, v in d.items():
            if k == "shards":
                for i, s in enumerate(v, 1):
                    t.add_row(f"shard {i}", f"{s['path']}  ({s['bytes'] / 2**20:.2f} MiB, {s['tensors']} tensors)")
            else:
                t.add_row(k, str(v))
        console.print(t)

    Output(json).result(data, human)


@app.command("tiny-gemma4")
def tiny_gemma4(
    layout: Annotated[str, typer.Option(help="upstream (gemma4-assistant, nextn.*) or atomic (the fork's gemma4_assistant, mtp.*).")] = "upstream",
    drafter: Annotated[str, typer.Option(help="random (~0% acceptance), echo (~100%), noisy (partial).")] = "echo",
    seed: Annotated[int, typer.Option(help="RNG seed; same seed, same bytes.")] = 0,
    bench: Annotated[bool, typer.Option("--bench", help="A larger target whose decode dominates (for `llamactl bench`).")] = False,
    json: o.Json = False,
) -> None:
    """Write a tiny Gemma 4 target + MTP drafter pair (cached) and print the paths and profile refs."""
    ref = f"tiny-gemma4/{layout}-{drafter}" + (f"-s{seed}" if seed else "") + ("-bench" if bench else "")
    target = models.resolve(f"{ref}/target")
    draft = models.resolve(f"{ref}/drafter")
    Output(json).result({"target": str(target), "drafter": str(draft), "model_ref": f"{ref}/target", "draft_ref": f"{ref}/drafter"},
                        lambda d: console.print(f"target  {d['target']}\ndrafter {d['drafter']}\nprofile refs: model: {d['model_ref']}  draft_model: {d['draft_ref']}"))
