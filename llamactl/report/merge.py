"""Merge validate reports of one matrix run in shards on several machines (``llamactl report merge``).

Each shard's JSON lists its own cells, the whole matrix's cell ids (``matrix``) and the machine it
ran on (``machine``). The merge is one report of every cell with the machine that ran it, plus what
went wrong with the fan-out: a cell that ran on more than one machine (``duplicates``) and a cell
of the matrix that ran nowhere (``missing``, listed as NOT_RUN).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from llamactl.core.errors import BadInput
from llamactl.judge.checks import CheckResult
from llamactl.judge.status import Status
from llamactl.judge.validate import CellResult, Report


def load_validate(path: Path) -> dict[str, Any]:
    """One validate report (JSON).

    Raises:
        BadInput: unreadable, not JSON, or not a validate report (no ``cells``).
    """
    try:
        data = json.loads(Path(path).read_text(errors="replace"))
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise BadInput(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise BadInput(f"{path}: not a validate report (no 'cells' list)")
    return data


def _machine_label(run: dict[str, Any], path: Path) -> str:
    m = run.get("machine") or {}
    return str(m.get("host") or m.get("id") or path.stem)


def _cell(d: dict[str, Any]) -> CellResult:
    known = {f.name for f in fields(CellResult)}
    c = CellResult(**{k: v for k, v in d.items() if k in known})
    c.status = Status(c.status)
    c.checks = [CheckResult(**{k: v for k, v in x.items() if k in ("name", "status", "seconds", "detail", "data")})
                for x in d.get("checks") or [] if isinstance(x, dict)]
    for ch in c.checks:
        ch.status = Status(ch.status)
    return c


def merge(paths: list[Path]) -> tuple[Report, dict[str, Any]]:
    """The merged report and a dict of what the merge found (``cells`` rows, ``duplicates``, ``missing``, ``machines``).

    Raises:
        BadInput: fewer than one file, a file that is not a validate report, or reports of different profiles.
    """
    if not paths:
        raise BadInput("report merge needs the validate JSON files of the shards")
    loaded = [(Path(p), load_validate(Path(p))) for p in paths]
    profiles = sorted({str(r.get("profile")) for _, r in loaded})
    if len(profiles) > 1:
        raise BadInput(f"report merge: the files are runs of different profiles ({', '.join(profiles)})")
    order: list[str] = []
    for _, r in loaded:
        for cid in [*(r.get("matrix") or []), *(c.get("cell") for c in r["cells"])]:
            if cid not in order:
                order.append(cid)
    ran: dict[str, list[tuple[CellResult, str, Path]]] = {}
    for path, r in loaded:
        label = _machine_label(r, path)
        for d in r["cells"]:
            c = _cell(d)
            if c.status != Status.NOT_RUN:
                ran.setdefault(c.cell, []).append((c, label, path))
    merged = Report(profiles[0], loaded[0][1].get("binary", ""), loaded[0][1].get("version", ""))
    merged.matrix = order
    merged.interrupted = any(r.get("interrupted") for _, r in loaded)
    rows: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    missing: list[str] = []
    for cid in order:
        runs_ = ran.get(cid, [])
        if not runs_:
            missing.append(cid)
            c = CellResult(cid, {}, status=Status.NOT_RUN, reason="ran on no machine (no shard report lists it as run)")
            merged.cells.append(c)
            rows.append({"cell": cid, "status": c.status.value, "machine": None, "file": None, "reason": c.reason})
            continue
        if len(runs_) > 1:
            duplicates.append({"cell": cid, "machines": [m for _, m, _ in runs_], "files": [str(p) for _, _, p in runs_]})
        c, label, path = runs_[0]
        merged.cells.append(c)
        rows.append({"cell": cid, "status": Status(c.status).value, "machine": label, "file": str(path),
                     "reason": c.reason, "ran": len(runs_)})
    merged.wall_s = max((float(r.get("wall_s") or 0) for _, r in loaded), default=0.0)
    machines = {}
    for path, r in loaded:
        machines[str(path)] = {"machine": _machine_label(r, path), "shard": r.get("shard"),
                               "fingerprint": r.get("machine") or {}}
    if duplicates or missing:
        merged.error = "; ".join(filter(None, [
            f"ran twice: {', '.join(d['cell'] for d in duplicates)}" if duplicates else "",
            f"ran nowhere: {', '.join(missing)}" if missing else ""]))
    info = {"cells": rows, "duplicates": duplicates, "missing": missing, "machines": machines,
            "files": [str(p) for p, _ in loaded]}
    return merged, info


def merged_dict(report: Report, info: dict[str, Any]) -> dict[str, Any]:
    """The merged report as JSON: a validate report plus ``merge`` (rows with machines, duplicates, missing)."""
    d = report.to_dict()
    d["kind"] = "validate"
    d["merge"] = info
    for c, row in zip(d["cells"], info["cells"], strict=True):
        c["machine"] = row["machine"]
    return d
