"""`validate --url` against a real llama-server that the test started itself (no launch, no stop)."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.integration.test_run import LLAMACTL, read_ready, spawn, wait_gone


@pytest.mark.timeout(900)
def test_url_validates_a_real_running_server_and_leaves_it_running(built, clean_env, tmp_path):
    p = spawn(["run", "default", "--json", "-q"], clean_env)
    try:
        info = read_ready(p)
        js = tmp_path / "url.json"
        cp = subprocess.run([*LLAMACTL, "validate", "--url", info["url"], "default", "--no-env", "--json-out", str(js)],
                            capture_output=True, text=True, env=clean_env, timeout=600)
        data = json.loads(js.read_text())
        url_cell = data["cells"][0]
        assert url_cell["cell"] == "url" and url_cell["status"] == "pass", (url_cell, cp.stdout + cp.stderr)
        names = {c["name"] for c in url_cell["checks"]}
        assert {"tiny_message", "claude_style", "concurrency", "streaming", "still_healthy"} <= names
        assert all(c["status"] == "skip" and "restart" in c["reason"] for c in data["cells"][1:])
        assert p.poll() is None, "validate --url must leave the server running"
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) in (130, -signal.SIGINT)
    assert wait_gone(info["pid"])
