"""Crash reports from real llama-server logs (captured from the fork's -np 2 + MTP abort)."""

from pathlib import Path

import pytest

from llamactl.serve.server import LogLine, describe_exit, parse_log_line, root_cause
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


def test_plain_exit_names_the_first_error_not_the_cascade():
    lines = ["srv load_model: loading model 'x.gguf'", "gguf_init_from_file_impl: failed to read magic",
             "error: failed to load model 'x.gguf'", "srv main: exiting due to model loading error"]
    crash = describe_exit(1, lines, Path("/l"))
    assert crash.signal is None and crash.assert_line is None
    assert crash.summary() == "llama-server exit code 1: gguf_init_from_file_impl: failed to read magic"


# real logs of the upstream CPU build (0c1e57098), one per way a server exits during load
ROOT_CAUSES = {
    "upstream-qv-fa-off.log": "llama_init_from_model: quantized V cache requires flash_attn to be enabled",
    "upstream-qv-fa-off-noprefix.log": "llama_init_from_model: quantized V cache requires flash_attn to be enabled",
    "upstream-not-gguf.log": "gguf_init_from_reader: invalid magic characters: 'hell', expected 'GGUF'",
    "upstream-unknown-arch.log": "llama_model_load: error loading model: unknown model architecture: 'foobar'",
    "upstream-missing-key.log": "llama_model_load: error loading model: error loading model hyperparameters: "
                                "key not found in model: llama.context_length",
    "upstream-missing-file.log": "gguf_init_from_file: failed to open GGUF file '/tmp/cz/nope.gguf' (No such file or directory)",
    "upstream-bad-arg.log": 'error while handling argument "--spec-type": unknown speculative type: bogus',
}


@pytest.mark.parametrize("name", sorted(ROOT_CAUSES))
def test_root_cause_of_real_early_exits(name):
    lines = (FIXTURES / "logs" / name).read_text().splitlines()
    assert root_cause(lines) == ROOT_CAUSES[name]
    crash = describe_exit(1, lines, Path("/l"))
    assert crash.error_line == ROOT_CAUSES[name]
    assert crash.summary() == f"llama-server exit code 1: {ROOT_CAUSES[name]}"


@pytest.mark.parametrize("name", ["upstream-tiny-mtp-healthy.log", "upstream-tiny-mtp-healthy-noprefix.log"])
def test_healthy_logs_have_no_root_cause(name):
    """Error-level lines llama.cpp calls normal (the MTP assistant during memory fitting) are no cause."""
    lines = (FIXTURES / "logs" / name).read_text().splitlines()
    assert any("is normal" in ln for ln in lines)
    assert root_cause(lines) is None
    assert describe_exit(-9, lines, Path("/l")).summary() == "llama-server killed by SIGKILL"


def test_level_parsing_prefix_colour_jsonl():
    assert parse_log_line("0.00.835.950 E llama_init_from_model: boom") == LogLine("E", "llama_init_from_model: boom")
    assert parse_log_line("\x1b[34m0.01.913.751\x1b[0m \x1b[31mE cmn  common_init_: failed\x1b[0m") == \
        LogLine("E", "common_init_: failed")
    assert parse_log_line("W srv  llama_server: security") == LogLine("W", "llama_server: security")
    assert parse_log_line('{"type":"log","time":5,"level":"error","msg":"llama_model_load: bad\\n"}') == \
        LogLine("E", "llama_model_load: bad")
    assert parse_log_line("srv    load_model: loading") == LogLine(None, "load_model: loading")


def test_jsonl_log_root_cause():
    lines = ['{"type":"log","time":1,"level":"info","msg":"load_model: loading model"}',
             '{"type":"log","time":2,"level":"error","msg":"llama_init_from_model: quantized V cache requires flash_attn"}',
             '{"type":"log","time":3,"level":"error","msg":"srv    load_model: failed to create context"}']
    assert root_cause(lines) == "llama_init_from_model: quantized V cache requires flash_attn"


def test_fork_style_log_without_levels():
    """The fork (0a635dcd9) sets no log prefix: its rule's message, then the cascade, no level letters."""
    lines = ["llama_model_loader: - kv  12: tokenizer.chat_template str = {{ raise_exception('invalid role') }}",
             "print_info: n_ctx_train = 131072",
             "llama_init_from_model: turbo cache types require flash_attn - enabling automatically",
             "llama_init_from_model: V cache quantization requires flash_attn",
             "common_init_from_params: failed to create context with model 'm.gguf'",
             "srv    load_model: failed to load model, 'm.gguf'",
             "srv    operator(): operator(): cleaning up before exit...",
             "main: exiting due to model loading error"]
    assert root_cause(lines) == "llama_init_from_model: V cache quantization requires flash_attn"


def test_assert_wins_over_error_lines():
    lines = ["0.00.001.000 E srv  something: failed earlier", "../ggml.c:10: GGML_ASSERT(x) failed", "#0 0x1 in ggml_abort"]
    crash = describe_exit(-6, lines, Path("/l"))
    assert crash.summary() == "llama-server killed by SIGABRT: ../ggml.c:10: GGML_ASSERT(x) failed"


