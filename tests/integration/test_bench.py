"""`llamactl bench` on real servers: client timing agrees with the server's, MTP numbers are real."""

from __future__ import annotations

import json
import subprocess
import sys

from llamactl.serve import launcher
from llamactl.serve import profiles
from llamactl.judge.bench import bench_cell
from llamactl.judge.matrix import Cell


def test_client_decode_rate_agrees_with_server_timings(built, tmp_path):
    base = profiles.resolve("default", environ={})
    binary = launcher.ensure_binary(base.profile)
    res = bench_cell(base, Cell(()), binary, tmp_path, ["Tell me about the sea."], n_predict=48, repeat=2)
    off = res.variants["mtp-off"]
    assert off.error is None and len(off.samples) == 2 and "mtp-on" not in res.variants
    for s in off.samples:
        assert s.tokens == 48                       # ignore_eos: always the full length
        # (n-1) intervals seen by the client vs n by the server: one late chunk on a busy 2-core runner is ~5%
        assert abs(s.client_decode_tps - s.server_decode_tps) / s.server_decode_tps < 0.10
    assert off.peak_rss_mb and off.peak_rss_mb > 100    # the 241 MB model is resident
    assert off.aggregate_tps and off.aggregate_tps[0] > 0


def test_cli_bench_mtp_on_off_json_and_png(built, clean_env, tmp_path):
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    cp = subprocess.run([sys.executable, "-m", "llamactl", "bench", "tiny-gemma4-mtp", "--cell", "name=ignored"],
                        capture_output=True, text=True, env=clean_env, timeout=120)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr
    cp = subprocess.run([sys.executable, "-m", "llamactl", "bench", "tiny-gemma4-mtp", "--no-matrix", "--repeat", "2",
                         "--n-predict", "32", "--json-out", str(js), "--plot", str(png)],
                        capture_output=True, text=True, env=clean_env, timeout=600)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    data = json.loads(js.read_text())
    cell = data["cells"][0]
    on, off = cell["variants"]["mtp-on"], cell["variants"]["mtp-off"]
    assert len(on["samples"]) == len(off["samples"]) == 2 * 3
    assert on["summary"]["acceptance"] >= 0.9 and on["summary"]["draft_tokens"] > 0
    assert off["summary"]["draft_tokens"] == 0
    assert cell["speedup"] is not None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "MTP" in cp.stdout and "acceptance" in cp.stdout
