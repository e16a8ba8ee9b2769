from __future__ import annotations

import socket

import os
from pathlib import Path

import pytest

from llamactl.serve.launcher import recorded_help_path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True, scope="session")
def private_history(tmp_path_factory) -> Path:
    """Runs made by tests (and the llamactl subprocesses they start) go to a private history store."""
    path = tmp_path_factory.mktemp("history") / "history.sqlite"
    os.environ["LLAMACTL_HISTORY"] = str(path)
    return path


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def upstream_help_text() -> str:
    return recorded_help_path("upstream").read_text()


@pytest.fixture
def fork_help_text() -> str:
    p = recorded_help_path("atomic-turboquant")
    return p.read_text()


def llama_server_pids() -> set[int]:
    """Live llama-server processes started by this test session (other sessions on the machine run theirs).

    A process is this session's when its environment holds this session's LLAMACTL_HISTORY
    (``private_history`` sets it; llamactl passes it on to llama-server and RPC workers).
    """
    hist = os.environ.get("LLAMACTL_HISTORY")
    tag = f"LLAMACTL_HISTORY={hist}".encode() if hist else None
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "llama-server":
                    stat = (d / "stat").read_text().split(")")[-1].split()
                    if stat[0] != "Z" and (tag is None or tag in (d / "environ").read_bytes().split(b"\0")):
                        pids.add(int(d.name))
            except OSError:
                pass
    return pids


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_v6 = pytest.mark.skipif(not _has_ipv6(), reason="this machine has no ::1")
