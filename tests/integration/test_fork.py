"""The seed's crash and its fix, on a checkout of the AtomicBot fork (LLAMACTL_FORK_TREE).

CI cannot reach GitHub, so this runs only where a fork tree is provided, e.g.
  git clone https://github.com/AtomicBot-ai/atomic-llama-cpp-turboquant ~/fork
  LLAMACTL_FORK_TREE=~/fork@0a635dcd92ba66c75fccfef91c3e106f4668f367 pytest -m fork
"""

from __future__ import annotations

import os

import pytest

from llamactl.serve import profiles
from llamactl.judge.matrix import expand
from llamactl.judge.validate import run_matrix
from tests.conftest import llama_server_pids

FORK = os.environ.get("LLAMACTL_FORK_TREE")
pytestmark = [
    pytest.mark.fork,
    pytest.mark.skipif(not FORK, reason="set LLAMACTL_FORK_TREE=/path/to/atomic-llama-cpp-turboquant[@commit]; "
                                        "CI has no GitHub access to fetch the fork"),
]
ASSERT = "GGML_ASSERT(ggml_nelements(a) == ne0*ne1*ne2)"


def _run(no_patches: bool):
    cli = {"build": {"source": f"path:{FORK}", "no_patches": no_patches}}
    base = profiles.resolve("tiny-gemma4-mtp-atomic", environ={}, cli=cli)
    return run_matrix(base, expand(base.profile.matrix))


def test_without_series_p2_mtp_aborts_with_the_seeds_assert():
    before = llama_server_pids()
    report = _run(no_patches=True)
    status = {c.cell: c for c in report.cells}
    assert status["parallel=1,enable_mtp=1"].status == "pass"
    assert status["parallel=2,enable_mtp=0"].status == "pass"
    for cell in ("parallel=2,enable_mtp=1,kv=turbo4/turbo4", "parallel=2,enable_mtp=1,kv=f16/f16"):
        c = status[cell]
        assert c.status == "fail" and ASSERT in c.reason, c.reason
        frames = " ".join(c.crash["frames"])
        assert "ggml_reshape_3d" in frames and "ensure_sched_mtp" in frames
    known = status["turbo4,head_dim=64/128 (known fork bug)"]
    assert known.status == "xfail" and "build_attn" in " ".join(known.crash["frames"])
    assert llama_server_pids() - before == set()


def test_with_series_every_cell_passes_and_labelled_counters_grow():
    report = _run(no_patches=False)
    assert report.ok, [(c.cell, c.reason) for c in report.cells]
    assert [c.status for c in report.cells].count("xfail") == 1     # the series does not touch the turbo4 bug
    for c in report.cells:
        if c.overrides.get("enable_mtp"):
            assert c.spec["scheme"] == "labelled" and c.spec["spec_type"] == "mtp"
            assert c.spec["delta"]["draft_tokens"] > 0 and c.acceptance >= 0.9
