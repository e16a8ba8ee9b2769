"""HTML and Markdown reports rendered from run fixtures (validate with every status, bench with a failed arm)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llamactl.core.errors import LlamactlError
from llamactl.report import html, markdown, runs, view
from llamactl.report.history import History

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "runs"


class Page(HTMLParser):
    """Collects tags, resource-bearing attributes and text; fails on unbalanced structure tags."""

    VOID = {"meta", "br", "link", "img", "input", "hr", "rect", "line", "circle", "polyline"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.refs: list[str] = []
        self.tags: dict[str, int] = {}
        self.text: list[str] = []
        self.rows: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for k in ("src", "href", "xlink:href", "action", "data", "srcset", "poster"):
            if a.get(k):
                self.refs.append(a[k])
        if a.get("style"):
            self.refs += re.findall(r"url\(([^)]*)\)", a["style"])
        if tag == "tr" and "data-cell" in a:
            self.rows.append(a)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def load(*names: str) -> list[dict]:
    return [r for n in names for r in runs.load(FIX / n)]


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    assert p.stack == [], p.stack
    return p


def test_html_is_self_contained_and_has_every_cell(tmp_path):
    run_list = load("validate.json", "bench.json")
    out = tmp_path / "r.html"
    html.write(view.report_view(run_list, History(tmp_path / "h.sqlite")), out)
    text = out.read_text()
    page = parse(text)
    assert page.refs and all(r.startswith("#cell-") for r in page.refs)   # in-page links only: nothing to fetch
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", text)
    assert "<script" not in text.replace("&lt;script", "")          # the hostile reason is escaped, no JS of ours
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    validate_ids = [c["cell"] for c in run_list[0]["cells"]]
    matrix = [r["data-cell"] for r in page.rows]
    assert [r for r in matrix if r in validate_ids][:len(validate_ids)] == validate_ids
    assert {r["data-status"] for r in page.rows if "data-status" in r} == {"pass", "fail", "skip", "error", "xpass", "not_run", "quarantined"}
    assert 'class="badge st-unknown">QUARANTINED' in text              # an unknown status keeps its name
    assert "ggml_reshape_3d" in text and "llama_context::ensure_sched_mtp()" in text and "GGML_ASSERT(x) failed" in text
    assert "llamactl run x --parallel 2 --mtp" in text
    assert "new_metric" in text and "exception" in text                # unknown per-cell fields are shown
    assert page.tags.get("svg", 0) >= 1                             # the bench chart, inline
    assert "unknown model" in text                                  # the failed bench arm says why


def test_html_shows_log_tail_from_the_log_file(tmp_path):
    run = json.loads((FIX / "validate.json").read_text())
    log = tmp_path / "cell.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "GGML_ASSERT in the file\n")
    run["cells"][1]["log"] = str(log)
    text = html.render(view.report_view(runs.split_runs(run)))
    assert "GGML_ASSERT in the file" in text and "line 99" in text and "line 10\n" not in text   # only the tail


def test_markdown_matrix_failures_and_bench_verdicts():
    md = markdown.render(view.report_view(load("validate.json", "bench.json")))
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = table[0]
    assert header.startswith("| cell | status |")
    for c in json.loads((FIX / "validate.json").read_text())["cells"]:
        assert any(ln.startswith(f"| {c['cell'].replace('|', chr(92) + '|').replace('<', '&lt;')} |") for ln in table), c["cell"]
    assert all(ln.count(" | ") == header.count(" | ") for ln in table[:8])   # escaped pipes keep the columns
    failures = md.split("### Failures", 1)[1]
    assert "**parallel=2,enable_mtp=1**: FAIL" in failures and "- repro: `llamactl run x --parallel 2 --mtp`" in failures
    assert "GGML_ASSERT(x) failed" in failures and "#3 ggml_reshape_3d ()" in failures
    assert "**parallel=4**: ERROR" in failures and "XPASS" in failures and "QUARANTINED" in failures
    assert "parallel=1**" not in failures and "NOT_RUN:" not in failures and "kv=turbo4/turbo4**" not in failures
    assert "| echo | mtp-on | 157.6 |" in md and "1.60x" in md
    assert "echo: MTP pays off here: 1.60x decode speed at 100% draft acceptance" in md


def test_bench_gate_and_ab_sections_render():
    run = json.loads((FIX / "bench.json").read_text())
    from llamactl.report import gate
    th = gate.Thresholds()
    slower = json.loads(json.dumps(run))
    for s in slower["cells"][0]["variants"]["mtp-on"]["samples"]:
        s["server_decode_tps"] *= 0.5
    run_g = dict(slower, gate=view.gate_summary(gate.compare_runs(slower, gate.file_lookup(run, "file base.json"), th),
                                                "file base.json", th))
    v = view.report_view(runs.split_runs(run_g))
    md, page = markdown.render(v), html.render(v)
    assert "### Baseline gate: ❌ REGRESSION" in md and "| echo | mtp-on | decode tok/s | ❌ REGRESSION | 0.50x |" in md
    assert "gate: REGRESSION" in page and "st-regression" in page


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ('{"cells": 3}', "no 'cells' list"),
    ('[1, 2]', "run 1: not a llamactl run"),
    ('{"cells": ["x"]}', "every entry of 'cells' must be an object"),
    ('{"runs": []}', "no runs in the file"),
])
def test_bad_run_files_are_one_line_errors(tmp_path, content, message):
    p = tmp_path / "r.json"
    p.write_text(content)
    with pytest.raises(LlamactlError) as e:
        runs.load(p)
    assert message in e.value.message and "\n" not in e.value.message


def test_cli_report_markdown_on_stdout_and_errors(tmp_path):
    env_args = ["--history", str(tmp_path / "h.sqlite")]
    cp = subprocess.run([sys.executable, "-m", "llamactl", "report", str(FIX / "validate.json"), *env_args],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("## llamactl validate `x`") and "| parallel=1 | ✅ PASS |" in cp.stdout
    cp = subprocess.run([sys.executable, "-m", "llamactl", "report", str(tmp_path / "missing.json"), *env_args],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2 and "Traceback" not in cp.stderr and "run file" in cp.stderr and "not found" in cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
    cp = subprocess.run([sys.executable, "-m", "llamactl", "report", "7", *env_args], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2 and "no run 7 in the history store" in cp.stderr and "Traceback" not in cp.stderr


def test_a_report_object_with_status_enums_renders_and_records(tmp_path):
    """What `validate` hands over in process: the judge's Report, statuses as the Status enum."""
    from llamactl.cli.report_cmd import after_run
    from llamactl.judge.status import Status
    from tests.unit.test_reports import sample_report

    rep = sample_report()
    for c in rep.cells:
        c.status = Status(c.status)
        for k in c.checks:
            k.status = Status(k.status)
    rep.error = "build failed: ninja: error"
    out = after_run(rep.to_dict(), tmp_path / "h.sqlite", tmp_path / "r.html", tmp_path / "r.md")
    page, md = (tmp_path / "r.html").read_text(), (tmp_path / "r.md").read_text()
    assert 'data-status="pass"' in page and 'data-status="fail"' in page and "Status." not in page
    assert "| parallel=1 | ✅ PASS |" in md and "the run stopped: build failed: ninja: error" in md
    assert "The run stopped: build failed" in page
    assert [c.status for c in History(tmp_path / "h.sqlite").cells()] == ["pass", "fail", "skip"]
    assert out["history"]["id"] == 1
