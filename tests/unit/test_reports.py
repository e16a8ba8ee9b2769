import json
import xml.etree.ElementTree as ET

from llamactl.judge.checks import CheckResult
from llamactl.report.reports import junit_tree, summary_lines, write_json, write_junit
from llamactl.judge.validate import CellResult, Report


def sample_report() -> Report:
    ok = CellResult("parallel=1", {"parallel": 1}, "pass", checks=[CheckResult("tiny_message", "pass", 0.1),
                                                                    CheckResult("concurrency", "pass", 0.5, data={"tokens_per_s": 30.0})],
                    start_s=1.0, requests_s=0.6, seconds=2.0, tokens_per_s=30.0)
    crash = {"returncode": -6, "signal": "SIGABRT", "assert_line": "ggml.c:3665: GGML_ASSERT(x) failed",
             "frames": ["#3 ggml_reshape_3d ()", "#6 llama_context::ensure_sched_mtp() ()"], "last_lines": ["tail"], "log": "/l"}
    died = CellResult("parallel=2,enable_mtp=1", {"parallel": 2, "enable_mtp": True}, "fail",
                      reason="llama-server killed by SIGABRT: ggml.c:3665: GGML_ASSERT(x) failed (during the checks)",
                      checks=[CheckResult("tiny_message", "fail", 0.2, "RemoteProtocolError"),
                              CheckResult("claude_style", "skip", detail="server died")],
                      start_s=0.5, requests_s=0.2, seconds=1.0, crash=crash, log="/l",
                      repro="llamactl run x --parallel 2 --mtp")
    skipped = CellResult("kv=turbo4/turbo4", {"kv_k": "turbo4"}, "skip", reason="kv_k=turbo4 is not supported")
    return Report("x", "/b/llama-server", "version: 1", [ok, died, skipped], wall_s=4.0, run_dir="/runs/1")


def test_junit_one_testcase_per_cell_and_check(tmp_path):
    r = sample_report()
    path = tmp_path / "j.xml"
    write_junit(r, path)
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 3 + 3 + 1 == int(suite.get("tests"))       # a server testcase + one per check, per cell
    assert suite.get("failures") == "2" and suite.get("skipped") == "2"
    server_fail = next(c for c in cases if c.get("classname") == "x.parallel=2,enable_mtp=1" and c.get("name") == "server")
    f = server_fail.find("failure")
    assert "GGML_ASSERT" in f.get("message") and "ensure_sched_mtp" in f.text and "repro: llamactl run x" in f.text
    assert next(c for c in cases if c.get("classname") == "x.kv=turbo4/turbo4").find("skipped") is not None
    ok_server = next(c for c in cases if c.get("classname") == "x.parallel=1" and c.get("name") == "server")
    assert list(ok_server) == []


def test_json_report_has_every_cell_and_timing_sum(tmp_path):
    r = sample_report()
    path = tmp_path / "r.json"
    write_json(r, path)
    d = json.loads(path.read_text())
    assert d["ok"] is False and d["counts"] == {"pass": 1, "fail": 1, "error": 0, "skip": 1, "xfail": 0, "xpass": 0,
                                         "interrupted": 0, "not_run": 0}
    assert d["sum_cell_start_and_requests_s"] == 2.3
    assert d["cells"][1]["crash"]["signal"] == "SIGABRT"
    assert d["cells"][0]["checks"][1]["data"]["tokens_per_s"] == 30.0


def test_summary_has_a_plain_closing_line():
    lines = summary_lines(sample_report())
    assert lines[-1] == ("validate: 1 passed, 1 failed, 0 errors, 1 skipped, 0 xfailed, 0 xpassed, "
                         "0 interrupted, 0 not run")
    assert "FAIL" in lines[0]


def test_report_ok_rules():
    r = sample_report()
    r.cells = [r.cells[0], r.cells[2]]
    assert r.ok                                   # skips do not fail a run that passed
    r.cells = [r.cells[1]]
    assert not r.ok
    r.cells = []
    assert not r.ok                               # nothing ran is not a pass
    assert junit_tree(r).getroot().find("testsuite").get("tests") == "0"
