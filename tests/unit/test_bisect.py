"""The bisect search (git's own bisect in a scratch repository) with a fake oracle: no build, no server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from llamactl.build.builder import source_family, work_material
from llamactl.core.errors import BadInput
from llamactl.judge import bisect as lib
from llamactl.judge.status import Status
from llamactl.judge.validate import CellResult

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@x", "-c", "commit.gpgsign=false"]


def linear(n: int) -> lib.Space:
    cands = [lib.Candidate(str(i), f"v{i}", f"upstream@{i}", None) for i in range(n)]
    return lib.Space("versions", cands[0], cands[-1], between=cands[1:-1])


def fake(first_bad: int, skip: set[int] = frozenset(), fixed: bool = False, calls: list[int] | None = None):
    """A cell that fails from ``first_bad`` on (or, ``fixed``, passes from there on)."""
    def evaluate(c: lib.Candidate, n: int) -> lib.Step:
        i = int(c.ref)
        if calls is not None:
            calls.append(i)
        if i in skip:
            return lib.Step(c.ref, c.label, lib.SKIP, "cannot be built")
        broken = i >= first_bad
        if fixed:
            broken = not broken
        return lib.Step(c.ref, c.label, lib.BAD if broken else lib.GOOD)
    return evaluate


def run(space: lib.Space, evaluate, tmp_path: Path, fixed: bool = False, done=None) -> lib.Result:
    res = lib.Result("p", "c", space.kind, fixed, space.old.ref, space.new.ref)
    return lib.search(space, evaluate, fixed=fixed, scratch=tmp_path / "scratch.git", done_steps=done, result=res)


@pytest.mark.parametrize("first_bad", [1, 4, 7, 15])
def test_finds_the_first_bad_in_log2_steps(tmp_path, first_bad):
    calls: list[int] = []
    res = run(linear(16), fake(first_bad, calls=calls), tmp_path)
    assert res.first == str(first_bad)
    assert 0 not in calls and 15 not in calls          # the ends are given, not tested
    assert len(calls) <= 4                              # 14 candidates between: ceil(log2(15)) = 4
    assert [s.ref for s in res.steps] == [str(i) for i in calls]


def test_a_skipped_step_far_from_the_answer_costs_one_more_step(tmp_path):
    calls: list[int] = []
    res = run(linear(16), fake(11, skip={8, 7}, calls=calls), tmp_path)
    assert res.first == "11" and res.could_be == []
    assert any(lib.SKIP == s.verdict for s in res.steps)


def test_skips_next_to_the_answer_leave_the_candidates(tmp_path):
    res = run(linear(8), fake(4, skip={4}), tmp_path)   # 3 good, 4 unknown, 5 bad
    assert res.first is None
    assert sorted(res.could_be) == ["4", "5"]


def test_fixed_finds_the_first_passing_step(tmp_path):
    res = run(linear(12), fake(9, fixed=True), tmp_path, fixed=True)
    assert res.first == "9"
    for s in res.steps:   # verdicts stay in the cell's terms: good = passes
        assert s.verdict == (lib.GOOD if int(s.ref) >= 9 else lib.BAD)


def test_replayed_steps_are_not_evaluated_again(tmp_path):
    first_calls: list[int] = []
    full = run(linear(32), fake(21, calls=first_calls), tmp_path)
    done = full.steps[:2]
    calls: list[int] = []
    again = run(linear(32), fake(21, calls=calls), tmp_path, done=done)
    assert again.first == full.first == "21"
    assert calls == first_calls[2:]
    assert [s.ref for s in again.steps] == [s.ref for s in full.steps]


@pytest.fixture
def history(tmp_path) -> tuple[Path, list[str]]:
    """A repo with a base commit and 6 commits; the 4th adds the file 'fault'."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    shas = []
    for i in range(7):
        (repo / f"f{i}.txt").write_text(str(i))
        if i == 4:
            (repo / "fault").write_text("x")
        subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
        subprocess.run([*GIT, "commit", "-qm", f"commit {i}"], cwd=repo, check=True)
        shas.append(subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                   check=True).stdout.strip())
    return repo, shas


