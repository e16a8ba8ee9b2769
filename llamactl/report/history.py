"""The run history: every validate, bench and quality run, in one SQLite file.

Default place: ``$XDG_DATA_HOME/llamactl/history.sqlite`` (``~/.local/share/llamactl``);
``LLAMACTL_HISTORY`` or ``--history PATH`` sets another. Each run is stored whole (its JSON)
with its machine fingerprint and build identity; one row per (cell, variant) holds the numbers
that ``llamactl history``, ``report --trend`` and ``bench --baseline last`` look up. A quality run's
rows carry its status only; its figures (KL, same top, decode probe) stay in the run's JSON, which
:meth:`History.quality_points` reads for ``report --trend --kind quality``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from llamactl.core.errors import BadInput, LlamactlError
from llamactl.report import runs

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    profile     TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    machine_id  TEXT NOT NULL,
    machine     TEXT NOT NULL,
    build_key   TEXT NOT NULL,
    build       TEXT NOT NULL,
    ok          INTEGER,
    summary     TEXT NOT NULL DEFAULT '',
    run_dir     TEXT,
    data        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    run_id          INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    cell            TEXT NOT NULL,
    variant         TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL,
    build_key       TEXT NOT NULL,
    decode_tps      REAL,
    ttft_s          REAL,
    acceptance      REAL,
    tokens_per_s    REAL,
    reason          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_by_profile ON runs(profile, kind, machine_id);
CREATE INDEX IF NOT EXISTS cells_by_cell ON cells(cell, variant);
"""


def default_path() -> Path:
    """``LLAMACTL_HISTORY``, else ``$XDG_DATA_HOME/llamactl/history.sqlite``."""
    env = os.environ.get("LLAMACTL_HISTORY")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "llamactl" / "history.sqlite"


@dataclass
class RunRow:
    id: int
    kind: str
    profile: str
    started_at: str
    machine_id: str
    build_key: str
    build: dict[str, Any]
    ok: bool | None
    summary: str
    run_dir: str | None


@dataclass
class CellRow:
    run_id: int
    started_at: str
    cell: str
    variant: str
    status: str
    build_key: str
    build: dict[str, Any]
    machine_id: str
    decode_tps: float | None
    ttft_s: float | None
    acceptance: float | None
    tokens_per_s: float | None
    reason: str


def _cell_rows(kind: str, run: dict[str, Any], build_key: str) -> Iterator[tuple]:
    builds = (run.get("meta") or {}).get("builds") or {}
    for c in run.get("cells") or []:
        if kind == runs.VALIDATE:
            yield (c.get("cell", "?"), "", runs.status_of(c), build_key, None, None,
                   c.get("acceptance"), c.get("tokens_per_s"), str(c.get("reason") or ""))
            continue
        if kind == runs.QUALITY:
            yield (c.get("cell", "?"), "", str(c.get("status") or "ok"), (builds.get(c.get("build")) or {}).get("key", build_key),
                   None, None, None, None, str(c.get("error") or ""))
            continue
        if kind == runs.LOAD:
            for lv in c.get("levels") or []:
                yield (c.get("cell", "?"), lv.get("level", "?"), "error" if lv.get("errors") else "ok", build_key, None,
                       (lv.get("ttft_s") or {}).get("p50"), lv.get("acceptance"), lv.get("output_tok_per_s"),
                       ", ".join(f"{k} {n}" for k, n in (lv.get("errors") or {}).items()) or str(c.get("error") or ""))
            continue
        if kind == runs.SOAK:
            yield (c.get("cell", "?"), "", runs.status_of(c), build_key, None, None, None, None, str(c.get("reason") or ""))
            continue
        for v, r in (c.get("variants") or {}).items():
            yield (c.get("cell", "?"), v, "error" if r.get("error") else "ok",
                   (builds.get(v) or {}).get("key", build_key), runs.median(runs.decode_samples(r)),
                   runs.median(runs.ttft_samples(r)), runs.acceptance_of(r),
                   runs.median([x for x in r.get("aggregate_tps") or [] if isinstance(x, (int, float))]),
                   str(r.get("error") or ""))


