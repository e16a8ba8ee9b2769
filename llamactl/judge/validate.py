"""Run a validation matrix: one llama-server per cell, the HTTP checks, a verdict per cell."""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from llamactl.judge import backend as backend_check
from llamactl.serve import launcher
from llamactl.serve import profiles
from llamactl.judge.answer_checks import ANSWER_CHECKS
from llamactl.judge.checks import CHECKS, RPC_CHECK, CellContext, CheckFailed, CheckResult, read_metrics, run_check
from llamactl.judge.references import References
from llamactl.judge.status import BAD, Status
from llamactl.core.errors import LlamactlError
from llamactl.core.progress import ProgressFn
from llamactl.judge.matrix import Cell, cell_profile, slug
from llamactl.serve.render import Unsupported, check_supported
from llamactl.serve.server import ServerDied, ServerProcess
from llamactl.serve.stacks import thread_stacks

log = logging.getLogger(__name__)

# kept for callers of the old names; Status is the one enum
PASS, FAIL, ERROR, SKIP = Status.PASS, Status.FAIL, Status.ERROR, Status.SKIP
XFAIL, XPASS, INTERRUPTED, NOT_RUN = Status.XFAIL, Status.XPASS, Status.INTERRUPTED, Status.NOT_RUN
REPRO_OPTS = {"parallel": "--parallel", "ctx": "--ctx", "kv_k": "--kv-k", "kv_v": "--kv-v", "batch": "--batch", "ubatch": "--ubatch"}


@dataclass
class CellResult:
    cell: str
    overrides: dict[str, Any]
    status: Status = Status.PASS
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
    server: dict[str, Any] = field(default_factory=dict)   # the server's own view: slots, n_ctx, model, MTP, KV
    warnings: list[str] = field(default_factory=list)      # rendered vs actual differences that do not fail the cell
    backend: dict | None = None         # devices, buffers, offloaded layers (judge/backend.py)
    hang: dict | None = None            # the server stopped answering: the check, every thread's stack (gdb)


@dataclass
class Report:
    profile: str
    binary: str
    version: str
    cells: list[CellResult] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    run_dir: str = ""
    error: str | None = None          # why the run stopped before its cells (build failed, internal error)
    matrix: list[str] = field(default_factory=list)   # every cell id of the (filtered) matrix, all shards
    shard: str | None = None          # "K/N" when this run is one shard of the matrix
    machine: dict[str, Any] = field(default_factory=dict)   # fingerprint of the machine it ran on (the CLI fills it)

    @property
    def ok(self) -> bool:
        """Every cell passed, was skipped, or failed as a known bug, and at least one passed."""
        if self.interrupted or self.error:
            return False
        return any(c.status == Status.PASS for c in self.cells) and not any(c.status in BAD for c in self.cells)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for c in self.cells:
            out[Status(c.status).value] += 1
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["counts"] = self.counts()
        d["sum_cell_start_and_requests_s"] = round(sum((c.start_s or 0) + c.requests_s for c in self.cells), 3)
        return d


Hook = Callable[[Cell, str, ServerProcess], None]
Check = tuple[str, Callable[[CellContext], dict]]


def cell_checks(rpc: bool) -> list[Check]:
    """The checks of a cell, in order: the server's view, (RPC placement,) the request checks, the
    right-answers checks (:mod:`llamactl.judge.answer_checks`), then the draft counters and health."""
    tail = next(i for i, (name, _) in enumerate(CHECKS) if name == "speculative_metrics")
    return [CHECKS[0], *([RPC_CHECK] if rpc else []), *CHECKS[1:tail], *ANSWER_CHECKS, *CHECKS[tail:]]


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


