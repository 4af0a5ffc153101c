"""The ``http`` probe: one request per run over a fresh connection, judged on status, headers, body and latency.

Settings mirror blackbox_exporter's http module where the meaning is the same
(accepted status codes default to ``2xx``, redirects are followed), plus what
it lacks: JSONPath assertions, secrets for header values and bodies, retries
within a run and a failure reason on every failure.

Secrets are revealed at each run (a rotated file is picked up without a
restart) and only on the way to the wire: results, messages and log lines
never carry them; a message that would (an answer echoing a token) has the
value masked.

Example::

    spec = HttpProbeSpec(
        name="checkout-health",
        targets=["https://checkout.example/healthz"],
        headers={"authorization": Secret(from_env="CHECKOUT_TOKEN")},
        assertions=ResponseAssertions(json=[JsonAssertion(path="$.status", equals="ok")]),
        max_latency=0.5,
        timeout=5,
    )
    probe = HttpProbe(spec)
    result = await probe.run(spec.targets[0])   # never raises
    result.success, result.reason, result.phases["processing"]
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from vouch.core.durations import Duration
from vouch.core.errors import ConfigError
from vouch.probes.assertions import (
    ResponseAssertions,
    StatusCode,
    check_latency,
    check_status,
    parse_status_codes,
)
from vouch.probes.attempts import Attempted, Timings, attempt_within
from vouch.probes.base import ProbeFailure, ProbeResult, Reason
from vouch.probes.settings import ProbeSpec, Secret, TlsClientSpec
from vouch.probes.tlsinfo import TlsContexts
from vouch.probes.wire import DEFAULT_MAX_BODY, IpProtocol, WireAnswer, WireRequest, exchange

_MASK = "***"


def _two_hundreds() -> list[int | str]:
    return ["2xx"]


class HttpClientSpec(ProbeSpec):
    """How an HTTP(S) probe connects, shared by ``http`` and ``flow``: TLS, redirects, address family, body size."""

    tls: TlsClientSpec = Field(default_factory=TlsClientSpec)
    """TLS settings for https targets."""
    follow_redirects: bool = True
    """Follow 3xx redirects (each on a new connection); when off, an unaccepted redirect fails."""
    max_redirects: int = Field(default=5, ge=0, le=20)
    """Most redirects followed before the run fails with ``http_redirect``."""
    ip_protocol: IpProtocol | None = None
    """Preferred address family (``ip4`` or ``ip6``) when a name has both; the other is used if it is the only one."""
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY, ge=0)
    """Bytes of the body kept for assertions; more is read and dropped (up to 16 MiB, then cut off)."""

    @field_validator("targets")
    @classmethod
    def _urls(cls, targets: list[str]) -> list[str]:
        for target in targets:
            problem = url_problem(target)
            if problem:
                raise ValueError(problem)
        return targets


class HttpProbeSpec(HttpClientSpec):
    """An HTTP(S) check: what to send, what counts as a good answer."""

    kind: Literal["http"] = "http"
    """Selects this probe kind."""
    method: str = Field(default="GET", pattern=r"^[A-Z]+$")
    """HTTP method."""
    headers: dict[str, str | Secret] = Field(default_factory=dict)
    """Request headers; a value may be a secret (``{from_env: NAME}`` or ``{from_file: PATH}``)."""
    body: str | Secret | None = None
    """Request body, plain or secret."""
    valid_status_codes: list[StatusCode] = Field(default_factory=_two_hundreds, min_length=1)
    """Accepted status codes: codes like ``200`` and classes like ``"2xx"``."""
    assertions: ResponseAssertions = Field(default_factory=ResponseAssertions)
    """Checks on the answer's headers and body."""
    max_latency: Duration | None = None
    """Slowest acceptable answer (the whole exchange, redirects included)."""


def url_problem(target: str) -> str | None:
    """Why ``target`` is not a URL an http probe can check, or ``None``."""
    try:
        parts = urlsplit(target)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"{target!r} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{target!r} is not an http:// or https:// URL"
    return None


