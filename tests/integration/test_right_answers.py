"""Right answers, proven by bugs: each fixture patch breaks answers silently (the server stays up and
answers 200) in one of the ways this field has seen; the cell must FAIL with the check that proves it,
and the clean build must pass the same cell.

The patches (tests/fixtures/bugs/) go on top of the upstream series and are built aside from
vendor/llama.cpp, in upstream's warm work directory: each build recompiles one file and links.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamactl.build.builder import BuildRequest, build
from llamactl.core import paths

BUGS = Path(__file__).resolve().parents[1] / "fixtures" / "bugs"

# patch, profile, cells (and settings), the check that must fail, text in its detail
CASES = [
    ("kv-decode-v", "default", ["--cell", "parallel=1", "--cell", "kv=q8_0/q8_0"], "kv_quality", "decode positions"),
    ("draft-reject", "tiny-gemma4-mtp", ["--cell", "parallel=2,enable_mtp=1,drafter=noisy"], "lossless_drafting",
     "drafted vs MTP-off"),
    ("slot-logits", "tiny-gemma4-mtp", ["--cell", "parallel=2,enable_mtp=0"], "slot_isolation", "vs alone"),
    # sliding-window models reuse a prefix through context checkpoints, where this bug cannot reach; with
    # --swa-full the cache keeps the window and reuses the prefix in place (the sibling's word leaks in)
    ("prompt-cache", "default", ["--cell", "parallel=1", "--cell", "kv=f16/f16", "--set", "extra_args=--swa-full"],
     "repeatable", "differs only with the prompt cache on"),
]


def bug_series(name: str, dest: Path) -> Path:
    """The upstream series plus the bug fixture, as a series directory."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted((paths.patches_dir() / "upstream").glob("*.patch")):
        shutil.copy2(p, dest / p.name)
    shutil.copy2(BUGS / f"{name}.patch", dest / f"0900-{name}.patch")
    return dest


def bug_binary(name: str, tmp: Path) -> Path:
    res = build(BuildRequest(source="upstream", series=str(bug_series(name, tmp / f"series-{name}")), aside=True,
                             work_source="upstream"))
    return res.binary


def validate(clean_env: dict, profile: str, cells: list[str], tmp: Path, *extra: str) -> dict:
    out = tmp / "v.json"
    args = [sys.executable, "-m", "llamactl", "validate", profile, "--no-env", "--json-out", str(out), *cells, *extra]
    cp = subprocess.run(args, capture_output=True, text=True, env=clean_env, timeout=900)
    sys.stderr.write(cp.stderr[-3000:])
    return json.loads(out.read_text())


def checks_of(cell: dict) -> dict[str, dict]:
    return {c["name"]: c for c in cell["checks"]}


@pytest.mark.parametrize("name,profile,cells,check,text", CASES, ids=[c[0] for c in CASES])
def test_a_silent_bug_fails_its_check_and_the_clean_build_passes(built, clean_env, tmp_path, name, profile, cells,
                                                                  check, text):
    clean = validate(clean_env, profile, cells, tmp_path / "clean")
    assert [c["status"] for c in clean["cells"]] == ["pass"], [c["reason"] for c in clean["cells"]]
    assert checks_of(clean["cells"][0])[check]["status"] == "pass"

    binary = bug_binary(name, tmp_path)
    data = validate(clean_env, profile, cells, tmp_path / "bug", "--set", f"server_binary={binary}")
    cell = data["cells"][0]
    got = checks_of(cell)[check]
    print(f"{name}: {check}: {got['detail'][:300]}")
    assert cell["status"] == "fail" and got["status"] == "fail", (cell["reason"], got)
    assert text in got["detail"]
    assert checks_of(cell)["still_healthy"]["status"] == "pass"      # silent: the server stayed up
    if check == "kv_quality":
        assert got["data"]["top1_agreement"] < 0.95 or got["data"]["mean_kl"] > 0.01
        assert got["data"]["disagreements"]
    else:     # the evidence: first differing position, both continuations (ids and text), the margin
        div = got["data"]["divergences"][0]
        assert div["pos"] >= 0 and div["ref_tokens"] != div["got_tokens"]
        assert div["ref_text"] or div["got_text"]
        assert "margin" in div


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@x", "-c", "commit.gpgsign=false"]


def commit(repo: Path, message: str) -> str:
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_bisect_names_the_commit_that_makes_answers_wrong(built, vendored, tmp_path, clean_env):
    """A short history whose 3rd commit makes one slot sample another's logits: the server never
    crashes, so only the answer checks can tell good from bad; bisect names that commit."""
    repo = tmp_path / "llama.cpp"
    subprocess.run(["git", "clone", "-q", "--shared", str(vendored), str(repo)], check=True)
    subprocess.run(["git", "checkout", "-q", "-B", "main", "llamactl-base"], cwd=repo, check=True)
    shas = [subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                           text=True).stdout.strip()]
    for what in ["one", "two", "bug", "three", "four"]:
        if what == "bug":
            subprocess.run(["git", "apply", str(BUGS / "slot-logits.patch")], cwd=repo, check=True)
            shas.append(commit(repo, "server: sample the slot's logits (the silent bug)"))
        else:
            (repo / "docs" / f"answers-{what}.md").write_text(f"# {what}\n")
            shas.append(commit(repo, f"docs: {what}"))
    cp = subprocess.run([sys.executable, "-m", "llamactl", "bisect", "tiny-gemma4-mtp", "--cell", "parallel=2,enable_mtp=0",
                         "--source", f"path:{repo}", "--good", shas[0], "--bad", shas[-1], "--signature", "slot_isolation",
                         "--json"], capture_output=True, text=True, env=clean_env, timeout=2400)
    sys.stderr.write(cp.stderr[-3000:])
    assert cp.returncode == 0, cp.stderr[-2000:]
    result = json.loads(cp.stdout)
    assert result["first"] == shas[3], result
    assert "slot_isolation" in (result["signature"] or "")
    assert all(s["verdict"] == ("bad" if shas.index(s["ref"]) >= 3 else "good") for s in result["steps"])
