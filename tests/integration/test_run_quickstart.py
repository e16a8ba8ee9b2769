"""`llamactl run` starts the previous run's llama-server argv before the CLI loads, and adopts it."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import httpx

from tests.integration.test_run import read_ready, spawn, wait_gone


def serve_once(args: list[str], env: dict) -> dict:
    p = spawn(args, env)
    try:
        info = read_ready(p)
        r = httpx.post(f"{info['url']}/completion", json={"prompt": "hi", "n_predict": 4}, timeout=60)
        assert r.status_code == 200 and "content" in r.json()
        return info
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 130


def test_second_run_adopts_the_early_server(built, clean_env):
    args = ["run", "tiny-gemma4-mtp", "--json", "-q", "--set", f"alias=qs-{uuid.uuid4().hex[:8]}"]
    first = serve_once(args, clean_env)
    assert first["early_start"] is False           # new arguments: nothing remembered yet
    assert wait_gone(first["pid"])

    second = serve_once(args, clean_env)
    assert second["early_start"] is True
    assert second["url"] != first["url"] or second["pid"] != first["pid"]
    assert wait_gone(second["pid"])
    log1, log2 = Path(first["log"]).read_text(), Path(second["log"]).read_text()
    first_line = [log.splitlines()[0].split(" ", 1)[-1] for log in (log1, log2)]   # minus llama.cpp's timestamp
    assert first_line[0] == first_line[1]        # the adopted server's log is complete from its first line

    other = serve_once([*args, "--parallel", "2"], clean_env)   # other arguments, other plan
    assert other["early_start"] is False
    assert wait_gone(other["pid"])


def test_changed_environment_is_not_started_early(built, clean_env):
    args = ["run", "tiny-gemma4-mtp", "--json", "-q", "--set", f"alias=qs-{uuid.uuid4().hex[:8]}"]
    serve_once(args, clean_env)
    info = serve_once(args, dict(clean_env, CTX="2048"))
    assert info["early_start"] is False
    time.sleep(0.1)
