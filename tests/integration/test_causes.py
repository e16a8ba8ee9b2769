"""Every early exit and every unloadable model names its cause, against the real llama-server.

Split models are made with the real ``llama-gguf-split`` of the same build (issue 16 items 2 and 9).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llamactl.models import catalog
from llamactl.serve.server import ServerDied, ServerProcess, free_port
from tests.conftest import llama_server_pids

LLAMACTL = [sys.executable, "-m", "llamactl"]


@pytest.fixture(scope="session")
def gemma3(built) -> Path:
    return catalog.resolve("gemma3-270m")


@pytest.fixture(scope="session")
def split_g3(built, gemma3, tmp_path_factory) -> list[Path]:
    """gemma3-270m split by the build's own llama-gguf-split at 100 tensors per shard: 3 shards."""
    tool = built.manifest["binaries"].get("llama-gguf-split")
    assert tool, f"the build has no llama-gguf-split: {built.manifest['binaries']}"
    out = tmp_path_factory.mktemp("split")
    cp = subprocess.run([tool, "--split", "--split-max-tensors", "100", str(gemma3), str(out / "g3")],
                        capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    parts = sorted(out.glob("g3-*-of-*.gguf"))
    assert [p.name for p in parts] == [f"g3-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    return parts


def llamactl(args: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*LLAMACTL, *args], capture_output=True, text=True, env=env, timeout=timeout)


def gguf_with(path: Path, arch: str) -> Path:
    """A well-formed GGUF header the loader still rejects (unknown architecture / missing keys)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("x")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------ item 2: the root cause of an early exit

@pytest.mark.parametrize("log_flags", [[], ["--no-log-prefix", "--no-log-timestamps"]], ids=["prefixed", "bare"])
def test_real_load_failure_names_the_first_error(built, gemma3, tmp_path, log_flags):
    """Bypassing the pre-launch rule, the real server's own reason is the crash summary, not the cascade."""
    port = free_port()
    argv = [str(built.binary), "-m", str(gemma3), "-c", "512", "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "off",
            "--host", "127.0.0.1", "--port", str(port), *log_flags]
    sp = ServerProcess(argv, "127.0.0.1", port, tmp_path / "server.log")
    sp.start()
    try:
        with pytest.raises(ServerDied) as exc:
            sp.wait_healthy(300)
    finally:
        sp.stop()
    crash = exc.value.crash
    assert crash.returncode == 1
    assert crash.summary() == "llama-server exit code 1: llama_init_from_model: quantized V cache requires flash_attn to be enabled"


def test_loader_rejection_in_run_names_the_cause(built, clean_env, tmp_path):
    bad = gguf_with(tmp_path / "foobar.gguf", "foobar")
    cp = llamactl(["run", "default", "--model", str(bad), "-q"], clean_env, timeout=300)
    assert cp.returncode == 5, cp.stderr
    assert "llama-server exit code 1: llama_model_load: error loading model: unknown model architecture: 'foobar'" in cp.stderr
    assert "Traceback" not in cp.stderr


def test_loader_rejection_in_validate_names_the_cause(built, clean_env, tmp_path):
    bad = gguf_with(tmp_path / "nokeys.gguf", "llama")
    report = tmp_path / "r.json"
    cp = llamactl(["validate", "default", "--cell", "parallel=1", "--cell", "kv=f16/f16", "--set", f"model={bad}",
                   "--json-out", str(report)], clean_env)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr
    cell = json.loads(report.read_text())["cells"][0]
    assert cell["status"] == "fail"
    assert cell["reason"] == ("llama-server exit code 1: llama_model_load: error loading model: error loading model "
                              "hyperparameters: key not found in model: llama.context_length (before /health)")


def test_quantized_v_with_fa_off_refused_before_launch(built, clean_env, tmp_path):
    before = llama_server_pids()
    report = tmp_path / "r.json"
    cp = llamactl(["validate", "default", "--cell", "parallel=1", "--cell", "kv=q8_0/q8_0", "--set", 'flash_attn="off"',
                   "--json-out", str(report)], clean_env)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr
    cell = json.loads(report.read_text())["cells"][0]
    assert cell["status"] in ("fail", "error") and cell["argv"] == [] and cell["log"] is None
    assert "kv_v=q8_0 (a quantized V cache) needs flash attention, but flash_attn=off" in cell["reason"]
    assert "set flash_attn: on" in cell["reason"]
    cp = llamactl(["run", "default", "--kv-k", "q8_0", "--kv-v", "q8_0", "--set", 'flash_attn="off"'], clean_env)
    assert cp.returncode == 2 and cp.stderr.startswith("error: kv_v=q8_0") and len(cp.stderr.strip().splitlines()) == 1
    assert llama_server_pids() - before == set()   # none of ours left (others may have ended meanwhile)


# ------------------------------------------------------------ item 9 + issue 9 inputs: model files before launch

@pytest.mark.parametrize("kind,expect", [
    ("not-gguf", "is not a GGUF file (its first bytes are b'hell', not b'GGUF')"),
    ("truncated", "is truncated: it ends at byte 5000000, inside the key-value metadata"),
    ("truncated-data", "is truncated: its tensor data needs"),
    ("directory", "is a directory, not a GGUF file"),
    ("missing", "does not exist"),
])
def test_bad_model_files_refused_before_launch(built, gemma3, clean_env, tmp_path, kind, expect):
    p = tmp_path / f"{kind}.gguf"
    if kind == "not-gguf":
        p.write_text("hello, this is not a model\n")
    elif kind == "truncated":
        with open(gemma3, "rb") as f:
            p.write_bytes(f.read(5_000_000))
    elif kind == "truncated-data":
        with open(gemma3, "rb") as f, open(p, "wb") as g:
            g.write(f.read(gemma3.stat().st_size - 1_000_000))
    elif kind == "directory":
        p.mkdir()
    before = llama_server_pids()
    cp = llamactl(["run", "default", "--model", str(p), "-q"], clean_env, timeout=300)
    assert cp.returncode == 2   # BAD_INPUT: nothing was started
    assert expect in cp.stderr and str(p) in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    report = tmp_path / "r.json"
    cp = llamactl(["validate", "default", "--cell", "parallel=1", "--cell", "kv=f16/f16", "--set", f"model={p}",
                   "--json-out", str(report)], clean_env)
    assert cp.returncode != 0 and "Traceback" not in cp.stderr
    cell = json.loads(report.read_text())["cells"][0]
    assert cell["status"] in ("fail", "error") and expect in cell["reason"] and cell["log"] is None
    assert llama_server_pids() - before == set()   # none of ours left (others may have ended meanwhile)


# ------------------------------------------------------------ item 9: split models

def test_models_info_covers_every_shard(split_g3, clean_env):
    for shard in (split_g3[0], split_g3[2]):
        cp = llamactl(["models", "info", str(shard), "--json"], clean_env, timeout=120)
        assert cp.returncode == 0, cp.stderr
        d = json.loads(cp.stdout)
        assert d["split"] == 3 and d["tensors"] == 236 and d["parameters"] == 268098176
        assert [s["path"] for s in d["shards"]] == [str(p) for p in split_g3]
        assert sum(s["tensors"] for s in d["shards"]) == 236
        assert sum(s["bytes"] for s in d["shards"]) == sum(p.stat().st_size for p in split_g3)


def test_later_shard_names_the_first(split_g3, clean_env):
    before = llama_server_pids()
    cp = llamactl(["run", "default", "--model", str(split_g3[2]), "-q"], clean_env, timeout=300)
    assert cp.returncode == 2
    assert f"is shard 3 of 3 of a split model; llama-server loads a split model from its first shard: model: {split_g3[0]}" \
        in cp.stderr
    assert llama_server_pids() - before == set()   # none of ours left (others may have ended meanwhile)


def test_missing_shards_are_named(split_g3, clean_env, tmp_path):
    for p in (split_g3[0], split_g3[2]):     # shard 2 left out; links keep the shard names
        (tmp_path / p.name).symlink_to(p)
    report = tmp_path / "r.json"
    cp = llamactl(["validate", "default", "--cell", "parallel=1", "--cell", "kv=f16/f16",
                   "--set", f"model={tmp_path / split_g3[0].name}", "--json-out", str(report)], clean_env)
    assert cp.returncode != 0
    cell = json.loads(report.read_text())["cells"][0]
    assert cell["status"] in ("fail", "error")
    assert f"missing in {tmp_path}: g3-00002-of-00003.gguf" in cell["reason"]


def test_split_model_passes_validation(split_g3, clean_env, tmp_path):
    report = tmp_path / "r.json"
    cp = llamactl(["validate", "default", "--cell", "parallel=1", "--cell", "kv=f16/f16",
                   "--set", f"model={split_g3[0]}", "--json-out", str(report)], clean_env)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cell = json.loads(report.read_text())["cells"][0]
    assert cell["status"] == "pass"
    assert cell["argv"][cell["argv"].index("--model") + 1] == str(split_g3[0])
