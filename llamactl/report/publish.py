"""After a validate or bench run: fingerprint it, record it in the history, gate it, render it.

The CLI calls these; nothing here prints. Recording never fails a run: a history error is
returned as text for the CLI to show as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamactl.core.errors import BadInput, LlamactlError
from llamactl.report import fingerprint, gate as gate_lib, html, markdown, runs, view
from llamactl.report.history import History


@dataclass
class Published:
    history_id: int | None = None
    history_error: str | None = None
    written: list[Path] = field(default_factory=list)


def enrich(run: dict[str, Any]) -> dict[str, Any]:
    """The run with ``kind``, ``machine`` (this machine's fingerprint) and ``build`` (its build identity)."""
    out = dict(run)
    out["kind"] = runs.kind_of(run)
    out["machine"] = fingerprint.machine()
    builds = (run.get("meta") or {}).get("builds") or {}
    if builds:
        out["build"] = next(iter(builds.values()))
    else:
        binary = runs.binary_of(run)
        out["build"] = fingerprint.build_identity(fingerprint.manifest_for_binary(binary), binary,
                                                  run.get("version") or (run.get("meta") or {}).get("version"))
    return out


def record(run: dict[str, Any], history: History) -> Published:
    """Store an enriched run; a storage error comes back in ``history_error``."""
    try:
        return Published(history_id=history.record(run, run["machine"], run["build"]))
    except LlamactlError as exc:
        return Published(history_error=str(exc))


def render(run_list: list[dict[str, Any]], html_path: Path | None, md_path: Path | None,
           history: History | None = None, trend: dict[str, Any] | None = None) -> list[Path]:
    """Write the HTML page and/or the Markdown for these runs; returns what was written."""
    if not html_path and not md_path:
        return []
    v = view.report_view(run_list, history, trend)
    written = []
    if html_path:
        html.write(v, html_path)
        written.append(html_path)
    if md_path:
        markdown.write(v, md_path)
        written.append(md_path)
    return written


def baseline_lookup(spec: str, profile: str, machine_id: str, history: History) -> tuple[str, gate_lib.BaselineLookup]:
    """Resolve ``--baseline last|RUN_ID|FILE`` before the bench runs; LlamactlError when it names nothing usable."""
    spec = spec.strip()
    if spec == "last":
        def last(cell: str, variant: str) -> tuple[str, dict[str, Any]] | None:
            found = history.last_bench(profile, cell, variant, machine_id)
            return (f"run {found[0]}", found[1]) if found else None
        return f"the last {profile} run on this machine", last
    if spec.isdigit():
        data = history.get(int(spec))
        if runs.kind_of(data) != runs.BENCH:
            raise BadInput(f"--baseline {spec}: history run {spec} is a validate run, not a bench run")
        return f"run {spec}", gate_lib.file_lookup(data, f"run {spec}")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise BadInput(f"--baseline {spec!r}: not 'last', a history run id, or a bench JSON file",
                            hint="llamactl history --kind bench lists run ids")
    loaded = runs.load(path)
    if len(loaded) != 1 or loaded[0]["kind"] != runs.BENCH:
        raise BadInput(f"--baseline {spec}: not a single bench run (a validate or merged file?)")
    return f"file {path.name}", gate_lib.file_lookup(loaded[0], f"file {path.name}")
