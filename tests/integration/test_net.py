"""Every host and port form llama-server accepts, against the real server (issue 16 items 7 and 8)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import needs_v6

from llamactl.serve.server import pid_alive
from tests.conftest import llama_server_pids


def servers_with(text: str) -> set[int]:
    """llama-server processes whose argv mentions ``text`` (other helpers' servers may run too)."""
    found = set()
    for pid in llama_server_pids():
        try:
            if text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.add(pid)
        except OSError:
            pass
    return found

LLAMACTL = [sys.executable, "-m", "llamactl"]
ONE_CELL = ["--cell", "parallel=1", "--cell", "kv=f16/f16"]




def _free(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture
def short_dir():
    """A short working directory: a unix socket path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="lc-") as d:
        yield Path(d)


def llamactl(args: list[str], env: dict, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LLAMACTL, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def validate(args: list[str], env: dict, tmp: Path, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    js = tmp / "report.json"
    cp = llamactl(["validate", "default", *args, "--json-out", str(js)], env, cwd=cwd)
    assert "Traceback" not in cp.stderr, cp.stderr
    return cp, json.loads(js.read_text()) if js.exists() else {}


def _assert_all_pass(cp: subprocess.CompletedProcess, report: dict, n: int) -> None:
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert len(report["cells"]) == n and all(c["status"] == "pass" for c in report["cells"]), report["cells"]


def _argv_host(report: dict) -> str:
    argv = report["cells"][0]["argv"]
    return argv[argv.index("--host") + 1]


@needs_v6
def test_validate_on_ipv6_loopback_auto_port(built, clean_env, tmp_path):
    cp, report = validate([*ONE_CELL, "--set", "host=::1"], clean_env, tmp_path)
    _assert_all_pass(cp, report, 1)
    assert _argv_host(report) == "::1"


@needs_v6
def test_validate_on_ipv6_loopback_fixed_port(built, clean_env, tmp_path):
    port = _free("::1")
    cp, report = validate([*ONE_CELL, "--set", "host=::1", "--set", f"port={port}"], clean_env, tmp_path)
    _assert_all_pass(cp, report, 1)
    argv = report["cells"][0]["argv"]
    assert argv[argv.index("--port") + 1] == str(port)


def test_validate_on_a_relative_unix_socket(built, clean_env, tmp_path, short_dir):
    cp, report = validate([*ONE_CELL, "--set", "host=./llamactl.sock"], clean_env, tmp_path, cwd=short_dir)
    _assert_all_pass(cp, report, 1)
    assert _argv_host(report) == str(short_dir / "llamactl.sock")      # resolved against the cwd
    assert not (short_dir / "llamactl.sock").exists(), "the socket file is removed after the cell"
    assert servers_with(str(short_dir)) == set()


def test_validate_on_the_ipv4_wildcard_warns_and_uses_loopback(built, clean_env, tmp_path):
    cp, report = validate([*ONE_CELL, "--set", "host=0.0.0.0"], clean_env, tmp_path)
    _assert_all_pass(cp, report, 1)
    assert _argv_host(report) == "0.0.0.0"
    assert "warning:" in cp.stderr and "0.0.0.0" in cp.stderr and "other machines can reach it" in cp.stderr


def test_fixed_port_matrix_passes_every_cell(built, clean_env, tmp_path):
    """Cell 2 binds the port that cell 1's connections left in TIME-WAIT."""
    port = _free()
    cp, report = validate(["--cell", "parallel=1", "--set", f"port={port}"], clean_env, tmp_path)
    _assert_all_pass(cp, report, 2)
    for c in report["cells"]:
        assert c["argv"][c["argv"].index("--port") + 1] == str(port)


def _run_detached(args: list[str], env: dict, cwd: Path | None = None) -> dict:
    cp = llamactl(["run", "default", "--detach", "--json", *args], env, timeout=300, cwd=cwd)
    assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stderr
    return json.loads(cp.stdout)


def _stop_all(env: dict, pids: list[int]) -> None:
    cp = llamactl(["stop", "--all", "--json"], env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    deadline = time.monotonic() + 20
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_run_stop_run_again_on_one_fixed_port(built, clean_env):
    port = _free()
    pids: list[int] = []
    try:
        for _ in range(2):
            info = _run_detached(["--port", str(port)], clean_env)
            pids.append(info["pid"])
            assert info["url"] == f"http://127.0.0.1:{port}"
            r = httpx.post(f"{info['url']}/v1/messages", timeout=120, json={
                "model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            _stop_all(clean_env, [info["pid"]])
            assert not pid_alive(info["pid"])
    finally:
        for p in pids:
            if pid_alive(p):
                os.killpg(p, signal.SIGKILL)


def test_detached_server_on_a_unix_socket_ps_and_stop(built, clean_env, short_dir):
    sock = short_dir / "d.sock"
    info = _run_detached(["--set", f"host={sock}"], clean_env)
    try:
        assert info["url"] == f"unix://{sock}" and info["socket"] == str(sock)
        assert info["endpoints"][0] == "http://localhost/health"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as c:
            assert c.get("http://localhost/health", timeout=10).status_code == 200
        ps = json.loads(llamactl(["ps", "--json"], clean_env, timeout=60).stdout)
        row = next(r for r in ps if r["pid"] == info["pid"])
        assert row["url"] == f"unix://{sock}" and row["alive"]
        _stop_all(clean_env, [info["pid"]])
        assert not pid_alive(info["pid"])
        assert not sock.exists(), "stop removes the socket file llama-server leaves behind"
    finally:
        if pid_alive(info["pid"]):
            os.killpg(info["pid"], signal.SIGKILL)


def test_live_listener_is_refused_before_launch_naming_the_pid(built, clean_env, short_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        cp = llamactl(["run", "default", "--port", str(port)], clean_env, timeout=120)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    assert f"port {port} on 127.0.0.1 is already in use: held by pid {os.getpid()} (" in cp.stderr
    sock = short_dir / "busy.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        s.listen(1)
        cp = llamactl(["run", "default", "--set", f"host={sock}"], clean_env, timeout=120)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr
    assert f"unix socket {sock} is already in use: held by pid {os.getpid()} (" in cp.stderr
    assert servers_with(f"--port {port} ") == set() and servers_with(str(sock)) == set()


def test_bench_on_a_unix_socket_runs_both_variants_side_by_side(built, clean_env, short_dir, tmp_path):
    js = tmp_path / "b.json"
    cp = llamactl(["bench", "tiny-gemma4-mtp", "--no-matrix", "--repeat", "1", "--n-predict", "8",
                   "--set", "host=./b.sock", "--json-out", str(js)], clean_env, timeout=600, cwd=short_dir)
    assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stdout + cp.stderr
    variants = json.loads(js.read_text())["cells"][0]["variants"]
    hosts = {v: r["argv"][r["argv"].index("--host") + 1] for v, r in variants.items()}
    assert hosts == {"mtp-off": str(short_dir / "b.sock"), "mtp-on": str(short_dir / "b-mtp-on.sock")}
    assert all(r["error"] is None and r["samples"] for r in variants.values()), variants
    assert not list(short_dir.glob("*.sock"))


@needs_v6
def test_bench_on_ipv6_with_a_fixed_port(built, clean_env, tmp_path):
    js = tmp_path / "b.json"
    port = _free("::1")
    cp = llamactl(["bench", "tiny-gemma4-mtp", "--no-matrix", "--repeat", "1", "--n-predict", "8",
                   "--set", "host=::1", "--set", f"port={port}", "--json-out", str(js)], clean_env, timeout=600)
    assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stdout + cp.stderr
    variants = json.loads(js.read_text())["cells"][0]["variants"]
    off = variants["mtp-off"]["argv"]
    assert off[off.index("--port") + 1] == str(port)
    assert all(r["error"] is None and r["samples"] for r in variants.values()), variants