def tree_oracle(repo: Path, fixed: bool = False, calls: list[str] | None = None):
    def evaluate(c: lib.Candidate, n: int) -> lib.Step:
        if calls is not None:
            calls.append(c.ref)
        has = subprocess.run(["git", "cat-file", "-e", f"{c.ref}:fault"], cwd=repo).returncode == 0
        return lib.Step(c.ref, c.label, lib.BAD if has != fixed else lib.GOOD)
    return evaluate


def test_commit_space_names_the_commit(tmp_path, history):
    repo, shas = history
    space = lib.commit_space(f"path:{repo}", shas[0], shas[6], False, "upstream", False)
    assert space.new.source == f"path:{repo}@{shas[6]}" and space.new.label == "commit 6"
    calls: list[str] = []
    res = run(space, tree_oracle(repo, calls=calls), tmp_path)
    assert res.first == shas[4] and res.first_label == "commit 4"
    assert len(calls) <= 3
    assert (tmp_path / "scratch.git" / "objects" / "info" / "alternates").exists()   # shares, copies nothing


def test_commit_space_fixed_and_wrong_order(tmp_path, history):
    repo, shas = history
    with pytest.raises(BadInput, match="ancestor"):
        lib.commit_space(f"path:{repo}", shas[6], shas[0], False, None, False)
    with pytest.raises(BadInput, match="not a commit"):
        lib.commit_space(f"path:{repo}", "nope", shas[0], False, None, False)
    space = lib.commit_space(f"path:{repo}", shas[6], shas[0], True, None, False)   # --good newer, --bad older
    res = run(space, tree_oracle(repo, fixed=True), tmp_path, fixed=True)
    assert res.first == shas[4]


def test_patch_space_prefixes(tmp_path):
    series = tmp_path / "s"
    (series / "vulkan").mkdir(parents=True)
    (series / "vulkan" / "0001-v.patch").write_text("Subject: [PATCH] v\n")
    for i, name in enumerate(["0001-a.patch", "0002-b.patch", "0003-c.patch"], 1):
        (series / name).write_text(f"Subject: [PATCH] patch {i}\n")
    space = lib.patch_space("upstream", str(series), tmp_path / "w", None, None, False)
    assert [c.ref for c in space.linear()] == ["0", "1", "2", "3"]
    assert space.between[1].label == "0002-b.patch: patch 2"
    two = Path(space.between[1].series or "")
    assert sorted(p.name for p in two.glob("*.patch")) == ["0001-a.patch", "0002-b.patch"]
    assert (two / "vulkan" / "0001-v.patch").exists()      # backend-only patches come with every prefix
    res = run(space, fake(2), tmp_path)
    assert res.first == "2" and res.first_label.startswith("0002-b.patch")
    fixed = lib.patch_space("upstream", str(series), tmp_path / "w", "0003-c", "1", True)
    assert (fixed.old.ref, fixed.new.ref) == ("1", "3")
    with pytest.raises(BadInput, match="not a patch"):
        lib.patch_space("upstream", str(series), tmp_path / "w", "9", None, False)


def cell(status: Status, reason: str = "", start_s: float | None = 0.2, crash: dict | None = None,
         tok: float | None = None) -> CellResult:
    return CellResult("c", {}, status=status, reason=reason, start_s=start_s, crash=crash, tokens_per_s=tok)


def test_oracle():
    abort = {"assert_line": "llama-batch.cpp:42: more than one slot decodes", "frames": ["llama_batch_allocr::init"],
             "last_lines": [], "error_line": None}
    o = lib.Oracle()
    assert o.judge(cell(Status.PASS))[0] == lib.GOOD
    assert o.judge(cell(Status.FAIL, "llama-server killed by SIGABRT", crash=abort))[0] == lib.BAD
    assert o.judge(cell(Status.XFAIL, "known failure"))[0] == lib.BAD
    assert o.judge(cell(Status.ERROR, "model missing"))[0] == lib.SKIP
    assert o.judge(cell(Status.SKIP, "no turbo4"))[0] == lib.SKIP
    assert o.judge(cell(Status.FAIL, "exit code 1 (before /health)", start_s=None))[0] == lib.SKIP
    sig = lib.Oracle(signature="llama_batch_allocr::init")
    assert sig.judge(cell(Status.FAIL, "killed", crash=abort))[0] == lib.BAD
    assert sig.judge(cell(Status.FAIL, "messages: HTTP 500"))[0] == lib.SKIP
    assert sig.judge(cell(Status.FAIL, "before /health", start_s=None, crash=abort))[0] == lib.BAD
    perf = lib.Oracle(metric="decode_tok_s", below=40)
    assert perf.judge(cell(Status.PASS, tok=30.0))[0] == lib.BAD
    assert perf.judge(cell(Status.PASS, tok=50.0))[0] == lib.GOOD
    assert perf.judge(cell(Status.FAIL, "x"))[0] == lib.SKIP
    with pytest.raises(BadInput):
        lib.Oracle(metric="decode_tok_s")
    with pytest.raises(BadInput):
        lib.Oracle(metric="nope", below=1)


