"""Is moving to a new base safe? ``llamactl sync --to SOURCE PROFILE``.

1. Rebase the profile's patch series onto SOURCE in a scratch tree (source/rebase.py); the
   rebased series is written to a scratch series directory, never to patches/.
2. Build the profile's build as it is ("before") and SOURCE with the rebased series ("after"),
   each through the one build function (cached by content: an unchanged side costs nothing).
3. Validate the profile's matrix on both builds (judge/validate.py) and pair the cells.

The verdict: ``safe`` when no cell that passed (or failed as known, XFAIL) before does worse
after; ``regression`` when one does (or, with ``fail_below``, its tok/s dropped below that ratio);
``conflicts`` when the series does not carry over; ``build failed`` when a side cannot be built.
tok/s are the concurrency check's one measurement per cell (noisy on a shared machine): they
gate only when ``fail_below`` is given (``bench --build A --build B`` is the careful comparison).

The steps are injected (:class:`Steps`) so the orchestration is tested without builds or servers.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamactl.core import paths
from llamactl.core.errors import ExitCode, LlamactlError
from llamactl.core.progress import ProgressFn
from llamactl.judge.matrix import Cell
from llamactl.judge.status import Status
from llamactl.judge.validate import Report, run_matrix
from llamactl.serve import launcher, profiles
from llamactl.source import rebase as rebase_lib

log = logging.getLogger(__name__)

SAFE, REGRESSION, CONFLICTS, BUILD_FAILED, INTERRUPTED = "safe", "regression", "conflicts", "build failed", "interrupted"
EXIT = {SAFE: ExitCode.OK, REGRESSION: ExitCode.REGRESSION, CONFLICTS: ExitCode.FAILED,
        BUILD_FAILED: ExitCode.BUILD_FAILED, INTERRUPTED: ExitCode.INTERRUPTED}
GOOD = frozenset({Status.PASS, Status.XFAIL})


@dataclass
class Steps:
    """The work sync orchestrates; tests pass fakes."""

    rebase: Callable[..., rebase_lib.RebaseReport] = rebase_lib.rebase
    ensure_binary: Callable[..., launcher.Binary] = launcher.ensure_binary
    validate: Callable[..., Report] = run_matrix


@dataclass
class Side:
    """One side of the move: its build and its validation."""

    label: str                  # before | after
    source: str
    series: str | None          # series name, or the scratch directory of the rebased series
    build: dict[str, Any] = field(default_factory=dict)   # key, version, binary, cached, seconds
    report: Report | None = None
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"label": self.label, "source": self.source, "series": self.series, "build": self.build, "error": self.error,
                "seconds": self.seconds, "report": self.report.to_dict() if self.report else None}


@dataclass
class CellPair:
    """One cell, before and after."""

    cell: str
    before: str | None          # status (None: the side did not run)
    after: str | None
    tps_before: float | None
    tps_after: float | None
    verdict: str                # same | fixed | regression | slower | changed
    reason_before: str = ""
    reason_after: str = ""

    @property
    def ratio(self) -> float | None:
        if self.tps_before and self.tps_after:
            return self.tps_after / self.tps_before
        return None


@dataclass
class SyncReport:
    profile: str
    to: str
    before: Side
    after: Side
    rebase: rebase_lib.RebaseReport | None = None
    cells: list[CellPair] = field(default_factory=list)
    verdict: str = SAFE
    reason: str = ""
    fail_below: float | None = None
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return int(EXIT[self.verdict])

    def to_dict(self) -> dict:
        return {"profile": self.profile, "to": self.to, "verdict": self.verdict, "reason": self.reason,
                "exit_code": self.exit_code, "fail_below": self.fail_below, "wall_s": self.wall_s,
                "rebase": self.rebase.to_dict() if self.rebase else None,
                "cells": [dict(vars(c), ratio=c.ratio) for c in self.cells],
                "before": self.before.to_dict(), "after": self.after.to_dict()}


def own_series(prof: profiles.Profile) -> str | None:
    """The series the profile builds with: its ``build.series``, else its source's own (None: no patches)."""
    from llamactl.source.sources import resolve

    if prof.build.no_patches:
        return None
    return prof.build.series or resolve(prof.build.source, fetch=False)[1].series


def scratch_series_dir(profile: str, to: str) -> Path:
    """Where the rebased series of a sync goes (replaced on each sync): ``<cache>/sync/<profile>-to-<source>/patches``."""
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", f"{profile}-to-{to}")[:120]
    return paths.cache_root() / "sync" / slug / "patches"


