"""A real browser (Debian's chromium, headless) loads a report written by `llamactl report`.

CI installs chromium in `.ci/run` when it runs as root; elsewhere this test says why it is skipped.
The screenshot is kept next to the report (reports/report-browser.png under pytest's tmp dir).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "runs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium; .ci/run installs it as root)")
def test_browser_renders_matrix_and_failing_cell_frames(tmp_path, clean_env):
    page = tmp_path / "report.html"
    cp = subprocess.run([sys.executable, "-m", "llamactl", "report", str(FIX / "validate.json"), str(FIX / "bench.json"),
                         "--html", str(page), "--history", str(tmp_path / "h.sqlite")],
                        capture_output=True, text=True, env=clean_env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # the DOM the browser built: the matrix rows with their statuses, and the crashed cell's assert line and frames
    assert html.count('<tr class="row-problem"') >= 4
    for cell, status in (("parallel=1", "PASS"), ("parallel=2,enable_mtp=1", "FAIL"), ("kv=turbo4/turbo4", "SKIP")):
        assert f'data-cell="{cell}"' in html and f">{status}</span>" in html
    assert 'class="frames">#3 ggml_reshape_3d ()\n#6 llama_context::ensure_sched_mtp() ()</pre>' in html
    assert '<pre class="assert">ggml.c:3665: GGML_ASSERT(x) failed</pre>' in html
    assert "<svg" in html and "<rect" in html
    shot = tmp_path / "report-browser.png"
    cp = _chromium("--window-size=1300,1400", f"--screenshot={shot}", page.as_uri())
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", cp.stderr[-2000:]
    image = pytest.importorskip("PIL.Image")
    with image.open(shot) as im:
        rgb = im.convert("RGB")
        colours = {c for _, c in rgb.getcolors(maxcolors=1 << 22)}
    assert (0xC6, 0x28, 0x28) in colours            # the FAIL badge is painted red
    assert (0x2E, 0x8B, 0x3E) in colours            # the PASS badge green
