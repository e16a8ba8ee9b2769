"""Issue 21 against the real built llama-server: an exported preset runs the server llamactl's argv runs,
and router mode (`run --router`, the router checks) with two tiny Gemma 4 targets of different sizes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llamactl.judge import router_checks as rc
from llamactl.judge.status import Status
from llamactl.serve import launcher, profiles, router as router_lib
from llamactl.serve.dialect import parse_help
from llamactl.serve.server import ServerProcess, free_port

A, B = "tiny-gemma4-mtp", "tiny-gemma4-bench"


def _resolve(name: str, **cli) -> profiles.Resolved:
    return profiles.resolve(name, environ={}, cli=cli or None)


@pytest.fixture(scope="module")
def members(built) -> list[profiles.Resolved]:
    return [_resolve(A), _resolve(B)]


def _ctx(plan: router_lib.RouterPlan, sp: ServerProcess, client: httpx.Client, run_dir: Path,
         probe: str | None = rc.PROBE) -> rc.RouterContext:
    return rc.RouterContext(sp.url, client, plan, sp, run_dir, probe, 60.0)


class Router:
    """A started router whose preset may be edited before the start (a broken situation on purpose)."""

    def __init__(self, members: list[profiles.Resolved], run_dir: Path, models_max: int | None = None,
                 edit=None) -> None:
        self.plan = router_lib.plan_router(members, run_dir / "models.ini", models_max=models_max,
                                           extra_sections=[rc.probe_section(run_dir)])
        if edit:
            self.plan.preset_path.write_text(edit(self.plan.preset_path.read_text()))
        self.sp = router_lib.start(self.plan, run_dir / "server.log")
        self.sp.wait_healthy(30)
        self.client = self.sp.client(timeout=60, headers={"Connection": "close"})
        self.ctx = _ctx(self.plan, self.sp, self.client, run_dir)

    def __enter__(self) -> "Router":
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.sp.stop()


def test_exported_preset_runs_the_server_the_rendered_argv_runs(built, tmp_path, clean_env):
    """The server's own view (/props, /slots, its KV cache log line) through `--models-preset` equals
    the one from llamactl's rendered argv."""
    sets = ["--set", "parallel=2", "--set", "kv_k=q8_0", "--set", "kv_v=q8_0", "--set", "ctx=2048"]
    ini = tmp_path / "tiny.ini"
    cp = subprocess.run([sys.executable, "-m", "llamactl", "profile", "export", A, "--ini", "--no-env", *sets,
                         "--out", str(ini)], capture_output=True, text=True, env=clean_env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    r = _resolve(A, parallel=2, kv_k="q8_0", kv_v="q8_0", ctx=2048)
    p = launcher.plan(r)
    solo = ServerProcess(p.argv, p.host, p.port, tmp_path / "solo.log", env=p.env, drop_env=tuple(p.env_dropped))
    solo.start()
    try:
        solo.wait_healthy(60)
        with solo.client(timeout=60) as c:
            alone = rc.server_view(c, solo.url, solo.log_lines())
    finally:
        solo.stop()
    port = free_port()
    binary = Path(built.binary)
    assert "--models-preset" in parse_help(built.help_text).by_name
    sp = ServerProcess([str(binary), "--models-preset", str(ini), "--host", "127.0.0.1", "--port", str(port)],
                       "127.0.0.1", port, tmp_path / "router.log", drop_env=tuple(p.env_dropped))
    sp.start()
    try:
        sp.wait_healthy(30)
        with sp.client(timeout=60, headers={"Connection": "close"}) as c:
            r1 = c.post(f"{sp.url}/completion", json=rc.completion_body(A))
            assert r1.status_code == 200 and r1.json()["model"] == A
            st = router_lib.model_states(c.get(f"{sp.url}/models").json())[A]
            routed = rc.server_view(c, sp.url, rc.child_log(sp.log_lines(), rc.child_port(st)), A)
    finally:
        sp.stop()
    assert alone == routed
    assert (alone["n_slots"], alone["kv_k"], alone["kv_v"]) == (2, "q8_0", "q8_0")
    assert alone["slots_n_ctx"] == [alone["n_ctx_slot"]] * 2


def test_router_checks_pass_on_a_clean_router(members, tmp_path):
    t = time.monotonic()
    report = rc.run_router(members, tmp_path)
    got = {c.name: (str(c.status), c.detail) for c in report.checks}
    assert got == {n: ("pass", "") for n, _ in rc.ROUTER_CHECKS}, got
    data = {c.name: c.data for c in report.checks}
    assert data["routing"][A]["model"] == A and data["routing"][A]["content"] == data["routing"][A]["alone"]
    assert data["routing"][A]["content"] != data["routing"][B]["content"]    # two different models
    assert data["load_evict"]["evicted"] == A and report.models_max == 1
    assert data["crash_isolation"]["reported"].get("failed") is True
    assert "GGUF" in data["load_failure"]["cause"] and data["load_failure"]["status"]["failed"] is True
    assert time.monotonic() - t < 60


def test_routing_fails_when_a_name_serves_the_other_model(members, tmp_path):
    """Section A names B's files (target and drafter): the router answers as A with B's text."""
    a_files, b_files = ({k: str(v) for k, v in launcher.resolve_models(m.profile).items()} for m in members)

    def swap(text: str) -> str:
        head, sec = text.split(f"[{A}]\n", 1)
        body, rest = sec.split("\n\n", 1)
        for k in ("model", "draft_model"):
            body = body.replace(a_files[k], b_files[k])
        return f"{head}[{A}]\n{body}\n\n{rest}"

    with Router(members, tmp_path, edit=swap) as r:
        assert b_files["model"] in r.plan.preset_path.read_text().split(f"[{A}]")[1].split("[")[0]
        res = rc.run_check("routing", rc.routing, r.ctx)
    assert res.status == Status.FAIL and f"{A} through the router answers" in res.detail


def test_load_evict_fails_when_the_router_keeps_more_than_models_max(members, tmp_path):
    with Router(members, tmp_path, models_max=0) as r:    # unlimited, while the check expects 1
        r.ctx.plan.models_max = 1
        res = rc.run_check("load_evict", rc.load_evict, r.ctx)
    assert res.status == Status.FAIL and "should be unloaded" in res.detail


def test_crash_isolation_fails_when_the_other_model_cannot_serve(members, tmp_path):
    b_model = str(launcher.resolve_models(members[1].profile)["model"])
    with Router(members, tmp_path, models_max=1, edit=lambda t: t.replace(b_model, "/nonexistent/b.gguf")) as r:
        res = rc.run_check("crash_isolation", rc.crash_isolation, r.ctx)
    assert res.status == Status.FAIL and f"{B} does not answer" in res.detail


def test_load_failure_fails_when_the_probe_loads(members, tmp_path):
    with Router(members, tmp_path) as r:
        r.ctx.probe = B       # a model that loads fine
        res = rc.run_check("load_failure", rc.load_failure, r.ctx)
    assert res.status == Status.FAIL and "expected a load failure" in res.detail


def test_a_build_without_router_mode_is_a_skip(members, tmp_path, built):
    text = "\n".join(ln for ln in built.help_text.splitlines() if not ln.startswith("--models-"))
    binary = launcher.Binary(Path(built.binary), parse_help(text), None)
    with pytest.raises(router_lib.RouterUnsupported, match="no router mode"):
        router_lib.plan_router(members, tmp_path / "m.ini", binary=binary)


def test_run_router_ctrl_c_leaves_no_process(built, tmp_path, clean_env):
    proc = subprocess.Popen([sys.executable, "-m", "llamactl", "run", "--router", A, B, "--models-max", "1", "--no-env",
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env)
    try:
        url = None
        t_end = time.monotonic() + 60
        while url is None and time.monotonic() < t_end:
            line = proc.stdout.readline()
            m = re.search(r"router ready (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "no 'router ready' line"
        r = httpx.post(f"{url}/completion", json=rc.completion_body(B), timeout=60, headers={"Connection": "close"})
        assert r.status_code == 200 and r.json()["model"] == B
        router = next(c for c in psutil.Process(proc.pid).children() if "--models-preset" in c.cmdline())
        kids = router_lib.child_processes(router.pid)
        assert set(kids) == {B}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    for pid in (router.pid, *kids.values()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"pid {pid} left running"
