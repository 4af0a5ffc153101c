"""The ``tls`` probe: a TLS handshake with ``host:port``, judged on chain validity, host name and days to expiry.

With ``verify`` on (the default), the handshake itself checks the chain
against the trusted CAs and the host name (or ``server_name``): failures are
``tls_untrusted``, ``tls_expired`` or ``tls_hostname_mismatch``. A certificate
that has expired is ``tls_expired`` even with ``verify`` off, since expiry is
what this probe watches; one that expires within ``min_days`` is
``tls_expiring``. Every result that saw certificates carries ``tls_expiry``
and ``details`` (subject, issuer, sans, days_left), also when verification
failed: the probe then shakes hands once more without verifying, to say what
the server presents.

Example::

    probe = TlsProbe(TlsProbeSpec(name="shop-cert", targets=["shop.example:443"], min_days=21))
    result = await probe.run("shop.example:443")
    result.reason, result.details["days_left"]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from vouch.probes.attempts import Attempted, Timings, attempt_within, defect
from vouch.probes.base import ProbeFailure, ProbeResult, Reason
from vouch.probes.settings import ProbeSpec, TlsClientSpec
from vouch.probes.tlsinfo import PeerTls, TlsContexts
from vouch.probes.wire import IpProtocol, connect

_DAY = 86400.0
_VERIFY_REASONS = frozenset({Reason.TLS_UNTRUSTED, Reason.TLS_EXPIRED, Reason.TLS_HOSTNAME})


class TlsProbeSpec(ProbeSpec):
    """A certificate check of ``host:port`` targets."""

    kind: Literal["tls"] = "tls"
    """Selects this probe kind."""
    min_days: float = Field(default=14.0, ge=0)
    """Fail with ``tls_expiring`` when a presented certificate expires within this many days."""
    tls: TlsClientSpec = Field(default_factory=TlsClientSpec)
    """Trusted CAs, client certificate, SNI name; ``verify: false`` checks expiry only."""
    ip_protocol: IpProtocol | None = None
    """Preferred address family (``ip4`` or ``ip6``) when a name has both."""

    @field_validator("targets")
    @classmethod
    def _host_ports(cls, targets: list[str]) -> list[str]:
        for target in targets:
            host_port(target)
        return targets


def host_port(target: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6; an ``https://`` URL gives its host and port, 443 by default).

    >>> host_port("[::1]:8443")
    ('::1', 8443)
    """
    text = target.strip()
    try:
        parts = urlsplit(text if "://" in text else f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"{target!r} is not host:port: {exc}") from exc
    if port is None and "://" in text:
        port = 443
    if not host or port is None:
        raise ValueError(f"{target!r} is not host:port (e.g. shop.example:443 or [2001:db8::1]:443)")
    return host, port


class TlsProbe:
    """Runs a :class:`TlsProbeSpec` against any ``host:port``; never raises from ``run``."""

    kind = "tls"

    def __init__(self, spec: TlsProbeSpec, *, contexts: TlsContexts | None = None) -> None:
        self.name = spec.name
        self._spec = spec
        self._contexts = contexts if contexts is not None else TlsContexts()

    async def run(self, target: str) -> ProbeResult:
        """Check ``target`` once (with retries and timeout as configured)."""
        spec = self._spec
        label = f"tls probe {spec.name} against {target}"
        run = await attempt_within(
            lambda timings: self._attempt(target, timings),
            timeout=spec.timeout,
            retries=spec.retries,
            retry_delay=spec.retry_delay,
            label=label,
        )
        peer = run.value
        if peer is None and run.failure is not None and run.failure.reason in _VERIFY_REASONS:
            try:
                peer = await self._unverified_peer(target, left=spec.timeout - run.elapsed())
            except Exception as exc:
                run, peer = dataclasses.replace(run, failure=defect(exc, label)), None
        return self._result(target, run, peer)

    async def close(self) -> None:
        """Nothing to release: connections live for one run; shared TLS contexts need no closing."""

    async def _attempt(self, target: str, timings: Timings) -> tuple[PeerTls | None, ProbeFailure | None]:
        try:
            host, port = host_port(target)
        except ValueError as exc:
            raise ProbeFailure(Reason.CONFIG, str(exc)) from exc
        conn = await connect(
            host, port, tls=self._spec.tls, contexts=self._contexts, timings=timings, ip_protocol=self._spec.ip_protocol
        )
        conn.close()
        assert conn.tls is not None
        return conn.tls, self._judge(conn.tls)

    def _judge(self, peer: PeerTls) -> ProbeFailure | None:
        expiry = peer.earliest_expiry
        if expiry is None:
            return ProbeFailure(Reason.TLS_HANDSHAKE, "the server presented no certificate")
        days_left = (expiry - time.time()) / _DAY
        if days_left <= 0:
            return ProbeFailure(Reason.TLS_EXPIRED, f"a certificate of the chain expired {-days_left:.1f} days ago")
        if days_left < self._spec.min_days:
            return ProbeFailure(
                Reason.TLS_EXPIRING,
                f"a certificate of the chain expires in {days_left:.1f} days (minimum {self._spec.min_days:g})",
            )
        return None

    async def _unverified_peer(self, target: str, *, left: float) -> PeerTls | None:
        """What the server presents, by a handshake without verification, in the ``left`` seconds of the run."""
        if left <= 0:
            return None
        host, port = host_port(target)
        tls = self._spec.tls.model_copy(update={"verify": False})
        with contextlib.suppress(ProbeFailure, TimeoutError):
            async with asyncio.timeout(left):
                conn = await connect(host, port, tls=tls, contexts=self._contexts, timings=Timings())
                conn.close()
                return conn.tls
        return None

    def _result(self, target: str, run: Attempted[PeerTls, Timings], peer: PeerTls | None) -> ProbeResult:
        failure = run.failure
        return ProbeResult(
            probe=self.name,
            kind=self.kind,
            target=target,
            success=failure is None,
            started_at=run.started_at,
            duration=run.elapsed(),
            reason=failure.reason if failure is not None else None,
            message=failure.message if failure is not None else "",
            phases=run.phases,
            tls_expiry=peer.earliest_expiry if peer is not None else None,
            attempts=run.attempts,
            details=_details(peer) if peer is not None else {},
        )


def _details(peer: PeerTls) -> dict[str, Any]:
    leaf = peer.leaf
    expiry = peer.earliest_expiry
    details: dict[str, Any] = {"version": peer.version, "chain_length": len(peer.chain)}
    if leaf is not None:
        details.update(subject=leaf.subject, issuer=leaf.issuer, sans=list(leaf.sans))
    if expiry is not None:
        details["days_left"] = round((expiry - time.time()) / _DAY, 2)
    return details
