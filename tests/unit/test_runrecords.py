"""Run records of detached servers: `ps`/`stop` never signal a PID that is not llamactl's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamactl.core import proc, runrecords


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def sleeper():
    p = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


def record(cache: Path, name: str, **data) -> Path:
    d = cache / "runs" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.json").write_text(json.dumps(data))
    return d


def llamactl(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LLAMACTL_CACHE=str(env_cache), NO_COLOR="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "llamactl", *args], capture_output=True, text=True, env=env, timeout=60)


def test_stop_all_does_not_kill_a_recycled_pid(cache, sleeper):
    """A record whose PID now belongs to a `sleep` llamactl did not start: cleaned up, not killed."""
    ident = proc.identify(sleeper.pid)
    assert ident is not None
    record(cache, "20260101-000000-default", pid=sleeper.pid, create_time=ident.create_time - 5000,
           argv=["/x/llama-server", "--port", "8080"], state="running", url="http://127.0.0.1:8080", log="/x/server.log")
    cp = llamactl("stop", "--all", "--json", env_cache=cache)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == []
    assert "nothing signalled" in cp.stderr and "sleep" in cp.stderr
    time.sleep(0.2)
    assert sleeper.poll() is None, "stop killed a process llamactl did not start"
    rec = json.loads((cache / "runs" / "20260101-000000-default" / "run.json").read_text())
    assert rec["state"] == "stopped" and "another process" in rec["stopped_why"]


def test_ps_cleans_a_record_of_a_gone_process(cache):
    p = subprocess.Popen(["sleep", "0"])
    p.wait()
    record(cache, "20260101-000000-gone", pid=p.pid, create_time=time.time() - 60, argv=["sleep", "0"], url="u", log="l")
    cp = llamactl("ps", "--json", env_cache=cache)
    assert cp.returncode == 0 and json.loads(cp.stdout) == []
    cp = llamactl("ps", "--all", "--json", env_cache=cache)
    rows = json.loads(cp.stdout)
    assert [(r["id"], r["alive"], r["state"]) for r in rows] == [("20260101-000000-gone", False, "stopped")]


def test_stop_signals_the_process_it_started(cache, sleeper):
    ident = proc.identify(sleeper.pid)
    record(cache, "20260101-000000-mine", **ident.to_json(), state="running", url="u", log="l")
    rows = json.loads(llamactl("ps", "--json", env_cache=cache).stdout)
    assert [r["alive"] for r in rows] == [True]
    cp = llamactl("stop", "20260101", "--json", env_cache=cache)
    assert cp.returncode == 0 and json.loads(cp.stdout) == ["20260101-000000-mine"]
    assert sleeper.wait(timeout=15) is not None


def test_corrupt_records_are_one_warning_each_not_a_traceback(cache):
    texts = {"a": "{not json", "b": "[1, 2]", "c": '{"pid": "x"}', "d": '{"pid": true}', "e": '{"pid": -3}'}
    for name, text in texts.items():
        d = cache / "runs" / f"20260101-000000-{name}"
        d.mkdir(parents=True)
        (d / "run.json").write_text(text)
    cp = llamactl("ps", env_cache=cache)
    assert cp.returncode == 0, cp.stderr
    assert "Traceback" not in cp.stderr
    warn = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(warn) == len(texts) and all(w.startswith("warning: skipping corrupt run record") for w in warn), cp.stderr
    for name in texts:
        d = cache / "runs" / f"20260101-000000-{name}"
        assert (d / "run.json.corrupt").exists() and not (d / "run.json").exists()
    assert runrecords.load_all(on_warning=pytest.fail) == [], "warned once, then moved aside"


def test_stop_without_a_match_is_one_line(cache):
    cp = llamactl("stop", "nope", env_cache=cache)
    assert cp.returncode == 1 and cp.stderr.strip().startswith("error: no running server matches 'nope'")
    assert len(cp.stderr.strip().splitlines()) == 1


def test_library_stop_refuses_a_stale_record(cache, sleeper):
    d = record(cache, "r1", pid=sleeper.pid, create_time=None, argv=["llama-server", "-m", "x.gguf"])
    rec = runrecords.load(d / "run.json")
    warnings: list[str] = []
    assert rec is not None and runrecords.stop(rec, grace=1, on_warning=warnings.append) is False
    assert sleeper.poll() is None and warnings and "another program (sleep)" in warnings[0]