def run_cell(base: profiles.Resolved, cell: Cell, binary: launcher.Binary, run_dir: Path,
             progress: ProgressFn | None = None, after_check: Hook | None = None,
             res: CellResult | None = None, references: References | None = None) -> CellResult:
    """Run one cell; whatever goes wrong becomes its status and reason, never an exception.

    ``res`` (filled in place) keeps what was measured if KeyboardInterrupt ends the cell early;
    KeyboardInterrupt is the one exception that passes (after the server is stopped).
    ``references``: the run's twin answers (one per matrix run, so a twin starts once); a new one
    for this cell when None.
    """
    res = res or CellResult(cell.id, cell.values)
    res.status, res.reason, res.repro = Status.PASS, "", repro_command(base.name, cell)
    t0 = time.monotonic()
    try:
        resolved = cell_profile(base, cell)
        _run_cell(resolved, binary, run_dir, progress, after_check, res, cell,
                  references or References(binary, run_dir, base.name))
    except LlamactlError as exc:       # cell set-up: bad cell value, model missing, port taken, no binary
        res.status, res.reason = Status.ERROR, str(exc)
        return res
    except Exception as exc:           # noqa: BLE001 - llamactl itself broke on this cell: report it, go on
        log.exception("cell %s", cell.id)
        res.status, res.reason = Status.ERROR, f"internal error: {type(exc).__name__}: {exc}"
        return res
    finally:
        res.seconds = round(time.monotonic() - t0, 3)
    known = resolved.profile.harness.expect_failure
    if known and res.status == Status.FAIL:
        evidence = " ".join([res.reason, *(res.crash or {}).get("frames", [])])
        if known in evidence:
            res.status, res.reason = Status.XFAIL, f"known failure: {res.reason}"
        else:
            res.reason = f"failed, but not with the known {known!r}: {res.reason}"
    elif known and res.status == Status.PASS:
        res.status, res.reason = Status.XPASS, f"expected the known failure {known!r}, but the cell passed (fixed? drop expect_failure)"
    return res


def _run_cell(resolved: profiles.Resolved, binary: launcher.Binary, run_dir: Path, progress: ProgressFn | None,
              after_check: Hook | None, res: CellResult, cell: Cell, references: References) -> None:
    """One cell: launch its server, run the checks while it is healthy, then sum up; fills ``res``."""
    prof = resolved.profile
    deadline = time.monotonic() + prof.harness.cell_timeout if prof.harness.cell_timeout else None
    launched = _launch(resolved, binary, run_dir, progress, res, cell)
    if launched is None:
        return
    plan, sp, log_path = launched
    try:
        if not _wait_healthy(sp, prof, deadline, res):
            return
        t_req = time.monotonic()
        _checks(plan, sp, prof, deadline, log_path, after_check, res, cell, references)
        res.requests_s = round(time.monotonic() - t_req, 3)
        _summary(res, sp, prof)
    finally:
        sp.stop()


def _launch(resolved: profiles.Resolved, binary: launcher.Binary, run_dir: Path, progress: ProgressFn | None,
            res: CellResult, cell: Cell) -> tuple[launcher.LaunchPlan, ServerProcess, Path] | None:
    """Plan and start the cell's server (its log in ``run_dir``); None when the build cannot run the
    cell (``res`` is SKIP with the reason)."""
    prof = resolved.profile
    unsupported = check_supported(prof, binary.help, binary.path.name)
    if unsupported is not None:
        res.status, res.reason = Status.SKIP, str(unsupported)
        return None
    try:
        plan = launcher.plan(resolved, progress, binary=binary)
    except Unsupported as exc:
        res.status, res.reason = Status.SKIP, str(exc)
        return None
    res.argv = plan.argv
    res.env_dropped = plan.env_dropped
    res.warnings.extend(plan.notes)
    log_path = run_dir / f"{slug(cell.id)}.log"
    res.log = str(log_path)
    return plan, launcher.start(plan, log_path), log_path


def _wait_healthy(sp: ServerProcess, prof: profiles.Profile, deadline: float | None, res: CellResult) -> bool:
    """Wait for /health within health_timeout (or what is left of the cell's deadline); False (``res`` FAIL)
    when the server died or did not become healthy."""
    health = prof.health_timeout
    if deadline is not None and deadline - time.monotonic() < health:
        health = max(0.0, deadline - time.monotonic())
    try:
        res.start_s = round(sp.wait_healthy(health), 3)
    except ServerDied as exc:
        _crashed(res, exc.crash, "before /health")
        return False
    except LlamactlError as exc:
        bound = f"health_timeout {prof.health_timeout:g}s" if health == prof.health_timeout \
            else f"cell_timeout {prof.harness.cell_timeout:g}s"
        res.status, res.reason = Status.FAIL, f"{exc.message} ({bound})"
        return False
    return True


