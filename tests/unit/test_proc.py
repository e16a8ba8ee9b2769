"""core.proc: children die with llamactl, PIDs are checked before they are signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from llamactl.core import proc

ROOT = Path(__file__).resolve().parents[2]


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def parent_script(mode: str, use_setpriv: bool) -> str:
    """A stand-in for llamactl: spawns children, prints their PIDs, then waits to be killed."""
    return textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from llamactl.core import proc
        if not {use_setpriv}:
            proc._setpriv = lambda: None
        if {mode!r} == "exec":
            p = proc.spawn(["sleep", "300"])
        else:
            p = proc.spawn([sys.executable, "-c",
                            "import subprocess, time; subprocess.Popen(['sleep', '300']); subprocess.Popen(['sleep', '301']); time.sleep(300)"],
                           whole_group=True, grace=2)
        print(p.pid, flush=True)
        time.sleep(300)
    """)


def descendants_of(pid: int, want: int, timeout: float = 20.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    kids: list[psutil.Process] = []
    while time.monotonic() < deadline:
        try:
            kids = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        if len([k for k in kids if k.name() == "sleep"]) >= want:
            return kids
        time.sleep(0.05)
    return kids


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("use_setpriv", [True, False], ids=["setpriv", "python-wrapper"])
def test_exec_child_dies_when_llamactl_is_sigkilled(use_setpriv):
    if use_setpriv and proc._setpriv() is None:
        pytest.skip("no setpriv --pdeathsig here")
    parent = subprocess.Popen([sys.executable, "-c", parent_script("exec", use_setpriv)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while psutil.Process(child).cmdline()[:1] != ["sleep"] and time.monotonic() < deadline:
            time.sleep(0.02)   # the wrapper execs the command in place: same PID
        assert psutil.Process(child).cmdline() == ["sleep", "300"]
        assert os.getpgid(child) == child, "the child leads its own process group"
        parent.kill()
        parent.wait(timeout=10)
        assert wait_gone(child), "the child outlived a SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_whole_group_dies_with_llamactl(how):
    parent = subprocess.Popen([sys.executable, "-c", parent_script("group", False)], stdout=subprocess.PIPE, text=True)
    try:
        wrapper = int(parent.stdout.readline())
        kids = descendants_of(wrapper, 2)
        pids = [wrapper] + [k.pid for k in kids]
        assert len([k for k in kids if k.name() == "sleep"]) == 2
        parent.send_signal(how)
        parent.wait(timeout=10)
        left = [p for p in pids if not wait_gone(p)]
        assert left == [], f"still running after the parent got {how.name}: {left}"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_terminate_stops_the_whole_group():
    p = proc.spawn([sys.executable, "-c",
                    "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"],
                   whole_group=True, grace=2)
    kids = descendants_of(p.pid, 1)
    assert kids
    rc = proc.terminate(p, grace=2)
    assert rc == 128 + signal.SIGTERM
    assert all(wait_gone(k.pid, 5) for k in kids)


def test_whole_group_passes_the_exit_status_through():
    p = proc.spawn([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], whole_group=True,
                   stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=30)
    assert (p.returncode, out) == (3, "hi\n")


def test_spawn_never_uses_preexec_fn(monkeypatch):
    seen = {}

    def fake_popen(args, **kw):
        seen.update(kw, args=args)
        raise RuntimeError("stop here")

    monkeypatch.setattr(proc.subprocess, "Popen", fake_popen)
    with pytest.raises(RuntimeError):
        proc.spawn(["sleep", "1"], preexec_fn=lambda: None)
    assert "preexec_fn" not in seen and seen["start_new_session"] is True
    assert seen["args"][-2:] == ["sleep", "1"]


def test_spawn_reports_a_missing_or_non_executable_program(tmp_path):
    with pytest.raises(FileNotFoundError):
        proc.spawn([str(tmp_path / "nope")])
    f = tmp_path / "not-exec"
    f.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        proc.spawn([str(f)])
    with pytest.raises(PermissionError):
        proc.spawn([str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        proc.spawn(["llamactl-no-such-program-xyz"])


def test_check_identity_running_gone_and_recycled():
    p = subprocess.Popen(["sleep", "300"])
    try:
        deadline = time.monotonic() + 5
        while not psutil.Process(p.pid).cmdline() and time.monotonic() < deadline:
            time.sleep(0.01)
        ident = proc.identify(p.pid)
        assert ident is not None and ident.argv == ("sleep", "300")
        assert proc.check_identity(p.pid, ident.create_time, ident.argv)[0] == "running"
        # same PID, another start time: the PID was recycled
        state, why = proc.check_identity(p.pid, ident.create_time - 3600, ident.argv)
        assert state == "recycled" and "sleep" in why
        # same PID and start time, another argv
        assert proc.check_identity(p.pid, ident.create_time, ["llama-server", "--port", "1"])[0] == "recycled"
        assert proc.check_identity(p.pid, None, None)[0] == "recycled"
    finally:
        p.kill()
        p.wait()
    assert proc.check_identity(p.pid, ident.create_time, ident.argv)[0] == "gone"
