"""One HTTP/1.1 exchange over a fresh connection, timed phase by phase: the layer under the http and flow probes.

Every call opens a new connection (as blackbox_exporter does), so each run
measures what a new client would see: name resolution, TCP connect, the TLS
handshake, the server's processing time and the body's transfer. Only the
expensive, immutable parts are shared across calls:
:class:`~vouch.probes.tlsinfo.TlsContexts` keeps one :class:`ssl.SSLContext`
per :class:`TlsClientSpec` (loading a CA bundle costs milliseconds) and the
parsed peer certificates.

It is written on asyncio streams and ``h11`` rather than an HTTP client library
because CPU per probe is what limits how many probes one process can run: a
shared ``httpx.AsyncClient`` costs about twice as much per fresh-connection
request, and a new one per probe about forty times as much.

Every way an exchange can fail raises :class:`~vouch.probes.base.ProbeFailure`
with one documented :class:`~vouch.probes.base.Reason`; the caller's
:class:`~vouch.probes.attempts.Timings` keeps the phases measured so far, also
when the caller's timeout cancels the exchange midway.

Example (what a multi-step probe does for one step)::

    contexts = TlsContexts()                     # one per probe, or one per process
    timings = Timings()
    request = WireRequest(
        "https://shop.example/api/orders",
        method="POST",
        headers=(("content-type", "application/json"), ("authorization", f"Bearer {token}")),
        body=b'{"sku": "A-1"}',
    )
    try:
        answer = await exchange(request, tls=TlsClientSpec(ca_file="ca.pem"), contexts=contexts, timings=timings)
    except ProbeFailure as failure:
        ...                                      # failure.reason, failure.message, failure.phases
    answer.status_code, answer.header("location"), answer.json()["id"], timings.phases["processing"]
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import SplitResult, urljoin, urlsplit

import h11

from vouch.probes.attempts import Timings
from vouch.probes.base import ProbeFailure, Reason
from vouch.probes.settings import TlsClientSpec
from vouch.probes.tlsinfo import PeerTls, TlsContexts, peer_tls, verify_failure

__all__ = [
    "DEFAULT_MAX_BODY",
    "REDIRECT_CODES",
    "Connection",
    "IpProtocol",
    "WireAnswer",
    "WireRequest",
    "connect",
    "exchange",
]

DEFAULT_MAX_BODY = 1 << 20
"""Bytes of a response body kept for assertions; the rest is read and dropped."""
DRAIN_LIMIT = 16 << 20
"""Bytes read in all before an endless body is cut off (the connection is then aborted)."""
READ_SIZE = 1 << 16
MAX_HEADER_BYTES = 1 << 16
"""Largest response head accepted; a bigger one is a protocol error."""
USER_AGENT = "vouch-probe/0.1"
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CROSS_HOST_DROPPED = frozenset({"authorization", "cookie", "proxy-authorization"})
"""Request headers not carried to another host on a redirect (as Go's client does)."""
_DEFAULT_TLS = TlsClientSpec()

IpProtocol = Literal["ip4", "ip6"]


@dataclass(frozen=True)
class WireRequest:
    """One request: where, what, and whether redirects are followed (each hop on a new connection).

    ``headers`` are sent as given, after ``host``, ``user-agent``, ``connection``
    and ``content-length`` (set here unless given). On a redirect to another
    host, ``authorization``, ``cookie`` and ``proxy-authorization`` are dropped;
    301, 302 and 303 turn a request other than GET or HEAD into a GET without body.
    """

    url: str
    method: str = "GET"
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    follow_redirects: bool = True
    max_redirects: int = 5
    ip_protocol: IpProtocol | None = None
    """Preferred address family when a name resolves to both; the other one is used when it is the only one."""


@dataclass(frozen=True)
class WireAnswer:
    """The final response of an exchange (after redirects, if followed).

    ``headers`` keeps the order received, names in lower case. ``body`` holds
    at most ``max_body`` bytes; ``truncated`` says more came. ``elapsed`` is the
    whole exchange, all hops, in seconds. ``tls`` describes the final hop's TLS
    session, ``None`` over plain HTTP.
    """

    url: str
    status_code: int
    reason: str
    http_version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    truncated: bool
    redirects: int
    elapsed: float
    tls: PeerTls | None = None

    @property
    def tls_expiry(self) -> float | None:
        """Earliest expiry (epoch seconds) of the certificates the server presented."""
        return self.tls.earliest_expiry if self.tls is not None else None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def text(self) -> str:
        """The body as text (UTF-8; undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` when it is not JSON."""
        return json.loads(self.body)


@dataclass
class Connection:
    """An open connection from :func:`connect`; ``tls`` is set when TLS was negotiated."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: tuple[str, int]
    tls: PeerTls | None

    def close(self) -> None:
        """Close after a complete exchange (TLS sends close_notify); nothing to await."""
        self.writer.close()

    def abort(self) -> None:
        """Drop the connection at once, after a failure or a cancellation."""
        self.writer.transport.abort()


async def exchange(
    request: WireRequest,
    *,
    tls: TlsClientSpec | None,
    contexts: TlsContexts,
    max_body: int = DEFAULT_MAX_BODY,
    timings: Timings | None = None,
) -> WireAnswer:
    """Send ``request`` over a new connection and read the answer; raise ProbeFailure for anything wrong.

    ``tls`` applies to ``https`` URLs (``None`` means verify against the
    system's CAs). A 3xx with a ``location`` is followed while
    ``request.follow_redirects`` allows and at most ``request.max_redirects``
    times (more is ``http_redirect``); an unfollowed one is returned as is.
    The status code is not judged here: see :mod:`vouch.probes.assertions`.
    """
    timings = timings if timings is not None else Timings()
    try:
        return await _follow(request, tls if tls is not None else _DEFAULT_TLS, contexts, max_body, timings)
    except ProbeFailure as failure:
        failure.phases = dict(timings.phases)  # now that every phase in progress has been added
        raise


async def _follow(
    request: WireRequest, tls: TlsClientSpec, contexts: TlsContexts, max_body: int, timings: Timings
) -> WireAnswer:
    started = time.perf_counter()
    url, method, body, headers = request.url, request.method, request.body, list(request.headers)
    origin = urlsplit(url).hostname
    hops = 0
    while True:
        answer = await _hop(
            url,
            method,
            headers,
            body,
            tls=tls if tls.server_name is None or urlsplit(url).hostname == origin else _without_server_name(tls),
            contexts=contexts,
            timings=timings,
            max_body=max_body,
            ip_protocol=request.ip_protocol,
        )
        location = answer.header("location")
        if not (request.follow_redirects and answer.status_code in REDIRECT_CODES and location):
            return dataclasses.replace(answer, redirects=hops, elapsed=time.perf_counter() - started)
        if hops >= request.max_redirects:
            raise ProbeFailure(
                Reason.HTTP_REDIRECT,
                f"more than {request.max_redirects} redirects (the last to {_shorten(location)})",
            )
        hops += 1
        next_url = urljoin(url, location)
        if urlsplit(next_url).scheme not in ("http", "https"):
            raise ProbeFailure(Reason.HTTP_REDIRECT, f"redirect to unsupported URL {_shorten(next_url)}")
        if urlsplit(next_url).hostname != urlsplit(url).hostname:
            headers = [(k, v) for k, v in headers if k.lower() not in _CROSS_HOST_DROPPED]
        if answer.status_code in (301, 302, 303) and method not in ("GET", "HEAD"):
            method, body = "GET", b""
            headers = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
        url = next_url


def _without_server_name(tls: TlsClientSpec) -> TlsClientSpec:
    """``server_name`` names the target's host: a redirect to another host is checked against its own name."""
    return tls.model_copy(update={"server_name": None})


async def _hop(
    url: str,
    method: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    tls: TlsClientSpec,
    contexts: TlsContexts,
    timings: Timings,
    max_body: int,
    ip_protocol: IpProtocol | None,
) -> WireAnswer:
    """One request on one new connection."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProbeFailure(Reason.CONFIG, f"not an http(s) URL: {_shorten(url)}")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as exc:
        raise ProbeFailure(Reason.CONFIG, f"bad port in URL {_shorten(url)}") from exc
    host = parts.hostname
    data = _encode(host, port, secure, parts, method, headers, body)
    conn = await _connect(
        host, port, tls=tls if secure else None, contexts=contexts, timings=timings, ip_protocol=ip_protocol
    )
    complete = False
    try:
        conn.writer.write(data.payload)
        if len(data.payload) > READ_SIZE:
            await conn.writer.drain()
        answer, complete = await _read(conn, data.state, timings, url=url, max_body=max_body)
        return answer
    except ssl.SSLError as exc:  # after the handshake: e.g. the server rejected the client certificate
        raise ProbeFailure(Reason.TLS_HANDSHAKE, f"TLS error from {_where(conn)}: {exc.reason or exc}") from exc
    except OSError as exc:
        raise ProbeFailure(Reason.CONNECT_FAILED, f"connection to {_where(conn)} failed: {_os_error(exc)}") from exc
    finally:
        if complete:
            conn.close()
        else:
            conn.abort()


@dataclass(frozen=True)
class _Encoded:
    payload: bytes
    state: h11.Connection


def _encode(
    host: str,
    port: int,
    secure: bool,
    parts: SplitResult,
    method: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> _Encoded:
    """The request's bytes and the h11 state that will parse its answer; bad headers are a config error."""
    given = {name.lower() for name, _ in headers}
    head: list[tuple[str, str]] = []
    if "host" not in given:
        shown = f"[{host}]" if ":" in host else host
        head.append(("host", shown if port == (443 if secure else 80) else f"{shown}:{port}"))
    if "user-agent" not in given:
        head.append(("user-agent", USER_AGENT))
    head.append(("connection", "close"))
    if "content-length" not in given and (body or method in ("POST", "PUT", "PATCH")):
        head.append(("content-length", str(len(body))))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    state = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        payload = state.send(h11.Request(method=method, target=target, headers=head + headers))
        if body:
            payload += state.send(h11.Data(data=body))
        payload += state.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:
        # h11's message may quote a header value, which may be a secret: do not repeat it.
        raise ProbeFailure(Reason.CONFIG, "the request is not valid HTTP/1.1 (check method, headers and body)") from exc
    assert payload is not None
    return _Encoded(payload, state)


async def _read(
    conn: Connection, state: h11.Connection, timings: Timings, *, url: str, max_body: int
) -> tuple[WireAnswer, bool]:
    """Read one response; returns it and whether it was read to its end (else the connection is aborted)."""
    phase, mark = "processing", time.perf_counter()
    timings.current = phase
    response: h11.Response | None = None
    chunks: list[bytes] = []
    kept = seen = 0
    complete = True
    try:
        while True:
            event = state.next_event()
            if event is h11.NEED_DATA:
                chunk = await conn.reader.read(READ_SIZE)
                if phase == "processing":
                    if not chunk:
                        hint = " (after the TLS handshake: was the client certificate rejected?)" if conn.tls else ""
                        raise ProbeFailure(
                            Reason.CONNECT_FAILED,
                            f"{_where(conn)} closed the connection without answering{hint}",
                        )
                    now = time.perf_counter()
                    timings.add(phase, now - mark)
                    phase, mark = "transfer", now
                    timings.current = phase
                state.receive_data(chunk)
            elif type(event) is h11.Data:
                seen += len(event.data)
                if kept < max_body:
                    piece = bytes(event.data[: max_body - kept])
                    chunks.append(piece)
                    kept += len(piece)
                if seen > DRAIN_LIMIT:
                    complete = False
                    break
            elif type(event) is h11.Response:
                response = event
            elif type(event) is h11.EndOfMessage:
                break
            elif type(event) is h11.ConnectionClosed:
                raise ProbeFailure(Reason.PROTOCOL, f"{_where(conn)} closed the connection mid-answer")
    except h11.RemoteProtocolError as exc:
        raise ProbeFailure(Reason.PROTOCOL, f"{_where(conn)} answered invalid HTTP/1.1: {exc}") from exc
    finally:
        timings.add(phase, time.perf_counter() - mark)
    timings.current = None  # only once the phase ended well: a timeout's message names the phase it interrupted
    assert response is not None
    answer = WireAnswer(
        url=url,
        status_code=response.status_code,
        reason=response.reason.decode("latin-1"),
        http_version=response.http_version.decode("ascii"),
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
        body=b"".join(chunks),
        truncated=seen > kept,
        redirects=0,
        elapsed=0.0,
        tls=conn.tls,
    )
    return answer, complete


async def connect(
    host: str,
    port: int,
    *,
    tls: TlsClientSpec | None,
    contexts: TlsContexts,
    timings: Timings,
    ip_protocol: IpProtocol | None = None,
) -> Connection:
    """Resolve ``host``, connect to one of its addresses and, when ``tls`` is given, complete a TLS handshake.

    The building block of :func:`exchange`, also for probes that speak TLS
    without HTTP. The caller closes (or aborts) the connection.
    """
    try:
        return await _connect(host, port, tls=tls, contexts=contexts, timings=timings, ip_protocol=ip_protocol)
    except ProbeFailure as failure:
        failure.phases = dict(timings.phases)
        raise


async def _connect(
    host: str,
    port: int,
    *,
    tls: TlsClientSpec | None,
    contexts: TlsContexts,
    timings: Timings,
    ip_protocol: IpProtocol | None,
) -> Connection:
    family, address = await _resolve(host, port, ip_protocol, timings)
    with timings.phase("connect"):
        try:
            reader, writer = await asyncio.open_connection(address[0], address[1], family=family, limit=READ_SIZE)
        except ConnectionRefusedError as exc:
            raise ProbeFailure(Reason.CONNECT_REFUSED, f"connection to {_join(address)} refused") from exc
        except OSError as exc:
            raise ProbeFailure(Reason.CONNECT_FAILED, f"cannot connect to {_join(address)}: {_os_error(exc)}") from exc
    conn = Connection(reader, writer, address, None)
    if tls is None:
        return conn
    try:
        conn.tls = await _handshake(conn, host, tls, contexts, timings)
    except BaseException:
        conn.abort()
        raise
    return conn


async def _resolve(
    host: str, port: int, ip_protocol: IpProtocol | None, timings: Timings
) -> tuple[int, tuple[str, int]]:
    """The address to connect to; IP literals skip resolution (and the thread pool it runs in)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return (socket.AF_INET6 if literal.version == 6 else socket.AF_INET), (host, port)
    with timings.phase("resolve"):
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            why = exc.strerror if isinstance(exc, socket.gaierror) else "invalid name"
            raise ProbeFailure(Reason.DNS_FAILED, f"cannot resolve {host}: {why}") from exc
    wanted = {"ip4": socket.AF_INET, "ip6": socket.AF_INET6}.get(ip_protocol or "")
    chosen = next((info for info in infos if info[0] == wanted), infos[0]) if infos else None
    if chosen is None:
        raise ProbeFailure(Reason.DNS_FAILED, f"{host} resolved to no address")
    return chosen[0], (str(chosen[4][0]), port)


async def _handshake(
    conn: Connection, host: str, tls: TlsClientSpec, contexts: TlsContexts, timings: Timings
) -> PeerTls:
    context = contexts.context(tls)
    server_name = tls.server_name or host
    with timings.phase("tls"):
        try:
            await conn.writer.start_tls(context, server_hostname=server_name)
        except ssl.SSLCertVerificationError as exc:
            reason, why = verify_failure(exc)
            raise ProbeFailure(reason, f"certificate of {server_name}: {why}") from exc
        except ssl.SSLError as exc:
            raise ProbeFailure(
                Reason.TLS_HANDSHAKE,
                f"TLS handshake with {_where(conn)} failed: {exc.reason or exc}",
            ) from exc
        except (OSError, EOFError) as exc:
            raise ProbeFailure(
                Reason.TLS_HANDSHAKE,
                f"{_where(conn)} closed the connection during the TLS handshake ({type(exc).__name__})",
            ) from exc
    ssl_object = conn.writer.get_extra_info("ssl_object")
    return peer_tls(ssl_object, contexts)


# --------------------------------------------------------------------------- messages


def _where(conn: Connection) -> str:
    return _join(conn.address)


def _join(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
