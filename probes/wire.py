"""One HTTP/1.1 exchange over a fresh connection, timed phase by phase: the layer under the http and flow probes.

Every call opens a new connection (as blackbox_exporter does), so each run
measures what a new client would see: name resolution, TCP connect, the TLS
handshake, the server's processing time and the body's transfer. Only the
expensive, immutable parts are shared across calls: :class:`TlsContexts`
keeps one :class:`ssl.SSLContext` per :class:`TlsClientSpec` (loading a CA
bundle costs milliseconds) and the parsed peer certificates.

It is written on asyncio streams and ``h11`` rather than an HTTP client library
because CPU per probe is what limits how many probes one process can run: a
shared ``httpx.AsyncClient`` costs about twice as much per fresh-connection
request, and a new one per probe about forty times as much.

Every way an exchange can fail raises :class:`~vouch.probes.base.ProbeFailure`
with one documented :class:`~vouch.probes.base.Reason`; the caller's
:class:`Timings` keeps the phases measured so far, also when the caller's
timeout cancels the exchange midway.

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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import SplitResult, urljoin, urlsplit

import h11
from cryptography import x509

from vouch.probes.base import PHASES, ProbeFailure, Reason
from vouch.probes.settings import TlsClientSpec

__all__ = [
    "DEFAULT_MAX_BODY",
    "REDIRECT_CODES",
    "Attempted",
    "CertificateInfo",
    "Connection",
    "IpProtocol",
    "PeerTls",
    "Timings",
    "TlsContexts",
    "WireAnswer",
    "WireRequest",
    "attempt_within",
    "connect",
    "exchange",
    "peer_tls",
    "verify_failure",
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


class Timings:
    """Seconds per phase of one exchange, owned by the caller so a timeout still reports what was measured.

    ``phases`` always has every name of :data:`~vouch.probes.base.PHASES`
    (zero when the phase did not happen, such as ``tls`` over plain HTTP);
    across redirects the phases add up, as in blackbox_exporter. ``current``
    names the phase in progress (or the one that failed), for a timeout's message.
    """

    __slots__ = ("current", "phases")

    def __init__(self) -> None:
        self.phases: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.current: str | None = None

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] += seconds


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
    timings.current = "connect"
    mark = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(address[0], address[1], family=family, limit=READ_SIZE)
    except ConnectionRefusedError as exc:
        raise ProbeFailure(Reason.CONNECT_REFUSED, f"connection to {_join(address)} refused") from exc
    except OSError as exc:
        raise ProbeFailure(Reason.CONNECT_FAILED, f"cannot connect to {_join(address)}: {_os_error(exc)}") from exc
    finally:
        timings.add("connect", time.perf_counter() - mark)
    timings.current = None  # only once the phase ended well: a timeout's message names the phase it interrupted
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
    timings.current = "resolve"
    mark = time.perf_counter()
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else "invalid name"
        raise ProbeFailure(Reason.DNS_FAILED, f"cannot resolve {host}: {why}") from exc
    finally:
        timings.add("resolve", time.perf_counter() - mark)
    timings.current = None  # only once the phase ended well: a timeout's message names the phase it interrupted
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
    timings.current = "tls"
    mark = time.perf_counter()
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
    finally:
        timings.add("tls", time.perf_counter() - mark)
    timings.current = None  # only once the phase ended well: a timeout's message names the phase it interrupted
    ssl_object = conn.writer.get_extra_info("ssl_object")
    return peer_tls(ssl_object, contexts)


# --------------------------------------------------------------------------- TLS: shared contexts, peer certificates

_EXPIRED_CODES = frozenset({9, 10})
"""OpenSSL verify codes: certificate not yet valid, certificate has expired."""
_HOSTNAME_CODES = frozenset({62, 63, 64})
"""OpenSSL verify codes: host name, e-mail or IP address mismatch."""


@dataclass(frozen=True)
class CertificateInfo:
    """What a probe reports about one certificate: names and validity (epoch seconds)."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: float
    not_after: float


@dataclass(frozen=True)
class PeerTls:
    """The negotiated TLS session: version, cipher and the certificates the server presented (leaf first)."""

    version: str | None
    cipher: str | None
    chain: tuple[CertificateInfo, ...]

    @property
    def leaf(self) -> CertificateInfo | None:
        return self.chain[0] if self.chain else None

    @property
    def earliest_expiry(self) -> float | None:
        """The soonest ``not_after`` of the presented chain (blackbox_exporter's ``probe_ssl_earliest_cert_expiry``)."""
        return min((cert.not_after for cert in self.chain), default=None)


