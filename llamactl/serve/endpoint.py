"""Where a llama-server listens and how llamactl reaches it: one host form per ``Endpoint``.

llama-server's ``--host`` takes IP addresses and names, comma-separated, or unix socket
paths ending in ``.sock`` (tools/server/server-http.cpp). It binds through cpp-httplib:
``getaddrinfo(host, AI_PASSIVE)``, the first address that binds wins, ``SO_REUSEADDR`` is
set, and an IPv6 socket is dual-stack unless several TCP hosts are given
(``IPV6_V6ONLY``). A unix socket is bound as is (nothing unlinks a stale file first, and
nothing removes it at exit). The port checks here judge a port the same way, so a port
that only has connections in TIME-WAIT is free, as it is for the server.

Client side: an IPv6 literal is bracketed in URLs, the wildcards ``0.0.0.0`` and ``::``
are reached on loopback (``127.0.0.1`` / ``::1``), and a unix socket is reached through
httpx's UDS transport with the base URL ``http://localhost``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llamactl.core.errors import BadInput, LlamactlError

if TYPE_CHECKING:   # httpx loads on first use: `run`'s early start imports this module and must stay fast
    import httpx

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
_SUN_PATH_MAX = 107   # sockaddr_un.sun_path is 108 bytes with its terminating NUL

Kind = Literal["ipv4", "ipv6", "name", "unix"]


def split_hosts(value: str) -> list[str]:
    """The hosts of a ``--host`` value (comma-separated, blanks dropped, ``[v6]`` unbracketed)."""
    hosts = []
    for h in str(value).split(","):
        h = h.strip()
        if h.startswith("[") and h.endswith("]"):
            h = h[1:-1]
        if h:
            hosts.append(h)
    if not hosts:
        raise BadInput(f"host {value!r} names no address",
                            hint="use an IP address (127.0.0.1, ::1), a name, or a unix socket path ending in .sock")
    return hosts


def _kind(host: str) -> Kind:
    if host.endswith(".sock"):
        return "unix"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "name"
    return "ipv6" if ip.version == 6 else "ipv4"


@dataclass(frozen=True)
class Endpoint:
    """One address llama-server listens on.

    ``host`` is what llama-server gets (an absolute path for a unix socket), ``port`` is
    None for a unix socket and ``uds`` is the socket's path (else None).
    """

    host: str
    port: int | None = None
    uds: Path | None = None

    @classmethod
    def parse(cls, host: str, port: int | None, base: Path | None = None) -> "Endpoint":
        """An endpoint for one host (not a comma list); a relative socket path is resolved against ``base`` (cwd).

        Raises LlamactlError for an empty host or a socket path that a ``sockaddr_un`` cannot hold.
        """
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise BadInput("host is empty", hint="use 127.0.0.1, ::1, 0.0.0.0, a name, or a path ending in .sock")
        if _kind(host) == "unix":
            path = Path(os.path.abspath(Path(host).expanduser() if base is None else (base / Path(host).expanduser())))
            if len(os.fsencode(str(path))) > _SUN_PATH_MAX:
                raise BadInput(f"unix socket path {path} is {len(os.fsencode(str(path)))} bytes; "
                                    f"the system allows at most {_SUN_PATH_MAX}", hint="use a shorter path")
            return cls(str(path), None, path)
        return cls(host, port, None)

    # ---- what it is -------------------------------------------------------------------------
    @property
    def kind(self) -> Kind:
        return "unix" if self.uds is not None else _kind(self.host)

    @property
    def is_wildcard(self) -> bool:
        """Listens on every interface (``0.0.0.0`` / ``::``)."""
        return self.host in WILDCARDS

    @property
    def is_loopback(self) -> bool:
        if self.uds is not None:
            return True
        if self.kind == "name":
            return self.host == "localhost"
        try:
            return ipaddress.ip_address(self.host.split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    @property
    def connect_host(self) -> str:
        """The host the client dials: loopback for a wildcard, else the host itself."""
        return WILDCARDS.get(self.host, self.host)

    # ---- URLs and clients ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The client's base URL (no trailing slash); ``http://localhost`` for a unix socket."""
        if self.uds is not None:
            return "http://localhost"
        h = self.connect_host
        if ":" in h:   # IPv6 literal (RFC 3986 brackets; a zone id's % is escaped)
            h = "[" + h.replace("%", "%25") + "]"
        return f"http://{h}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to show people: ``http://[::1]:8080``, or ``unix:///abs/path.sock``."""
        return f"unix://{self.uds}" if self.uds is not None else self.base_url

    def curl_hint(self, path: str = "/health") -> str:
        """A curl command line for ``path`` on this endpoint."""
        if self.uds is not None:
            return f"curl --unix-socket {self.uds} {self.base_url}{path}"
        return f"curl {self.base_url}{path}"

    def transport(self, **kw: Any) -> httpx.HTTPTransport:
        """An httpx transport to this endpoint (``uds=`` for a unix socket); ``kw`` go to HTTPTransport."""
        import httpx

        if self.uds is not None:
            kw["uds"] = str(self.uds)
        return httpx.HTTPTransport(**kw)

    def client(self, *, limits: httpx.Limits | None = None, **kw: Any) -> httpx.Client:
        """An httpx client to this endpoint; ``limits`` go to the transport, other ``kw`` to the Client.

        Environment proxies are not used: the server is local (loopback, a unix socket, or an
        address given explicitly).
        """
        import httpx

        tkw: dict[str, Any] = {}
        if limits is not None:
            tkw["limits"] = limits
        return httpx.Client(transport=self.transport(**tkw), **kw)

    def with_port(self, port: int) -> "Endpoint":
        return self if self.uds is not None else Endpoint(self.host, port, None)

    # ---- binding, the way llama-server binds ---------------------------------------------------
    def probe_bind(self, v6only: bool = False) -> None:
        """Check that llama-server could bind here now; raises LlamactlError naming the holder if not.

        TCP: bind like cpp-httplib (``SO_REUSEADDR``, first address of ``getaddrinfo`` that
        binds). Unix socket: the directory must exist, and an existing file must be a socket
        that nobody accepts on (a stale one is removed by ``clear_stale`` at launch).
        """
        if self.uds is not None:
            self._probe_uds()
            return
        assert self.port is not None
        try:
            s = bind_like_server(self.host, self.port, v6only)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LlamactlError(f"port {self.port} on {self.host} is already in use{held_by(self.port, self.host)}",
                                    hint="stop what listens there, pick --port N, or use --port auto") from exc
            raise LlamactlError(f"cannot bind {self.host}:{self.port}: {exc.strerror or exc}") from exc
        s.close()

    def _probe_uds(self) -> None:
        assert self.uds is not None
        if not self.uds.parent.is_dir():
            raise BadInput(f"cannot create unix socket {self.uds}: directory {self.uds.parent} does not exist")
        try:
            st = self.uds.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise BadInput(f"{self.uds} exists and is not a unix socket", hint="remove it or pick another .sock path")
        if uds_live(self.uds):
            raise LlamactlError(f"unix socket {self.uds} is already in use{held_by_uds(self.uds)}",
                                hint="stop what listens there or pick another .sock path")

    def clear_stale(self) -> None:
        """Remove this unix socket's file if nobody listens on it.

        Before launch (llama-server cannot bind over a stale file) and after the server is
        gone (it leaves the file behind). A no-op for TCP and for a live socket.
        """
        if self.uds is not None and self.uds.is_socket() and not uds_live(self.uds):
            remove_socket(self.uds)


