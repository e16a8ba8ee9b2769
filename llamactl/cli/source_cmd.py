"""`llamactl source list|versions`: the pinned llama.cpp sources and the upstream versions recorded so far.

Any version of a pypi-sdist source works as a source name: ``upstream@0.3.35`` (the first use
downloads it and records its sha256 and llama.cpp commit in vendor/upstream-versions.yaml);
a git source takes ``NAME@COMMIT``, a local checkout ``path:/dir@REV``.

Examples:
    llamactl source list                              # pinned sources + recorded versions
    llamactl source list --json
    llamactl source versions                          # every upstream version with an sdist on the index
    llamactl source versions upstream --from 0.3.33 --to 0.3.36
    llamactl vendor --source upstream@0.3.35          # fetch + record it, make it the vendored tree
    llamactl build --source upstream@0.3.35           # a build of it beside the default (vendor/ untouched)
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from llamactl.cli import options as o
from llamactl.cli.console import Output, console
from llamactl.source import sources

app = typer.Typer(help="Pinned llama.cpp sources and recorded upstream versions.", no_args_is_help=True)


@app.command("list")
def list_(json: o.Json = False) -> None:
    """The pinned sources (vendor/sources.yaml) and the recorded versions (vendor/upstream-versions.yaml)."""
    rows = sources.inventory()

    def human(_: object) -> None:
        t = Table("source", "kind", "version", "llama.cpp", "sha256 / commit", "series", "from")
        for r in rows:
            name = Text.assemble(r.name, (" (default)", "dim")) if r.default else Text(r.name)
            t.add_row(name, r.kind, r.version[:12], (r.llama_cpp_commit or "?")[:12], r.hash[:16],
                      r.series or "-", r.origin)
        console.print(t)
    Output(json).result([r.model_dump() for r in rows], human)


@app.command()
def versions(
    name: Annotated[str, typer.Argument(help="A pypi-sdist source of vendor/sources.yaml.")] = "upstream",
    first: Annotated[Optional[str], typer.Option("--from", help="Oldest version to list.")] = None,
    last: Annotated[Optional[str], typer.Option("--to", help="Newest version to list.")] = None,
    json: o.Json = False,
) -> None:
    """Versions of a pypi-sdist source's package that have an sdist on the index, oldest first (network)."""
    all_versions = sources.available_versions(name)
    picked = sources.versions_between(name, first or all_versions[0], last or all_versions[-1], versions=all_versions) \
        if all_versions else []
    lock = sources.load_lock()
    spec = lock.sources[name.partition("@")[0]]
    recorded = sources.load_versions().get(getattr(spec, "package", ""), {})
    data: list[dict[str, str | bool | None]] = [
        {"version": v, "source": sources.canonical(f"{name}@{v}", lock), "recorded": v in recorded,
         "llama_cpp_commit": recorded[v].commit if v in recorded else None} for v in picked]

    def human(_: object) -> None:
        t = Table("version", "source name", "recorded", "llama.cpp")
        for d in data:
            t.add_row(str(d["version"]), str(d["source"]), "yes" if d["recorded"] else "-", str(d["llama_cpp_commit"] or "")[:12])
        console.print(t)
    Output(json).result(data, human)