class TlsContexts:
    """SSL contexts and parsed certificates shared across runs: building either costs far more than a probe.

    One context per distinct :class:`TlsClientSpec` (kept for the life of this
    object: there are as many as configurations); parsed certificates are kept
    by their DER bytes, the ``max_certificates`` most recent ones.
    """

    def __init__(self, *, max_certificates: int = 1024) -> None:
        self._contexts: dict[TlsClientSpec, ssl.SSLContext] = {}
        self._certificates: OrderedDict[bytes, CertificateInfo | None] = OrderedDict()
        self._max_certificates = max_certificates

    def context(self, spec: TlsClientSpec) -> ssl.SSLContext:
        """The client context for ``spec``; TLS files that cannot be loaded are a config failure."""
        context = self._contexts.get(spec)
        if context is None:
            context = self._contexts[spec] = _new_context(spec)
        return context

    def certificate(self, der: bytes) -> CertificateInfo | None:
        """``der`` parsed (``None`` when it is not a certificate cryptography can read)."""
        if der in self._certificates:
            self._certificates.move_to_end(der)
            return self._certificates[der]
        info = _parse_certificate(der)
        self._certificates[der] = info
        if len(self._certificates) > self._max_certificates:
            self._certificates.popitem(last=False)
        return info


def _new_context(spec: TlsClientSpec) -> ssl.SSLContext:
    try:
        if spec.verify:
            context = ssl.create_default_context(cafile=spec.ca_file)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if spec.cert_file is not None:
            context.load_cert_chain(spec.cert_file, spec.key_file)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (spec.ca_file, spec.cert_file, spec.key_file) if f) or "the system's CAs"
        raise ProbeFailure(Reason.CONFIG, f"cannot load TLS files ({files}): {_os_error(exc)}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


def _parse_certificate(der: bytes) -> CertificateInfo | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = tuple(names.get_values_for_type(x509.DNSName)) + tuple(
                str(ip) for ip in names.get_values_for_type(x509.IPAddress)
            )
        except x509.ExtensionNotFound:
            sans = ()
        return CertificateInfo(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            sans=sans,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )
    except ValueError:
        return None


def peer_tls(ssl_object: ssl.SSLObject, contexts: TlsContexts) -> PeerTls:
    """Describe an established TLS session, including with verification off (the chain is then unverified)."""
    chain = tuple(info for info in map(contexts.certificate, _presented_chain(ssl_object)) if info is not None)
    cipher = ssl_object.cipher()
    return PeerTls(version=ssl_object.version(), cipher=cipher[0] if cipher else None, chain=chain)


def _presented_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The DER certificates the server sent, leaf first; only the leaf where Python cannot tell more."""
    public = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+
    if public is not None:
        return [bytes(der) for der in public() or ()]
    private = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)  # 3.10 to 3.12
    if private is not None:
        return [cert.public_bytes(_ENCODING_DER) for cert in private() or ()]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


_ENCODING_DER = 2
"""``_ssl.ENCODING_DER``: what ``Certificate.public_bytes`` takes to give DER bytes."""


def verify_failure(exc: ssl.SSLCertVerificationError) -> tuple[Reason, str]:
    """The reason and a readable cause of a failed certificate verification, from OpenSSL's verify code."""
    code = exc.verify_code
    why = exc.verify_message or exc.reason or str(exc)
    if code in _EXPIRED_CODES:
        return Reason.TLS_EXPIRED, why
    if code in _HOSTNAME_CODES:
        return Reason.TLS_HOSTNAME, why
    return Reason.TLS_UNTRUSTED, why


# --------------------------------------------------------------------------- runs: timeout and retries

T = TypeVar("T")


@dataclass(frozen=True)
class Attempted(Generic[T]):
    """How a run ended: the last attempt's value (if it got that far), its failure, count and phases."""

    value: T | None
    failure: ProbeFailure | None
    attempts: int
    phases: dict[str, float]


_NOT_RETRIED = frozenset({Reason.CONFIG, Reason.INTERNAL})


async def attempt_within(
    attempt: Callable[[Timings], Awaitable[tuple[T | None, ProbeFailure | None]]],
    *,
    timeout: float,
    retries: int,
    retry_delay: float,
) -> Attempted[T]:
    """Run ``attempt`` until it succeeds or ``retries`` extra attempts failed, all within ``timeout``.

    ``attempt`` gets fresh :class:`Timings` and returns ``(value, failure)``
    (``failure`` None on success) or raises ProbeFailure. When the timeout
    strikes, the run fails with ``timeout`` and the phases of the attempt it
    interrupted. A retry whose delay would not fit in the time left is not
    made: the last failure stands. Any other exception propagates.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    timings = Timings()
    attempts = 0
    value: T | None = None
    failure: ProbeFailure | None = None
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                attempts += 1
                timings = Timings()
                try:
                    value, failure = await attempt(timings)
                except ProbeFailure as raised:
                    value, failure = None, raised
                if failure is None or attempts > retries or failure.reason in _NOT_RETRIED:
                    break
                if deadline - loop.time() <= retry_delay:
                    break
                await asyncio.sleep(retry_delay)
    except TimeoutError:
        if loop.time() < deadline:
            raise
        where = f" during {timings.current}" if timings.current else ""
        failure = ProbeFailure(Reason.TIMEOUT, f"no complete answer within {timeout:g}s{where}")
        value = None
    return Attempted(value, failure, attempts, timings.phases)


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
