"""`llamactl validate` against real servers: a killed cell, JUnit, Ctrl-C, skips, MTP numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET


from llamactl.serve import profiles
from llamactl.judge.matrix import expand, select
from llamactl.judge.validate import run_matrix
from tests.conftest import llama_server_pids

LLAMACTL = [sys.executable, "-m", "llamactl"]


def test_killed_server_fails_its_cell_and_the_matrix_goes_on(built):
    base = profiles.resolve("tiny-gemma4-mtp", environ={})
    cells = select(expand(base.profile.matrix), ["parallel=2"])[:2]
    before = llama_server_pids()
    seen_pids: list[int] = []

    def kill_first_cell(cell, check, sp):
        seen_pids.append(sp.pid)
        if cell == cells[0] and check == "claude_style":
            os.killpg(sp.pid, signal.SIGKILL)
            sp.proc.wait(timeout=10)

    report = run_matrix(base, cells, after_check=kill_first_cell)
    first, second = report.cells
    assert first.status == "fail" and "killed by SIGKILL" in first.reason
    assert first.crash and first.crash["signal"] == "SIGKILL" and first.crash["last_lines"]
    assert [c.status for c in first.checks][:3] == ["pass", "pass", "pass"]     # server_view, tiny_message, claude_style
    assert all(c.status == "skip" and c.detail == "server died" for c in first.checks[3:])
    assert first.repro.startswith("llamactl run tiny-gemma4-mtp --parallel 2")
    assert second.status == "pass", second.reason
    assert not report.ok
    assert llama_server_pids() - before == set()
    assert len(set(seen_pids)) == 2


def test_mtp_acceptance_matches_the_drafter(built):
    base = profiles.resolve("tiny-gemma4-mtp", environ={})
    cells = [c for c in expand(base.profile.matrix) if c.values.get("parallel") == 2 and c.values.get("enable_mtp")
             and c.values.get("kv_k") in (None, "f16")]
    report = run_matrix(base, cells)
    by_id = {c.cell: c for c in report.cells}
    echo = by_id["parallel=2,enable_mtp=1,kv=f16/f16"]
    assert echo.status == "pass" and echo.acceptance >= 0.9 and echo.spec["delta"]["draft_tokens"] > 0
    assert echo.spec["scheme"] == "labelled" and echo.spec["spec_type"] == "draft-mtp"
    rand = by_id["parallel=2,enable_mtp=1,drafter=random"]
    assert rand.status == "pass" and rand.acceptance is not None and rand.acceptance < 0.05
    conc = next(c for c in echo.checks if c.name == "concurrency")
    # both slots decoded together: seen busy in /slots, or (a short answer between two samples) the timings overlap
    assert conc.data["peak_busy_slots"] == 2 or (conc.data["evidence"].startswith("response timings")
                                                  and conc.data["overlap_s"] > 0)


def test_cli_junit_json_and_skip(built, clean_env, tmp_path):
    junit, js = tmp_path / "v.xml", tmp_path / "v.json"
    cp = subprocess.run([*LLAMACTL, "validate", "tiny-gemma4-mtp", "--cell", "parallel=2", "--cell", "enable_mtp=1",
                         "--cell", "kv_k=turbo4", "--junit", str(junit), "--json-out", str(js)],
                        capture_output=True, text=True, env=clean_env, timeout=300)
    # the only selected cell cannot run on upstream: reported as skipped, nothing ran, so not a pass
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "validate: 0 passed, 0 failed, 0 errors, 1 skipped, 0 xfailed, 0 xpassed, 0 interrupted, 0 not run" in cp.stdout
    data = json.loads(js.read_text())
    assert data["cells"][0]["status"] == "skip" and "turbo4" in data["cells"][0]["reason"]
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.find("testsuite").get("skipped") == "1"

    cp = subprocess.run([*LLAMACTL, "validate", "tiny-gemma4-mtp", "--cell", "parallel=1", "--junit", str(junit)],
                        capture_output=True, text=True, env=clean_env, timeout=300)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == 15    # server + 14 checks (backend and the 5 answer checks included)
    assert {c.get("name") for c in cases} >= {"server", "server_view", "tiny_message", "claude_style", "concurrency", "streaming",
                                              "chat_completions", "speculative_metrics", "still_healthy",
                                              "backend", "answers", "lossless_drafting", "slot_isolation",
                                              "repeatable", "kv_quality"}
    assert suite.get("failures") == "0" and all(c.find("failure") is None for c in cases)
    assert all(c.get("classname") == "tiny-gemma4-mtp.parallel=1,enable_mtp=1" for c in cases)


def test_ctrl_c_stops_the_cell_and_writes_what_was_measured(built, clean_env, tmp_path):
    js = tmp_path / "v.json"
    before = llama_server_pids()
    p = subprocess.Popen([*LLAMACTL, "validate", "default", "--json-out", str(js)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=clean_env)
    try:
        assert p.stdout is not None
        for line in p.stdout:              # wait until the first cell is done and the second one runs
            if ": PASS" in line or ": FAIL" in line:
                break
        time.sleep(2)
        p.send_signal(signal.SIGINT)
        rest = p.communicate(timeout=60)[0]
        assert p.returncode == 130, rest
    finally:
        if p.poll() is None:
            p.kill()
    data = json.loads(js.read_text())
    assert data["interrupted"] is True and data["cells"][0]["status"] in ("pass", "fail")
    statuses = [c["status"] for c in data["cells"]]     # every cell listed: the running one, the rest not run
    assert len(statuses) == 4 and statuses[1] == "interrupted" and statuses[2:] == ["not_run", "not_run"], statuses
    assert llama_server_pids() - before == set()
