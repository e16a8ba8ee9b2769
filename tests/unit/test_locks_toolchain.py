"""File locks between llamactl processes; toolchain checks before anything is vendored."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llamactl.build import builder, toolchain
from llamactl.core import locks
from llamactl.core.errors import LlamactlError, ToolchainMissing

ROOT = Path(__file__).resolve().parents[2]


def holder(guarded: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from llamactl.core import locks
        with locks.hold(Path({str(guarded)!r}), "x"):
            print("held", flush=True)
            time.sleep(300)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_lock_held_by_another_process_blocks_and_is_seen(tmp_path):
    guarded = tmp_path / "builds" / "cpu-abc"
    p = holder(guarded)
    try:
        assert locks.is_locked(guarded)
        assert locks.try_hold(guarded) is None
        waits: list[str] = []
        with pytest.raises(LlamactlError, match="is locked by another llamactl"):
            with locks.hold(guarded, "build cpu-abc", waits.append, timeout=0.3):
                pass
        assert len(waits) == 1 and "waiting for another llamactl" in waits[0] and "cpu-abc.lock" in waits[0]
    finally:
        p.kill()
        p.wait()
    t0 = time.monotonic()
    with locks.hold(guarded, "build cpu-abc", timeout=10):
        assert time.monotonic() - t0 < 5
    assert not locks.is_locked(guarded)


def test_hold_is_reentrant_in_one_thread(tmp_path):
    g = tmp_path / "tree"
    with locks.hold(g, "t", timeout=1):
        with locks.hold(g, "t", timeout=1):
            pass


def test_no_hand_written_fcntl_left():
    hits = [p for p in (ROOT / "llamactl").rglob("*.py") if "import fcntl" in p.read_text()]
    assert hits == []


def test_hip_without_rocm_fails_before_vendoring(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))   # nothing on PATH at all
    for exe in ("cmake", "ninja", "c++"):
        (tmp_path / exe).write_text("#!/bin/sh\n")
        (tmp_path / exe).chmod(0o755)
    monkeypatch.delenv("CXX", raising=False)

    def no_vendoring(*a, **k):
        raise AssertionError("vendored before the toolchain check")

    monkeypatch.setattr(builder, "prepare_tree", no_vendoring)
    monkeypatch.setattr(builder, "_prepare", no_vendoring)
    monkeypatch.setattr(builder, "_uses_vendor_tree", no_vendoring)
    with pytest.raises(ToolchainMissing) as exc:
        builder.build(builder.BuildRequest(backend="hip"))
    assert str(exc.value).startswith("hip build needs hipconfig: install ROCm with HIP")
    assert exc.value.exit_code == 3


def test_preflight_names_every_missing_tool(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CXX", "g++-nope")
    with pytest.raises(ToolchainMissing) as exc:
        toolchain.preflight("vulkan")
    msg = str(exc.value)
    assert msg.startswith("vulkan build needs cmake: install cmake")
    assert "also missing: ninja, c++, glslc" in msg
    with pytest.raises(LlamactlError, match="unknown backend 'metal'"):
        toolchain.preflight("metal")


@pytest.mark.skipif(toolchain.proc.which("hipconfig") is not None, reason="ROCm is installed here")
def test_cli_build_hip_without_rocm_is_one_line_and_touches_nothing(tmp_path):
    import os
    import shutil

    home = tmp_path / "home"
    (home / "vendor").mkdir(parents=True)
    shutil.copy(ROOT / "vendor" / "sources.yaml", home / "vendor" / "sources.yaml")
    shutil.copytree(ROOT / "patches", home / "patches")
    shutil.copytree(ROOT / "profiles", home / "profiles")
    env = dict(os.environ, LLAMACTL_HOME=str(home), LLAMACTL_CACHE=str(tmp_path / "cache"), NO_COLOR="1", COLUMNS="300")
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "llamactl", "build", "--backend", "hip"], capture_output=True,
                        text=True, env=env, timeout=60)
    assert cp.returncode == 3
    assert cp.stderr.strip().splitlines() == [cp.stderr.strip()] and cp.stderr.startswith("error: hip build needs hipconfig")
    assert not (home / "vendor" / "llama.cpp").exists()
    assert list((tmp_path / "cache").glob("builds/*")) == [] and list((tmp_path / "cache").glob("downloads/*")) == []
    assert time.monotonic() - t0 < 30