def _checks(plan: launcher.LaunchPlan, sp: ServerProcess, prof: profiles.Profile, deadline: float | None,
            log_path: Path, after_check: Hook | None, res: CellResult, cell: Cell, references: References) -> None:
    """The HTTP checks in order (the RPC placement check second with RPC), then the backend check
    from the startup log; a check after the server died is SKIP, after the deadline NOT_RUN."""
    # no keep-alive: llama-server may close an idle connection just as the next request reuses it
    with sp.client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        ctx = CellContext(plan.base_url, prof, client, alive=sp.alive, request_timeout=prof.harness.request_timeout,
                          deadline=deadline, cell_timeout=prof.harness.cell_timeout, log_lines=sp.log_lines,
                          model_paths=dict(plan.model_paths), rpc_endpoints=[w.endpoint for w in plan.rpc_workers]
                          or list(prof.rpc.workers if prof.rpc else []), references=references)
        if plan.rpc_workers:
            ctx.server["rpc_workers"] = [{"endpoint": w.endpoint, "pid": w.pid, "ready_s": w.ready_s}
                                         for w in plan.rpc_workers]
        try:
            ctx.metrics_before = read_metrics(ctx) if prof.metrics else []
        except (CheckFailed, httpx.HTTPError):
            ctx.metrics_before = []   # the speculative_metrics check reports what is wrong
        try:
            for name, fn in cell_checks(prof.rpc is not None):
                if not sp.alive():
                    res.checks.append(CheckResult(name, Status.SKIP, detail="server died"))
                    continue
                if res.hang is not None:
                    res.checks.append(CheckResult(name, Status.SKIP, detail=f"not asked: the server hung in {res.hang['check']}"))
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    res.checks.append(CheckResult(name, Status.NOT_RUN, detail=f"cell_timeout {prof.harness.cell_timeout:g}s reached"))
                    continue
                res.checks.append(run_check(name, fn, ctx))
                if res.checks[-1].data.get("no_answer") and sp.alive() and sp.pid is not None:
                    res.hang = _hung(name, res.checks[-1].detail, sp.pid)
                if after_check:
                    after_check(cell, name, sp)
        finally:
            res.server, res.warnings = dict(ctx.server), [*res.warnings, *ctx.warnings]
        # backend truth: what the startup log says the server used, against expect_backend/expect_offload
        res.checks.append(backend_check.check(log_path, prof.harness.expect_backend, prof.harness.expect_offload, alive=sp.alive()))
        res.backend = res.checks[-1].data or None


def _hung(check: str, detail: str, pid: int) -> dict:
    """The hang of a server that got a request and gave no answer: which check, what it waited for,
    and every thread's stack (gdb, :mod:`llamactl.serve.stacks`), read while it still hangs."""
    stacks = thread_stacks(pid)
    return {"check": check, "detail": detail, "pid": pid, "threads": stacks.threads, "frames": stacks.summary(),
            "stacks_error": stacks.error}


def _summary(res: CellResult, sp: ServerProcess, prof: profiles.Profile) -> None:
    """The cell's figures from its checks (all-slots tok/s, speculative counters), a crash if the server
    died, and its status from the checks (:func:`_verdict`)."""
    conc = next((c for c in res.checks if c.name == "concurrency" and c.status == Status.PASS), None)
    res.tokens_per_s = conc.data.get("tokens_per_s") if conc else None
    spec = next((c for c in res.checks if c.name == "speculative_metrics" and c.data), None)
    if spec:
        res.spec = spec.data
        res.acceptance = spec.data.get("acceptance")
    if not sp.alive():
        _crashed(res, sp.crash(), "during the checks")
    _verdict(res, prof.harness.cell_timeout)


