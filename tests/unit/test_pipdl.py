"""The pinned-download helper: index JSON listing + sha256 check, pip only as a fallback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from llamactl.core import pipdl
from llamactl.core.errors import LlamactlError

BODY = b"sdist bytes " * 1000
SHA = hashlib.sha256(BODY).hexdigest()
PIN = pipdl.Pin("Llama_CPP.python", "0.3.36", SHA)


def index(files: list[dict], body: bytes = BODY, listing_type: str = pipdl.PEP691) -> httpx.MockTransport:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/simple/llama-cpp-python/":
            assert req.headers["accept"] == pipdl.PEP691
            return httpx.Response(200, json={"files": files}, headers={"content-type": listing_type})
        if req.url.path == "/files/llama_cpp_python-0.3.36.tar.gz":
            return httpx.Response(200, content=body)
        return httpx.Response(404)
    return httpx.MockTransport(handler)


FILE = {"filename": "llama_cpp_python-0.3.36.tar.gz", "url": "../../files/llama_cpp_python-0.3.36.tar.gz",
        "hashes": {"sha256": SHA}}


@pytest.fixture(autouse=True)
def no_pip(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://index.test/simple/")
    monkeypatch.setenv("LLAMACTL_NO_PROGRESS", "1")

    def pip(pins, dest, kind, what):
        raise AssertionError("fell back to pip")
    monkeypatch.setattr(pipdl, "_pip", pip)


def test_direct_download_by_sha256(tmp_path):
    other = dict(FILE, filename="llama_cpp_python-0.3.36-cp311-manylinux.whl", hashes={"sha256": "0" * 64})
    got = pipdl.download([PIN], tmp_path, "sdist", "x", transport=index([other, FILE]))
    assert got[PIN] == tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    assert got[PIN].read_bytes() == BODY and not list(tmp_path.glob("*.part"))


def test_served_bytes_that_do_not_match_the_pin_are_refused(tmp_path):
    with pytest.raises(LlamactlError, match=r"sha256 mismatch: llama_cpp_python-0.3.36.tar.gz"):
        pipdl.download([PIN], tmp_path, "sdist", "x", transport=index([FILE], body=b"tampered"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("files,listing_type", [([], pipdl.PEP691), ([FILE], "text/html")])
def test_falls_back_to_pip_when_the_index_cannot_serve_the_pin(tmp_path, monkeypatch, files, listing_type):
    calls = []

    def pip(pins, dest, kind, what):
        calls.append((list(pins), kind))
        return {p: dest / "from-pip.tar.gz" for p in pins}
    monkeypatch.setattr(pipdl, "_pip", pip)
    notes: list[str] = []
    got = pipdl.download([PIN], tmp_path, "sdist", "x", info=notes.append, transport=index(files, listing_type=listing_type))
    assert calls == [([PIN], "sdist")] and got[PIN].name == "from-pip.tar.gz"
    assert len(notes) == 1 and notes[0].endswith("using pip download")


def test_a_wheel_pin_never_takes_an_sdist(tmp_path, monkeypatch):
    monkeypatch.setattr(pipdl, "_pip", lambda pins, dest, kind, what: {p: Path("w.whl") for p in pins})
    got = pipdl.download([PIN], tmp_path, "wheel", "x", transport=index([FILE]))
    assert got[PIN] == Path("w.whl")
