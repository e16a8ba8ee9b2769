"""Run a validation matrix: one llama-server per cell, the HTTP checks, a verdict per cell."""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from llamactl.serve import launcher
from llamactl.serve import profiles
from llamactl.judge.checks import CHECKS, FAIL, PASS, SKIP, CellContext, CheckFailed, CheckResult, read_metrics, run_check
from llamactl.core.console import Output
from llamactl.core.errors import LlamactlError
from llamactl.judge.matrix import Cell
from llamactl.serve.render import Unsupported, check_supported
from llamactl.serve.server import ServerDied, ServerProcess

INTERRUPTED = "interrupted"
XFAIL = "xfail"      # a known bug (expect_failure) that failed as expected
REPRO_OPTS = {"parallel": "--parallel", "ctx": "--ctx", "kv_k": "--kv-k", "kv_v": "--kv-v", "batch": "--batch", "ubatch": "--ubatch"}


@dataclass
class CellResult:
    cell: str
    overrides: dict[str, Any]
    status: str = PASS
    reason: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    start_s: float | None = None        # process start -> /health 200
    requests_s: float = 0.0             # time spent in checks
    seconds: float = 0.0                # whole cell, including stop
    tokens_per_s: float | None = None
    acceptance: float | None = None
    spec: dict | None = None
    crash: dict | None = None
    log: str | None = None
    repro: str = ""
    argv: list[str] = field(default_factory=list)
    env_dropped: list[str] = field(default_factory=list)   # inherited llama-server variables not passed on


@dataclass
class Report:
    profile: str
    binary: str
    version: str
    cells: list[CellResult] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    run_dir: str = ""

    @property
    def ok(self) -> bool:
        ran = [c for c in self.cells if c.status not in (SKIP, XFAIL)]
        return bool(ran) and all(c.status == PASS for c in ran) and not self.interrupted

    def counts(self) -> dict[str, int]:
        out = {PASS: 0, FAIL: 0, SKIP: 0, XFAIL: 0, INTERRUPTED: 0}
        for c in self.cells:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["counts"] = self.counts()
        d["sum_cell_start_and_requests_s"] = round(sum((c.start_s or 0) + c.requests_s for c in self.cells), 3)
        return d


Hook = Callable[[Cell, str, ServerProcess], None]


def repro_command(profile: str, cell: Cell) -> str:
    args = ["llamactl", "run", profile]
    for k, v in cell.overrides:
        if k == "enable_mtp":
            args.append("--mtp" if v else "--no-mtp")
        elif k in REPRO_OPTS:
            args += [REPRO_OPTS[k], str(v)]
        else:
            args += ["--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}"]
    return " ".join(shlex.quote(a) for a in args)


def cell_profile(base: profiles.Resolved, cell: Cell) -> profiles.Resolved:
    data = base.profile.model_dump(exclude={"matrix"})
    data.update(cell.values)
    try:
        prof = profiles.Profile.model_validate(data)
    except Exception as exc:
        raise LlamactlError(f"matrix cell {cell.id}: {str(exc).splitlines()[0]}") from exc
    return profiles.Resolved(base.name, prof, dict(base.origins), base.path)


def run_cell(base: profiles.Resolved, cell: Cell, binary: launcher.Binary, run_dir: Path,
             out: Output | None = None, after_check: Hook | None = None) -> CellResult:
    resolved = cell_profile(base, cell)
    res = _run_cell(base, resolved, cell, binary, run_dir, out, after_check)
    known = resolved.profile.expect_failure
    if known and res.status == FAIL:
        evidence = " ".join([res.reason, *(res.crash or {}).get("frames", [])])
        if known in evidence:
            res.status, res.reason = XFAIL, f"known failure: {res.reason}"
        else:
            res.reason = f"failed, but not with the known {known!r}: {res.reason}"
    elif known and res.status == PASS:
        res.status, res.reason = FAIL, f"expected the known failure {known!r}, but the cell passed (fixed? drop expect_failure)"
    return res