class HttpProbe:
    """Runs an :class:`HttpProbeSpec` against any URL (its targets, or a canary's endpoints).

    Pass ``contexts`` to share TLS contexts among probes (one per process is
    enough); otherwise the probe keeps its own.
    """

    kind = "http"

    def __init__(self, spec: HttpProbeSpec, *, contexts: TlsContexts | None = None) -> None:
        self.name = spec.name
        self._spec = spec
        self._contexts = contexts if contexts is not None else TlsContexts()
        self._accepted = parse_status_codes(spec.valid_status_codes)
        self._plain_headers = [(k, v) for k, v in spec.headers.items() if isinstance(v, str)]
        self._secret_headers = [(k, v) for k, v in spec.headers.items() if isinstance(v, Secret)]
        self._has_secrets = bool(self._secret_headers) or isinstance(spec.body, Secret)

    async def run(self, target: str) -> ProbeResult:
        """Check ``target`` once (with retries and timeout as configured); never raises."""
        spec = self._spec
        secrets: list[str] = []
        run = await attempt_within(
            lambda timings: self._attempt(target, timings, secrets),
            timeout=spec.timeout,
            retries=spec.retries,
            retry_delay=spec.retry_delay,
            label=f"http probe {spec.name} against {target}",
        )
        return self._result(target, run, secrets)

    async def close(self) -> None:
        """Nothing to release: connections live for one run; shared TLS contexts need no closing."""

    async def _attempt(
        self, target: str, timings: Timings, secrets: list[str]
    ) -> tuple[WireAnswer | None, ProbeFailure | None]:
        request = self._request(target, secrets)
        answer = await exchange(
            request, tls=self._spec.tls, contexts=self._contexts, max_body=self._spec.max_body_bytes, timings=timings
        )
        return answer, self._judge(answer)

    def _request(self, target: str, secrets: list[str]) -> WireRequest:
        """The request for ``target``, secrets revealed (and remembered in ``secrets`` to mask them)."""
        spec = self._spec
        problem = url_problem(target)
        if problem:
            raise ProbeFailure(Reason.CONFIG, problem)
        headers = self._plain_headers
        body = spec.body if isinstance(spec.body, str) else None
        if self._has_secrets:
            try:
                revealed = [(name, secret.reveal()) for name, secret in self._secret_headers]
                if isinstance(spec.body, Secret):
                    body = spec.body.reveal()
                    revealed.append(("", body))
            except ConfigError as exc:
                raise ProbeFailure(Reason.CONFIG, f"a secret of the probe is unavailable: {exc}") from exc
            secrets[:] = [value for _, value in revealed]
            headers = headers + [(name, value) for name, value in revealed if name]
        return WireRequest(
            target,
            method=spec.method,
            headers=headers,
            body=body.encode() if body else b"",
            follow_redirects=spec.follow_redirects,
            max_redirects=spec.max_redirects,
            ip_protocol=spec.ip_protocol,
        )

    def _judge(self, answer: WireAnswer) -> ProbeFailure | None:
        return (
            check_status(answer, self._accepted)
            or self._spec.assertions.check(answer)
            or check_latency(answer.elapsed, limit=self._spec.max_latency)
        )

    def _result(self, target: str, run: Attempted[WireAnswer, Timings], secrets: list[str]) -> ProbeResult:
        answer, failure = run.value, run.failure
        details: dict[str, Any] = {}
        if answer is not None:
            details = {"url": answer.url, "redirects": answer.redirects, "body_bytes": len(answer.body)}
            if answer.truncated:
                details["truncated"] = True
        message = failure.message if failure is not None else ""
        if secrets and message:
            message = _masked(message, secrets)
            details = {k: _masked(v, secrets) if isinstance(v, str) else v for k, v in details.items()}
        return ProbeResult(
            probe=self.name,
            kind=self.kind,
            target=target,
            success=failure is None,
            started_at=run.started_at,
            duration=run.elapsed(),
            reason=failure.reason if failure is not None else None,
            message=message,
            phases=run.phases,
            status_code=answer.status_code if answer is not None else None,
            tls_expiry=answer.tls_expiry if answer is not None else None,
            attempts=run.attempts,
            details=details,
        )


def _masked(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _MASK)
    return text
