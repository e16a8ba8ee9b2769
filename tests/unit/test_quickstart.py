"""`run`'s early start: a remembered argv starts at once, and is adopted only if the plan agrees."""

from __future__ import annotations

import sys
import time

import pytest

from llamactl.serve import quickstart


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()   # not a well-known port: another server on this machine may hold 8080


@pytest.fixture
def qs(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMACTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quickstart, "_early", None)
    monkeypatch.setattr(quickstart, "_args", None)
    monkeypatch.setattr(quickstart, "_entry", None)
    monkeypatch.setattr(quickstart, "_cli", None)
    yield quickstart
    quickstart.discard()


def server_argv(port: int = PORT) -> list[str]:
    return [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)", "--port", str(port)]


def remember(qs, tmp_path, args: list[str], argv: list[str], auto: bool = False) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("ctx: 1\n")
    qs.early_start(args)             # sets the arguments; nothing remembered yet
    assert qs.pending_port() is None
    qs.remember(argv, {"X": "1"}, "127.0.0.1", PORT, auto, [profile], ["CTX"])


def test_remembered_argv_starts_early_and_is_adopted(qs, tmp_path):
    remember(qs, tmp_path, ["p"], server_argv())
    qs.early_start(["p"])
    assert qs.pending_port() == PORT
    early = qs.take(server_argv(), {"X": "1"})
    assert early is not None and early.proc.poll() is None
    lines: list[str] = []
    early.attach(lines.append, lambda: None)
    deadline = time.monotonic() + 30
    while not lines and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lines == ["loading\n"]      # output from before the adoption is not lost
    early.kill()


def test_a_different_plan_kills_the_early_process(qs, tmp_path):
    remember(qs, tmp_path, ["p"], server_argv())
    qs.early_start(["p"])
    proc = qs._early.proc
    assert qs.take(server_argv() + ["--parallel", "2"], {"X": "1"}) is None
    assert proc.poll() is not None


def test_changed_inputs_start_nothing(qs, tmp_path, monkeypatch):
    remember(qs, tmp_path, ["p"], server_argv())
    (tmp_path / "p.yaml").write_text("ctx: 2048\n")
    qs.early_start(["p"])
    assert qs.pending_port() is None
    (tmp_path / "p.yaml").write_text("ctx: 1\n")
    remember(qs, tmp_path, ["p"], server_argv())
    monkeypatch.setenv("CTX", "512")
    qs.early_start(["p"])
    assert qs.pending_port() is None
    qs.early_start(["p", "--parallel", "2"])       # other arguments: another entry
    assert qs.pending_port() is None


def test_auto_port_gets_a_fresh_free_port(qs, tmp_path):
    remember(qs, tmp_path, ["p"], server_argv(PORT), auto=True)
    qs.early_start(["p"])
    port = qs.pending_port()
    assert port is not None and qs._early.argv == server_argv(port)


def test_detach_never_starts_early(qs, tmp_path):
    remember(qs, tmp_path, ["p", "--detach"], server_argv())
    qs.early_start(["p", "--detach"])
    assert qs.pending_port() is None


def test_fixed_port_in_use_starts_nothing(qs, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        remember(qs, tmp_path, ["p"], server_argv(port))
        qs.remember(server_argv(port), {"X": "1"}, "127.0.0.1", port, False, [tmp_path / "p.yaml"], ["CTX"])
        qs.early_start(["p"])
        assert qs.pending_port() is None


HEALTHY_THEN_EXIT = """
import http.server, sys, threading, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"status":"ok"}')
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), H)
threading.Thread(target=s.serve_forever, daemon=True).start()
print("main: server is listening", flush=True)
time.sleep(float(sys.argv[3]))
print("GGML_ASSERT(x) failed", flush=True)
sys.exit(3)
"""


def fast_entry(qs, tmp_path, argv: list[str], json_mode: bool = True) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text("ctx: 1\n")
    qs.early_start(["p"])
    qs.note_cli(quiet=True, json_mode=json_mode)
    ready = {"profile": "p", "health_timeout": 5, "base_url": f"http://127.0.0.1:{PORT}", "host": "127.0.0.1",
             "endpoints": ["/health"]}
    qs.remember(argv, {"X": "1"}, "127.0.0.1", PORT, True, [profile], ["CTX"], ready=ready)


def test_fast_path_supervises_the_early_server_and_reports_its_crash(qs, tmp_path, capsys):
    fast_entry(qs, tmp_path, [sys.executable, "-c", HEALTHY_THEN_EXIT, "--port", str(PORT), "1.0"])
    qs.early_start(["p"])
    port = qs.pending_port()
    assert port is not None
    code = qs.serve_fast()
    out, err = capsys.readouterr()
    assert code == 5                                  # ServerFailed: it exited on its own after ready
    info = __import__("json").loads(out)
    assert info["early_start"] is True and info["url"] == f"http://127.0.0.1:{port}" and info["profile"] == "p"
    assert "GGML_ASSERT" in err and "error:" in err
    assert "GGML_ASSERT(x) failed" in open(info["log"]).read()        # the log is complete
    assert (tmp_path / "cache" / "runs").is_dir()


def test_fast_path_falls_back_when_the_early_server_never_gets_healthy(qs, tmp_path):
    fast_entry(qs, tmp_path, [sys.executable, "-c", "import sys; sys.exit(1)", "--port", str(PORT)])
    qs.early_start(["p"])
    assert qs.pending_port() is not None
    assert qs.serve_fast() is None                    # the normal path runs and reports
    assert list((tmp_path / "cache" / "runs").iterdir()) == []   # no half run directory left


def test_no_fast_path_without_the_cli_choices(qs, tmp_path):
    remember(qs, tmp_path, ["p"], server_argv())      # remembered without note_cli / ready
    qs.early_start(["p"])
    assert qs.pending_port() == PORT and qs.serve_fast() is None
