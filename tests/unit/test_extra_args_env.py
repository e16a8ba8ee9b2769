"""Issue 16 items 3 and 4: the environment llama-server inherits, and extra_args that fight rendered flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamactl.core.errors import ExitCode
from llamactl.serve.dialect import is_server_env, parse_help, server_environment
from llamactl.serve.profiles import Profile
from llamactl.serve.render import ExtraArgConflict, check_extra_args, render_argv

BASE = dict(model="m.gguf", ctx=4096, parallel=1, kv_k="f16", kv_v="f16")


@pytest.fixture(params=["upstream", "fork"])
def help_(request, upstream_help_text, fork_help_text):
    return parse_help(upstream_help_text if request.param == "upstream" else fork_help_text)


@pytest.mark.parametrize("args,key", [
    (["-c", "8192"], "ctx"), (["--ctx-size", "8192"], "ctx"), (["--ctx-size=8192"], "ctx"),
    (["-np", "4"], "parallel"), (["--parallel", "4"], "parallel"),
    (["-b", "64"], "batch"), (["-ub", "32"], "ubatch"),
    (["-ctk", "q8_0"], "kv_k"), (["--cache-type-v", "q8_0"], "kv_v"),
    (["-fa", "off"], "flash_attn"), (["--port", "9000"], "port"), (["--host", "0.0.0.0"], "host"),
    (["-m", "other.gguf"], "model"), (["--model-draft", "d.gguf"], "draft_model"), (["-md", "d.gguf"], "draft_model"),
    (["--spec-type", "none"], "enable_mtp"), (["--no-slots"], "slots"), (["--metrics"], "metrics"),
    (["--no-kv-unified"], "kv_unified"), (["-kvu"], "kv_unified"), (["-ngl", "0"], "n_gpu_layers"),
    (["--temp", "0.7"], "temperature"), (["-t", "8"], "threads"), (["-a", "x"], "alias"),
    (["--api-key", "k"], "api_key"), (["--reasoning-budget", "0"], "reasoning_budget"),
])
def test_conflicting_extra_args_refused_in_every_spelling(help_, args, key):
    p = Profile(**BASE, extra_args=["--swa-full", *args])
    with pytest.raises(ExtraArgConflict) as exc:
        render_argv(p, help_, Path("/b/llama-server"), port=8080)
    assert exc.value.key == key and exc.value.exit_code == ExitCode.BAD_INPUT
    msg = str(exc.value)
    assert f"extra_args {args[0]!r}" in msg and f"profile key '{key}'" in msg and f"--set {key}=" in msg
    assert "\n" not in msg


def test_the_issue_input(upstream_help_text):
    with pytest.raises(ExtraArgConflict, match=r"set 'ctx' instead, e.g. --set ctx=8192"):
        render_argv(Profile(**BASE, extra_args=["-c", "8192"]), parse_help(upstream_help_text),
                    Path("llama-server"), port=1)


@pytest.mark.parametrize("args", [
    ["--override-kv", "tokenizer.ggml.add_bos_token=bool:false", "--override-kv", "general.name=str:x"],
    ["--lora", "a.gguf", "--lora", "b.gguf"], ["-ot", "exps=CPU"], ["--swa-full"], ["--jinja"],
    ["--rope-scaling", "linear"], ["--keep", "-1"], ["--cache-reuse", "256"],
])
def test_repeatable_and_unrendered_flags_pass(help_, args):
    have = [a for a in args if a.startswith("-") and help_.option(a) is None and not a.lstrip("-").isdigit()]
    if have:
        pytest.skip(f"this build has no {have}")
    argv = render_argv(Profile(**BASE, extra_args=args), help_, Path("/b/llama-server"), port=8080)
    assert argv[-len(args):] == args


def test_fork_mtp_head_alias_is_the_draft_model(fork_help_text):
    with pytest.raises(ExtraArgConflict, match="profile key 'draft_model'"):
        check_extra_args(["--mtp-head", "d.gguf"], parse_help(fork_help_text))


def test_server_environment_drops_llama_server_variables(help_):
    environ = {"PATH": "/usr/bin", "HOME": "/root", "LLAMA_API_KEY": "secret", "LLAMA_ARG_CTX_SIZE": "8192",
               "LLAMA_ARG_SSL_KEY_FILE": "/k.pem", "LLAMA_ARG_N_PARALLEL": "4", "HF_TOKEN": "hf",
               "LLAMA_ARG_SOMETHING_NEW": "1", "CTX": "2048", "OMP_NUM_THREADS": "2"}
    env, dropped = server_environment(environ, {"LLAMA_ARG_CTX_SIZE": "1024", "EXTRA": "x"}, help_)
    assert dropped == ["HF_TOKEN", "LLAMA_API_KEY", "LLAMA_ARG_N_PARALLEL", "LLAMA_ARG_SOMETHING_NEW",
                       "LLAMA_ARG_SSL_KEY_FILE"]
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "CTX": "2048", "OMP_NUM_THREADS": "2",
                   "LLAMA_ARG_CTX_SIZE": "1024", "EXTRA": "x"}          # the profile's env: wins, explicitly


def test_every_env_name_the_help_lists_is_dropped(help_):
    names = help_.env_names()
    assert len(names) > 100 and "LLAMA_ARG_CTX_SIZE" in names and "LLAMA_API_KEY" in names
    assert all(is_server_env(n, help_) for n in names)
    assert not is_server_env("PATH", help_) and not is_server_env("CUDA_VISIBLE_DEVICES", help_)