def _addrinfo(host: str, port: int) -> list[tuple]:
    try:
        return socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BadInput(f"cannot resolve host {host!r}: {exc.strerror}",
                            hint="use an IP address (127.0.0.1, ::1, 0.0.0.0, ::), a name that resolves, or a path ending in .sock") from exc


def bind_like_server(host: str, port: int, v6only: bool = False) -> socket.socket:
    """A socket bound the way llama-server binds ``host:port`` (the caller closes it); raises OSError."""
    last: OSError | None = None
    for family, type_, proto, _, addr in _addrinfo(host, port):
        try:
            s = socket.socket(family, type_, proto)
        except OSError as exc:
            last = exc
            continue
        try:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            return s
        except OSError as exc:
            s.close()
            last = exc
    raise last or OSError(errno.EADDRNOTAVAIL, f"no address for {host}")


def free_port(host: str = "127.0.0.1", others: list[str] | None = None, v6only: bool = False) -> int:
    """A port the server can bind on ``host`` (and on every host in ``others``) right now.

    Raises LlamactlError when the host cannot be bound at all (unknown name, no such address).
    """
    for _ in range(20):
        try:
            with bind_like_server(host, 0, v6only) as s:
                port = s.getsockname()[1]
        except OSError as exc:
            raise LlamactlError(f"cannot bind {host}: {exc.strerror or exc}") from exc
        try:
            for h in others or []:
                bind_like_server(h, port, v6only).close()
        except OSError:
            continue
        return port
    raise LlamactlError(f"found no port free on all of {', '.join([host, *(others or [])])}")


