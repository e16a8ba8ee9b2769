"""`llamactl quality` on the embedded model (default profile, Gemma 3 270M): llama-perplexity built from the
same source and patches as llama-server, the table, the gates, and the decode probe catching a bug that
batched perplexity cannot see (tests/fixtures/bugs/kv-decode-v.patch: single-token quantized-V writes).

Small on purpose (--ctx 128 --chunks 4: 512 tokens read, 252 scored): about a minute on 2 cores, the
reference logits (126 MiB) cached after the first run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_right_answers import bug_binary

SMALL = ["--ctx", "128", "--chunks", "4", "--decode-prompts", "4"]


def quality(clean_env: dict, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp / "q.json"
    cp = subprocess.run([sys.executable, "-m", "llamactl", "quality", "default", "--no-env", *SMALL, "--json-out", str(out),
                         "--history", str(tmp / "history.sqlite"), *args],
                        capture_output=True, text=True, env={**clean_env, "COLUMNS": "220"}, timeout=900,
                        stdin=subprocess.DEVNULL)
    sys.stderr.write(cp.stderr[-3000:])
    return cp, (json.loads(out.read_text()) if out.exists() else {})


def cells(data: dict) -> dict[str, dict]:
    return {c["cell"]: c for c in data["cells"]}


def test_kv_types_against_f16_and_the_kl_gate(built, clean_env, tmp_path):
    cp, data = quality(clean_env, tmp_path, "--kv", "q8_0/q8_0", "--kv", "q4_0/q4_0", "--fail-above-kl", "0.05",
                       "--markdown", str(tmp_path / "q.md"), "--plot", str(tmp_path / "kl.png"))
    assert cp.returncode == 6, cp.stderr[-2000:]           # q4_0 is over the KL limit: a regression
    for col in ("PPL ± err", "ΔPPL %", "mean KL", "median KL", "p99 KL", "max KL", "same top %", "RMS Δp %",
                "decode top-1", "decode KL"):
        assert col in cp.stdout
    c = cells(data)
    q8, q4 = c["q8_0/q8_0"]["kld"], c["q4_0/q4_0"]["kld"]
    assert 0 < q8["kld_mean"] < 0.02 and q8["same_top"] > 88
    assert q4["kld_mean"] > 0.05 > q8["kld_mean"] and q4["same_top"] < q8["same_top"]
    assert 0 < q8["kld_median"] <= q8["kld_p99"] <= q8["kld_max"] and abs(q8["delta_ppl_pct"]) < 5
    assert c["q8_0/q8_0"]["decode"]["top1_agreement"] > 0.9 and c["q8_0/q8_0"]["decode"]["mean_kl"] < 0.05
    bad = [(v["cell"], v["metric"]) for v in data["gate"]["verdicts"] if v["verdict"] == "regression"]
    assert ("q4_0/q4_0", "mean KL") in bad and not [b for b in bad if b[0] == "q8_0/q8_0"]
    ref = data["reference"]
    assert ref["ppl"] > 1 and ref["logits_bytes"] > 100 * 2**20 and Path(ref["logits"]).is_file()
    assert data["build"]["key"] == json.loads((Path(data["binary"]).parents[2] / "manifest.json").read_text())["key"]
    assert (tmp_path / "kl.png").stat().st_size > 5000 and "| q4_0/q4_0 |" in (tmp_path / "q.md").read_text()

    again, data2 = quality(clean_env, tmp_path, "--kv", "q8_0/q8_0", "--fail-above-kl", "0.05", "--no-decode-probe")
    assert again.returncode == 0, again.stderr[-2000:]
    assert data2["reference"]["cached"] and data2["reference"]["seconds"] == 0
    assert cells(data2)["q8_0/q8_0"]["kld"]["kld_mean"] == q8["kld_mean"]        # same build, text and settings
    hist = subprocess.run([sys.executable, "-m", "llamactl", "history", "default", "--kind", "quality", "--json",
                           "--history", str(tmp_path / "history.sqlite")], capture_output=True, text=True, env=clean_env)
    assert [r["kind"] for r in json.loads(hist.stdout)] == ["quality", "quality"]


def test_the_decode_probe_catches_a_bug_batched_perplexity_cannot_see(built, clean_env, tmp_path):
    binary = bug_binary("kv-decode-v", tmp_path)
    cp, data = quality(clean_env, tmp_path, "--kv", "q8_0/q8_0", "--set", f"server_binary={binary}",
                       "--fail-above-kl", "0.05")
    assert cp.returncode == 6, cp.stderr[-2000:]
    row = cells(data)["q8_0/q8_0"]
    assert row["kld"]["kld_mean"] < 0.02                   # llama-perplexity (batched) sees nothing wrong
    assert row["decode"]["mean_kl"] > 0.05                 # single-token decode does
    bad = [v["metric"] for v in data["gate"]["verdicts"] if v["verdict"] == "regression"]
    assert bad == ["decode KL"], data["gate"]


@pytest.mark.parametrize("args, why", [(["--kv", "turbo4/turbo4", "--no-decode-probe"], "turbo4")])
def test_a_kv_type_the_build_lacks_is_a_failed_row(built, clean_env, tmp_path, args, why):
    cp, data = quality(clean_env, tmp_path, *args, "--fail-above-kl", "1")
    assert cp.returncode == 6
    row = cells(data)["turbo4/turbo4"]
    assert row["status"] == "error" and why in row["error"]