def test_source_family_keeps_one_work_dir_per_source():
    assert source_family("path:/a/b@0123abc") == "path:/a/b@"
    assert source_family("upstream@0.3.35") == "upstream@"
    mat = {"source": {"source": "path:/a@1"}, "patches": [], "local_changes": None, "backend": "cpu"}
    other = dict(mat, source={"source": "path:/a@2"})
    assert work_material(mat) == work_material(other)
    assert work_material(mat, "upstream")["source_name"] == "upstream"


def test_interrupt_then_resume(tmp_path, monkeypatch):
    """Ctrl-C during a step saves the steps before it; --resume goes on without running them again."""
    from llamactl.serve import profiles

    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    base = profiles.resolve("default", environ={})
    the_cell = lib.one_cell(base, ["parallel=2", "kv=f16/f16"])
    calls: list[int] = []
    evaluate = fake(13, calls=calls)

    def step(c, n, **_kw):
        if len(calls) == 2 and not resumed:
            raise KeyboardInterrupt
        return evaluate(c, n)

    monkeypatch.setattr(lib, "run_step", step)
    req = lib.Request("default", the_cell.id, "0", "19", "upstream", "versions")
    resumed = False
    with pytest.raises(KeyboardInterrupt):
        lib.bisect(req, base=base, cell=the_cell, space=linear(20))
    state = json.loads((lib.state_dir() / f"{req.key()}.json").read_text())
    assert state["done"] is False and state["result"]["interrupted"] is True
    assert [s["ref"] for s in state["result"]["steps"]] == [str(i) for i in calls]
    before = list(calls)
    resumed = True
    res = lib.bisect(req, base=base, cell=the_cell, space=linear(20), resume=True)
    assert res.first == "13"
    assert calls[:2] == before and len(set(calls)) == len(calls)      # no step ran twice
    assert json.loads(Path(res.state_file).read_text())["done"] is True
    with pytest.raises(BadInput, match="resume"):
        lib.bisect(lib.Request("default", the_cell.id, "1", "19", "upstream", "versions"), base=base,
                   cell=the_cell, space=linear(20), resume=True)


def test_untested_answer_is_run_for_its_log(tmp_path, monkeypatch):
    from llamactl.serve import profiles

    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    base = profiles.resolve("default", environ={})
    the_cell = lib.one_cell(base, ["parallel=2", "kv=f16/f16"])
    calls: list[int] = []
    monkeypatch.setattr(lib, "run_step", lambda c, n, **_kw: fake(7, calls=calls)(c, n))
    res = lib.bisect(lib.Request("default", the_cell.id, "0", "7", "upstream", "versions"), base=base,
                     cell=the_cell, space=linear(8))
    assert res.first == "7" and calls[-1] == 7          # the --bad end, run once for its signature and log
    calls.clear()
    monkeypatch.setattr(lib, "run_step", lambda c, n, **_kw: fake(99, calls=calls)(c, n))   # nothing fails
    res = lib.bisect(lib.Request("default", the_cell.id, "0", "7", "upstream", "versions", signature="x"), base=base,
                     cell=the_cell, space=linear(8))
    assert res.first is None and "--bad 7 is not bad" in (res.note or "")


def test_fixed_reports_the_failure_it_fixed(tmp_path, monkeypatch):
    from llamactl.serve import profiles

    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    base = profiles.resolve("default", environ={})
    the_cell = lib.one_cell(base, ["parallel=2", "kv=f16/f16"])

    def step(c, n, **_kw):
        s = fake(3, fixed=True)(c, n)
        s.signature = "GGML_ASSERT(x) failed" if s.verdict == lib.BAD else None
        s.log = f"/logs/{c.ref}.log"
        return s
    monkeypatch.setattr(lib, "run_step", step)
    res = lib.bisect(lib.Request("default", the_cell.id, "5", "0", "upstream", "versions", fixed=True), base=base,
                     cell=the_cell, space=linear(6), )
    assert res.first == "3" and res.signature == "GGML_ASSERT(x) failed" and res.log == "/logs/3.log"