def uds_live(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def remove_socket(path: Path) -> None:
    try:
        if path.is_socket():
            path.unlink()
    except OSError:
        pass


def _overlaps(a: str, b: str) -> bool:
    if a == b or a in WILDCARDS or b in WILDCARDS or not a or not b:
        return True
    try:
        x, y = ipaddress.ip_address(a.split("%", 1)[0]), ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return True   # a name: may resolve to either
    mx = x.ipv4_mapped if x.version == 6 else x
    my = y.ipv4_mapped if y.version == 6 else y
    return (mx or x) == (my or y)


def _who(pid: int | None) -> str:
    if pid is None:
        return ""
    try:
        import psutil
        return f"pid {pid} ({psutil.Process(pid).name()})"
    except Exception:   # gone, or not ours to look at
        return f"pid {pid}"


def held_by(port: int, host: str = "") -> str:
    """``": held by pid N (name)"`` for the listener on ``port`` where the system tells, else ``""``."""
    try:
        import psutil
        conns = psutil.net_connections(kind="inet")
    except Exception:   # AccessDenied (macOS), no psutil, no /proc
        return ""
    owners = sorted({_who(c.pid) for c in conns
                     if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                     and _overlaps(c.laddr.ip, host) and c.pid is not None})
    return f": held by {', '.join(owners)}" if owners else ""


def held_by_uds(path: Path) -> str:
    """``": held by pid N (name)"`` for the listener on unix socket ``path`` where the system tells."""
    try:
        import psutil
        conns = psutil.net_connections(kind="unix")
    except Exception:
        return ""
    owners = sorted({_who(c.pid) for c in conns if c.laddr == str(path) and c.pid is not None
                     and c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE)})
    return f": held by {', '.join(owners)}" if owners else ""


def listen_endpoints(host: str, port: int | Literal["auto"], base: Path | None = None,
                     probe: bool = True) -> list[Endpoint]:
    """Every endpoint of a ``--host`` value with its port, checked the way llama-server binds.

    ``port='auto'`` picks one port free on every TCP host. A fixed port must be bindable now
    (a port with only TIME-WAIT connections is); ``probe=False`` skips that check (a port our
    own early-started server holds). Raises LlamactlError naming the holder of a port or
    socket that a live listener has, an unresolvable name, or a bad socket path.
    """
    eps = [Endpoint.parse(h, None, base) for h in split_hosts(host)]
    tcp = [e for e in eps if e.uds is None]
    v6only = len(tcp) > 1   # llama-server: with several TCP hosts, :: does not also claim 0.0.0.0
    if tcp:
        p = free_port(tcp[0].host, [e.host for e in tcp[1:]], v6only) if port == "auto" else int(port)
        eps = [e.with_port(p) for e in eps]
    seen: set[str] = set()
    for e in eps:
        key = e.host
        if key in seen:
            raise BadInput(f"host {e.host} is listed twice in {host!r}")
        seen.add(key)
        if probe:
            e.probe_bind(v6only)
    return eps


def exposure_warning(host: str) -> str | None:
    """A one-line warning when ``host`` listens beyond this machine (wildcard or non-loopback address)."""
    try:
        eps = [Endpoint.parse(h, None) for h in split_hosts(host)]
    except LlamactlError:
        return None
    wide = [e.host for e in eps if not e.is_loopback]
    if not wide:
        return None
    every = " (every interface)" if any(h in WILDCARDS for h in wide) else ""
    return (f"llama-server listens on {', '.join(wide)}{every}: other machines can reach it"
            " (set api_key, or use host 127.0.0.1)")
