"""Reading run files: validate, bench, quality, or several merged, as written by ``--json``.

The readers are lenient on purpose: statuses they do not know are shown as they are, and
fields they do not know are kept (the report templates show what they recognise).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from llamactl.core.errors import BadInput, LlamactlError
from llamactl.core.files import read_text

VALIDATE, BENCH, QUALITY, LOAD, SOAK = "validate", "bench", "quality", "load", "soak"
KINDS = (VALIDATE, BENCH, QUALITY, LOAD, SOAK)
# statuses that are not a problem; anything else (fail, error, xpass, interrupted, unknown) is listed as one
NOT_A_PROBLEM = {"pass", "skip", "xfail", "not_run", "not-run", "notrun", "skipped", "passed"}


def status_of(cell: dict[str, Any]) -> str:
    """A cell's status, lower-case (an enum written as ``Status.PASS`` or ``PASS`` reads ``pass``)."""
    s = str(cell.get("status") or "unknown")
    return s.rsplit(".", 1)[-1].strip().lower() or "unknown"


def is_problem(cell: dict[str, Any]) -> bool:
    return status_of(cell) not in NOT_A_PROBLEM


def kind_of(run: Any) -> str:
    """``validate``, ``bench``, or ``quality``/``load``/``soak`` (which say so in ``kind``); BadInput when ``run`` is none."""
    if not isinstance(run, dict):
        raise BadInput("not a llamactl run: expected a JSON object with 'cells'")
    if run.get("kind") in KINDS:
        return run["kind"]
    cells = run.get("cells")
    if not isinstance(cells, list):
        raise BadInput("not a llamactl validate or bench run: no 'cells' list")
    if "meta" in run or any(isinstance(c, dict) and "variants" in c for c in cells):
        return BENCH
    return VALIDATE


def split_runs(data: Any) -> list[dict[str, Any]]:
    """One run, a JSON list of runs, or ``{"runs": [...]}`` (merged) -> a list of runs, each with ``kind``."""
    if isinstance(data, dict) and isinstance(data.get("runs"), list):
        items = data["runs"]
    elif isinstance(data, list):
        items = data
    else:
        items = [data]
    out = []
    for i, run in enumerate(items):
        try:
            kind = kind_of(run)
        except LlamactlError as exc:
            raise BadInput(f"run {i + 1}: {exc.message}" if len(items) > 1 else exc.message) from exc
        if not all(isinstance(c, dict) for c in run["cells"]):
            raise BadInput(f"{kind} run: every entry of 'cells' must be an object")
        out.append({**run, "kind": kind})
    if not out:
        raise BadInput("no runs in the file")
    return out


def load(path: Path) -> list[dict[str, Any]]:
    """Read a run file. Raises LlamactlError (one line) when it is missing, not JSON, or not a run."""
    text = read_text(path, "run file", max_bytes=512 * 1024 * 1024)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"{path} is not JSON: {exc}") from exc
    try:
        return split_runs(data)
    except LlamactlError as exc:
        raise BadInput(f"{path}: {exc.message}") from exc


def profile_of(run: dict[str, Any]) -> str:
    return str(run.get("profile") or (run.get("meta") or {}).get("profile") or "?")


def binary_of(run: dict[str, Any]) -> str | None:
    return run.get("binary") or (run.get("meta") or {}).get("binary")


def run_dir_of(run: dict[str, Any]) -> str | None:
    return run.get("run_dir") or (run.get("meta") or {}).get("run_dir")


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def decode_samples(variant: dict[str, Any]) -> list[float]:
    """Decode tok/s per sample: the server's own timings, else the client's (as the bench verdicts use)."""
    out = []
    for s in variant.get("samples") or []:
        v = _num(s.get("server_decode_tps")) or _num(s.get("client_decode_tps"))
        if v is not None:
            out.append(v)
    return out


def ttft_samples(variant: dict[str, Any]) -> list[float]:
    """Time to first token per sample, in seconds."""
    return [v for v in (_num(s.get("ttft_s")) for s in variant.get("samples") or []) if v is not None]


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def acceptance_of(variant: dict[str, Any]) -> float | None:
    return _num((variant.get("summary") or {}).get("acceptance"))