def _summary(kind: str, run: dict[str, Any]) -> tuple[bool | None, str]:
    if kind == runs.VALIDATE:
        counts: dict[str, int] = {}
        for c in run.get("cells") or []:
            counts[runs.status_of(c)] = counts.get(runs.status_of(c), 0) + 1
        ok = run.get("ok")
        return (bool(ok) if ok is not None else not any(runs.is_problem(c) for c in run.get("cells") or [])), \
            ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if kind == runs.QUALITY:
        cells = run.get("cells") or []
        bad = sum(1 for c in cells if c.get("status") == "error")
        gate = (run.get("gate") or {}).get("worst")
        ok = bad == 0 and gate != "regression"
        return ok, f"{len(cells)} candidate(s)" + (f", {bad} error(s)" if bad else "") + (f", gate {gate}" if gate else "")
    if kind == runs.LOAD:
        cells = run.get("cells") or []
        n_bad = sum(1 for c in cells if c.get("error"))
        gate = (run.get("gate") or {}).get("worst")
        return n_bad == 0 and gate != "regression", f"{len(cells)} cell(s) x {len((run.get('meta') or {}).get('levels') or [])} load(s)" \
            + (f", {n_bad} error(s)" if n_bad else "") + (f", gate {gate}" if gate else "")
    if kind == runs.SOAK:
        cells = run.get("cells") or []
        failed = [c for c in cells if runs.is_problem(c)]
        return not failed, f"{len(cells)} cell(s), {len(failed)} failed" + (
            f": {failed[0].get('reason', '')[:80]}" if failed else "")
    n = len(run.get("cells") or [])
    errors = sum(1 for c in run.get("cells") or [] for r in (c.get("variants") or {}).values() if r.get("error"))
    return errors == 0, f"{n} cell(s)" + (f", {errors} arm error(s)" if errors else "")


class _Empty:
    """Stands in for a connection to a history file that does not exist yet: every query is empty."""

    def execute(self, *_args):
        return self

    def fetchall(self) -> list:
        return []

    def fetchone(self) -> None:
        return None


_EMPTY = _Empty()


