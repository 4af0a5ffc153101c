"""The ``flow`` probe: a multi-step API transaction, each step a request whose answer feeds the next.

A synthetic user logs in, creates something and reads it back: that is what a
plain health check cannot tell. Each step is one HTTP exchange over a fresh
connection, judged like an ``http`` probe (status codes, assertions, latency);
its ``extract`` settings take values from the answer (a JSONPath, a regular
expression on the body, or a header) into variables that later steps use as
``${name}`` in their URL, header values and body. ``$${`` writes a literal ``${``.

A step may only use variables set in ``variables`` or extracted by an earlier
step; anything else is rejected when the settings are loaded. The first
failing step ends the run: the result names it in ``step`` and in its message.
The timeout covers the whole flow, and a retry runs the whole flow again (a
token from a failed attempt is never reused).

Secrets (``variables``, header values or bodies given as ``{from_env: ...}`` or
``{from_file: ...}``) are revealed when a step first needs them and never
appear in a result, a message or a log line; a secret header value or body is
sent verbatim, without ``${...}`` substitution. Extracted values are not
secret, but no answer body is ever logged.

The templates and the extractors (``JsonExtract``, ``RegexExtract``,
``HeaderExtract``) are in :mod:`vouch.probes.flowparts`; this module holds the
settings and the run.

Example::

    spec = FlowProbeSpec(
        name="checkout-order",
        targets=["https://checkout.example/api"],
        variables={"user": "probe", "password": Secret(from_env="PROBE_PASSWORD")},
        steps=[
            FlowStep(
                name="login",
                method="POST",
                url="/login",
                body='{"user": "${user}", "password": "${password}"}',
                extract={"token": JsonExtract(json="$.token")},
            ),
            FlowStep(
                name="order",
                method="POST",
                url="/orders",
                headers={"authorization": "Bearer ${token}"},
                valid_status_codes=[201],
                extract={"order": HeaderExtract(header="location")},
            ),
            FlowStep(name="check", url="${order}", assertions=ResponseAssertions(json=[JsonAssertion(...)])),
        ],
    )
    result = await FlowProbe(spec).run(spec.targets[0])   # never raises
    result.success, result.step, result.reason, result.details["steps"]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, PrivateAttr, model_validator

from vouch.core.durations import Duration
from vouch.core.errors import ConfigError
from vouch.core.settings import Model
from vouch.probes.assertions import ResponseAssertions, StatusCode, check_latency, check_status, parse_status_codes
from vouch.probes.attempts import Attempted, Timings, attempt_within
from vouch.probes.base import ProbeFailure, ProbeResult, Reason
from vouch.probes.flowparts import Extractor, Missing, StepTemplates, Template, VariableName, is_absolute, join_url
from vouch.probes.http import HttpClientSpec, url_problem
from vouch.probes.settings import Secret
from vouch.probes.tlsinfo import TlsContexts
from vouch.probes.wire import WireAnswer, WireRequest, exchange

logger = logging.getLogger(__name__)

_MASK = "***"
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
"""Characters left as they are in a step's URL; anything else (spaces, non-ASCII) is percent-encoded."""


# --------------------------------------------------------------------------- settings


def _two_hundreds() -> list[int | str]:
    return ["2xx"]


class FlowStep(Model):
    """One request of a flow: what to send, what its answer must be, what to take from it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Unique within the flow; the result's ``step`` when this step fails."""
    method: str = Field(default="GET", pattern=r"^[A-Z]+$")
    """HTTP method."""
    url: str
    """An absolute URL, or a path appended to the target's (``/items/${id}``); may use variables."""
    headers: dict[str, str | Secret] = Field(default_factory=dict)
    """Request headers; plain values may use variables, secret values are sent as they are."""
    body: str | Secret | None = None
    """Request body; a plain one may use variables, a secret one is sent as it is."""
    valid_status_codes: list[StatusCode] = Field(default_factory=_two_hundreds, min_length=1)
    """Accepted status codes: codes like ``201`` and classes like ``"2xx"``."""
    assertions: ResponseAssertions = Field(default_factory=ResponseAssertions)
    """Checks on the answer's headers and body."""
    max_latency: Duration | None = None
    """Slowest acceptable answer for this step (redirects included)."""
    extract: dict[VariableName, Extractor] = Field(default_factory=dict)
    """Variables taken from the answer for later steps; a value not found fails the step (``flow_extract_failed``)."""

    _templates: StepTemplates = PrivateAttr()

    @model_validator(mode="after")
    def _parse_templates(self) -> FlowStep:
        def parse(where: str, text: str) -> Template:
            try:
                return Template.parse(text)
            except ValueError as exc:
                raise ValueError(f"step {self.name!r}, {where}: {exc}") from exc

        url = parse("url", self.url)
        if not url.names and is_absolute(self.url):
            problem = url_problem(self.url)
            if problem:
                raise ValueError(f"step {self.name!r}: {problem}")
        headers = tuple(
            (key, value if isinstance(value, Secret) else parse(f"header {key}", value))
            for key, value in self.headers.items()
        )
        body = parse("body", self.body) if isinstance(self.body, str) else self.body
        self._templates = StepTemplates(url, headers, body)
        return self

    @property
    def templates(self) -> StepTemplates:
        """The step's URL, header values and body, parsed."""
        return self._templates


