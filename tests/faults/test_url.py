"""`validate --url`: the checks against a server llamactl did not start (here the fake); nothing launched or stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.test_fake_server import FAKE, LLAMACTL, env, fake_profile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_url_checks_a_running_server_and_leaves_it_running(tmp_path: Path) -> None:
    profile, token = fake_profile(tmp_path, "ok", matrix={"axes": {"parallel": [1, 2]}})
    port = _free_port()
    e = dict(os.environ, FAKE_FAULT="ok", FAKE_TOKEN=token)
    server = subprocess.Popen([sys.executable, str(FAKE), "--host", "127.0.0.1", "--port", str(port), "--parallel", "2",
                               "--alias", "fake", "--metrics", "--slots"], env=e, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        js = tmp_path / "u.json"
        cp = subprocess.run([*LLAMACTL, "validate", "--url", f"http://127.0.0.1:{port}", str(profile), "--no-env",
                             "--json-out", str(js)], capture_output=True, text=True, env=env(), timeout=90)
        out = cp.stdout + cp.stderr
        assert cp.returncode == 0, out
        data = json.loads(js.read_text())
        url_cell = data["cells"][0]
        assert url_cell["cell"] == "url" and url_cell["status"] == "pass", url_cell
        assert {c["name"] for c in url_cell["checks"]} >= {"tiny_message", "concurrency", "still_healthy"}
        # the matrix's cells need a restart each: SKIP with the reason
        assert [c["status"] for c in data["cells"][1:]] == ["skip", "skip"]
        assert "needs a restart" in data["cells"][1]["reason"]
        assert data["machine"]["host"] == socket.gethostname()
        assert server.poll() is None, "validate --url must not stop the server"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.timeout(60)
def test_url_nobody_listens_is_a_fail(tmp_path: Path) -> None:
    profile, _ = fake_profile(tmp_path, "ok")
    port = _free_port()
    js = tmp_path / "u.json"
    cp = subprocess.run([*LLAMACTL, "validate", "--url", f"http://127.0.0.1:{port}", str(profile), "--no-env",
                         "--json-out", str(js)], capture_output=True, text=True, env=env(), timeout=50)
    assert cp.returncode == 1 and "Traceback" not in cp.stdout + cp.stderr
    cell = json.loads(js.read_text())["cells"][0]
    assert cell["status"] == "fail" and "/health: ConnectError" in cell["reason"]


def test_url_malformed_is_bad_input(tmp_path: Path) -> None:
    profile, _ = fake_profile(tmp_path, "ok")
    cp = subprocess.run([*LLAMACTL, "validate", "--url", "ftp:/x", str(profile), "--no-env"],
                        capture_output=True, text=True, env=env(), timeout=50)
    assert cp.returncode == 2 and "expected http(s)://HOST:PORT" in cp.stderr
