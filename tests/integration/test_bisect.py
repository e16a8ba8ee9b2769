"""`llamactl bisect` against the real llama-server: a fault placed in one commit, or one patch, is named.

The fault: a few lines in src/llama-batch.cpp (one of the smallest translation units on the decode
path) that abort when one batch carries tokens of more than one sequence, i.e. when more than one
slot decodes. One slot's requests pass; the concurrency check of a 2-slot cell aborts the server.
Every step compiles in the upstream work directory, so each build recompiles only that file and links.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamactl.core import paths
from tests.conftest import llama_server_pids

PROFILE, CELL = "tiny-gemma4-mtp", "parallel=2,enable_mtp=0"
SIGNATURE = "bisect fault: more than one slot decodes"
ANCHOR = "    GGML_ASSERT(n_tok > 0);\n"
FAULT = ANCHOR + """
    for (int32_t i = 1; i < n_tok; ++i) {   // the fault bisect must find
        if (!batch_inp.tokens[i].seq_ids.empty() && !batch_inp.tokens[0].seq_ids.empty() &&
                *batch_inp.tokens[i].seq_ids.begin() != *batch_inp.tokens[0].seq_ids.begin()) {
            GGML_ABORT("%s", "bisect fault: more than one slot decodes");
        }
    }
"""
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@x", "-c", "commit.gpgsign=false"]
MAX_NINJA_STEPS = 20     # the cold build is 250; one file, its archive and the links are under 10
FIRST_STEP_MAX = 60      # the first step also catches up with whatever the shared work dir held before


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def commit(repo: Path, message: str, edit) -> str:
    edit(repo)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def note(name: str):
    def edit(repo: Path) -> None:
        (repo / "docs" / f"{name}.md").write_text(f"# {name}\n")
    return edit


def add_fault(repo: Path) -> None:
    f = repo / "src" / "llama-batch.cpp"
    text = f.read_text()
    assert text.count(ANCHOR) == 1
    f.write_text(text.replace(ANCHOR, FAULT))


def bisect_cli(clean_env, *args: str) -> dict:
    cp = subprocess.run([sys.executable, "-m", "llamactl", "bisect", PROFILE, "--cell", CELL, "--json", *args],
                        capture_output=True, text=True, env=clean_env, timeout=2400)
    sys.stderr.write(cp.stderr)
    assert cp.returncode == 0, cp.stderr[-2000:]
    return json.loads(cp.stdout)


def report(result: dict) -> None:
    """Each step's build time and what it compiled (visible with pytest -s and in CI logs)."""
    for i, s in enumerate(result["steps"], 1):
        what = "cached" if s["build_cached"] else f"{s['ninja_steps']} ninja steps, {s['files_written']} files"
        print(f"bisect step {i}: {s['ref'][:12]} {s['label'][:40]!r}: {s['verdict']}, build {s['build_s']}s "
              f"({what}), cell {s['cell_s']}s")


def check_incremental(result: dict) -> None:
    compiled = [s for s in result["steps"] if not s["build_cached"]]
    for i, s in enumerate(compiled):
        assert s["build_s"] is not None, s["why"]
        assert not s["configured"], s
        assert s["ninja_steps"] <= (FIRST_STEP_MAX if i == 0 else MAX_NINJA_STEPS), s
        if i:
            assert s["files_written"] <= 3, s


@pytest.fixture
def fault_repo(vendored, tmp_path) -> tuple[Path, list[str]]:
    """The vendored upstream tree at its base commit plus 6 commits; the 3rd adds the fault."""
    repo = tmp_path / "llama.cpp"
    subprocess.run(["git", "clone", "-q", "--shared", str(vendored), str(repo)], check=True)
    subprocess.run(["git", "checkout", "-q", "-B", "main", "llamactl-base"], cwd=repo, check=True)
    shas = [subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                           text=True).stdout.strip()]
    shas.append(commit(repo, "docs: one", note("bisect-one")))
    shas.append(commit(repo, "docs: two", note("bisect-two")))
    shas.append(commit(repo, "batch: the fault", add_fault))
    shas.append(commit(repo, "docs: three", note("bisect-three")))
    shas.append(commit(repo, "docs: four", note("bisect-four")))
    shas.append(commit(repo, "docs: five", note("bisect-five")))
    return repo, shas


def test_git_source_bisect_names_the_commit_in_three_incremental_builds(built, fault_repo, clean_env):
    repo, shas = fault_repo
    before = llama_server_pids()
    result = bisect_cli(clean_env, "--source", f"path:{repo}", "--good", shas[0], "--bad", shas[-1],
                        "--signature", SIGNATURE)
    report(result)
    assert result["first"] == shas[3] and result["first_label"] == "batch: the fault"
    assert SIGNATURE in result["signature"]
    assert Path(result["log"]).exists() and SIGNATURE in Path(result["log"]).read_text(errors="replace")
    assert len(result["steps"]) <= 3 and result["builds"] <= 3
    check_incremental(result)
    verdicts = {s["ref"]: s["verdict"] for s in result["steps"]}
    assert all(v == ("bad" if shas.index(r) >= 3 else "good") for r, v in verdicts.items())
    roots = {str(Path(s["build_log"]).parent) for s in result["steps"] if s["build_log"]}
    assert not [pid for pid in llama_server_pids() - before if _exe(pid).startswith(tuple(roots))]   # none of ours left
    trees = Path(os.environ.get("LLAMACTL_CACHE", Path.home() / ".cache" / "llamactl")) / "trees"
    for s in result["steps"]:   # the per-commit exports were removed after their build
        assert not any(s["ref"] in p.read_text() for p in trees.glob("*/llama.cpp.provenance.json"))


def test_patch_prefix_bisect_names_the_second_patch(built, vendored, tmp_path, clean_env):
    """Series: the upstream series' patch, the fault, a docs patch; --patches names the second."""
    series = tmp_path / "series"
    series.mkdir()
    first = sorted((paths.patches_dir() / "upstream").glob("*.patch"))[0]
    shutil.copy2(first, series / first.name)          # prefix 1 is the ordinary build: cached
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(vendored), str(repo)], check=True)
    commit(repo, "batch: the fault", add_fault)
    commit(repo, "docs: a note", note("bisect-note"))
    subprocess.run(["git", "format-patch", "-q", "--zero-commit", "-o", str(tmp_path / "new"), "HEAD~2"],
                   cwd=repo, check=True)
    for i, p in enumerate(sorted((tmp_path / "new").glob("*.patch")), 2):
        shutil.copy2(p, series / f"{i:04d}-{p.name[5:]}")
    result = bisect_cli(clean_env, "--patches", "--series", str(series))
    report(result)
    assert result["space"] == "patches"
    assert result["first"] == "2" and result["first_label"].startswith("0002-batch-the-fault")
    assert SIGNATURE in (result["signature"] or "")
    check_incremental(result)
    assert result["builds"] <= 2
