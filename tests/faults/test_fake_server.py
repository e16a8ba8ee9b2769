"""Faults a real llama-server rarely shows, injected by tests/fake_server.py, through the CLI.

For each fault: `llamactl validate` ends in bounded time with exit != 0, the cell is FAIL/ERROR
with the reason, JSON and JUnit exist and parse, and no process of the run remains.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest
import yaml

from llamactl.core.errors import BuildFailed
from llamactl.judge.matrix import expand
from llamactl.judge.status import Status
from llamactl.judge.validate import run_matrix
from llamactl.serve import profiles
from llamactl.serve.launcher import recorded_help_path

FAKE = Path(__file__).resolve().parent.parent / "fake_server.py"
LLAMACTL = [sys.executable, "-m", "llamactl"]


def fake_profile(tmp_path: Path, fault: str, **over) -> tuple[Path, str]:
    """A profile file running the fake server with ``fault``; returns it and the run's marker token."""
    token = uuid.uuid4().hex
    data = {"description": f"fake llama-server, fault {fault}", "server_binary": str(FAKE),
            "model": "tiny-gemma4/upstream-echo/target", "alias": "fake", "ctx": 4096, "parallel": 2,
            "kv_k": "f16", "kv_v": "f16", "metrics": True, "slots": True, "health_timeout": 5,
            "request_timeout": 2, "cell_timeout": 30, "env": {"FAKE_FAULT": fault, "FAKE_TOKEN": token}}
    data.update(over)
    path = tmp_path / f"fake-{fault}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, token


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in profiles.ENV_VARS}
    e.update(LLAMACTL_NO_PROGRESS="1", NO_COLOR="1", COLUMNS="250")
    return e


def leftovers(token: str) -> list[int]:
    """Processes (anywhere, not only our children: the validate process is gone) carrying the run's token."""
    pids = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("FAKE_TOKEN") == token and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except (psutil.Error, OSError):
            pass
    return pids


def validate(tmp_path: Path, profile: Path, *args: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess, dict, ET.Element, float]:
    js, junit = tmp_path / "v.json", tmp_path / "v.xml"
    t = time.monotonic()
    cp = subprocess.run([*LLAMACTL, "validate", str(profile), "--no-env", "--json-out", str(js), "--junit", str(junit), *args],
                        capture_output=True, text=True, env=env(), timeout=timeout)
    took = time.monotonic() - t
    return cp, json.loads(js.read_text()), ET.parse(junit).getroot(), took