def _verdict(res: CellResult, cell_timeout: float | None) -> None:
    """The cell's status from its checks: the first FAIL, else the first ERROR, else a deadline."""
    if res.status != Status.PASS:
        return
    res.warnings.extend(f"{c.name}: {c.detail}" for c in res.checks
                        if c.status == Status.WARN and f"{c.name}: {c.detail}" not in res.warnings)
    failed = [c for c in res.checks if c.status == Status.FAIL]
    errors = [c for c in res.checks if c.status == Status.ERROR]
    not_run = [c for c in res.checks if c.status == Status.NOT_RUN]
    if res.hang is not None:
        h = res.hang
        where = f"; {len(h['threads'])} threads, stacks in the report" if h["threads"] else \
            f"; no stacks: {h['stacks_error']}"
        res.status, res.reason = Status.FAIL, f"{h['check']}: server hung: {h['detail']}; stopped asking{where}"
    elif failed:
        res.status, res.reason = Status.FAIL, f"{failed[0].name}: {failed[0].detail}"
    elif not_run:
        res.status = Status.FAIL
        res.reason = f"cell_timeout {cell_timeout:g}s reached; not run: {', '.join(c.name for c in not_run)}"
    elif errors:
        res.status, res.reason = Status.ERROR, f"{errors[0].name}: {errors[0].detail}"


def _crashed(res: CellResult, crash, when: str) -> None:
    res.status = Status.FAIL
    res.crash = asdict(crash)
    res.reason = f"{crash.summary()} ({when})"


def new_report(base: profiles.Resolved, cells: list[Cell]) -> Report:
    """A report listing every cell as NOT_RUN; :func:`run_matrix` fills it in as cells run."""
    return Report(base.name, "", "", [CellResult(c.id, c.values, status=Status.NOT_RUN, reason="not reached",
                                                 repro=repro_command(base.name, c)) for c in cells])


def run_matrix(base: profiles.Resolved, cells: list[Cell], *, progress: ProgressFn | None = None,
               fail_fast: bool = False, on_update: Callable[[Report, str | None], None] | None = None,
               after_check: Hook | None = None, binary: launcher.Binary | None = None,
               report: Report | None = None) -> Report:
    """Run every cell (one server each) and return the report; a cell's failure never stops the matrix.

    ``report`` (from :func:`new_report`) is filled in place, so a caller holds every cell, those not
    reached as NOT_RUN, even when this raises (a failed build). Ctrl-C / SIGTERM (KeyboardInterrupt)
    mark the running cell INTERRUPTED and return. ``--fail-fast`` leaves the cells after the first
    FAIL/ERROR/XPASS as NOT_RUN. ``progress`` hears the build and model downloads.

    Raises:
        LlamactlError: no cells, or the llama-server binary cannot be built/found.
    """
    if not cells:
        raise LlamactlError("the matrix selects no cells", hint="check its axes/include/exclude and the --cell filters")
    t0 = time.monotonic()
    if report is None or len(report.cells) != len(cells):
        fresh = new_report(base, cells)
        report = fresh if report is None else _refill(report, fresh)
    running: int | None = None

    def notify(name: str | None) -> None:
        if on_update is None:
            return
        try:
            on_update(report, name)
        except KeyboardInterrupt:
            raise
        except Exception:   # noqa: BLE001 - a display step must not end the run
            log.exception("report update failed")

    try:
        binary = binary or launcher.ensure_binary(base.profile, progress)
        version = (binary.manifest or {}).get("version", "").splitlines()[:1]
        report.binary, report.version = str(binary.path), version[0] if version else ""
        run_dir = launcher.new_run_dir(f"validate-{base.name}")
        report.run_dir = str(run_dir)
        references = References(binary, run_dir, base.name)
        for i, cell in enumerate(cells):
            running = i
            res = report.cells[i] = CellResult(cell.id, cell.values, repro=repro_command(base.name, cell))
            notify(cell.id)
            run_cell(base, cell, binary, run_dir, progress, after_check, res=res, references=references)
            running = None
            notify(None)
            if fail_fast and res.status in (Status.FAIL, Status.ERROR, Status.XPASS):
                for rest in report.cells[i + 1:]:
                    rest.reason = f"not run: --fail-fast after {cell.id}"
                break
    except KeyboardInterrupt:
        report.interrupted = True
        if running is not None:
            c = report.cells[running]
            c.status = Status.INTERRUPTED
            c.reason = "interrupted (Ctrl-C or SIGTERM)" + (f" after {c.reason}" if c.reason else "")
    finally:
        report.wall_s = round(time.monotonic() - t0, 3)
    return report