class FlowProbeSpec(HttpClientSpec):
    """A multi-step API check against a base URL: ordered requests, variables carried from one to the next."""

    kind: Literal["flow"] = "flow"
    """Selects this probe kind."""
    variables: dict[VariableName, str | Secret] = Field(default_factory=dict)
    """Variables known before the first step (values used verbatim); secrets are revealed when first used."""
    steps: list[FlowStep] = Field(min_length=1, max_length=50)
    """The requests, run in order on fresh connections; the first failing one ends the run."""

    @model_validator(mode="after")
    def _variables_defined_before_use(self) -> FlowProbeSpec:
        names = [step.name for step in self.steps]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"step names must be unique; repeated: {', '.join(repeated)}")
        defined = set(self.variables)
        for step in self.steps:
            unknown = sorted(step.templates.names - defined)
            if unknown:
                shown = ", ".join(f"${{{name}}}" for name in unknown)
                raise ValueError(
                    f"step {step.name!r} uses {shown}, not defined before it "
                    "(set it in 'variables' or extract it in an earlier step)"
                )
            defined |= set(step.extract)
        return self


# --------------------------------------------------------------------------- running


@dataclass
class _Progress:
    """What one attempt has done so far: kept outside the attempt so a timeout still knows the step it was in."""

    total: int
    secrets: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    current: str | None = None
    """The step running, or the one that failed; ``None`` between steps and after success."""
    number: int = 0
    status: int | None = None
    tls_expiry: float | None = None
    began: float = 0.0

    def begin(self, name: str) -> None:
        self.current, self.number, self.status, self.began = name, self.number + 1, None, time.perf_counter()

    def end(self, answer: WireAnswer | None, *, ok: bool) -> None:
        assert self.current is not None
        if answer is not None:
            self.status = answer.status_code
            expiry = answer.tls_expiry
            if expiry is not None:
                self.tls_expiry = expiry if self.tls_expiry is None else min(self.tls_expiry, expiry)
        duration = time.perf_counter() - self.began
        self.records.append({"name": self.current, "status": self.status, "duration": duration, "ok": ok})
        if ok:
            self.current = None

    def interrupted(self) -> None:
        """Record the step a timeout or a defect interrupted (it has no record yet)."""
        if self.current is not None and (not self.records or self.records[-1]["name"] != self.current):
            self.end(None, ok=False)


class _Variables:
    """One attempt's variable values; a secret one is revealed (and remembered for masking) when first used."""

    def __init__(self, initial: Mapping[str, str | Secret], secrets: list[str]) -> None:
        self._values = {name: value for name, value in initial.items() if isinstance(value, str)}
        self._hidden = {name: value for name, value in initial.items() if isinstance(value, Secret)}
        self._secrets = secrets

    def get(self, name: str) -> str:
        value = self._values.get(name)
        if value is not None:
            return value
        secret = self._hidden.pop(name, None)
        if secret is None:
            raise ProbeFailure(Reason.CONFIG, f"unknown variable ${{{name}}}")
        value = self._values[name] = _reveal(secret, self._secrets, what=f"variable {name!r}")
        return value

    def set(self, name: str, value: str) -> None:
        self._values[name] = value
        self._hidden.pop(name, None)