FAULTS = [
    # fault, cell status, text in the reason, the check that catches it
    ("invalid_json", "fail", "response is not JSON", "tiny_message"),
    ("wrong_shape", "fail", "type/role are None/None", "tiny_message"),
    ("sse_order", "fail", "content_block_delta for block 0 outside content_block_start/stop", "streaming"),
    ("sse_cut", "fail", "without message_stop", "streaming"),
    ("hang", "fail", "no answer within request_timeout 2s", "tiny_message"),
    ("never_healthy", "fail", "not healthy after 5s (health_timeout 5s)", None),
    ("exit", "fail", "exit code 1", None),
    ("garbage_metrics", "fail", "/metrics is not Prometheus text", "speculative_metrics"),
    ("bad_slots", "fail", "malformed /slots", "server_view"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault,status,text,check", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_is_a_reported_result(tmp_path, fault, status, text, check):
    profile, token = fake_profile(tmp_path, fault, **({"cell_timeout": 8} if fault == "hang" else {}))
    cp, data, junit, took = validate(tmp_path, profile)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1, out
    assert "Traceback" not in out
    cell = data["cells"][0]
    assert cell["status"] == status and text in cell["reason"], cell["reason"]
    if check:
        assert cell["reason"].startswith(f"{check}: ")
        assert next(c for c in cell["checks"] if c["name"] == check)["status"] == status
    assert data["ok"] is False and data["counts"][status] == 1
    assert "validate: 0 passed, 1 failed, 0 errors" in cp.stdout
    suite = junit.find("testsuite")
    assert int(suite.get("failures")) + int(suite.get("errors")) >= 1
    assert any(text in (f.get("message") or "") for f in suite.iter("failure"))
    assert took < 60
    assert leftovers(token) == []


def test_the_fake_without_a_fault_passes(tmp_path):
    """The control: every check passes against the fake, so each fault above is what fails its cell."""
    profile, token = fake_profile(tmp_path, "ok")
    cp, data, junit, _ = validate(tmp_path, profile)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cell = data["cells"][0]
    not_here = {"lossless_drafting", "kv_quality"}     # MTP off, f16 KV
    assert cell["status"] == "pass" and all(c["status"] == ("skip" if c["name"] in not_here else "pass")
                                            for c in cell["checks"]), cell
    assert cell["server"]["n_slots"] == 2 and cell["server"]["n_ctx_slot"] == 2048
    assert cell["server"]["kv_k"] == "f16" and cell["server"]["speculative"] is False
    conc = next(c for c in cell["checks"] if c["name"] == "concurrency")
    assert conc["data"]["peak_busy_slots"] == 2 and conc["data"]["evidence"] == "/slots"
    assert junit.find("testsuite").get("failures") == "0"
    assert leftovers(token) == []


def test_a_hanging_server_fails_its_cell_at_the_first_unanswered_request_with_its_stacks(tmp_path):
    """5 checks x request_timeout each cost 600 s in one cell once; now the first request that gets no
    answer fails the cell, nothing more is asked, and gdb shows where every thread waits."""
    profile, token = fake_profile(tmp_path, "hang", cell_timeout=60, request_timeout=2)
    cp, data, junit, took = validate(tmp_path, profile)
    assert cp.returncode == 1
    cell = data["cells"][0]
    details = {c["name"]: (c["status"], c["detail"]) for c in cell["checks"]}
    assert details["tiny_message"] == ("fail", "POST /v1/messages: no answer within request_timeout 2s (ReadTimeout)")
    assert cell["reason"].startswith("tiny_message: server hung: POST /v1/messages: no answer within request_timeout 2s")
    asked = [n for n, (st, d) in details.items() if st not in ("skip",) and n != "backend"]
    assert asked == ["server_view", "tiny_message"], details       # nothing asked after the hang
    assert all(d == "not asked: the server hung in tiny_message" for n, (st, d) in details.items()
               if n not in ("server_view", "tiny_message", "backend"))
    hang = cell["hang"]
    assert hang["check"] == "tiny_message" and hang["pid"]
    if shutil.which("gdb"):      # .ci/run installs it
        assert len(hang["threads"]) >= 2 and any("sleep" in f or "select" in f or "poll" in f
                                                 for t in hang["threads"] for f in t["frames"]), hang
        assert "threads, stacks in the report" in cell["reason"]
        assert any("thread" in f for f in hang["frames"])
    else:
        assert "gdb not found" in hang["stacks_error"]
    assert cell["seconds"] < 2 + 30 + 12      # one request_timeout, gdb, stopping the server
    assert took < 60
    assert leftovers(token) == []


def test_sigterm_writes_every_cell_and_leaves_nothing(tmp_path):
    profile, token = fake_profile(tmp_path, "hang", matrix={"axes": {"parallel": [2, 1]}}, request_timeout=20)
    js, junit = tmp_path / "v.json", tmp_path / "v.xml"
    p = subprocess.Popen([*LLAMACTL, "validate", str(profile), "--no-env", "--json-out", str(js), "--junit", str(junit)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    try:
        deadline = time.monotonic() + 30
        while not leftovers(token) and time.monotonic() < deadline:   # the first cell's server is up
            time.sleep(0.2)
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=60)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, out
    data = json.loads(js.read_text())
    assert [c["status"] for c in data["cells"]] == ["interrupted", "not_run"]
    assert data["interrupted"] is True and data["counts"]["not_run"] == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("skipped")) >= 2
    assert leftovers(token) == []


def test_fail_fast_lists_the_rest_as_not_run(tmp_path):
    profile, token = fake_profile(tmp_path, "invalid_json", matrix={"axes": {"parallel": [1, 2]}})
    cp, data, _, _ = validate(tmp_path, profile, "--fail-fast")
    assert cp.returncode == 1
    assert [c["status"] for c in data["cells"]] == ["fail", "not_run"]
    assert data["cells"][1]["reason"] == "not run: --fail-fast after parallel=1"
    assert "validate: 0 passed, 1 failed, 0 errors, 0 skipped, 0 xfailed, 0 xpassed, 0 interrupted, 1 not run" in cp.stdout
    assert leftovers(token) == []


def test_report_paths_are_checked_before_the_run(tmp_path):
    profile, _ = fake_profile(tmp_path, "ok")
    for bad in (tmp_path, tmp_path / "file.txt" / "r.json"):
        (tmp_path / "file.txt").write_text("x")
        cp = subprocess.run([*LLAMACTL, "validate", str(profile), "--no-env", "--json-out", str(bad)],
                            capture_output=True, text=True, env=env(), timeout=60)
        assert cp.returncode != 0 and "Traceback" not in cp.stderr
        assert "--json-out path" in cp.stderr and "validating" not in cp.stdout
        assert len(cp.stderr.strip().splitlines()) == 1


def test_a_matrix_without_cells_is_an_error_before_any_build(tmp_path):
    profile, _ = fake_profile(tmp_path, "ok", server_binary=None,   # no binary: the build would start
                              build={"source": "path:/nonexistent"})
    empty = tmp_path / "m.yaml"
    empty.write_text("axes: {parallel: [1, 2]}\nexclude: [{parallel: 1}, {parallel: 2}]\n")
    cp = subprocess.run([*LLAMACTL, "validate", str(profile), "--no-env", "--matrix", str(empty)],
                        capture_output=True, text=True, env=env(), timeout=60)
    assert cp.returncode == 2 and "no cells" in cp.stderr and "Traceback" not in cp.stderr
    assert "nonexistent" not in cp.stderr            # refused before the build would look at its source


def test_cell_setup_errors_are_that_cells_result(tmp_path):
    """A missing model, a bad cell value and a taken port are ERROR for their cell; the others still run."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        profile, token = fake_profile(tmp_path, "ok", parallel=1, matrix={"include": [
            {"name": "missing-model", "model": str(tmp_path / "nope.gguf")},
            {"name": "bad-value", "parallel": 0},
            {"name": "port-taken", "port": port},
            {"name": "good", "parallel": 1},
        ]})
        base = profiles.resolve(str(profile), environ={})
        seen: list[str] = []
        report = run_matrix(base, expand(base.profile.matrix), on_update=lambda r, running: seen.append(1 / 0))
    by = {c.cell: c for c in report.cells}
    assert by["missing-model"].status == Status.ERROR and "nope.gguf" in by["missing-model"].reason
    assert by["bad-value"].status == Status.ERROR and "parallel" in by["bad-value"].reason
    assert by["port-taken"].status == Status.ERROR and str(port) in by["port-taken"].reason
    assert by["good"].status == Status.PASS, by["good"].reason     # the matrix went on; a broken display step too
    assert not report.ok and report.counts()["error"] == 3
    assert leftovers(token) == []


def test_an_internal_error_in_one_cell_is_its_error_and_the_matrix_goes_on(tmp_path, monkeypatch):
    from llamactl.judge import validate as validate_mod
    from llamactl.serve import launcher
    from llamactl.serve.dialect import parse_help

    profile, _ = fake_profile(tmp_path, "ok", matrix={"axes": {"parallel": [1, 2]}})
    base = profiles.resolve(str(profile), environ={})
    binary = launcher.Binary(FAKE, parse_help(recorded_help_path("upstream").read_text()))
    calls: list[str] = []

    def broken(resolved, binary, run_dir, out, after_check, res, cell, references):
        calls.append(cell.id)
        if cell.id == "parallel=1":
            raise KeyError("usage")

    monkeypatch.setattr(validate_mod, "_run_cell", broken)
    report = run_matrix(base, expand(base.profile.matrix), binary=binary)
    first, second = report.cells
    assert first.status == Status.ERROR and first.reason == "internal error: KeyError: 'usage'"
    assert second.status == Status.PASS and calls == ["parallel=1", "parallel=2"]


@pytest.mark.parametrize("exc,code,error", [
    (RuntimeError("boom"), 70, "internal error: RuntimeError: boom"),
    (BuildFailed("configure failed: CMake Error"), 3, "configure failed: CMake Error"),
])
def test_reports_are_written_when_the_run_itself_breaks(tmp_path, monkeypatch, exc, code, error):
    """An error before any cell (the build, an internal bug): every cell NOT_RUN, the error in JSON and JUnit."""
    from llamactl.cli import run as cli_run
    from llamactl.serve import launcher

    def broken(*a, **kw):
        raise exc
    monkeypatch.setattr(launcher, "ensure_binary", broken)
    monkeypatch.setenv("LLAMACTL_NO_PROGRESS", "1")
    profile, _ = fake_profile(tmp_path, "ok", matrix={"axes": {"parallel": [1, 2]}})
    js, junit = tmp_path / "v.json", tmp_path / "v.xml"
    rc = cli_run(["validate", str(profile), "--no-env", "--json-out", str(js), "--junit", str(junit)])
    assert rc == code
    data = json.loads(js.read_text())
    assert data["error"] == error and [c["status"] for c in data["cells"]] == ["not_run", "not_run"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.get("skipped") == "2"
