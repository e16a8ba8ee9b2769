"""Validation reports: a rich table for people, JSON and JUnit XML for machines."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.table import Table
from rich.text import Text

from llamactl.core import jsonsafe
from llamactl.core.files import write_atomic
from llamactl.judge.status import SUMMARY_WORDS, Status
from llamactl.judge.validate import CellResult, Report
from llamactl.report import junit_xml

STYLE = {Status.PASS: "green", Status.WARN: "yellow", Status.FAIL: "bold red", Status.ERROR: "bold magenta", Status.SKIP: "yellow",
         Status.XFAIL: "yellow", Status.XPASS: "bold red", Status.INTERRUPTED: "magenta", Status.NOT_RUN: "dim",
         "running": "cyan"}
# JUnit element per status: failure, error, skipped, or nothing (passed)
JUNIT = {Status.FAIL: "failure", Status.XPASS: "failure", Status.ERROR: "error", Status.SKIP: "skipped",
         Status.NOT_RUN: "skipped", Status.XFAIL: "skipped", Status.INTERRUPTED: "skipped"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def server_cell(c: CellResult) -> str:
    """The server's own view in a few characters: ``slots x n_ctx per slot``, ``+mtp``, ``!`` with warnings."""
    s = c.server or {}
    if "n_slots" not in s and "n_ctx_slot" not in s:
        return "-"
    text = f"{s.get('n_slots', '?')}x{s.get('n_ctx_slot', '?')}"
    if s.get("speculative") is True:
        text += " mtp"
    return text + (" !" if c.warnings else "")


def table(report: Report, running: str | None = None) -> Table:
    t = Table(title=f"llamactl validate {report.profile}", title_justify="left")
    for col in ("cell", "status", "server", "backend", "start s", "cell s", "tok/s", "drafts", "acceptance", "reason"):
        t.add_column(col, overflow="fold")
    for c in report.cells:
        spec = (c.spec or {}).get("delta") or {}
        drafts = spec.get("draft_tokens")
        st = Status(c.status)
        label = Text(st.label, STYLE[st]) if c.cell != running else Text("RUNNING", STYLE["running"])
        t.add_row(c.cell, label, server_cell(c), (c.backend or {}).get("summary", "-"),
                  "-" if c.start_s is None else f"{c.start_s:.2f}", f"{c.seconds:.1f}",
                  "-" if c.tokens_per_s is None else f"{c.tokens_per_s:.1f}",
                  "-" if drafts is None else f"{drafts:.0f}", _pct(c.acceptance),
                  "" if c.cell == running else c.reason)
    return t


def closing_line(report: Report) -> str:
    """``validate: N passed, N failed, N errors, N skipped, ...``: every status counted, this order always."""
    n = report.counts()
    return "validate: " + ", ".join(f"{n[s.value]} {word}" for s, word in SUMMARY_WORDS)


def summary_lines(report: Report) -> list[Text | str]:
    """A verdict line (styled, user text as written), then the plain closing line CI runners read (it starts
    "validate: N passed, N failed")."""
    n = report.counts()
    verdict = Text("PASS", "green") if report.ok else Text("FAIL", "bold red")
    rest = (f" {report.profile}: {len(report.cells)} cell(s) in {report.wall_s:.1f}s"
             + (f", {n['xfail']} known failure(s) as expected" if n["xfail"] else "")
             + (", interrupted" if report.interrupted else "")
             + (f", stopped: {report.error}" if report.error else "")
             + (f"  (logs: {report.run_dir})" if report.run_dir else ""))
    return [Text.assemble(verdict, rest), closing_line(report)]


def write_json(report: Report, path: Path) -> None:
    write_atomic(path, jsonsafe.dumps(report.to_dict()) + "\n")


def _server_out(c: CellResult) -> str:
    lines = [f"warning: {w}" for w in c.warnings]
    if c.server:
        lines.append("server: " + json.dumps(c.server, default=str))
    return "\n".join(lines)


def junit_tree(report: Report) -> ET.ElementTree:
    """One testcase per (cell, check), plus a ``server`` testcase per cell for cell-level outcomes.

    FAIL/XPASS -> <failure>, ERROR -> <error>, SKIP/NOT_RUN/XFAIL/INTERRUPTED -> <skipped>; WARN passes
    with its detail in <system-out>.
    """
    suites = ET.Element("testsuites", name="llamactl validate")
    suite = ET.SubElement(suites, "testsuite", name=f"validate.{report.profile}")
    counts = {"tests": 0, "failure": 0, "error": 0, "skipped": 0}

    def case(classname: str, name: str, secs: float, status: Status | None, message: str, text: str = "") -> ET.Element:
        tc = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{secs:.3f}")
        counts["tests"] += 1
        kind = JUNIT.get(status) if status is not None else None
        if kind and status is not None:   # kind is only set for a status
            el = ET.SubElement(tc, kind, message=message or status.value)
            if text:
                el.text = text
            counts[kind] += 1
        return tc

    for c in report.cells:
        classname = f"{report.profile}.{c.cell}"
        st = Status(c.status)
        by_checks = any(chk.status == st for chk in c.checks) and st in (Status.FAIL, Status.ERROR)
        cell_level = st if (c.crash is not None or c.hang is not None or not by_checks) and st != Status.PASS else None
        if st == Status.XFAIL:
            cell_level = st
        crash = c.crash or {}
        text = "\n".join([*crash.get("frames", []), *(c.hang or {}).get("frames", []), *crash.get("last_lines", []),
                          *([f"log: {c.log}"] if c.log else []), f"repro: {c.repro}"])
        tc = case(classname, "server", c.start_s or 0.0, cell_level, c.reason, text if cell_level else "")
        out = _server_out(c)
        if out:
            ET.SubElement(tc, "system-out").text = out
        for chk in c.checks:
            chk_st = Status(chk.status)
            tc = case(classname, chk.name, chk.seconds, chk_st if chk_st not in (Status.PASS, Status.WARN) else None,
                      chk.detail, f"repro: {c.repro}" if chk_st in (Status.FAIL, Status.ERROR) else "")
            if chk_st == Status.WARN:     # JUnit has no warning: a passed testcase that says so
                ET.SubElement(tc, "system-out").text = f"WARN: {chk.detail}"
    if report.error:
        case(f"{report.profile}", "run", report.wall_s, Status.ERROR, report.error)
    for el in (suite, suites):
        el.set("tests", str(counts["tests"]))
        el.set("failures", str(counts["failure"]))
        el.set("errors", str(counts["error"]))
        el.set("skipped", str(counts["skipped"]))
    suite.set("time", f"{report.wall_s:.3f}")
    return ET.ElementTree(suites)


def write_junit(report: Report, path: Path) -> None:
    junit_xml.write(junit_tree(report), path)