def _run_cell(base: profiles.Resolved, resolved: profiles.Resolved, cell: Cell, binary: launcher.Binary, run_dir: Path,
              out: Output | None, after_check: Hook | None) -> CellResult:
    t0 = time.monotonic()
    res = CellResult(cell.id, cell.values, repro=repro_command(base.name, cell))
    unsupported = check_supported(resolved.profile, binary.help, binary.path.name)
    if unsupported is not None:
        res.status, res.reason = SKIP, str(unsupported)
        return res
    try:
        plan = launcher.plan(resolved, out, binary=binary)
    except Unsupported as exc:
        res.status, res.reason = SKIP, str(exc)
        return res
    res.argv = plan.argv
    res.env_dropped = plan.env_dropped
    log = run_dir / f"{slug(cell.id)}.log"
    res.log = str(log)
    sp = launcher.start(plan, log)
    try:
        try:
            res.start_s = round(sp.wait_healthy(resolved.profile.health_timeout), 3)
        except ServerDied as exc:
            _crashed(res, exc.crash, "before /health")
            return res
        except LlamactlError as exc:
            res.status, res.reason = FAIL, str(exc)
            return res
        t_req = time.monotonic()
        # no keep-alive: llama-server may close an idle connection just as the next request reuses it
        with httpx.Client(headers=sp.headers(), limits=httpx.Limits(max_keepalive_connections=0)) as client:
            ctx = CellContext(plan.url, resolved.profile, client, alive=sp.alive)
            try:
                ctx.metrics_before = read_metrics(ctx) if resolved.profile.metrics else []
            except (CheckFailed, httpx.HTTPError):
                ctx.metrics_before = []   # the speculative_metrics check reports what is wrong
            for name, fn in CHECKS:
                if not sp.alive():
                    res.checks.append(CheckResult(name, SKIP, detail="server died"))
                    continue
                if name == "speculative_metrics" and not resolved.profile.metrics:
                    res.checks.append(CheckResult(name, SKIP, detail="metrics: false in the profile"))
                    continue
                r = run_check(name, fn, ctx)
                res.checks.append(r)
                if after_check:
                    after_check(cell, name, sp)
        res.requests_s = round(time.monotonic() - t_req, 3)
        conc = next((c for c in res.checks if c.name == "concurrency" and c.status == PASS), None)
        res.tokens_per_s = conc.data.get("tokens_per_s") if conc else None
        spec = next((c for c in res.checks if c.name == "speculative_metrics" and c.data), None)
        if spec:
            res.spec = spec.data
            res.acceptance = spec.data.get("acceptance")
        if not sp.alive():
            _crashed(res, sp.crash(), "during the checks")
        failed = [c for c in res.checks if c.status == FAIL]
        if failed and res.status == PASS:
            res.status = FAIL
            res.reason = f"{failed[0].name}: {failed[0].detail}"
        return res
    finally:
        sp.stop()
        res.seconds = round(time.monotonic() - t0, 3)


def _crashed(res: CellResult, crash, when: str) -> None:
    res.status = FAIL
    res.crash = asdict(crash)
    res.reason = f"{crash.summary()} ({when})"


def slug(s: str) -> str:
    """A cell id as a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)[:120]


def run_matrix(base: profiles.Resolved, cells: list[Cell], *, out: Output | None = None,
               fail_fast: bool = False, on_update: Callable[[Report, str | None], None] | None = None,
               after_check: Hook | None = None, binary: launcher.Binary | None = None) -> Report:
    t0 = time.monotonic()
    binary = binary or launcher.ensure_binary(base.profile, out)
    run_dir = launcher.new_run_dir(f"validate-{base.name}")
    version = (binary.manifest or {}).get("version", "").splitlines()[:1]
    report = Report(base.name, str(binary.path), version[0] if version else "", run_dir=str(run_dir))
    try:
        for cell in cells:
            if on_update:
                on_update(report, cell.id)
            result = run_cell(base, cell, binary, run_dir, out, after_check)
            report.cells.append(result)
            if on_update:
                on_update(report, None)
            if fail_fast and result.status == FAIL:
                break
    except KeyboardInterrupt:
        report.interrupted = True
        done = {c.cell for c in report.cells}
        for cell in cells:
            if cell.id not in done:
                report.cells.append(CellResult(cell.id, cell.values, status=INTERRUPTED, reason="Ctrl-C",
                                               repro=repro_command(base.name, cell)))
                break
    report.wall_s = round(time.monotonic() - t0, 3)
    return report