def test_no_error_line():
    crash = describe_exit(-9, ["all fine", "still fine"], Path("/l"))
    assert crash.summary() == "llama-server killed by SIGKILL" and crash.frames == []


def test_gdb_backtrace_noise_is_not_the_root_cause():
    """ggml prints its abort backtrace through gdb when gdb is installed: its source-listing lines
    ("30\t../sysdeps/...: No such file or directory.") are not what went wrong."""
    lines = ["/src/llama-batch.cpp:45: bisect fault: more than one slot decodes", "[New LWP 11455]",
             'Using host libthread_db library "/lib/x86_64-linux-gnu/libthread_db.so.1".',
             "0x00007f in __GI___wait4 (pid=1) at ../sysdeps/unix/sysv/linux/wait4.c:30",
             "30\t../sysdeps/unix/sysv/linux/wait4.c: No such file or directory.",
             "58\t../sysdeps/nptl/libc_start_call_main.h: No such file or directory."]
    assert root_cause(lines) is None
    crash = describe_exit(-6, lines, Path("/l"))
    assert crash.assert_line == lines[0] and crash.error_line is None


def test_frames_from_ggmls_gdb_backtrace_after_the_thread_list():
    lines = ["/src/ggml.c:3665: GGML_ASSERT(ggml_nelements(a) == ne0*ne1*ne2) failed",
             *[f"llama_model_loader: - kv {i}: tokenizer.x" for i in range(60)], *[f"[New LWP {i}]" for i in range(12)],
             "0x00007f in __GI___wait4 (pid=1) at ../sysdeps/unix/sysv/linux/wait4.c:30",
             "#0  0x00007f in __GI___wait4 (pid=1) at ../sysdeps/unix/sysv/linux/wait4.c:30",
             "#3  0x0000564 in ggml_reshape_3d ()",
             "#4  0x0000565 in llm_graph_context::build_attn(llm_graph_input_attn_kv_iswa*) const ()"]
    crash = describe_exit(-6, lines, Path("/l"))
    assert crash.frames[0].startswith("#0") and "build_attn" in crash.frames[-1]
    assert not any("llama_model_loader" in f for f in crash.frames)


def test_an_assert_followed_by_a_backtrace_longer_than_the_tail_is_still_found(tmp_path):
    """gdb's backtrace of every thread can outrun the 4000-line tail (CI: the bisect test lost its
    signature): the crash report reads the assert from the log file."""
    import sys

    from llamactl.serve.server import ServerProcess

    log = tmp_path / "server.log"
    script = ("import sys\nprint('srv  main: listening', flush=True)\n"
              "print('/src/llama-context.cpp:123: bisect fault: more than one slot decodes', flush=True)\n"
              "for i in range(6000): print(f'#{i % 30} 0x00007f0000{i:06x} in ggml_graph_compute ()')\n"
              "sys.stdout.flush()\nimport os, signal\nos.kill(os.getpid(), signal.SIGABRT)\n")
    sp = ServerProcess([sys.executable, "-c", script], "127.0.0.1", 1, log)
    sp.start()
    assert sp.proc is not None
    sp.proc.wait(timeout=30)
    crash = sp.crash()
    assert crash.signal == "SIGABRT"
    assert crash.assert_line == "/src/llama-context.cpp:123: bisect fault: more than one slot decodes"
    assert "bisect fault: more than one slot decodes" in crash.summary()


def test_abort_written_between_a_log_lines_prefix_and_its_text():
    """llama.cpp's log thread writes a line's prefix and its text apart: an abort from the decoding thread
    can land between them (seen in CI: the bisect signature was lost). The abort is still found, without
    the prefix, and a log line glued after its text is cut off."""
    ab = "/root/build/src/llama-batch.cpp:45: bisect fault: more than one slot decodes"
    for line in (f"0.00.115.435 I {ab}", f"\x1b[32m0.00.115.435 I \x1b[0m{ab}", f"0.00.115.435 W {ab}",
                 f"{ab}0.00.115.463 I slot init_sampler: id  1 | task 36 | init sampler",
                 f"0.00.115.435 I {ab}0.00.115.463 I slot init_sampler: id  1"):
        lines = ["0.00.115.429 I slot create_check: id  0 | task 39 | superseding context checkpoint", line,
                 "slot   operator(): id  1 | task 36 | cached n_tokens = 100, memory_seq_rm [100, end)"]
        crash = describe_exit(-6, lines, Path("/l"))
        assert crash.assert_line == ab, line
        assert crash.summary() == f"llama-server killed by SIGABRT: {ab}"


def test_a_path_with_line_number_inside_a_log_message_needs_whitespace_before_it():
    # "see http://x.org/a.cpp:12: " is not an abort; a log line quoting a url stays out
    crash = describe_exit(-9, ["0.00.001.000 I srv  log: see http://x.org/a.cpp:12:x"], Path("/l"))
    assert crash.assert_line is None
