"""Host forms, URLs, clients and port/socket checks judged the way llama-server binds."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import needs_v6

from llamactl.core.errors import LlamactlError
from llamactl.judge.bench import _beside
from llamactl.serve.endpoint import Endpoint, exposure_warning, listen_endpoints, split_hosts
from llamactl.serve.profiles import Profile
from llamactl.serve.server import ServerProcess, ensure_port_free, free_port




# ---- forms and URLs -------------------------------------------------------------------------------

@pytest.mark.parametrize("host,port,base_url", [
    ("127.0.0.1", 8080, "http://127.0.0.1:8080"),
    ("::1", 18555, "http://[::1]:18555"),
    ("[::1]", 18555, "http://[::1]:18555"),
    ("0.0.0.0", 9000, "http://127.0.0.1:9000"),
    ("::", 9000, "http://[::1]:9000"),
    ("localhost", 81, "http://localhost:81"),
    ("fe80::1%eth0", 80, "http://[fe80::1%25eth0]:80"),
])
def test_tcp_hosts_give_valid_urls(host, port, base_url):
    e = Endpoint.parse(host, port)
    assert e.base_url == base_url and e.url == base_url and e.uds is None
    assert e.is_wildcard == (host in ("0.0.0.0", "::"))


def test_unix_socket_path_is_resolved_and_reached_via_localhost(tmp_path):
    e = Endpoint.parse("./llamactl.sock", 8080, base=tmp_path)
    assert e.uds == tmp_path / "llamactl.sock" and e.port is None and e.kind == "unix"
    assert e.host == str(tmp_path / "llamactl.sock")
    assert e.base_url == "http://localhost" and e.url == f"unix://{tmp_path / 'llamactl.sock'}"
    assert e.curl_hint() == f"curl --unix-socket {tmp_path / 'llamactl.sock'} http://localhost/health"


def test_bad_hosts_are_one_line_errors(tmp_path):
    with pytest.raises(LlamactlError, match="host is empty"):
        Endpoint.parse("  ", 1)
    with pytest.raises(LlamactlError, match="names no address"):
        split_hosts(" , ")
    with pytest.raises(LlamactlError, match="the system allows at most 107"):
        Endpoint.parse("/tmp/" + "x" * 120 + ".sock", None)
    with pytest.raises(LlamactlError, match="cannot resolve host 'no-such-host.invalid'"):
        listen_endpoints("no-such-host.invalid", "auto")
    with pytest.raises(LlamactlError, match=r"directory .*nope does not exist"):
        listen_endpoints(str(tmp_path / "nope" / "x.sock"), "auto")
    with pytest.raises(LlamactlError, match="listed twice"):
        listen_endpoints("127.0.0.1,127.0.0.1", "auto")


def test_comma_list_like_llama_server():
    assert split_hosts("127.0.0.1, [::1] ,x.sock") == ["127.0.0.1", "::1", "x.sock"]


def test_exposure_warning_only_beyond_loopback():
    assert "0.0.0.0" in (exposure_warning("0.0.0.0") or "")
    assert "::" in (exposure_warning("::") or "")
    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    assert exposure_warning("./x.sock") is None and exposure_warning("localhost") is None


def test_server_process_url_for_ipv6_and_its_default_endpoint(tmp_path):
    sp = ServerProcess(["x"], "::1", 18555, tmp_path / "log")
    assert sp.url == "http://[::1]:18555"
    sp = ServerProcess(["x"], "0.0.0.0", 18555, tmp_path / "log")
    assert sp.url == "http://127.0.0.1:18555"


def test_bench_second_server_moves_off_a_fixed_port_and_socket():
    p = Profile(model="m.gguf", host="./b.sock", port=8084)
    q = _beside(p, "mtp-on")
    assert q.host == "./b-mtp-on.sock" and q.port == "auto"
    assert _beside(Profile(model="m.gguf", host="::1", port=8084), "mtp-on").host == "::1"


# ---- ports: judged the way llama-server binds -----------------------------------------------------

def _time_wait_port(host: str = "127.0.0.1") -> int:
    """A port whose only socket left is in TIME-WAIT (the server side closed first, as llama-server does)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    lst = socket.socket(fam)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((host, 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    cli = socket.create_connection((host, port))
    conn, _ = lst.accept()
    conn.close()          # active close on the server side -> TIME-WAIT on (host, port)
    cli.recv(1)
    cli.close()
    lst.close()
    return port


def test_port_in_time_wait_is_free_for_the_server():
    port = _time_wait_port()
    with socket.socket() as plain:   # the old check: a bind without SO_REUSEADDR says "in use"
        with pytest.raises(OSError) as exc:
            plain.bind(("127.0.0.1", port))
        assert exc.value.errno == errno.EADDRINUSE
    ensure_port_free("127.0.0.1", port)                        # llama-server would bind it
    assert [e.port for e in listen_endpoints("127.0.0.1", port)] == [port]


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A live TCP listener on 127.0.0.1; yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def test_live_listener_is_refused_naming_the_pid():
    with listening() as port:
        with pytest.raises(LlamactlError) as exc:
            ensure_port_free("127.0.0.1", port)
        msg = str(exc.value)
        assert msg.startswith(f"port {port} on 127.0.0.1 is already in use: held by pid {os.getpid()} (")
        with pytest.raises(LlamactlError, match=f"held by pid {os.getpid()}"):   # a wildcard overlaps it
            ensure_port_free("0.0.0.0", port)


def test_holder_unknown_falls_back_to_the_plain_message(monkeypatch):
    import psutil

    def denied(*a, **k):
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    with listening() as port:
        with pytest.raises(LlamactlError) as exc:
            ensure_port_free("127.0.0.1", port)
    assert str(exc.value).startswith(f"port {port} on 127.0.0.1 is already in use (")


@needs_v6
def test_ipv6_free_port_time_wait_and_live_listener():
    port = free_port("::1")
    assert 0 < port < 65536
    ensure_port_free("::1", _time_wait_port("::1"))
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(LlamactlError, match=rf"port {port} on ::1 is already in use: held by pid {os.getpid()}"):
            ensure_port_free("::1", port)


@needs_v6
def test_several_tcp_hosts_share_one_free_port():
    eps = listen_endpoints("127.0.0.1,::1", "auto")
    assert len({e.port for e in eps}) == 1 and [e.base_url.split("//")[1].rsplit(":", 1)[0] for e in eps] == ["127.0.0.1", "[::1]"]


# ---- unix sockets --------------------------------------------------------------------------------

class _Health(BaseHTTPRequestHandler):
    def do_GET(self):   # noqa: N802
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):   # noqa: D401
        pass

    def address_string(self) -> str:
        return "uds"


class _UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def short_tmp():
    """tmp_path can exceed sun_path's 107 bytes; sockets live in a short directory."""
    import tempfile
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        yield Path(d)


def test_unix_socket_client_reaches_a_server(short_tmp):
    path = short_tmp / "h.sock"
    srv = _UnixHTTP(str(path), _Health)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        e = Endpoint.parse(str(path), None)
        with e.client(timeout=5) as c:
            r = c.get(f"{e.base_url}/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        sp = ServerProcess(["x"], str(path), 0, short_tmp / "log", endpoint=e, api_key="k")
        with sp.client(timeout=5) as c:
            assert c.get(f"{sp.url}/health").status_code == 200 and c.headers["Authorization"] == "Bearer k"
        with pytest.raises(LlamactlError, match=rf"unix socket {path} is already in use: held by pid {os.getpid()}"):
            e.probe_bind()
        e.clear_stale()
        assert path.exists(), "a live socket is never removed"
    finally:
        srv.shutdown()
        srv.server_close()


def test_stale_socket_is_cleared_and_a_plain_file_refused(short_tmp):
    path = short_tmp / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()                      # the file stays: what a dead llama-server leaves behind
    e = Endpoint.parse(str(path), None)
    e.probe_bind()                 # stale: not an error
    e.clear_stale()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(LlamactlError, match="exists and is not a unix socket"):
        e.probe_bind()
    e.clear_stale()
    assert path.read_text() == "not a socket"


def test_ensure_port_free_wraps_bind_errors():
    with pytest.raises(LlamactlError, match="cannot bind 192.0.2.1:80"):   # TEST-NET: not on this machine
        ensure_port_free("192.0.2.1", 80)
