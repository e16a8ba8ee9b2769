"""`profile cmd` on a machine without a build renders from the pinned source's recorded --help at once
(it used to start an 8-minute build without a word)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llamactl.serve import launcher
from llamactl.serve.profiles import ENV_VARS, Profile

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_build_the_argv_comes_from_the_recorded_help(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(LLAMACTL_CACHE=str(tmp_path / "cache"), NO_COLOR="1", LLAMACTL_NO_PROGRESS="1")
    t = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "llamactl", "profile", "cmd", "tiny-gemma4-mtp", "--parallel", "2",
                         "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    took = time.monotonic() - t
    assert cp.returncode == 0, cp.stderr
    d = json.loads(cp.stdout)
    assert d["built"] is False and d["rendered_from"] == "recorded --help of upstream"
    assert d["argv"][0] == "llama-server" and "--parallel" in d["argv"] and "--spec-type" in d["argv"]
    assert "not built yet" in cp.stderr and "5-9 minutes" in cp.stderr
    assert not (tmp_path / "cache" / "builds").exists() and took < 60      # nothing was built


def test_recorded_help_exists_for_every_pinned_source_with_a_series():
    for source in ("upstream", "atomic-turboquant"):
        assert launcher.recorded_help_path(source).is_file()
    assert launcher.recorded_binary(Profile.model_validate({"model": "m", "build": {"source": "path:/x"}})) is None
    assert launcher.recorded_binary(Profile.model_validate({"model": "m", "server_binary": "/bin/true"})) is None