def pair(before: Report | None, after: Report | None, fail_below: float | None = None) -> list[CellPair]:
    """Cells of both runs side by side (in the before run's order, then cells only the after run has)."""
    b = {c.cell: c for c in (before.cells if before else [])}
    a = {c.cell: c for c in (after.cells if after else [])}
    order = list(b) + [k for k in a if k not in b]
    out = []
    for k in order:
        cb, ca = b.get(k), a.get(k)
        sb = Status(cb.status) if cb else None
        sa = Status(ca.status) if ca else None
        p = CellPair(k, sb.value if sb else None, sa.value if sa else None, cb.tokens_per_s if cb else None,
                     ca.tokens_per_s if ca else None, "same", cb.reason if cb else "", ca.reason if ca else "")
        if sb in GOOD and sa not in GOOD:
            p.verdict = REGRESSION
        elif sb not in GOOD and sa in GOOD:
            p.verdict = "fixed"
        elif sb != sa:
            p.verdict = "changed"
        elif p.ratio is not None and fail_below is not None and p.ratio < fail_below:
            p.verdict = REGRESSION
            p.reason_after = f"tok/s {p.tps_after:.1f} is {p.ratio:.0%} of {p.tps_before:.1f} (below --fail-below {fail_below:g})"
        elif p.ratio is not None and p.ratio < 0.85:
            p.verdict = "slower"
        out.append(p)
    return out


def sync(base: profiles.Resolved, to: str, cells: list[Cell], *, fail_below: float | None = None, steps: Steps | None = None,
         progress: ProgressFn | None = None, on_update: Callable[[Report, str | None], None] | None = None) -> SyncReport:
    """Rebase, build and validate ``base``'s matrix ``cells`` before (as the profile is) and after (on ``to``).

    Each step is a log line; ``progress`` hears the rebase, the builds and the cells; ``on_update`` is
    validate's per-cell callback. Never raises for a conflict or a failed build (they are the verdict);
    raises BadInput for an unknown source/series and LlamactlError when ``to`` cannot be fetched.
    """
    steps = steps or Steps()
    say = log.info
    t0 = time.monotonic()
    prof = base.profile
    series = own_series(prof)
    before = Side("before", prof.build.source, series)
    after = Side("after", to, None)
    report = SyncReport(base.name, to, before, after, fail_below=fail_below)
    try:
        after_prof = prof
        if series:
            out_dir = scratch_series_dir(base.name, to)
            shutil.rmtree(out_dir, ignore_errors=True)
            say(f"rebasing {series} onto {to} ...")
            report.rebase = rb = steps.rebase(to, series, write=True, write_to=out_dir, progress=progress)
            if not rb.ok:
                bad = [p for p in rb.patches if p.status == rebase_lib.CONFLICTS]
                report.verdict = CONFLICTS
                report.reason = (f"{len(bad)} patch(es) of {series} conflict on {to}: {', '.join(p.name for p in bad)}"
                                 + (f" (conflicts in {rb.conflicts_dir})" if rb.conflicts_dir else ""))
                return report
            after.series = str(out_dir)
            after_prof = _with_build(prof, source=to, series=str(out_dir))
        else:
            after_prof = _with_build(prof, source=to)
        for side, p in ((before, prof), (after, after_prof)):
            if not _run_side(side, base, p, cells, steps, say, progress, on_update):
                report.verdict = INTERRUPTED if side.report and side.report.interrupted else BUILD_FAILED
                report.reason = f"{side.label} ({side.source}): {side.error or 'interrupted'}"
                return report
        report.cells = pair(before.report, after.report, fail_below)
        worse = [c for c in report.cells if c.verdict == REGRESSION]
        if worse:
            report.verdict = REGRESSION
            report.reason = "; ".join(f"{c.cell}: {c.before} -> {c.after}" + (f" ({c.reason_after})" if c.reason_after else "")
                                      for c in worse)
        else:
            fixed = sum(1 for c in report.cells if c.verdict == "fixed")
            report.reason = f"no cell does worse on {to}" + (f"; {fixed} fixed" if fixed else "")
        return report
    finally:
        report.wall_s = round(time.monotonic() - t0, 1)


def _with_build(prof: profiles.Profile, **updates: Any) -> profiles.Profile:
    spec = profiles.BuildSpec.model_validate({**prof.build.model_dump(), **updates})
    return prof.model_copy(update={"build": spec})


def _run_side(side: Side, base: profiles.Resolved, prof: profiles.Profile, cells: list[Cell], steps: Steps,
              say: Callable[[str], None], progress: ProgressFn | None,
              on_update: Callable[[Report, str | None], None] | None) -> bool:
    t0 = time.monotonic()
    try:
        series = "the rebased series" if side.series and Path(side.series).is_absolute() else (side.series or "no series")
        say(f"{side.label}: building {side.source} + {series} ...")
        tb = time.monotonic()
        binary = steps.ensure_binary(prof, progress)
        m = binary.manifest or {}
        side.build = {"key": m.get("key"), "version": (m.get("version") or "").splitlines()[:1], "binary": str(binary.path),
                      "build_s": round(time.monotonic() - tb, 1), "duration_s": m.get("duration_s"),
                      "source_commit": (m.get("source") or {}).get("upstream_commit")}
        say(f"{side.label}: validating {len(cells)} cell(s) ...")
        side.report = steps.validate(profiles.Resolved(base.name, prof, dict(base.origins), base.path), cells,
                                     binary=binary, progress=progress, on_update=on_update)
        return not side.report.interrupted
    except LlamactlError as exc:
        side.error = str(exc)
        return False
    finally:
        side.seconds = round(time.monotonic() - t0, 1)
