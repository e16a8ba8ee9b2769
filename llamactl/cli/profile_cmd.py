"""`llamactl profile`: list, show (resolved values with their origin), cmd (exact argv) and schema (JSON Schema).

Examples:
    llamactl profile list
    CTX=2048 PARALLEL=2 llamactl profile show default --port 0
    llamactl profile cmd gemma4-26b-a4b-mtp --parallel 2 --json
    llamactl profile schema --output profiles/profile.schema.json
    llamactl profile export tiny-gemma4-mtp --ini --out tiny.ini
    llamactl profile export default --ini --parallel 2 --kv-k q8_0 --kv-v q8_0
    llamactl profile import tiny.ini --out-dir /tmp/imported
    llamactl profile import models.ini --force
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.text import Text
from rich.table import Table

from llamactl.serve import launcher
from llamactl.serve import profiles
from llamactl.serve.dialect import server_environment
from llamactl.cli import options as o
from llamactl.cli.common import check_outputs
from llamactl.cli.console import Output, console, err_console
from llamactl.core.errors import BadInput
from llamactl.core import paths
from llamactl.core.files import write_atomic
from llamactl.judge.matrix import expand

app = typer.Typer(help="List, show and render profiles.", no_args_is_help=True)


@app.command("list")
def list_(json: o.Json = False) -> None:
    """Profiles under profiles/."""
    rows = []
    for name in profiles.list_profiles():
        try:
            r = profiles.resolve(name, environ={})
            rows.append({"name": name, "description": r.profile.description, "model": r.profile.model,
                         "build": f"{r.profile.build.source}/{r.profile.build.backend}",
                         "cells": len(expand(r.profile.matrix)) if r.profile.matrix else 0})
        except Exception as exc:  # a broken profile is listed with its error, not fatal
            rows.append({"name": name, "description": f"[invalid] {exc}", "model": "", "build": "", "cells": 0})

    def human(rs: list[dict]) -> None:
        t = Table("profile", "build", "model", "matrix cells", "description")
        for r in rs:
            t.add_row(r["name"], r["build"], r["model"], str(r["cells"] or "-"), r["description"])
        console.print(t)

    Output(json).result(rows, human)


@app.command()
def schema(out: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write it to this file instead of stdout.")] = None) -> None:
    """The JSON Schema of profile files, for editors (yaml-language-server) and other tools."""
    text = jsonlib.dumps(profiles.file_schema(), indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    check_outputs((out, "--output"))
    write_atomic(out, text)
    err_console.print(f"schema: {out}", highlight=False, markup=False)


@app.command()
@o.with_overrides()
def show(
    name: o.ProfileName, overrides: o.Overrides, json: o.Json = False,
) -> None:
    """Resolved values, each with where it came from (default, profile, env VAR, cli)."""
    r = overrides.resolve(name)
    data = r.profile.model_dump(mode="json", exclude={"matrix"})
    rows = []
    for k, v in data.items():
        if isinstance(v, dict) and k in ("build", "harness"):
            for sk, sv in v.items():
                rows.append({"key": f"{k}.{sk}", "value": sv, "origin": r.origin(f"{k}.{sk}")})
        else:
            rows.append({"key": k, "value": v, "origin": r.origin(k)})

    _, dropped = server_environment(dict(os.environ), dict(r.profile.env))

    def human(d: dict) -> None:
        t = Table("key", "value", "origin", title=f"profile {r.name} ({r.path})")
        for row in d["values"]:
            style = "" if row["origin"] == "default" else ("cyan" if row["origin"].startswith("env") else "magenta" if row["origin"] == "cli" else "green")
            t.add_row(row["key"], str(row["value"]), Text(row["origin"], style))
        console.print(t)
        if d["env_dropped"]:
            console.print(f"[yellow]not passed to llama-server[/] (it would read them itself; set them under env: to pass them): "
                          f"{escape(', '.join(d['env_dropped']))}", highlight=False, soft_wrap=True, markup=True)

    Output(json).result({"profile": r.name, "values": rows, "env_dropped": dropped}, human)


COLD_BUILD = "a cold CPU build takes about 5-9 minutes on 2 cores"


@app.command()
@o.with_overrides()
def cmd(
    name: o.ProfileName, overrides: o.Overrides, json: o.Json = False,
    build: Annotated[bool, typer.Option("--build", help="Build llama-server first when it is not built yet, "
                                        "instead of rendering from the source's recorded --help.")] = False,
) -> None:
    """The exact llama-server argv for this profile on its build.

    Without a build yet, the flags are rendered from the pinned source's recorded --help (a note on
    stderr says so); --build builds first (and says why and how long that takes).
    """
    r = overrides.resolve(name)
    out = Output(json)
    built = launcher.is_built(r.profile)
    recorded = None if built or build else launcher.recorded_binary(r.profile)
    if recorded is None and not built:
        err_console.print(f"llama-server for {name} is not built yet: building it first ({COLD_BUILD}; "
                          "`llamactl build` does it alone)", highlight=False, markup=False)
    p = launcher.plan(r, out.progress, binary=recorded)
    if recorded is not None:
        err_console.print(f"note: llama-server for {name} is not built yet; flags rendered from the recorded --help "
                          f"of source {r.profile.build.source!r} (`llamactl build` or `--build` builds it: {COLD_BUILD})",
                          highlight=False, markup=False)
    out.result({"argv": p.argv, "env": p.env, "env_dropped": p.env_dropped, "url": p.url, "built": recorded is None,
                **({"rendered_from": f"recorded --help of {r.profile.build.source}"} if recorded is not None else {})},
               lambda d: console.print(p.shell(), soft_wrap=True, highlight=False))


@app.command("export")
@o.with_overrides()
def export(
    name: o.ProfileName, overrides: o.Overrides,
    ini: Annotated[bool, typer.Option("--ini", help="As a llama-server INI preset section (--models-preset); "
                                      "e.g. `profile export default --ini --out default.ini`.")] = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the preset to this file instead of stdout "
                                                     "(e.g. --out models.ini).", show_default=False)] = None,
    section: Annotated[Optional[str], typer.Option("--section", help="Section name, the model name requests use "
                                                   "(default: the profile name), e.g. --section tiny.", show_default=False)] = None,
    json: o.Json = False,
) -> None:
    """The profile as a llama-server preset section: its rendered flags (the build's own names), models resolved.

    Rendered like `profile cmd` (from the recorded --help before a build); host and port are left to the
    router; what a preset cannot carry (build, env, harness, matrix) is named in comments.
    """
    from llamactl.serve import presets

    if not ini:
        raise BadInput("profile export: choose a format: --ini (llama-server's --models-preset INI)",
                       hint=f"llamactl profile export {name} --ini")
    check_outputs((out_file, "--out"))
    r = overrides.resolve(name)
    o_ = Output(json)
    recorded = None if launcher.is_built(r.profile) else launcher.recorded_binary(r.profile)
    p = launcher.plan(r, o_.progress, binary=recorded)
    origin = f"recorded --help of {r.profile.build.source}" if recorded is not None else str(p.binary.path)
    text = presets.export_ini([(section or r.name, r.profile, p.argv)], p.binary.help, f"profile {r.name} ({origin})")
    if out_file is not None:
        write_atomic(out_file, text)
        err_console.print(f"preset: {out_file}", highlight=False, markup=False)
    def human(d: dict) -> None:
        if out_file is None:
            sys.stdout.write(text)

    o_.result({"profile": r.name, "section": section or r.name, "ini": text, "out": str(out_file) if out_file else None,
               "rendered_from": origin}, human)


@app.command("import")
def import_(
    preset: Annotated[Path, typer.Argument(help="INI preset file (llama-server --models-preset), e.g. models.ini.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Write the profiles here instead of profiles/ "
                                                    "(e.g. --out-dir /tmp/imported).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite profiles that exist (e.g. `import models.ini --force`).")] = False,
    source: Annotated[str, typer.Option("--source", "-s", help="Check keys against this source's --help "
                                        "(its cached build, else its recorded help), e.g. --source upstream.")] = "upstream",
    json: o.Json = False,
) -> None:
    """One profile per preset section ([*] applied to each); keys the build's --help lacks are refused.

    Nothing is written unless every section converts and no target file exists (or --force).
    """
    from llamactl.core.files import read_text
    from llamactl.serve import presets

    text = read_text(preset, "preset")
    help_, origin = presets.help_for_source(source)
    build = {"source": source} if source != "upstream" else None
    imported = presets.import_preset(text, str(preset), help_, build)
    dest = out_dir or paths.profiles_dir()
    targets = [(imp, dest / f"{imp.name}.yaml") for imp in imported]
    exists = [str(t) for _, t in targets if t.exists()]
    if exists and not force:
        raise BadInput(f"profile import: {', '.join(exists)} already exist(s); nothing written", hint="--force overwrites")
    dest.mkdir(parents=True, exist_ok=True)
    for imp, t in targets:
        write_atomic(t, presets.profile_yaml(imp, preset.name))
    rows = [{"section": imp.section, "profile": imp.name, "path": str(t), "notes": imp.notes} for imp, t in targets]

    def human(d: dict) -> None:
        for row in d["profiles"]:
            console.print(f"[{row['section']}] -> {row['path']}", highlight=False, markup=False)
            for n in row["notes"]:
                err_console.print(f"  note: {n}", highlight=False, markup=False)

    Output(json).result({"preset": str(preset), "checked_against": origin, "profiles": rows}, human)