def test_version_space_orders_and_checks_the_ends(tmp_path):
    vs = ["0.3.30", "0.3.31", "0.3.32", "0.3.33", "0.3.34", "0.3.35", "0.3.36"]
    space = lib.version_space(vs[1:], lambda v: f"upstream@{v}", "0.3.31", "0.3.36", False, "upstream", False)
    assert space.old.source == "upstream@0.3.31" and space.new.ref == "0.3.36" and len(space.between) == 4
    assert run(space, fake_versions("0.3.34"), tmp_path).first == "0.3.34"
    fixed = lib.version_space(vs, lambda v: f"upstream@{v}", "0.3.36", "0.3.30", True, None, False)
    assert (fixed.old.ref, fixed.new.ref) == ("0.3.30", "0.3.36")
    with pytest.raises(BadInput, match="older"):
        lib.version_space(vs, lambda v: v, "0.3.36", "0.3.30", False, None, False)
    with pytest.raises(BadInput, match="not a known version"):
        lib.version_space(vs, lambda v: v, "0.2.0", "0.3.30", False, None, False)


def fake_versions(first_bad: str):
    def evaluate(c: lib.Candidate, n: int) -> lib.Step:
        bad = tuple(map(int, c.ref.split("."))) >= tuple(map(int, first_bad.split(".")))
        return lib.Step(c.ref, c.label, lib.BAD if bad else lib.GOOD)
    return evaluate


def test_steps_compile_in_the_closest_warm_work_dir(tmp_path, monkeypatch, history):
    """Commits of a checkout of upstream compile where upstream compiled, not cold in a new directory."""
    from llamactl.build import builder
    from llamactl.serve import profiles

    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    repo, shas = history
    base = profiles.resolve("default", environ={})
    space = lib.commit_space(f"path:{repo}", shas[0], shas[6], False, "upstream", False)
    assert lib.pick_work_dir(base, space) == "upstream@"                 # nothing built yet: not the pinned one

    def warm(name: str, files: dict) -> None:
        req = builder.BuildRequest(source=space.old.source, work_source=name)
        work = builder.work_dir_of(req, "upstream")
        (work / "build").mkdir(parents=True)
        (work / "build" / "build.ninja").write_text("")
        (work / "src.index.json").write_text(json.dumps({"version": 1, "files": files}))

    warm("upstream", {})
    assert lib.pick_work_dir(base, space) == "upstream"                 # the only one ever built
    from llamactl.build.srcsync import tree_entries
    warm("upstream@", {p: [m, o, 0, 0] for p, (m, o) in tree_entries(repo, shas[0]).items()})
    assert lib.pick_work_dir(base, space) == "upstream@"                # holds exactly the older end


def test_cli_json_out_writes_what_json_prints(tmp_path, monkeypatch, capsys):
    """`bisect --json-out F`: the result in a file, the same JSON that --json prints on stdout."""
    from llamactl import cli

    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lib, "make_space", lambda req, base: linear(8))
    monkeypatch.setattr(lib, "run_step", lambda c, n, **_kw: fake(5)(c, n))
    out = tmp_path / "reports" / "bisect.json"
    argv = ["bisect", "default", "--no-env", "--cell", "parallel=2", "--cell", "kv=f16/f16", "--good", "0", "--bad", "7",
            "--json-out", str(out)]
    assert cli.run([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert written == printed and written["first"] == "5" and written["found"] is True
    out.unlink()
    assert cli.run(argv) == 0                       # without --json: the table on stdout, the file all the same
    assert json.loads(out.read_text())["first"] == "5" and "first bad" in capsys.readouterr().out


def test_cli_json_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    from llamactl import cli

    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))

    def no_work(*_a, **_kw):
        raise AssertionError("searched before the output path was checked")
    monkeypatch.setattr(lib, "make_space", no_work)
    monkeypatch.setattr(lib, "one_cell", no_work)
    rc = cli.run(["bisect", "default", "--cell", "parallel=2", "--good", "0", "--bad", "7", "--json-out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --json-out path") and "is a directory" in err