class FlowProbe:
    """Runs a :class:`FlowProbeSpec` against any base URL (its targets, or a canary's endpoints).

    Pass ``contexts`` to share TLS contexts among probes (one per process is
    enough); otherwise the probe keeps its own.
    """

    kind = "flow"

    def __init__(self, spec: FlowProbeSpec, *, contexts: TlsContexts | None = None) -> None:
        self.name = spec.name
        self._spec = spec
        self._contexts = contexts if contexts is not None else TlsContexts()
        self._accepted = [parse_status_codes(step.valid_status_codes) for step in spec.steps]

    async def run(self, target: str) -> ProbeResult:
        """Run the flow against ``target`` once (with retries and timeout as configured); never raises."""
        spec = self._spec
        latest = [_Progress(len(spec.steps))]

        async def attempt(timings: Timings) -> tuple[_Progress, ProbeFailure | None]:
            latest[0] = _Progress(len(spec.steps))
            return await self._attempt(target, timings, latest[0])

        run = await attempt_within(
            attempt,
            timeout=spec.timeout,
            retries=spec.retries,
            retry_delay=spec.retry_delay,
            label=f"flow probe {spec.name} against {target}",
        )
        return self._result(target, run, latest[0])

    async def close(self) -> None:
        """Nothing to release: connections live for one step; shared TLS contexts need no closing."""

    async def _attempt(
        self, target: str, timings: Timings, progress: _Progress
    ) -> tuple[_Progress, ProbeFailure | None]:
        """Every step in order, sharing ``timings`` so the phases add up; stops at the first failure."""
        spec = self._spec
        if problem := url_problem(target):
            return progress, ProbeFailure(Reason.CONFIG, problem)
        variables = _Variables(spec.variables, progress.secrets)
        for step, accepted in zip(spec.steps, self._accepted, strict=True):
            progress.begin(step.name)
            answer: WireAnswer | None = None
            try:
                request = self._request(step, target, variables, progress.secrets)
                answer = await exchange(
                    request, tls=spec.tls, contexts=self._contexts, max_body=spec.max_body_bytes, timings=timings
                )
                failure = (
                    check_status(answer, accepted)
                    or step.assertions.check(answer)
                    or check_latency(answer.elapsed, limit=step.max_latency)
                    or _extract(step, answer, variables)
                )
            except ProbeFailure as raised:
                failure = raised
            progress.end(answer, ok=failure is None)
            if failure is not None:
                return progress, failure
        return progress, None

    def _request(self, step: FlowStep, target: str, variables: _Variables, secrets: list[str]) -> WireRequest:
        """The step's request, variables substituted and secrets revealed (remembered in ``secrets`` to mask them)."""
        templates = step.templates
        url = join_url(target, quote(templates.url.render(variables.get), safe=_URL_SAFE))
        headers = [
            (
                key,
                _reveal(value, secrets, what=f"header {key}")
                if isinstance(value, Secret)
                else value.render(variables.get),
            )
            for key, value in templates.headers
        ]
        body = templates.body
        if isinstance(body, Secret):
            text = _reveal(body, secrets, what="body")
        else:
            text = body.render(variables.get) if body is not None else ""
        return WireRequest(
            url,
            method=step.method,
            headers=headers,
            body=text.encode(),
            follow_redirects=self._spec.follow_redirects,
            max_redirects=self._spec.max_redirects,
            ip_protocol=self._spec.ip_protocol,
        )

    def _result(self, target: str, run: Attempted[_Progress, Timings], progress: _Progress) -> ProbeResult:
        failure = run.failure
        message = ""
        step: str | None = None
        if failure is not None:
            progress.interrupted()
            step = progress.current
            message = _masked(_describe(failure, step, progress), progress.secrets)
            logger.debug("flow probe %s against %s failed: %s", self.name, target, message)
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
            status_code=progress.status,
            tls_expiry=progress.tls_expiry,
            step=step,
            attempts=run.attempts,
            details={"steps": list(progress.records)},
        )


def _extract(step: FlowStep, answer: WireAnswer, variables: _Variables) -> ProbeFailure | None:
    """Set each of the step's extracted variables, or fail naming the first one not found."""
    for name, extractor in step.extract.items():
        value = extractor.extract(answer)
        if isinstance(value, Missing):
            return ProbeFailure(Reason.FLOW_EXTRACT, f"cannot extract {name!r}: {value.why}")
        variables.set(name, value)
    return None


def _describe(failure: ProbeFailure, step: str | None, progress: _Progress) -> str:
    if step is None:
        return failure.message
    where = f"step {step!r} ({progress.number} of {progress.total})"
    if failure.reason is Reason.TIMEOUT:
        return f"{where} was running when the flow's timeout struck: {failure.message}"
    return f"{where} failed: {failure.message}"


def _reveal(secret: Secret, secrets: list[str], *, what: str) -> str:
    try:
        value = secret.reveal()
    except ConfigError as exc:
        raise ProbeFailure(Reason.CONFIG, f"the secret of {what} is unavailable: {exc}") from exc
    secrets.append(value)
    return value


def _masked(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _MASK)
    return text
