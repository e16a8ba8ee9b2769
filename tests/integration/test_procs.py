"""Processes: builds die with llamactl, detached servers that fail are stopped, stale PIDs are not signalled."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.integration.test_run import run_detached
import pytest

from llamactl.core import paths, proc

ROOT = Path(__file__).resolve().parents[2]
LLAMACTL = [sys.executable, "-m", "llamactl"]

# A stand-in llama.cpp tree whose llama-server target waits on two long-running build steps.
SLOW_TREE = """
cmake_minimum_required(VERSION 3.14)
project(slow C)
add_custom_target(slow1 COMMAND sleep 300)
add_custom_target(slow2 COMMAND sleep 301)
add_executable(llama-server main.c)
add_executable(llama-gguf-split main.c)
add_dependencies(llama-server slow1 slow2)
"""


def family_of(pid: int) -> tuple[list[psutil.Process], list[str]]:
    """The live descendants of ``pid`` and their names (short-lived ones may vanish meanwhile)."""
    procs, names = [], []
    for c in psutil.Process(pid).children(recursive=True):
        try:
            names.append(c.name())
            procs.append(c)
        except psutil.Error:
            pass
    return procs, sorted(names)


def gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = pids
    while time.monotonic() < deadline:
        left = [p for p in pids if proc.pid_alive(p)]
        if not left:
            break
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_build_processes_die_with_llamactl(tmp_path, clean_env, sig):
    """`llamactl build` of a real (small) CMake tree; llamactl gets ``sig`` mid-build: nothing remains."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(SLOW_TREE)
    (src / "main.c").write_text("int main(void) { return 0; }\n")
    env = dict(clean_env, LLAMACTL_CACHE=str(tmp_path / "cache"))
    p = subprocess.Popen([*LLAMACTL, "build", "--source", f"path:{src}", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        family: list[psutil.Process] = []
        names: list[str] = []
        while time.monotonic() < deadline and p.poll() is None:
            family, names = family_of(p.pid)
            if names.count("sleep") == 2:
                break
            time.sleep(0.1)
        assert "cmake" in names and "ninja" in names and names.count("sleep") == 2, (names, p.stderr.read() if p.poll() is not None else "")
        p.send_signal(sig)
        rc = p.wait(timeout=60)
        assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 130), p.stderr.read()
        left = gone([c.pid for c in family])
        assert left == [], f"still running after llamactl got {sig.name}: {left}"
    finally:
        if p.poll() is None:
            p.kill()
        for c in psutil.Process().children(recursive=True):
            try:
                c.kill()
            except psutil.Error:
                pass


def runs_with_record() -> set[str]:
    return {d.parent.name for d in paths.runs_dir().glob("*/run.json")}


def test_detach_that_never_gets_healthy_is_stopped(built, clean_env):
    cp = subprocess.run([*LLAMACTL, "run", "default", "--detach", "--set", "health_timeout=0.05"],
                        capture_output=True, text=True, env=clean_env, timeout=120)
    assert cp.returncode != 0 and "not healthy after" in cp.stderr and "Traceback" not in cp.stderr
    m = re.search(r"runs/([^/\s]+)/server\.log", cp.stderr)   # the error line names our run's log
    assert m, cp.stderr
    rec = json.loads((paths.runs_dir() / m.group(1) / "run.json").read_text())
    assert rec["state"] == "stopped" and rec["stopped_why"] == "did not become ready"
    assert gone([rec["pid"]], 5) == [], "the detached server was left running"


def test_detach_interrupted_while_starting_is_stopped(built, clean_env):
    before_runs = runs_with_record()
    p = subprocess.Popen([*LLAMACTL, "run", "default", "--detach", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=clean_env)
    try:
        deadline = time.monotonic() + 120
        rec_path = None
        while time.monotonic() < deadline and rec_path is None and p.poll() is None:
            for run in runs_with_record() - before_runs:   # the cache is shared: find the record of *our* server
                f = paths.runs_dir() / run / "run.json"
                try:
                    if psutil.Process(json.loads(f.read_text())["pid"]).ppid() == p.pid:
                        rec_path = f
                except (psutil.Error, ValueError, KeyError, OSError):
                    pass
            time.sleep(0.01)
        assert rec_path is not None, p.stderr.read() if p.poll() is not None else "no run record"
        server = json.loads(rec_path.read_text())["pid"]
        os.kill(server, signal.SIGSTOP)        # it cannot become healthy while we interrupt llamactl
        p.send_signal(signal.SIGINT)
        time.sleep(0.3)
        try:   # a fatal SIGTERM kills even a stopped process before its handler is installed
            os.kill(server, signal.SIGCONT)
        except ProcessLookupError:
            pass
        rc = p.wait(timeout=60)
        err = p.stderr.read()
        assert rc in (130, -signal.SIGINT), err   # -SIGINT: the interrupt landed while Python was exiting
        assert "stopping llama-server" in err
        assert gone([server]) == []
        assert json.loads(rec_path.read_text())["state"] == "stopped"
    finally:
        if p.poll() is None:
            p.kill()


def test_detach_records_identity_and_stop_uses_it(built, clean_env):
    pid = run_detached(clean_env)
    try:
        rows = json.loads(subprocess.run([*LLAMACTL, "ps", "--json"], capture_output=True, text=True, env=clean_env).stdout)
        row = next(r for r in rows if r["pid"] == pid)
        assert row["alive"] and row["state"] == "running"
        assert abs(row["create_time"] - psutil.Process(pid).create_time()) < 0.05
        assert row["argv"] == psutil.Process(pid).cmdline()
        stop = subprocess.run([*LLAMACTL, "stop", row["id"], "--json"], capture_output=True, text=True, env=clean_env, timeout=60)
        assert stop.returncode == 0 and json.loads(stop.stdout) == [row["id"]]
        assert gone([pid]) == []
    finally:
        if proc.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
