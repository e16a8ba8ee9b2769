"""`bench --build A --build B` arms and the bench CLI's gate options: parsing and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llamactl.core.errors import ExitCode, LlamactlError
from llamactl.judge import bench
from llamactl.serve import profiles


def test_parse_build_shorthands_and_keys():
    assert bench.parse_build("series") == ("series", {})
    assert bench.parse_build("no-series") == ("no-series", {"no_patches": True})
    assert bench.parse_build("name=fork,source=path:/src/llama.cpp,series=atomic-turboquant") == \
        ("fork", {"source": "path:/src/llama.cpp", "series": "atomic-turboquant"})
    assert bench.parse_build("cmake-options=-DA=1;-DB=2,no_patches=0") == \
        ("cmake-options=-DA=1;-DB=2,no_patches=0", {"cmake_options": ["-DA=1", "-DB=2"], "no_patches": False})


@pytest.mark.parametrize("text, message", [("fast", "expected series, no-series or key=value"),
                                           ("colour=red", "unknown build key 'colour'")])
def test_parse_build_errors(text, message):
    with pytest.raises(LlamactlError, match=message):
        bench.parse_build(text)


def test_build_profile_validates_the_build_section():
    base = profiles.Profile(model="m.gguf", server_binary="/opt/llama-server")
    arm = bench.build_profile(base, {"no_patches": True}, "no-series")
    assert arm.build.no_patches is True and arm.server_binary is None      # --build means: build it
    assert base.build.no_patches is False                       # the base profile is untouched
    label, upd = bench.parse_build("name=old,binary=/opt/old/llama-server")
    assert label == "old" and str(bench.build_profile(base, upd, label).server_binary) == "/opt/old/llama-server"
    with pytest.raises(LlamactlError, match="--build b: backend"):
        bench.build_profile(base, {"backend": "tpu"}, "b")


def test_default_arms_are_mtp_off_and_on():
    assert [a.label for a in bench.mtp_arms(profiles.Profile(model="m", draft_model="d"))] == ["mtp-off", "mtp-on"]
    assert [a.label for a in bench.mtp_arms(profiles.Profile(model="m"))] == ["mtp-off"]


def test_exit_code_for_a_regression_is_distinct():
    assert int(ExitCode.REGRESSION) == 6
    assert list(ExitCode).count(ExitCode.REGRESSION) == 1 and len({int(c) for c in ExitCode}) == len(list(ExitCode))


@pytest.mark.parametrize("args, message", [
    (["--warn-below", "0.8", "--fail-below", "0.9"], "0 < fail-below <= warn-below <= 1"),
    (["--baseline", "nothing-here"], "not 'last', a history run id, or a bench JSON file"),
    (["--baseline", "42"], "no run 42 in the history store"),
    (["--build", "series"], "give two or more"),
    (["--build", "series", "--build", "series"], "labels must differ"),
    (["--build", "series", "--build", "backend=tpu"], "--build backend=tpu: backend"),
])
def test_cli_bench_gate_options_fail_before_any_work(args, message, tmp_path):
    cp = subprocess.run([sys.executable, "-m", "llamactl", "bench", "tiny-gemma4-mtp", "--no-env",
                         "--history", str(tmp_path / "h.sqlite"), *args], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2, cp.stdout + cp.stderr
    assert message in cp.stderr and "Traceback" not in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
