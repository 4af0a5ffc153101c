"""The Probe family: synthetic checks of a target, each giving a :class:`ProbeResult`.

Contract
--------
``run(target)`` checks ``target`` once and returns a result; it never raises
for anything the target does (refused, slow, wrong answer, bad certificate):
those are failures with one :class:`Reason` from the documented set and a
message a person can act on. It must finish within its configured timeout:
the timeout is a failure with reason ``timeout``. Secrets (header values,
bodies marked secret) never appear in a result, a message or a log line.

A probe is built once from its settings and run many times; it shares
connections' expensive parts (TLS contexts, resolvers) across runs but opens
a fresh connection per run, as blackbox_exporter does, so each run measures
what a new client would see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class Reason(StrEnum):
    """Why a probe failed: one of a documented, stable set (exported as the ``reason`` label)."""

    DNS_FAILED = "dns_failed"
    """The target's name did not resolve."""
    CONNECT_REFUSED = "connect_refused"
    """Nothing listens at the target's address and port."""
    CONNECT_FAILED = "connect_failed"
    """The connection could not be made or was reset (unreachable, reset, closed early)."""
    TIMEOUT = "timeout"
    """The probe did not finish within its timeout."""
    TLS_HANDSHAKE = "tls_handshake_failed"
    """The TLS handshake failed for a reason other than the certificate checks below."""
    TLS_UNTRUSTED = "tls_untrusted"
    """The certificate chain does not verify against the trusted CAs."""
    TLS_EXPIRED = "tls_expired"
    """A certificate of the chain has expired (or is not valid yet)."""
    TLS_HOSTNAME = "tls_hostname_mismatch"
    """The certificate does not name the host that was asked for."""
    TLS_EXPIRING = "tls_expiring"
    """The certificate is valid but expires within the configured number of days."""
    HTTP_STATUS = "http_status"
    """The HTTP status code is not one of the accepted ones."""
    HTTP_REDIRECT = "http_redirect"
    """A redirect that is not allowed, or too many of them."""
    BODY_MISMATCH = "body_mismatch"
    """A body regular expression did not match (or a forbidden one did)."""
    JSON_MISMATCH = "json_mismatch"
    """The body is not JSON, or a JSONPath assertion does not hold."""
    HEADER_MISMATCH = "header_mismatch"
    """A response header assertion does not hold."""
    LATENCY = "latency_exceeded"
    """The answer came, but slower than the configured maximum."""
    PROTOCOL = "protocol_error"
    """The peer answered with something that is not valid for the protocol."""
    EXPECT_MISMATCH = "expect_mismatch"
    """TCP: what the peer sent does not match ``expect``."""
    DNS_RCODE = "dns_rcode"
    """DNS: the server answered with an error code (NXDOMAIN, SERVFAIL, REFUSED, ...)."""
    DNS_NO_ANSWER = "dns_no_answer"
    """DNS: the server answered without records of the asked type."""
    DNS_ANSWER_MISMATCH = "dns_answer_mismatch"
    """DNS: the records differ from the expected answers."""
    FLOW_EXTRACT = "flow_extract_failed"
    """Flow: a variable could not be extracted from a step's answer."""
    CONFIG = "config_error"
    """The probe cannot run as configured (e.g. a secret's environment variable is unset)."""
    INTERNAL = "internal_error"
    """A defect in vouch itself; reported, never a pass."""


PHASES = ("resolve", "connect", "tls", "processing", "transfer")
"""Phase names of ``ProbeResult.phases`` (blackbox_exporter's ``probe_http_duration_seconds{phase}``)."""


@dataclass(frozen=True)
class ProbeResult:
    """What one run of one probe against one target saw.

    ``phases`` holds seconds per phase (see :data:`PHASES`); a flow's result
    names the failing ``step``. ``tls_expiry`` is the earliest expiry (epoch
    seconds) of the certificates the peer presented, when there was TLS.
    """

    probe: str
    kind: str
    target: str
    success: bool
    started_at: float
    duration: float
    reason: Reason | None = None
    message: str = ""
    phases: Mapping[str, float] = field(default_factory=dict)
    status_code: int | None = None
    tls_expiry: float | None = None
    step: str | None = None
    attempts: int = 1
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "kind": self.kind,
            "target": self.target,
            "success": self.success,
            "started_at": self.started_at,
            "duration": self.duration,
            "reason": self.reason.value if self.reason else None,
            "message": self.message,
            "phases": dict(self.phases),
            "status_code": self.status_code,
            "tls_expiry": self.tls_expiry,
            "step": self.step,
            "attempts": self.attempts,
            "details": dict(self.details),
        }


@runtime_checkable
class Probe(Protocol):
    """Checks a target once per call."""

    name: str
    kind: str

    async def run(self, target: str) -> ProbeResult:
        """Check ``target`` (a URL, ``host:port`` or DNS name, by kind) and report what was seen."""

    async def close(self) -> None:
        """Release what the probe shares across runs."""


class ProbeFailure(Exception):
    """Raised inside a probe's implementation to end a run as failed with ``reason``.

    Probes catch it at their boundary and turn it into a :class:`ProbeResult`;
    it never escapes ``run``. ``phases`` carries the timings measured so far.
    """

    def __init__(self, reason: Reason, message: str, *, phases: Mapping[str, float] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.phases = dict(phases or {})
