"""`sync --to SOURCE PROFILE`: the orchestration (rebase, build, validate before/after, verdict) with the steps faked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamactl.core.errors import ExitCode, LlamactlError
from llamactl.judge import sync as sync_lib
from llamactl.judge.matrix import Cell
from llamactl.judge.status import Status
from llamactl.judge.validate import CellResult, Report
from llamactl.serve import launcher, profiles
from llamactl.source import rebase as rebase_lib

CELLS = [Cell((("parallel", 1),)), Cell((("parallel", 2),))]


def base() -> profiles.Resolved:
    prof = profiles.Profile.model_validate({"build": {"source": "upstream"}, "model": "gemma3-270m"})
    return profiles.Resolved("default", prof, {}, None)


class Fake:
    """Records what sync asked for; answers with canned rebase outcomes, builds and cell results."""

    def __init__(self, outcome: str = rebase_lib.CLEAN, after: dict[str, tuple[Status, float]] | None = None,
                 build_fails: str | None = None) -> None:
        self.outcome, self.build_fails = outcome, build_fails
        self.before = {"parallel=1": (Status.PASS, 40.0), "parallel=2": (Status.PASS, 60.0)}
        self.after = after or dict(self.before)
        self.calls: list[tuple] = []

    def rebase(self, to, series, write=False, write_to=None, **kw):
        self.calls.append(("rebase", to, series, write, write_to))
        r = rebase_lib.RebaseReport(to, "abc", series)
        p = rebase_lib.PatchOutcome("0001-x.patch", "x", self.outcome)
        if self.outcome == rebase_lib.CONFLICTS:
            p.conflicts, p.conflict_dir, r.conflicts_dir = {"a.cpp": 2}, "/c/0001-x", "/c"
        r.patches = [p]
        return r

    def ensure_binary(self, prof, progress=None):
        self.calls.append(("build", prof.build.source, prof.build.series))
        if self.build_fails and prof.build.source == self.build_fails:
            raise LlamactlError("compile failed: error: boom")
        return launcher.Binary(Path(f"/b/{prof.build.source}/llama-server"), None, {"key": f"k-{prof.build.source}", "version": "v1"})  # type: ignore[arg-type]

    def validate(self, resolved, cells, binary=None, progress=None, on_update=None):
        side = self.after if "after" in str(binary.path) or "@" in str(binary.path) else self.before
        self.calls.append(("validate", resolved.profile.build.source, [c.id for c in cells]))
        rep = Report("default", str(binary.path), "v1")
        for c in cells:
            st, tps = side[c.id.split(",")[0]]
            rep.cells.append(CellResult(c.id, c.values, status=st, tokens_per_s=tps, reason="" if st == Status.PASS else "boom"))
        return rep

    def steps(self) -> sync_lib.Steps:
        return sync_lib.Steps(rebase=self.rebase, ensure_binary=self.ensure_binary, validate=self.validate)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))


def test_safe_move_builds_and_validates_both_sides_with_the_rebased_series():
    f = Fake()
    r = sync_lib.sync(base(), "upstream@0.3.35", CELLS, steps=f.steps())
    assert r.verdict == sync_lib.SAFE and r.exit_code == ExitCode.OK
    out_dir = str(sync_lib.scratch_series_dir("default", "upstream@0.3.35"))
    assert f.calls[0] == ("rebase", "upstream@0.3.35", "upstream", True, Path(out_dir))
    assert ("build", "upstream", None) in f.calls and ("build", "upstream@0.3.35", out_dir) in f.calls
    assert [c.verdict for c in r.cells] == ["same", "same"]
    assert [(c.before, c.after, c.tps_before, c.tps_after) for c in r.cells][0] == ("pass", "pass", 40.0, 40.0)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["verdict"] == "safe" and data["after"]["series"] == out_dir and len(data["before"]["report"]["cells"]) == 2


def test_a_cell_that_fails_after_is_a_regression_exit_6():
    f = Fake(after={"parallel=1": (Status.PASS, 41.0), "parallel=2": (Status.FAIL, 0.0)})
    r = sync_lib.sync(base(), "upstream@0.3.35", CELLS, steps=f.steps())
    assert r.verdict == sync_lib.REGRESSION and r.exit_code == ExitCode.REGRESSION == 6
    assert [c.verdict for c in r.cells] == ["same", "regression"] and "parallel=2: pass -> fail" in r.reason


def test_slower_is_reported_but_gates_only_with_fail_below():
    slow = {"parallel=1": (Status.PASS, 20.0), "parallel=2": (Status.PASS, 59.0)}
    r = sync_lib.sync(base(), "upstream@0.3.35", CELLS, steps=Fake(after=slow).steps())
    assert r.verdict == sync_lib.SAFE and r.cells[0].verdict == "slower" and r.cells[0].ratio == pytest.approx(0.5)
    r = sync_lib.sync(base(), "upstream@0.3.35", CELLS, fail_below=0.8, steps=Fake(after=slow).steps())
    assert r.verdict == sync_lib.REGRESSION and "below --fail-below 0.8" in r.reason


def test_a_fixed_cell_is_safe():
    f = Fake(after={"parallel=1": (Status.PASS, 40.0), "parallel=2": (Status.PASS, 60.0)})
    f.before["parallel=2"] = (Status.FAIL, 0.0)
    r = sync_lib.sync(base(), "upstream@0.3.35", CELLS, steps=f.steps())
    assert r.verdict == sync_lib.SAFE and r.cells[1].verdict == "fixed" and "1 fixed" in r.reason


def test_conflicts_stop_before_any_build():
    f = Fake(outcome=rebase_lib.CONFLICTS)
    r = sync_lib.sync(base(), "upstream@0.3.30", CELLS, steps=f.steps())
    assert r.verdict == sync_lib.CONFLICTS and r.exit_code == ExitCode.FAILED
    assert "0001-x.patch" in r.reason and "/c" in r.reason
    assert [c[0] for c in f.calls] == ["rebase"]


def test_a_side_that_does_not_build_is_build_failed():
    f = Fake(build_fails="upstream@0.3.35")
    r = sync_lib.sync(base(), "upstream@0.3.35", CELLS, steps=f.steps())
    assert r.verdict == sync_lib.BUILD_FAILED and r.exit_code == ExitCode.BUILD_FAILED
    assert "after (upstream@0.3.35): compile failed" in r.reason and r.after.error and r.before.report is not None


def test_no_patches_profile_skips_the_rebase():
    b = base()
    b.profile.build.no_patches = True
    f = Fake()
    r = sync_lib.sync(b, "upstream@0.3.35", CELLS, steps=f.steps())
    assert r.rebase is None and [c[0] for c in f.calls] == ["build", "validate", "build", "validate"]
    assert ("build", "upstream@0.3.35", None) in f.calls


def test_cli_prints_one_side_by_side_table_and_exits_with_the_verdict(monkeypatch, capsys):
    from llamactl.cli import run as cli

    f = Fake(after={"parallel=1": (Status.PASS, 30.0), "parallel=2": (Status.FAIL, 0.0)})
    steps = f.steps()
    monkeypatch.setattr(sync_lib, "Steps", lambda: steps)
    assert cli(["sync", "--to", "upstream@0.3.35", "default", "--cell", "kv=f16/f16"]) == 6
    out = capsys.readouterr().out
    for word in ("tok/s before", "tok/s after", "PASS", "FAIL", "regression", "REGRESSION", "-25%"):
        assert word in out
    assert cli(["sync", "--to", "upstream@0.3.35", "default", "--json"]) == 6
    assert json.loads(capsys.readouterr().out)["verdict"] == "regression"
