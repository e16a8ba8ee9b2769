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
    assert d["ok"] is False and d["counts"] == {"pass": 1, "warn": 0, "fail": 1, "error": 0, "skip": 1, "xfail": 0, "xpass": 0,
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


def test_every_status_in_junit_json_and_the_closing_line(tmp_path):
    from llamactl.judge.status import Status
    from llamactl.report.reports import closing_line
    cells = [
        CellResult("a", {}, Status.ERROR, reason="server_view: RuntimeError: boom",
                   checks=[CheckResult("server_view", Status.ERROR, 0.1, "RuntimeError: boom")]),
        CellResult("b", {}, Status.ERROR, reason="model /x.gguf not found"),          # set-up error: no checks
        CellResult("c", {}, Status.XPASS, reason="expected the known failure 'X', but the cell passed"),
        CellResult("d", {}, Status.INTERRUPTED, reason="interrupted (Ctrl-C or SIGTERM)"),
        CellResult("e", {}, Status.NOT_RUN, reason="not reached"),
        CellResult("f", {}, Status.PASS, warnings=["ctx=128 rendered (64 per slot), the server runs 256 per slot"],
                   server={"n_slots": 2, "n_ctx_slot": 256}),
    ]
    r = Report("x", "/b", "v", cells, run_dir="/r", error="internal error: KeyError: 'x'")
    root = junit_tree(r).getroot()
    suite = root.find("testsuite")
    server = {c.get("classname").split(".", 1)[1]: c for c in suite.findall("testcase") if c.get("name") == "server"}
    assert server["a"].find("error") is None                      # the check carries the error
    assert next(c for c in suite if c.get("name") == "server_view").find("error").get("message") == "RuntimeError: boom"
    assert server["b"].find("error").get("message") == "model /x.gguf not found"
    assert server["c"].find("failure") is not None
    assert server["d"].find("skipped") is not None and server["e"].find("skipped") is not None
    assert "warning: ctx=128" in server["f"].find("system-out").text and '"n_slots": 2' in server["f"].find("system-out").text
    run_case = next(c for c in suite if c.get("name") == "run")
    assert run_case.find("error").get("message") == "internal error: KeyError: 'x'"
    assert suite.get("errors") == "3" and suite.get("failures") == "1" and suite.get("skipped") == "2"
    assert closing_line(r) == ("validate: 1 passed, 0 failed, 2 errors, 0 skipped, 0 xfailed, 1 xpassed, "
                               "1 interrupted, 1 not run")
    assert not r.ok
    path = tmp_path / "r.json"
    write_json(r, path)
    d = json.loads(path.read_text())
    assert [c["status"] for c in d["cells"]] == ["error", "error", "xpass", "interrupted", "not_run", "pass"]
    assert d["error"] == "internal error: KeyError: 'x'" and d["cells"][5]["server"]["n_ctx_slot"] == 256


def test_ok_needs_a_pass_and_no_bad_status():
    from llamactl.judge.status import Status
    for bad in (Status.FAIL, Status.ERROR, Status.XPASS, Status.INTERRUPTED, Status.NOT_RUN):
        r = Report("x", "/b", "v", [CellResult("a", {}, Status.PASS), CellResult("b", {}, bad)])
        assert not r.ok, bad
    r = Report("x", "/b", "v", [CellResult("a", {}, Status.PASS), CellResult("b", {}, Status.XFAIL),
                                 CellResult("c", {}, Status.SKIP)])
    assert r.ok
    r.error = "build failed"
    assert not r.ok


def test_backend_truth_in_table_and_json(tmp_path):
    from rich.console import Console
    from llamactl.report.reports import table
    r = sample_report()
    r.cells[0].backend = {"backend": "vulkan", "summary": "vulkan 5/5, draft vulkan 5/5",
                          "models": [{"role": "main", "offloaded": 5, "layers": 5}]}
    con = Console(width=250, record=True)
    con.print(table(r))
    text = con.export_text()
    assert "backend" in text and "vulkan 5/5, draft vulkan 5/5" in text
    path = tmp_path / "r.json"
    write_json(r, path)
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["backend"]["models"][0]["offloaded"] == 5 and cells[1]["backend"] is None


def test_a_warn_check_passes_in_junit_and_says_why(tmp_path):
    warned = CellResult("parallel=2", {"parallel": 2}, "pass", checks=[
        CheckResult("slot_isolation", "warn", 0.3, "numerics: short-1 differs from token 0 (a near tie, under 0.05)")],
        warnings=["slot_isolation: numerics: short-1 differs from token 0"])
    r = Report("x", "/b", "v", [warned], wall_s=1.0)
    path = tmp_path / "j.xml"
    write_junit(r, path)
    suite = ET.parse(path).getroot().find("testsuite")
    case = next(c for c in suite.findall("testcase") if c.get("name") == "slot_isolation")
    assert case.find("failure") is None and case.find("skipped") is None and suite.get("failures") == "0"
    assert "numerics" in case.find("system-out").text
    assert r.ok and r.counts()["pass"] == 1


def test_junit_parses_with_control_characters_and_colours_in_any_text(tmp_path):
    """A check's detail can quote the model's answer (any byte), a crash's tail can be coloured (gdb):
    XML 1.0 forbids those characters even escaped, so one of them made the whole file unreadable."""
    from llamactl.report import soak_junit

    r = sample_report()
    died = r.cells[1]
    died.crash = {**died.crash, "last_lines": ["\x1b[1;34m#3\x1b[m  0x1 in \x1b[33mggml_abort\x1b[m ()", "bell\x07 nul\x00"]}
    died.checks[0].detail = "answer differs at token 3: 'a\x1b' vs 'a\x0c\udc80'"
    died.checks[0].status = "fail"
    path = tmp_path / "j.xml"
    write_junit(r, path)
    root = ET.parse(path).getroot()     # parses
    text = ET.tostring(root, encoding="unicode")
    assert "#3  0x1 in ggml_abort ()" in text and "bell\\x07 nul\\x00" in text     # colours dropped, the rest shown
    fail = next(c for c in root.iter("testcase") if c.get("name") == "tiny_message" and c.find("failure") is not None)
    fail = fail.find("failure")
    assert fail.get("message") == "answer differs at token 3: 'a\\x1b' vs 'a\\x0c\\udc80'"
    soak = tmp_path / "s.xml"
    soak_junit.write({"profile": "p", "cells": [{"cell": "c\x01", "verdicts": [
        {"name": "answers", "status": "fail", "detail": "got '\x1b[31mred\x1b[0m\x02'"}]}]}, soak)
    case = ET.parse(soak).getroot().find("testsuite/testcase")
    assert case.get("classname") == "c\\x01" and case.find("failure").get("message") == "got 'red\\x02'"