def _refill(report: Report, fresh: Report) -> Report:
    report.cells = fresh.cells
    return report


NEEDS_LOG = {"rpc_placement": "needs the server's log (RPC devices and buffers), which --url cannot read"}


def run_url(base: profiles.Resolved, url: str, cells: list[Cell] | None = None) -> Report:
    """Run the checks against a server that is already running at ``url`` (nothing is launched or stopped).

    The profile says what the server was started with (slots, MTP, KV types, metrics/slots endpoints).
    Checks that need the server's log are SKIP with the reason; so are the matrix's ``cells``, each of
    which would need a restart with other settings. Nothing raises: a server that does not answer is a FAIL.
    """
    url = url.rstrip("/")
    prof = base.profile
    report = Report(base.name, url, "")
    res = CellResult("url", {}, repro=f"llamactl validate --url {url} {base.name}")
    report.cells.append(res)
    report.matrix = ["url"]
    t0 = time.monotonic()
    deadline = t0 + prof.harness.cell_timeout if prof.harness.cell_timeout else None
    headers = {"Authorization": f"Bearer {prof.api_key}"} if prof.api_key else {}
    try:
        with httpx.Client(headers=headers, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            try:
                r = client.get(f"{url}/health", timeout=min(prof.health_timeout, 10.0))
                props = client.get(f"{url}/props", timeout=10.0)
                if props.status_code == 200:
                    report.version = str(props.json().get("build_info") or "")
            except (httpx.HTTPError, ValueError) as exc:
                res.status, res.reason = Status.FAIL, f"{url}/health: {type(exc).__name__}: {exc}"
                return report
            if r.status_code != 200:
                res.status, res.reason = Status.FAIL, f"{url}/health: HTTP {r.status_code}"
                return report
            ctx = CellContext(url, prof, client, request_timeout=prof.harness.request_timeout, deadline=deadline,
                              cell_timeout=prof.harness.cell_timeout, rpc_endpoints=list(prof.rpc.workers if prof.rpc else []))
            try:
                ctx.metrics_before = read_metrics(ctx) if prof.metrics else []
            except (CheckFailed, httpx.HTTPError):
                ctx.metrics_before = []
            t_req = time.monotonic()
            for name, fn in cell_checks(prof.rpc is not None):
                if name in NEEDS_LOG:
                    res.checks.append(CheckResult(name, Status.SKIP, detail=NEEDS_LOG[name]))
                    continue
                res.checks.append(run_check(name, fn, ctx))
            res.requests_s = round(time.monotonic() - t_req, 3)
            res.server, res.warnings = dict(ctx.server), list(ctx.warnings)
        conc = next((c for c in res.checks if c.name == "concurrency" and c.status == Status.PASS), None)
        res.tokens_per_s = conc.data.get("tokens_per_s") if conc else None
        spec = next((c for c in res.checks if c.name == "speculative_metrics" and c.data), None)
        if spec:
            res.spec, res.acceptance = spec.data, spec.data.get("acceptance")
        _verdict(res, prof.harness.cell_timeout)
    except KeyboardInterrupt:
        report.interrupted = True
        res.status, res.reason = Status.INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)"
    finally:
        res.seconds = report.wall_s = round(time.monotonic() - t0, 3)
    for c in cells or []:
        report.cells.append(CellResult(c.id, c.values, status=Status.SKIP,
                                       reason="needs a restart with these settings; --url checks the running server only"))
        report.matrix.append(c.id)
    return report
