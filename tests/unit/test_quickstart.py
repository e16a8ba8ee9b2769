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
