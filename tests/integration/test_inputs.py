"""Issue 16 items 1, 3 and 4 against the real llama-server: YAML boolean words, the inherited
environment, and extra_args that fight the rendered flags."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx

from llamactl.serve import launcher, profiles
from llamactl.serve.dialect import parse_help
from llamactl.serve.render import ExtraArgConflict, check_extra_args
from tests.integration.test_run import read_ready, spawn, wait_gone

LLAMACTL = [sys.executable, "-m", "llamactl"]


def _cmd(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*LLAMACTL, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_inherited_llama_server_variables_do_not_change_the_run(built, clean_env):
    """LLAMA_API_KEY made every check fail with 401; LLAMA_ARG_* would change n_ctx and slots."""
    env = dict(clean_env, LLAMA_API_KEY="secret", LLAMA_ARG_CTX_SIZE="8192", LLAMA_ARG_N_PARALLEL="3",
               LLAMA_ARG_SSL_KEY_FILE="/nonexistent.pem", LLAMA_ARG_SSL_CERT_FILE="/nonexistent.pem")
    p = spawn(["run", "default", "--json", "-q"], env)
    try:
        info = read_ready(p)
        props = httpx.get(f"{info['url']}/props", timeout=30)     # no key: the server has none
        assert props.status_code == 200, props.text
        data = props.json()
        assert data["default_generation_settings"]["n_ctx"] == 4096     # the profile's ctx, not 8192
        assert data["total_slots"] == 1
        r = httpx.post(f"{info['url']}/v1/messages", timeout=120, json={
            "model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["type"] == "message"
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 130
        assert wait_gone(info["pid"], 10)
    finally:
        if p.poll() is None:
            p.kill()
    show = _cmd(["profile", "show", "default", "--json"], env, 60)
    dropped = json.loads(show.stdout)["env_dropped"]
    assert {"LLAMA_API_KEY", "LLAMA_ARG_CTX_SIZE", "LLAMA_ARG_N_PARALLEL", "LLAMA_ARG_SSL_KEY_FILE"} <= set(dropped)
    cmd = _cmd(["profile", "cmd", "default", "--json"], env)
    assert cmd.returncode == 0, cmd.stderr
    assert "LLAMA_API_KEY" in json.loads(cmd.stdout)["env_dropped"]


def test_profile_env_can_pass_a_server_variable_explicitly(built, clean_env):
    env = dict(clean_env, LLAMA_ARG_CTX_SIZE="8192")
    p = spawn(["run", "default", "--json", "-q", "--set", "ctx=null", "--set", "env.LLAMA_ARG_CTX_SIZE=2048"], env)
    try:
        info = read_ready(p)
        data = httpx.get(f"{info['url']}/props", timeout=30).json()
        assert data["default_generation_settings"]["n_ctx"] == 2048    # the profile's env: 2048, not the shell's 8192
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)


def test_extra_args_conflict_refused_before_launch_with_the_real_binary(built, clean_env):
    help_ = parse_help(built.help_text)
    for args, key in ((["-c", "8192"], "ctx"), (["--ctx-size=8192"], "ctx"), (["-np", "2"], "parallel"),
                      (["--no-slots"], "slots"), (["-md", "x.gguf"], "draft_model"), (["-fa", "off"], "flash_attn")):
        try:
            check_extra_args(args, help_)
            raise AssertionError(f"{args} passed")
        except ExtraArgConflict as exc:
            assert exc.key == key
    check_extra_args(["--override-kv", "general.name=str:a", "--override-kv", "general.name=str:b", "--swa-full"], help_)

    cp = _cmd(["run", "default", "--set", 'extra_args=["-c","8192"]'], clean_env)
    assert cp.returncode == 2, cp.stderr
    line = cp.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line
    assert "extra_args '-c'" in line and "profile key 'ctx'" in line and "--set ctx=8192" in line
    assert "ready" not in cp.stdout + cp.stderr       # refused while planning: no server was started
    cp = _cmd(["profile", "cmd", "default", "--json", "--set",
               'extra_args=["--override-kv","general.name=str:a","--override-kv","general.name=str:b"]'], clean_env)
    assert cp.returncode == 0, cp.stderr
    argv, want = json.loads(cp.stdout)["argv"], ["--override-kv", "general.name=str:a", "--override-kv", "general.name=str:b"]
    assert any(argv[i:i + 4] == want for i in range(len(argv))), argv


def test_yaml_boolean_words_reach_the_real_binary(built, clean_env, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: default\nflash_attn: off\nno_warmup: yes\nmetrics: On\n")   # outside profiles/, unquoted
    cp = _cmd(["profile", "cmd", str(mine), "--json"], clean_env)
    assert cp.returncode == 0, cp.stderr
    argv = json.loads(cp.stdout)["argv"]
    assert argv[argv.index("--flash-attn") + 1] == "off" and "--no-warmup" in argv and "--metrics" in argv
    for word, want in (("off", "off"), ("OFF", "off"), ("On", "on")):
        cp = _cmd(["profile", "cmd", "default", "--json", "--set", f"flash_attn={word}"], clean_env)
        assert cp.returncode == 0, cp.stderr
        argv = json.loads(cp.stdout)["argv"]
        assert argv[argv.index("--flash-attn") + 1] == want


def test_server_binary_that_is_not_llama_server(built, clean_env, tmp_path):
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho 'usage: not-the-server [-v]'\n")
    fake.chmod(0o755)
    cp = _cmd(["run", "default", "--set", f"server_binary={fake}"], dict(clean_env, LLAMACTL_CACHE=str(tmp_path / "c")), 60)
    assert cp.returncode == 2 and "is not a llama-server" in cp.stderr and "Traceback" not in cp.stderr
    real = launcher.ensure_binary(profiles.resolve("default", environ={}).profile)   # the built one passes the check
    assert launcher.help_for(real.path).count("--ctx-size") >= 1
