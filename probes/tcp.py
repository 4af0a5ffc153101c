"""The ``tcp`` probe: connect, optionally speak TLS, optionally send a line and expect an answer.

What a run measures, in phases: ``resolve`` (the target's name to addresses),
``connect`` (the TCP handshake), ``tls`` (the TLS handshake, when ``tls`` is
set) and ``processing`` (sending ``send`` and reading until ``expect``
matches). Each run opens a fresh connection; the TLS context is built once.

This module also holds what the other socket-level kinds share:
:func:`split_host_port`, :func:`resolve`, the per-attempt record
:class:`Attempt` and :func:`run_attempts`, which runs attempts by the rules of
:mod:`vouch.probes.attempts` and turns how the run ended into one
:class:`ProbeResult`.

Example::

    probe = TcpProbe(TcpProbeSpec(name="smtp", targets=["mail.example:25"], expect="^220 "))
    result = await probe.run("mail.example:25")
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import Field, field_validator

from vouch.probes.attempts import Attempted, Timings, run_within
from vouch.probes.base import ProbeFailure, ProbeResult, Reason
from vouch.probes.settings import ProbeSpec, Secret, TlsClientSpec
from vouch.probes.tlsinfo import TlsContexts, peer_tls, verify_failure

_QUOTE = 200
"""How many characters of received data a failure message quotes."""
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[rnt0\\])")
_SIMPLE_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}


class TcpProbeSpec(ProbeSpec):
    """A TCP service answers: the port accepts, TLS (if asked) verifies, and the greeting looks right."""

    kind: Literal["tcp"] = "tcp"
    """Selects this probe kind."""
    send: str | Secret | None = None
    """Sent once connected (after TLS). Escapes ``\\r``, ``\\n``, ``\\t``, ``\\0``, ``\\\\`` and ``\\xHH``
    are honoured even in single-quoted YAML; a secret's value is never shown in results."""
    expect: str | None = None
    """Regular expression (Python syntax, ``^`` and ``$`` match at line boundaries) the received data must
    match; data is read until it matches, the peer closes, ``max_read`` bytes arrived, or the timeout."""
    max_read: int = Field(default=65536, ge=1, le=1 << 20)
    """Most bytes read while waiting for ``expect`` before giving up with ``expect_mismatch``."""
    tls: TlsClientSpec | None = None
    """Speak TLS once connected; certificate problems are failures with their own reason."""

    @field_validator("targets")
    @classmethod
    def _targets_are_host_port(cls, targets: list[str]) -> list[str]:
        for target in targets:
            split_host_port(target)
        return targets

    @field_validator("expect")
    @classmethod
    def _expect_compiles(cls, expect: str | None) -> str | None:
        if expect is not None:
            try:
                re.compile(expect, re.MULTILINE)
            except re.error as exc:
                raise ValueError(f"'expect' is not a valid regular expression: {exc}") from None
        return expect


