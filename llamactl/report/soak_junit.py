"""A soak run as JUnit XML: one test suite per cell, one test case per verdict (FAIL -> failure)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from llamactl.report import junit_xml


def write(run: dict[str, Any], path: Path) -> None:
    """Write ``run`` (``soak --json``) to ``path``: failures carry the verdict's detail, WARN passes with it in
    ``system-out``, SKIP is ``skipped``; a cell whose server did not start is one ``error``."""
    suites = ET.Element("testsuites", name=f"llamactl soak {run.get('profile', '')}")
    for c in run.get("cells") or []:
        suite = ET.SubElement(suites, "testsuite", name=str(c.get("cell")))
        verdicts = c.get("verdicts") or []
        if not verdicts:
            case = ET.SubElement(suite, "testcase", classname=str(c.get("cell")), name="server")
            ET.SubElement(case, "error", message=str(c.get("reason", ""))[:500])
        for v in verdicts:
            case = ET.SubElement(suite, "testcase", classname=str(c.get("cell")), name=str(v.get("name")))
            st = v.get("status")
            if st == "fail":
                ET.SubElement(case, "failure", message=str(v.get("detail", ""))[:500])
            elif st == "skip":
                ET.SubElement(case, "skipped", message=str(v.get("detail", ""))[:500])
            elif st == "warn":
                ET.SubElement(case, "system-out").text = str(v.get("detail", ""))
        suite.set("tests", str(max(1, len(verdicts))))
        suite.set("failures", str(sum(1 for v in verdicts if v.get("status") == "fail")))
    junit_xml.write(suites, path)
