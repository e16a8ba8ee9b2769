"""RPC workers against the real build: placement evidence, stop order, a worker dying, orphans, pairing,
and a matrix split in two shards run concurrently and merged."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from llamactl.judge.matrix import Cell
from llamactl.judge.status import Status
from llamactl.judge.validate import run_matrix
from llamactl.serve import profiles, rpc
from llamactl.serve.server import pid_alive
from tests.integration.test_run import LLAMACTL, read_ready, spawn, wait_gone

pytestmark = pytest.mark.integration
RPC_CELL = "parallel=2,enable_mtp=1,rpc=2"
RPC_SETS = ["--parallel", "2", "--set", "rpc.local_workers=2", "--set", "n_gpu_layers=99"]
WORKER_NAMES = {"ggml-rpc-server", "rpc-server"}


def workers_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True) if c.name() in WORKER_NAMES]
    except psutil.Error:
        return []


@pytest.mark.timeout(600)
def test_rpc_cell_passes_with_placement_and_acceptance(built, clean_env, tmp_path):
    js = tmp_path / "v.json"
    cp = subprocess.run([*LLAMACTL, "validate", "tiny-gemma4-mtp", "--cell", RPC_CELL, "--cell", "parallel=2,enable_mtp=1,kv=f16/f16",
                         "--json-out", str(js)], capture_output=True, text=True, env=clean_env, timeout=580)
    assert js.exists(), cp.stdout + cp.stderr
    data = json.loads(js.read_text())
    cells = {c["cell"]: c for c in data["cells"]}
    rpc_cell, plain = cells[RPC_CELL], cells["parallel=2,enable_mtp=1,kv=f16/f16"]
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert rpc_cell["acceptance"] == plain["acceptance"]          # same drafts and acceptance as without RPC
    assert rpc_cell["spec"]["delta"]["draft_tokens"] > 0 and plain["spec"]["delta"]["draft_tokens"] > 0
    assert rpc_cell["status"] == "pass", rpc_cell["reason"]
    place = next(c for c in rpc_cell["checks"] if c["name"] == "rpc_placement")
    assert place["status"] == "pass" and len(place["data"]["model_mib"]) == 2, place
    assert rpc_cell["acceptance"] is not None and rpc_cell["acceptance"] >= 0.9
    assert any("--rpc" == a for a in rpc_cell["argv"])
    log = Path(rpc_cell["log"]).read_text(errors="replace")
    assert rpc.WORKER_GONE not in log, "the server aborted in clean-up: workers were stopped before it"
    assert data["machine"]["build_key"] and data["machine"]["host"]


@pytest.mark.timeout(300)
def test_cell_that_ran_locally_is_a_fail(built, tmp_path):
    """-ngl 0: RPC devices exist but no layer is placed on them; every other check would pass."""
    base = profiles.resolve("tiny-gemma4-mtp", environ={})
    cell = Cell((("parallel", 1), ("enable_mtp", False), ("rpc", {"local_workers": 1}), ("n_gpu_layers", 0)))
    rep = run_matrix(base, [cell])
    c = rep.cells[0]
    assert c.status == Status.FAIL and c.reason.startswith("rpc_placement: no layers placed on RPC device"), c.reason


@pytest.mark.timeout(300)
def test_worker_dying_during_a_run_is_a_fail_with_the_rpc_line(built):
    base = profiles.resolve("tiny-gemma4-mtp", environ={})
    cell = Cell((("parallel", 2), ("enable_mtp", True), ("rpc", {"local_workers": 2}), ("n_gpu_layers", 99)))
    seen: list[int] = []

    def kill_worker(_cell, name, sp):
        if name == "tiny_message" and not seen:
            seen.append(sp.workers[0].pid)
            sp.workers[0].process.proc.kill()

    rep = run_matrix(base, [cell], after_check=kill_worker)
    c = rep.cells[0]
    assert seen and c.status == Status.FAIL, (c.status, c.reason)
    assert rpc.WORKER_GONE in c.reason or rpc.WORKER_GONE in json.dumps(c.crash), (c.reason, c.crash)
    assert not pid_alive(seen[0])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_no_worker_outlives_run(built, clean_env, how):
    p = spawn(["run", "tiny-gemma4-mtp", *RPC_SETS, "--json", "-q"], clean_env)
    try:
        info = read_ready(p)
        ws = workers_of(p.pid)
        assert len(ws) == 2 and all(pid_alive(w) for w in ws)
        if how == "SIGINT":
            p.send_signal(signal.SIGINT)
            assert p.wait(timeout=60) == 130
        else:
            p.kill()      # no handler runs: PR_SET_PDEATHSIG takes the workers along
            p.wait(timeout=10)
        assert wait_gone(info["pid"], 15)
        assert all(wait_gone(w, 15) for w in ws), "an RPC worker outlived llamactl"
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.timeout(300)
def test_rpc_worker_command_and_build_pairing(built, clean_env, tmp_path):
    w = spawn(["rpc-worker", "tiny-gemma4-mtp", "--port", "0", "--json"], clean_env)
    try:
        info = read_ready(w)
        ep = info["endpoint"]
        assert ep.startswith("127.0.0.1:") and pid_alive(info["pid"])
        prof = tmp_path / "remote.yaml"
        prof.write_text(yaml.safe_dump({"extends": "tiny-gemma4-mtp", "enable_mtp": False, "n_gpu_layers": 99,
                                        "rpc": {"workers": [ep]}, "expect_backend": "rpc", "matrix": None}))
        js = tmp_path / "v.json"
        cp = subprocess.run([*LLAMACTL, "validate", str(prof), "--json-out", str(js)], capture_output=True, text=True,
                            env=clean_env, timeout=240)
        cell = json.loads(js.read_text())["cells"][0]
        assert cp.returncode == 0 and cell["status"] == "pass", (cp.stdout + cp.stderr)[-3000:]
        # the record llamactl keeps for the worker names its build; another build's server is refused
        host, port = ep.rsplit(":", 1)
        rec_path = rpc._record_path(host, int(port))
        rec = json.loads(rec_path.read_text())
        assert rec["build_key"] == info["build_key"]
        rec_path.write_text(json.dumps(dict(rec, build_key="cpu-0ther0build")))
        cp = subprocess.run([*LLAMACTL, "run", str(prof), "-q"], capture_output=True, text=True, env=clean_env, timeout=120)
        assert cp.returncode == 1 and "runs build cpu-0ther0build, the server build" in cp.stderr, cp.stderr
        assert "Traceback" not in cp.stderr
    finally:
        w.send_signal(signal.SIGINT)
        assert w.wait(timeout=30) == 130
    assert wait_gone(info["pid"], 10)


@pytest.mark.timeout(900)
def test_two_shards_concurrently_merge_to_the_unsharded_run(built, clean_env, tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(yaml.safe_dump({"include": [
        {"parallel": 1, "mtp": False}, {"parallel": 1, "mtp": True}, {"parallel": 2, "mtp": False},
        {"parallel": 2, "mtp": True}, {"parallel": 2, "mtp": True, "kv": "q8_0/q8_0"}]}))
    common = ["validate", "tiny-gemma4-mtp", "--matrix", str(matrix)]   # concurrent_max_tokens 400: overlaps under load
    full = tmp_path / "full.json"
    cp = subprocess.run([*LLAMACTL, *common, "--json-out", str(full)], capture_output=True, text=True, env=clean_env, timeout=400)
    assert cp.returncode == 0, cp.stdout[-3000:]
    shards = [tmp_path / f"s{k}.json" for k in (1, 2)]
    procs = [subprocess.Popen([*LLAMACTL, *common, "--shard", f"{k}/2", "--json-out", str(shards[k - 1])],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env) for k in (1, 2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    s1, s2 = (json.loads(s.read_text()) for s in shards)
    assert s1["shard"] == "1/2" and s2["shard"] == "2/2"
    assert not {c["cell"] for c in s1["cells"]} & {c["cell"] for c in s2["cells"]}
    merged = tmp_path / "merged.json"
    cp = subprocess.run([*LLAMACTL, "report", "merge", str(shards[0]), str(shards[1]), "--json-out", str(merged),
                         "--junit", str(tmp_path / "merged.xml")], capture_output=True, text=True, env=clean_env, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    (tmp_path / "merge-output.txt").write_text(cp.stdout)
    m = json.loads(merged.read_text())
    want = {c["cell"]: c["status"] for c in json.loads(full.read_text())["cells"]}
    assert {c["cell"]: c["status"] for c in m["cells"]} == want
    assert not m["merge"]["duplicates"] and not m["merge"]["missing"]
    print(cp.stdout)