class History:
    """The SQLite store. Raises LlamactlError (one line, naming the file) on any storage error."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_path()

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                db.close()
                raise LlamactlError(f"history store {self.path} was written by a newer llamactl (schema {version})",
                                    hint="use --history PATH for another file")
            if version < SCHEMA_VERSION:
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.commit()
            return db
        except sqlite3.DatabaseError as exc:
            raise LlamactlError(f"history store {self.path}: {exc}", hint="use --history PATH for another file") from exc
        except OSError as exc:
            raise LlamactlError(f"history store {self.path}: {exc.strerror or exc}") from exc

    def _run(self, fn, read_only: bool = False):
        if read_only and not self.path.exists():   # listing an empty history creates no file
            return fn(_EMPTY)
        with closing(self._connect()) as db:
            try:
                with db:
                    return fn(db)
            except sqlite3.DatabaseError as exc:
                raise LlamactlError(f"history store {self.path}: {exc}") from exc

    def record(self, run: dict[str, Any], machine: dict[str, Any], build: dict[str, Any]) -> int:
        """Store one run (validate or bench JSON); returns its id."""
        kind = runs.kind_of(run)
        ok, summary = _summary(kind, run)

        def insert(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO runs (kind, profile, started_at, machine_id, machine, build_key, build, ok, summary, run_dir, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, runs.profile_of(run), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine.get("id", "?"),
                 json.dumps(machine), build.get("key", "?"), json.dumps(build, default=str), None if ok is None else int(ok),
                 summary, runs.run_dir_of(run), json.dumps(run, default=str)))
            assert cur.lastrowid is not None   # always set after an INSERT
            run_id = int(cur.lastrowid)
            db.executemany("INSERT INTO cells (run_id, cell, variant, status, build_key, decode_tps, ttft_s, acceptance,"
                           " tokens_per_s, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(run_id, *row) for row in _cell_rows(kind, run, build.get("key", "?"))])
            return run_id
        return self._run(insert)

    def runs(self, profile: str | None = None, kind: str | None = None, cell: str | None = None,
             limit: int = 50) -> list[RunRow]:
        """Newest first."""
        where, args = [], []
        if profile:
            where.append("profile = ?")
            args.append(profile)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if cell:
            where.append("id IN (SELECT run_id FROM cells WHERE cell = ?)")
            args.append(cell)
        sql = ("SELECT id, kind, profile, started_at, machine_id, build_key, build, ok, summary, run_dir FROM runs"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
        rows = self._run(lambda db: db.execute(sql, (*args, limit)).fetchall(), read_only=True)
        return [RunRow(r["id"], r["kind"], r["profile"], r["started_at"], r["machine_id"], r["build_key"],
                       json.loads(r["build"]), None if r["ok"] is None else bool(r["ok"]), r["summary"], r["run_dir"])
                for r in rows]

    def cells(self, profile: str | None = None, cell: str | None = None, kind: str | None = None,
              machine_id: str | None = None, limit: int = 500) -> list[CellRow]:
        """Per-(cell, variant) numbers, oldest first (the order a trend is drawn in)."""
        where, args = [], []
        for col, val in (("r.profile", profile), ("c.cell", cell), ("r.kind", kind), ("r.machine_id", machine_id)):
            if val:
                where.append(f"{col} = ?")
                args.append(val)
        sql = ("SELECT c.*, r.started_at, r.build, r.machine_id FROM cells c JOIN runs r ON r.id = c.run_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY c.run_id DESC, c.rowid DESC LIMIT ?")
        rows = self._run(lambda db: db.execute(sql, (*args, limit)).fetchall(), read_only=True)
        return [CellRow(r["run_id"], r["started_at"], r["cell"], r["variant"], r["status"], r["build_key"],
                        json.loads(r["build"]), r["machine_id"], r["decode_tps"], r["ttft_s"], r["acceptance"],
                        r["tokens_per_s"], r["reason"]) for r in reversed(rows)]

    def last_run(self, profile: str, kind: str, machine_id: str) -> tuple[int, dict[str, Any]] | None:
        """The newest run of this kind and profile on this machine: (run id, its JSON), or None."""
        sql = "SELECT id, data FROM runs WHERE kind = ? AND profile = ? AND machine_id = ? ORDER BY id DESC LIMIT 1"
        row = self._run(lambda db: db.execute(sql, (kind, profile, machine_id)).fetchone(), read_only=True)
        return (int(row["id"]), json.loads(row["data"])) if row is not None else None

    def get(self, run_id: int) -> dict[str, Any]:
        """A stored run's JSON plus ``history`` (id, machine, build). LlamactlError when there is none."""
        row = self._run(lambda db: db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone(), read_only=True)
        if row is None:
            raise BadInput(f"no run {run_id} in the history store {self.path}", hint="llamactl history lists them")
        data = json.loads(row["data"])
        data["history"] = {"id": row["id"], "started_at": row["started_at"], "machine": json.loads(row["machine"]),
                           "build": json.loads(row["build"])}
        return data

    def find_by_run_dir(self, run_dir: str) -> dict[str, Any] | None:
        """The stored run written to ``run_dir`` (how a report finds the machine a JSON file came from)."""
        row = self._run(lambda db: db.execute("SELECT id FROM runs WHERE run_dir = ? ORDER BY id DESC", (run_dir,)).fetchone(),
                        read_only=True)
        return self.get(row["id"]) if row else None

    def quality_points(self, profile: str, machine_id: str | None = None, cell: str | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
        """Per (quality run, candidate): run id, time, build, cell and its figures (mean KL, same top %,
        ΔPPL %, decode KL, decode top-1), oldest first: what ``report --trend --kind quality`` draws."""
        sql = ("SELECT id, started_at, build, build_key, data FROM runs WHERE kind = 'quality' AND profile = ?"
               + (" AND machine_id = ?" if machine_id else "") + " ORDER BY id DESC LIMIT ?")
        args: tuple = (profile, *((machine_id,) if machine_id else ()), limit)
        rows = self._run(lambda db: db.execute(sql, args).fetchall(), read_only=True)
        out = []
        for r in reversed(rows):
            data = json.loads(r["data"])
            for c in data.get("cells") or []:
                if cell and c.get("cell") != cell:
                    continue
                kld, dec = c.get("kld") or {}, c.get("decode") or {}
                out.append({"run_id": r["id"], "started_at": r["started_at"], "build": json.loads(r["build"]),
                            "build_key": r["build_key"], "cell": c.get("cell", "?"), "status": c.get("status", "?"),
                            "kld_mean": kld.get("kld_mean"), "same_top": kld.get("same_top"),
                            "delta_ppl_pct": kld.get("delta_ppl_pct"), "decode_kl": dec.get("mean_kl"),
                            "decode_top1": dec.get("top1_agreement")})
        return out

    def last_bench(self, profile: str, cell: str, variant: str, machine_id: str,
                   before: int | None = None) -> tuple[int, dict[str, Any]] | None:
        """The newest bench run of this profile on this machine where (cell, variant) ran without error.

        Returns (run id, that variant's JSON), or None.
        """
        sql = ("SELECT r.id, r.data FROM runs r JOIN cells c ON c.run_id = r.id WHERE r.kind = 'bench' AND r.profile = ?"
               " AND r.machine_id = ? AND c.cell = ? AND c.variant = ? AND c.status = 'ok'"
               + (" AND r.id < ?" if before else "") + " ORDER BY r.id DESC LIMIT 1")
        args: tuple = (profile, machine_id, cell, variant, *((before,) if before else ()))
        row = self._run(lambda db: db.execute(sql, args).fetchone(), read_only=True)
        if row is None:
            return None
        data = json.loads(row["data"])
        for c in data.get("cells") or []:
            if c.get("cell") == cell and variant in (c.get("variants") or {}):
                return int(row["id"]), c["variants"][variant]
        return None
