"""Crash reports from real llama-server logs (captured from the fork's -np 2 + MTP abort)."""

from pathlib import Path

from llamactl.serve.server import describe_exit
from tests.conftest import FIXTURES


def test_fork_abort_assert_line_and_frames():
    lines = (FIXTURES / "logs" / "fork-np2-mtp-abort.log").read_text().splitlines()
    crash = describe_exit(-6, lines, Path("/logs/x.log"))
    assert crash.signal == "SIGABRT" and crash.returncode == -6
    assert crash.assert_line == "../src/ggml/src/ggml.c:3665: GGML_ASSERT(ggml_nelements(a) == ne0*ne1*ne2) failed"
    frames = " ".join(crash.frames)
    for f in ("ggml_reshape_3d", "llm_build_gemma4_mtp", "ensure_sched_mtp", "decode_mtp_async"):
        assert f in frames, f
    assert crash.summary() == "llama-server killed by SIGABRT: " + crash.assert_line
    assert len(crash.last_lines) == 15


def test_plain_exit_code_and_error_line():
    lines = ["srv load_model: loading model 'x.gguf'", "gguf_init_from_file_impl: failed to read magic",
             "error: failed to load model 'x.gguf'", "srv main: exiting due to model loading error"]
    crash = describe_exit(1, lines, Path("/l"))
    assert crash.signal is None and crash.summary() == "llama-server exit code 1: error: failed to load model 'x.gguf'"


def test_no_error_line():
    crash = describe_exit(-9, ["all fine", "still fine"], Path("/l"))
    assert crash.summary() == "llama-server killed by SIGKILL" and crash.frames == []
