"""`llamactl run` against the real server: serve, signals, crashes, ports, overrides."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from llamactl.serve.server import pid_alive
from tests.conftest import llama_server_pids

LLAMACTL = [sys.executable, "-m", "llamactl"]


def spawn(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([*LLAMACTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def read_ready(p: subprocess.Popen, timeout: float = 300) -> dict:
    """`run --json` prints one JSON object once /health is 200."""
    deadline = time.monotonic() + timeout
    buf = ""
    assert p.stdout is not None
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            raise AssertionError(f"llamactl exited early ({p.wait()}): {p.stderr.read()}")
        buf += line
        if line.startswith("}"):
            return json.loads(buf)
    raise AssertionError("server not ready in time")


def wait_gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_run_default_serves_messages_and_signal_leaves_nothing(built, clean_env, sig, code):
    before = llama_server_pids()
    p = spawn(["run", "default", "--json", "-q"], clean_env)
    try:
        info = read_ready(p)
        assert info["url"].startswith("http://127.0.0.1:")
        r = httpx.post(f"{info['url']}/v1/messages", timeout=120, json={
            "model": "default", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["type"] == "message"
        server_pid = info["pid"]
        assert pid_alive(server_pid)
        p.send_signal(sig)
        assert p.wait(timeout=30) == code
        assert wait_gone(server_pid, 5)
        assert llama_server_pids() - before == set()
    finally:
        if p.poll() is None:
            p.kill()


def test_killed_llamactl_takes_its_server_along(built, clean_env):
    p = spawn(["run", "tiny-gemma4-mtp", "--no-mtp", "--json", "-q"], clean_env)
    info = read_ready(p)
    p.kill()                       # SIGKILL: no handler runs in llamactl
    p.wait(timeout=10)
    assert wait_gone(info["pid"], 15), "llama-server outlived a SIGKILLed llamactl"


def test_port_in_use_is_a_clear_error(built, clean_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        cp = subprocess.run([*LLAMACTL, "run", "tiny-gemma4-mtp", "--port", str(port)], capture_output=True,
                            text=True, env=clean_env, timeout=120)
    assert cp.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in cp.stderr and "Traceback" not in cp.stderr


def test_corrupt_gguf_header_is_refused_before_launch(built, clean_env, tmp_path):
    """A GGUF whose header is garbage never reaches llama-server (its own load errors: tests/integration/test_causes.py)."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(64))
    before = llama_server_pids()
    cp = subprocess.run([*LLAMACTL, "run", "default", "--model", str(bad), "-q"], capture_output=True, text=True,
                        env=clean_env, timeout=120)
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.startswith(f"error: {bad}") and "Traceback" not in cp.stderr
    assert llama_server_pids() - before == set()   # none of ours left (others may have ended meanwhile)


def test_env_and_cli_overrides_reach_show_and_argv(built, clean_env):
    env = dict(clean_env, CTX="2048", PARALLEL="2")
    cp = subprocess.run([*LLAMACTL, "profile", "show", "default", "--port", "0", "--json"], capture_output=True,
                        text=True, env=env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    values = {row["key"]: row for row in json.loads(cp.stdout)["values"]}
    assert values["ctx"]["value"] == 2048 and values["ctx"]["origin"] == "env CTX"
    assert values["parallel"]["value"] == 2 and values["parallel"]["origin"] == "env PARALLEL"
    assert values["port"]["value"] == "auto" and values["port"]["origin"] == "cli"
    assert values["model"]["origin"] == "profile default.yaml"
    cp = subprocess.run([*LLAMACTL, "profile", "cmd", "default", "--port", "0", "--parallel", "3", "--json"],
                        capture_output=True, text=True, env=env, timeout=120)
    argv = json.loads(cp.stdout)["argv"]
    assert argv[argv.index("--ctx-size") + 1] == "2048"
    assert argv[argv.index("--parallel") + 1] == "3"          # cli beats env
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_unsupported_value_refused_before_launch(built, clean_env):
    before = llama_server_pids()
    cp = subprocess.run([*LLAMACTL, "run", "tiny-gemma4-mtp", "--kv-k", "turbo4", "--kv-v", "turbo4"],
                        capture_output=True, text=True, env=clean_env, timeout=120)
    assert cp.returncode == 4
    assert "kv_k=turbo4 is not supported" in cp.stderr and "atomic-turboquant" in cp.stderr
    assert llama_server_pids() - before == set()   # none of ours left (others may have ended meanwhile)


def run_detached(env: dict) -> int:
    """`run tiny-gemma4-mtp --no-mtp --detach --json`; the detached server's pid."""
    cp = subprocess.run([*LLAMACTL, "run", "tiny-gemma4-mtp", "--no-mtp", "--detach", "--json"], capture_output=True,
                        text=True, env=env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    return int(json.loads(cp.stdout)["pid"])


def test_detach_ps_stop(built, clean_env):
    pid = run_detached(clean_env)
    try:
        ps = json.loads(subprocess.run([*LLAMACTL, "ps", "--json"], capture_output=True, text=True, env=clean_env).stdout)
        run_id = next(r["id"] for r in ps if r["pid"] == pid)
        # by id, not --all: the cache is shared, other detached servers are not ours to stop
        stop = subprocess.run([*LLAMACTL, "stop", run_id], capture_output=True, text=True, env=clean_env, timeout=60)
        assert stop.returncode == 0
        assert wait_gone(pid, 15)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_bad_profile_is_one_line(clean_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\nparallel: lots\n")
    cp = subprocess.run([*LLAMACTL, "run", str(bad)], capture_output=True, text=True, env=clean_env, timeout=60)
    assert cp.returncode == 2    # BAD_INPUT
    assert cp.stderr.startswith("error:") and "key 'parallel'" in cp.stderr and "Traceback" not in cp.stderr
