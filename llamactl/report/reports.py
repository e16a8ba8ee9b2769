"""Validation reports: a rich table for people, JSON and JUnit XML for machines."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from llamactl.judge.checks import FAIL, PASS, SKIP
from llamactl.judge.validate import Report

STYLE = {PASS: "green", FAIL: "bold red", SKIP: "yellow", "xfail": "yellow", "interrupted": "magenta", "running": "cyan"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table(report: Report, running: str | None = None) -> Table:
    t = Table(title=f"llamactl validate {report.profile}", title_justify="left")
    for col in ("cell", "status", "start s", "cell s", "tok/s", "drafts", "acceptance", "reason"):
        t.add_column(col, overflow="fold")
    for c in report.cells:
        spec = (c.spec or {}).get("delta") or {}
        drafts = spec.get("draft_tokens")
        t.add_row(escape(c.cell), f"[{STYLE.get(c.status, '')}]{c.status.upper()}[/]",
                  "-" if c.start_s is None else f"{c.start_s:.2f}", f"{c.seconds:.1f}",
                  "-" if c.tokens_per_s is None else f"{c.tokens_per_s:.1f}",
                  "-" if drafts is None else f"{drafts:.0f}", _pct(c.acceptance), escape(c.reason))
    if running:
        t.add_row(escape(running), f"[{STYLE['running']}]RUNNING[/]", "", "", "", "", "", "")
    return t


def summary_lines(report: Report) -> list[str]:
    """A verdict line, then the plain 'N passed, N failed, N skipped' line CI runners read."""
    n = report.counts()
    verdict = "[green]PASS[/]" if report.ok else "[bold red]FAIL[/]"
    first = (f"{verdict} {report.profile}: {len(report.cells)} cell(s) in {report.wall_s:.1f}s"
             + (f", {n['xfail']} known failure(s) as expected" if n["xfail"] else "")
             + (", interrupted" if report.interrupted else "") + f"  (logs: {report.run_dir})")
    return [first, f"validate: {n[PASS]} passed, {n[FAIL]} failed, {n[SKIP] + n['xfail']} skipped"]


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def junit_tree(report: Report) -> ET.ElementTree:
    """One testcase per (cell, check); cell-level failures (crash, start) as a `server` testcase."""
    suites = ET.Element("testsuites", name="llamactl validate")
    suite = ET.SubElement(suites, "testsuite", name=f"validate.{report.profile}")
    tests = failures = skipped = 0
    for c in report.cells:
        classname = f"{report.profile}.{c.cell}"
        check_failed = any(chk.status == FAIL for chk in c.checks)
        server_failure = c.reason if (c.crash is not None or (c.status == FAIL and not check_failed)) else None
        tc = ET.SubElement(suite, "testcase", classname=classname, name="server", time=f"{c.start_s or 0.0:.3f}")
        tests += 1
        if c.status in (SKIP, "interrupted", "xfail"):
            ET.SubElement(tc, "skipped", message=c.reason or c.status)
            skipped += 1
        elif server_failure:
            f = ET.SubElement(tc, "failure", message=server_failure)
            crash = c.crash or {}
            f.text = "\n".join([*crash.get("frames", []), *crash.get("last_lines", []), f"log: {c.log}", f"repro: {c.repro}"])
            failures += 1
        for chk in c.checks:
            tc = ET.SubElement(suite, "testcase", classname=classname, name=chk.name, time=f"{chk.seconds:.3f}")
            tests += 1
            if chk.status == FAIL:
                ET.SubElement(tc, "failure", message=chk.detail).text = f"repro: {c.repro}"
                failures += 1
            elif chk.status == SKIP:
                ET.SubElement(tc, "skipped", message=chk.detail)
                skipped += 1
    for el in (suite, suites):
        el.set("tests", str(tests))
        el.set("failures", str(failures))
        el.set("errors", "0")
        el.set("skipped", str(skipped))
    suite.set("time", f"{report.wall_s:.3f}")
    return ET.ElementTree(suites)


def write_junit(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = junit_tree(report)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
