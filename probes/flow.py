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

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import jsonpath
from pydantic import Discriminator, Field, PrivateAttr, Tag, field_validator, model_validator

from vouch.core.durations import Duration
from vouch.core.errors import ConfigError
from vouch.core.settings import Model
from vouch.probes.assertions import ResponseAssertions, StatusCode, check_latency, check_status, parse_status_codes
from vouch.probes.base import ProbeFailure, ProbeResult, Reason
from vouch.probes.http import url_problem
from vouch.probes.settings import ProbeSpec, Secret, TlsClientSpec
from vouch.probes.wire import (
    DEFAULT_MAX_BODY,
    Attempted,
    IpProtocol,
    Timings,
    TlsContexts,
    WireAnswer,
    WireRequest,
    attempt_within,
    exchange,
)

logger = logging.getLogger(__name__)

_MASK = "***"
_QUOTE = 80
_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_NAME_RE = re.compile(_NAME)
_MARK = re.compile(r"\$?\$\{")
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
"""Characters left as they are in a step's URL; anything else (spaces, non-ASCII) is percent-encoded."""
_JSONPATH = jsonpath.JSONPathEnvironment(strict=True)

VariableName = Annotated[str, Field(pattern=rf"^{_NAME}$")]
"""A variable's name: letters, digits and ``_``, not starting with a digit."""


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A text with ``${name}`` placeholders, parsed once; ``$${`` stands for a literal ``${``.

    >>> t = Template.parse("Bearer ${token}")
    >>> t.names, t.render({"token": "abc"}.__getitem__)
    (frozenset({'token'}), 'Bearer abc')
    """

    pieces: tuple[tuple[str, str], ...]
    """Pairs of (literal text, variable name), in order."""
    tail: str
    """Literal text after the last placeholder."""

    @classmethod
    def parse(cls, text: str) -> Template:
        """``text`` parsed; ``ValueError`` for an unclosed ``${`` or a placeholder that is not a variable name."""
        pieces: list[tuple[str, str]] = []
        literal: list[str] = []
        pos = 0
        while (mark := _MARK.search(text, pos)) is not None:
            literal.append(text[pos : mark.start()])
            if mark.group() == "$${":
                literal.append("${")
                pos = mark.end()
                continue
            end = text.find("}", mark.end())
            if end < 0:
                raise ValueError(f"unclosed '${{' at character {mark.start() + 1} (write '$${{' for a literal '${{')")
            name = text[mark.end() : end]
            if not _NAME_RE.fullmatch(name):
                raise ValueError(
                    f"'${{{_quote(name)}}}' is not a variable reference (names are letters, digits and _, "
                    "not starting with a digit; write '$${' for a literal '${')"
                )
            pieces.append(("".join(literal), name))
            literal = []
            pos = end + 1
        literal.append(text[pos:])
        return cls(tuple(pieces), "".join(literal))

    @property
    def names(self) -> frozenset[str]:
        """The variables the text uses."""
        return frozenset(name for _, name in self.pieces)

    def render(self, value: Callable[[str], str]) -> str:
        """The text with each placeholder replaced by ``value(name)``."""
        if not self.pieces:
            return self.tail
        return "".join(literal + value(name) for literal, name in self.pieces) + self.tail


def join_url(base: str, url: str) -> str:
    """``url`` as is when absolute, else appended to the path of ``base`` (whose query is dropped).

    >>> join_url("http://shop.example/api", "/items/7?full=1")
    'http://shop.example/api/items/7?full=1'
    >>> join_url("http://shop.example/api/", "https://auth.example/token")
    'https://auth.example/token'
    """
    if _ABSOLUTE.match(url):
        return url
    parts = urlsplit(base)
    if not url or url.startswith("?"):
        path = (parts.path or "/") + url
    else:
        path = f"{parts.path.rstrip('/')}/{url.lstrip('/')}"
    return f"{parts.scheme}://{parts.netloc}{path}"


# --------------------------------------------------------------------------- extractors


@dataclass(frozen=True)
class Missing:
    """Why an extractor found no value in an answer."""

    why: str


class JsonExtract(Model):
    """The first value a JSONPath (RFC 9535) selects in the JSON body; numbers and booleans as their JSON text."""

    json_: str = Field(alias="json", min_length=1)
    """JSONPath query, e.g. ``$.token`` or ``$.items[?@.sku == 'A-1'].id``."""

    _query: jsonpath.JSONPath | jsonpath.CompoundJSONPath = PrivateAttr()

    @model_validator(mode="after")
    def _compiles(self) -> JsonExtract:
        try:
            self._query = _JSONPATH.compile(self.json_)
        except jsonpath.JSONPathError as exc:
            raise ValueError(f"not a valid JSONPath: {exc}") from exc
        return self

    def extract(self, answer: WireAnswer) -> str | Missing:
        try:
            document = answer.json()
        except ValueError:
            kind = answer.header("content-type")
            return Missing(f"the body is not JSON ({f'content-type {_quote(kind)}' if kind else 'no content-type'})")
        try:
            match = self._query.match(document)
        except jsonpath.JSONPathError as exc:
            return Missing(f"{self.json_} cannot be evaluated on this body: {exc}")
        if match is None:
            return Missing(f"{self.json_} selects nothing")
        value = match.obj
        if isinstance(value, str):
            return value
        if value is None:
            return Missing(f"{self.json_} selects null")
        if isinstance(value, bool | int | float):
            return json.dumps(value)
        return Missing(f"{self.json_} selects {'an array' if isinstance(value, list) else 'an object'}, not a value")


class RegexExtract(Model):
    """A group of the first match of a regular expression in the body (as text)."""

    regex: re.Pattern[str]
    """Regular expression searched in the body."""
    group: int | str = 1
    """The group whose text is the value: a number (0 is the whole match) or a group's name."""

    @model_validator(mode="after")
    def _group_exists(self) -> RegexExtract:
        group = self.group
        if isinstance(group, int) and not 0 <= group <= self.regex.groups:
            raise ValueError(f"/{self.regex.pattern}/ has no group {group} (use 0 for the whole match)")
        if isinstance(group, str) and group not in self.regex.groupindex:
            raise ValueError(f"/{self.regex.pattern}/ has no group named {group!r}")
        return self

    def extract(self, answer: WireAnswer) -> str | Missing:
        found = self.regex.search(answer.text())
        if found is None:
            cut = " (the body was cut at its size limit)" if answer.truncated else ""
            return Missing(f"the body does not match /{self.regex.pattern}/{cut}")
        value = found.group(self.group)
        if value is None:
            return Missing(f"group {self.group} of /{self.regex.pattern}/ took no part in the match")
        return value


class HeaderExtract(Model):
    """The first value of a response header."""

    header: str = Field(min_length=1)
    """Header name (any case)."""

    def extract(self, answer: WireAnswer) -> str | Missing:
        value = answer.header(self.header)
        return Missing(f"header {self.header} is missing") if value is None else value


_EXTRACTOR_KEYS = ("json", "regex", "header")


def _extractor_kind(value: Any) -> str | None:
    """Which extractor a configuration entry is: the one of its keys ``json``, ``regex`` or ``header``."""
    if isinstance(value, JsonExtract):
        return "json"
    if isinstance(value, RegexExtract):
        return "regex"
    if isinstance(value, HeaderExtract):
        return "header"
    if isinstance(value, Mapping):
        kinds = [key for key in _EXTRACTOR_KEYS if key in value]
        return kinds[0] if len(kinds) == 1 else None
    return None


Extractor = Annotated[
    Annotated[JsonExtract, Tag("json")]
    | Annotated[RegexExtract, Tag("regex")]
    | Annotated[HeaderExtract, Tag("header")],
    Discriminator(
        _extractor_kind,
        custom_error_type="extractor_kind",
        custom_error_message="an extractor sets exactly one of 'json', 'regex' or 'header'",
    ),
]
"""``{json: "$.path"}``, ``{regex: "pattern", group: 1}`` or ``{header: "Name"}``."""


# --------------------------------------------------------------------------- settings


def _two_hundreds() -> list[int | str]:
    return ["2xx"]


@dataclass(frozen=True)
class StepTemplates:
    """A step's URL, header values and body, parsed; secrets stay secrets (sent verbatim)."""

    url: Template
    headers: tuple[tuple[str, Template | Secret], ...]
    body: Template | Secret | None

    @property
    def names(self) -> frozenset[str]:
        """Every variable the step uses."""
        parts = [self.url, *(value for _, value in self.headers), self.body]
        return frozenset[str]().union(*(part.names for part in parts if isinstance(part, Template)))


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
        if not url.names and _ABSOLUTE.match(self.url):
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


class FlowProbeSpec(ProbeSpec):
    """A multi-step API check against a base URL: ordered requests, variables carried from one to the next."""

    kind: Literal["flow"] = "flow"
    """Selects this probe kind."""
    variables: dict[VariableName, str | Secret] = Field(default_factory=dict)
    """Variables known before the first step (values used verbatim); secrets are revealed when first used."""
    steps: list[FlowStep] = Field(min_length=1, max_length=50)
    """The requests, run in order on fresh connections; the first failing one ends the run."""
    tls: TlsClientSpec = Field(default_factory=TlsClientSpec)
    """TLS settings for https URLs (every step)."""
    follow_redirects: bool = True
    """Follow 3xx redirects (each on a new connection); when off, an unaccepted redirect fails the step."""
    max_redirects: int = Field(default=5, ge=0, le=20)
    """Most redirects followed per step before it fails with ``http_redirect``."""
    ip_protocol: IpProtocol | None = None
    """Preferred address family (``ip4`` or ``ip6``) when a name has both."""
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY, ge=0)
    """Bytes of each answer's body kept for assertions and extraction; more is read and dropped."""

    @field_validator("targets")
    @classmethod
    def _urls(cls, targets: list[str]) -> list[str]:
        for target in targets:
            problem = url_problem(target)
            if problem:
                raise ValueError(problem)
        return targets

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
        started_at = time.time()
        began = time.perf_counter()
        spec = self._spec
        latest = [_Progress(len(spec.steps))]

        async def attempt(timings: Timings) -> tuple[_Progress, ProbeFailure | None]:
            latest[0] = _Progress(len(spec.steps))
            return await self._attempt(target, timings, latest[0])

        try:
            run = await attempt_within(
                attempt, timeout=spec.timeout, retries=spec.retries, retry_delay=spec.retry_delay
            )
        except Exception as exc:
            logger.error("flow probe %s: internal error %s", spec.name, type(exc).__name__, exc_info=exc)
            failure = ProbeFailure(Reason.INTERNAL, f"internal error in the probe ({type(exc).__name__})")
            run = Attempted(None, failure, 1, {})
        return self._result(target, run, latest[0], started_at, time.perf_counter() - began)

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

    def _result(
        self, target: str, run: Attempted[_Progress], progress: _Progress, started_at: float, duration: float
    ) -> ProbeResult:
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
            started_at=started_at,
            duration=duration,
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


def _quote(text: str) -> str:
    return text if len(text) <= _QUOTE else text[: _QUOTE - 1] + "…"
