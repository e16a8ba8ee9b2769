"""Records of detached servers (``runs/<id>/run.json``): write, list, verify, stop.

A record holds the server's PID *and* its start time and argv. Before anything signals a
recorded PID, :func:`verify` checks with psutil that it is still the process llamactl
started; a record whose process is gone, or whose PID now belongs to another program, is
marked stopped (cleaned up), never signalled. Corrupt records are moved aside
(``run.json.corrupt``) with a one-line warning through ``on_warning``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from llamactl.core import paths
from llamactl.core.files import write_atomic
from llamactl.core.proc import check_identity, signal_group

RECORD = "run.json"
Warn = Callable[[str], None]


class RunRecord(BaseModel):
    """One detached server. ``create_time``: seconds since the epoch (psutil); ``argv``: as launched."""

    model_config = ConfigDict(extra="allow")
    pid: int = Field(strict=True, gt=0)     # strict: no "123" strings, no booleans
    create_time: float | None = None
    argv: list[str] = []
    state: Literal["starting", "running", "stopped"] = "running"
    url: str | None = None
    log: str | None = None
    profile: str | None = None
    stopped_why: str | None = None
    _dir: Path = PrivateAttr(default_factory=lambda: Path("."))

    @property
    def id(self) -> str:
        return self._dir.name

    @property
    def dir(self) -> Path:
        return self._dir


def write(run_dir: Path, data: dict[str, Any]) -> RunRecord:
    """Write (atomically) the record of the server started in ``run_dir``."""
    rec = RunRecord.model_validate(data)
    rec._dir = run_dir
    write_atomic(run_dir / RECORD, json.dumps(rec.model_dump(), indent=1) + "\n")
    return rec


def _save(rec: RunRecord) -> None:
    write(rec.dir, rec.model_dump())


def load(path: Path, on_warning: Warn | None = None) -> RunRecord | None:
    """One record; a corrupt one is moved aside (``run.json.corrupt``) and None returned."""
    try:
        rec = RunRecord.model_validate(json.loads(path.read_text(errors="replace")))
    except (ValueError, ValidationError) as exc:
        why = str(exc).splitlines()[0] if not isinstance(exc, ValidationError) else \
            f"{'.'.join(str(x) for x in exc.errors()[0]['loc']) or 'record'}: {exc.errors()[0]['msg']}"
        aside = path.with_name(RECORD + ".corrupt")
        try:
            os.replace(path, aside)
            moved = f"moved aside to {aside}"
        except OSError:
            moved = "left in place"
        if on_warning:
            on_warning(f"skipping corrupt run record {path} ({why}); {moved}")
        return None
    except OSError as exc:
        if on_warning:
            on_warning(f"cannot read run record {path}: {exc.strerror}")
        return None
    rec._dir = path.parent
    return rec


def load_all(on_warning: Warn | None = None, runs: Path | None = None) -> list[RunRecord]:
    """Every record under the runs directory, oldest first."""
    base = runs or paths.runs_dir()
    found = (load(p, on_warning) for p in sorted(base.glob(f"*/{RECORD}")))
    return [r for r in found if r is not None]


def verify(rec: RunRecord, on_warning: Warn | None = None) -> bool:
    """True when the record's PID is still the server llamactl started.

    A stale record (process gone, PID recycled) is marked stopped and saved; a warning
    names it when the PID now belongs to another program.
    """
    if rec.state == "stopped":
        return False
    state, why = check_identity(rec.pid, rec.create_time, rec.argv or None)
    if state == "running":
        return True
    rec.state, rec.stopped_why = "stopped", why
    _save(rec)
    if on_warning and state == "recycled":
        on_warning(f"run {rec.id}: {why}; record cleaned up, nothing signalled")
    return False


def stop(rec: RunRecord, grace: float = 10.0, on_warning: Warn | None = None) -> bool:
    """SIGTERM the recorded server's process group, SIGKILL after ``grace`` seconds.

    The identity is checked before each signal. Returns False (and signals nothing) when
    the record was stale.
    """
    if not verify(rec, on_warning):
        return False
    signal_group(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pause = 0.005          # llama-server exits within tens of ms of SIGTERM: poll fast, then back off
    while time.monotonic() < deadline:
        if check_identity(rec.pid, rec.create_time, rec.argv or None)[0] != "running":
            break
        time.sleep(pause)
        pause = min(0.1, pause * 2)
    else:
        if check_identity(rec.pid, rec.create_time, rec.argv or None)[0] == "running":
            signal_group(rec.pid, signal.SIGKILL)
    rec.state, rec.stopped_why = "stopped", "stopped by llamactl"
    _save(rec)
    return True


def live_pids(on_warning: Warn | None = None) -> dict[int, RunRecord]:
    """Recorded servers that are verifiably still running, by PID."""
    return {r.pid: r for r in load_all(on_warning) if verify(r, on_warning)}