def split_host_port(target: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``("db.internal", 5432)`` from ``"db.internal:5432"``; IPv6 in brackets: ``"[::1]:53"``.

    >>> split_host_port("[::1]:53")
    ('::1', 53)
    >>> split_host_port("ns1.example", default_port=53), split_host_port("[::1]", default_port=53)
    (('ns1.example', 53), ('::1', 53))
    """
    if default_port is not None and target.startswith("[") and target.endswith("]"):
        target = f"{target}:{default_port}"
    host, sep, port_text = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif not sep or ":" in host:  # no port at all, or an IPv6 address without brackets
        if default_port is None or target.startswith("["):
            raise ValueError(f"{target!r} is not 'host:port' (IPv6 addresses go in brackets: '[::1]:443')")
        host, port_text = target, str(default_port)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{target!r} is not 'host:port' with a port from 1 to 65535")
    return host, int(port_text)


def unescape(text: str) -> bytes:
    """The bytes ``text`` stands for, honouring backslash escapes (UTF-8 for everything else).

    >>> unescape(r"PING\\r\\n")
    b'PING\\r\\n'
    """
    out, pos = bytearray(), 0
    for match in _ESCAPE.finditer(text):
        out += text[pos : match.start()].encode()
        code = match.group(1)
        out += bytes([int(code[1:], 16)]) if code[0] == "x" else _SIMPLE_ESCAPES[code]
        pos = match.end()
    out += text[pos:].encode()
    return bytes(out)


def quote(data: str, *, limit: int = _QUOTE) -> str:
    """``data`` as a short printable literal for a failure message."""
    shown = repr(data[:limit])
    return shown + (f" … ({len(data)} characters)" if len(data) > limit else "")


class Attempt(Timings):
    """What one attempt of a socket-level probe measured so far: only the phases it reached, and what it saw."""

    __slots__ = ("details", "tls_expiry")

    def __init__(self) -> None:
        super().__init__(phases=())
        self.details: dict[str, Any] = {}
        self.tls_expiry: float | None = None


SocketAttempt = Callable[[str, Attempt], Awaitable[None]]
"""One attempt at ``target``: returns on success, raises :class:`ProbeFailure` otherwise."""


async def run_attempts(spec: ProbeSpec, kind: str, target: str, attempt: SocketAttempt) -> ProbeResult:
    """Run ``attempt`` as :func:`~vouch.probes.attempts.run_within` does, and report how the run ended.

    The result carries the last attempt's phases, details and certificate expiry; never raises.
    """

    async def once(record: Attempt) -> tuple[None, None]:
        await attempt(target, record)
        return None, None

    run: Attempted[None, Attempt] = await run_within(
        once,
        fresh=Attempt,
        timeout=spec.timeout,
        retries=spec.retries,
        retry_delay=spec.retry_delay,
        label=f"{kind} probe {spec.name} against {target}",
    )
    failure, record = run.failure, run.record
    return ProbeResult(
        probe=spec.name,
        kind=kind,
        target=target,
        success=failure is None,
        started_at=run.started_at,
        duration=run.elapsed(),
        reason=failure.reason if failure else None,
        message=failure.message if failure else "",
        phases=run.phases,
        tls_expiry=record.tls_expiry,
        attempts=run.attempts,
        details=dict(record.details),
    )


def client_context(spec: TlsClientSpec) -> ssl.SSLContext:
    """The TLS context ``spec`` describes, offering no ALPN protocol (a TCP service speaks its own);
    unreadable files are a ``config_error`` failure."""
    try:
        context = ssl.create_default_context(cafile=spec.ca_file)
        if spec.cert_file is not None:
            context.load_cert_chain(spec.cert_file, spec.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeFailure(Reason.CONFIG, f"cannot load the TLS settings' files: {exc}") from exc
    if not spec.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_failure(exc: BaseException, server_name: str) -> ProbeFailure:
    """The documented reason for a failed handshake with ``server_name``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason, why = verify_failure(exc)
        return ProbeFailure(reason, f"certificate of {server_name} rejected: {why}")
    if isinstance(exc, ssl.SSLError):
        return ProbeFailure(Reason.TLS_HANDSHAKE, f"TLS handshake with {server_name} failed: {exc.reason or exc}")
    return ProbeFailure(
        Reason.TLS_HANDSHAKE, f"TLS handshake with {server_name} failed: the peer closed the connection"
    )


async def resolve(host: str, port: int, record: Attempt) -> list[str]:
    """The addresses of ``host`` (as the system resolver gives them), timed as the ``resolve`` phase."""
    with record.phase("resolve"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ProbeFailure(Reason.DNS_FAILED, f"cannot resolve {host!r}: {exc.strerror}") from exc
        except UnicodeError as exc:  # the name cannot even be encoded (an empty or over-long label)
            raise ProbeFailure(Reason.DNS_FAILED, f"{host!r} is not a valid host name") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise ProbeFailure(Reason.DNS_FAILED, f"{host!r} resolved to no address")
    return addresses


class TcpProbe:
    """Checks ``host:port`` targets as :class:`TcpProbeSpec` says; see the module docstring."""

    kind = "tcp"

    def __init__(self, spec: TcpProbeSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._expect = re.compile(spec.expect, re.MULTILINE) if spec.expect is not None else None
        self._tls_context: ssl.SSLContext | None = None
        self._certificates = TlsContexts()  # only its cache of parsed certificates is used

    async def run(self, target: str) -> ProbeResult:
        """Connect to ``target`` (``host:port``) and check it; never raises (see ``probes.base``)."""
        return await run_attempts(self.spec, self.kind, target, self._attempt)

    async def close(self) -> None:
        """Nothing is held between runs but the TLS context, which needs no closing."""

    async def _attempt(self, target: str, record: Attempt) -> None:
        try:
            host, port = split_host_port(target)
        except ValueError as exc:
            raise ProbeFailure(Reason.CONFIG, str(exc)) from None
        payload, secret = self._payload()
        addresses = await resolve(host, port, record)
        reader, writer = await self._connect(addresses, port, record)
        try:
            if self.spec.tls is not None:
                await self._start_tls(writer, host, record)
            if payload or self._expect is not None:
                with record.phase("processing"):
                    if payload:
                        writer.write(payload)
                        await writer.drain()
                    if self._expect is not None:
                        await self._read_expected(reader, record, secret=secret)
        except (ConnectionError, OSError) as exc:
            raise ProbeFailure(Reason.CONNECT_FAILED, f"connection to {target} broke: {_os_reason(exc)}") from exc
        finally:
            writer.close()

    def _payload(self) -> tuple[bytes, str | None]:
        """The bytes to send, and the secret they hold (to keep it out of quoted answers)."""
        send = self.spec.send
        if send is None:
            return b"", None
        if isinstance(send, Secret):
            payload = unescape(send.reveal())
            return payload, payload.decode(errors="replace")
        return unescape(send), None

    async def _connect(
        self, addresses: list[str], port: int, record: Attempt
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the first address that accepts; the last error decides the reason."""
        failure: ProbeFailure | None = None
        with record.phase("connect"):
            for address in addresses:
                record.details["address"] = _join(address, port)
                try:
                    return await asyncio.open_connection(address, port)
                except ConnectionRefusedError:
                    failure = ProbeFailure(Reason.CONNECT_REFUSED, f"{_join(address, port)} refused the connection")
                except OSError as exc:
                    failure = ProbeFailure(
                        Reason.CONNECT_FAILED, f"cannot connect to {_join(address, port)}: {_os_reason(exc)}"
                    )
        assert failure is not None
        raise failure

    async def _start_tls(self, writer: asyncio.StreamWriter, host: str, record: Attempt) -> None:
        assert self.spec.tls is not None
        if self._tls_context is None:
            self._tls_context = client_context(self.spec.tls)
        server_name = self.spec.tls.server_name or host
        with record.phase("tls"):
            try:
                await writer.start_tls(self._tls_context, server_hostname=server_name)
            except (ssl.SSLError, ConnectionError, OSError) as exc:
                raise tls_failure(exc, server_name) from exc
        ssl_object = writer.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            peer = peer_tls(ssl_object, self._certificates)
            record.tls_expiry = peer.earliest_expiry
            record.details.update(tls_version=peer.version, tls_cipher=peer.cipher)

    async def _read_expected(self, reader: asyncio.StreamReader, record: Attempt, *, secret: str | None) -> None:
        assert self._expect is not None
        received = b""
        record.waiting_for = f"waiting for data matching {self._expect.pattern!r}"
        while len(received) < self.spec.max_read:
            chunk = await reader.read(self.spec.max_read - len(received))
            if not chunk:
                break
            received += chunk
            text = received.decode(errors="replace")
            record.waiting_for = f"waiting for data matching {self._expect.pattern!r}; received {_shown(text, secret)}"
            if self._expect.search(text):
                record.details["received"] = _shown(text, secret, limit=_QUOTE)
                record.waiting_for = ""
                return
        text = received.decode(errors="replace")
        ending = "the peer closed the connection" if len(received) < self.spec.max_read else "read limit reached"
        raise ProbeFailure(
            Reason.EXPECT_MISMATCH,
            f"no match for {self._expect.pattern!r} ({ending}); received {_shown(text, secret)}",
        )


def _shown(text: str, secret: str | None, *, limit: int = _QUOTE) -> str:
    """``text`` quoted for a message, with the secret sent (as sent, or trimmed) blotted out."""
    for value in sorted({secret or "", (secret or "").strip()}, key=len, reverse=True):
        if value:
            text = text.replace(value, "<secret>")
    return quote(text, limit=limit) if text else "nothing"


def _join(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
