"""Checks on an HTTP answer, shared by the http and flow probes: each returns ``None`` or a ProbeFailure.

Measuring is separate from judging: :func:`vouch.probes.wire.exchange` only
measures; these functions judge its :class:`~vouch.probes.wire.WireAnswer`
against settings models that a probe's configuration embeds. Failure
messages name the check and what was seen, never a request header or body
(those may hold secrets), and quote at most a short piece of the answer.

Example::

    checks = ResponseAssertions(
        body_matches=[r"\\bready\\b"],
        json=[JsonAssertion(path="$.items[0].count", ge=1), JsonAssertion(path="$.error", exists=False)],
        headers=[HeaderAssertion(name="content-type", matches="json")],
    )
    failure = (
        check_status(answer, parse_status_codes(["2xx", 304]))
        or checks.check(answer)
        or check_latency(answer.elapsed, limit=0.5)
    )
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import jsonpath
from pydantic import BeforeValidator, Field, PrivateAttr, model_validator

from vouch.core.durations import format_duration
from vouch.core.settings import Model
from vouch.probes.base import ProbeFailure, Reason
from vouch.probes.wire import REDIRECT_CODES, WireAnswer

_QUOTE = 80
"""How much of a value a failure message quotes."""
_JSONPATH = jsonpath.JSONPathEnvironment(strict=True)
"""RFC 9535 JSONPath, strictly (a leading ``$``, no extensions)."""

_STATUS_FORM = re.compile(r"^[1-5](xx|\d\d)$")


def _status_code(value: Any) -> int | str:
    """Accept 200, "200" or a class like "2xx"; keep ints as ints and classes as "Nxx"."""
    if isinstance(value, bool):
        raise ValueError("a status code is a number like 200 or a class like '2xx'")
    if isinstance(value, int):
        if not 100 <= value <= 599:
            raise ValueError(f"{value} is not an HTTP status code (100-599)")
        return value
    if isinstance(value, str) and _STATUS_FORM.match(value.strip().lower()):
        text = value.strip().lower()
        return text if text.endswith("xx") else int(text)
    raise ValueError(f"{value!r} is not a status code like 200 or a class like '2xx'")


StatusCode = Annotated[int | str, BeforeValidator(_status_code)]
"""An accepted status: a code (``204``) or a class (``"2xx"``)."""


class StatusCodes:
    """A parsed set of accepted status codes: exact codes plus whole classes, checked in O(1)."""

    __slots__ = ("classes", "codes", "text")

    def __init__(self, accepted: Sequence[int | str]) -> None:
        self.codes = frozenset(code for code in accepted if isinstance(code, int))
        self.classes = frozenset(int(code[0]) for code in accepted if isinstance(code, str))
        self.text = ", ".join(str(code) for code in accepted)

    def accepts(self, status: int) -> bool:
        return status in self.codes or status // 100 in self.classes


def parse_status_codes(accepted: Sequence[int | str]) -> StatusCodes:
    """The checker for ``accepted`` (values as :data:`StatusCode` validates them)."""
    return StatusCodes([_status_code(code) for code in accepted])


def check_status(answer: WireAnswer, accepted: StatusCodes) -> ProbeFailure | None:
    """``http_status`` for an unaccepted status; ``http_redirect`` for an unaccepted, unfollowed redirect."""
    status = answer.status_code
    if accepted.accepts(status):
        return None
    location = answer.header("location")
    if status in REDIRECT_CODES and location:
        return ProbeFailure(
            Reason.HTTP_REDIRECT, f"redirect {status} to {_quote(location)} not followed (accepted: {accepted.text})"
        )
    return ProbeFailure(Reason.HTTP_STATUS, f"status {status} {answer.reason} not accepted (accepted: {accepted.text})")


def check_latency(seconds: float, *, limit: float | None) -> ProbeFailure | None:
    """``latency_exceeded`` when an answer took longer than ``limit`` (no limit when ``None``)."""
    if limit is None or seconds <= limit:
        return None
    return ProbeFailure(
        Reason.LATENCY, f"answered in {format_duration(seconds)}, more than the maximum {format_duration(limit)}"
    )


class HeaderAssertion(Model):
    """A response header must match a regular expression, or be absent."""

    name: str = Field(min_length=1)
    """Header name (any case)."""
    matches: re.Pattern[str] | None = None
    """Regular expression that some value of the header must contain a match of."""
    absent: bool = False
    """The header must not be present at all."""

    @model_validator(mode="after")
    def _one_check(self) -> HeaderAssertion:
        if (self.matches is None) == (not self.absent):
            raise ValueError("a header assertion sets exactly one of 'matches' or 'absent: true'")
        return self

    def check(self, answer: WireAnswer) -> ProbeFailure | None:
        values = answer.header_values(self.name)
        if self.absent:
            if values:
                return ProbeFailure(Reason.HEADER_MISMATCH, f"header {self.name} is present but must be absent")
            return None
        assert self.matches is not None
        if not values:
            return ProbeFailure(Reason.HEADER_MISMATCH, f"header {self.name} is missing")
        if any(self.matches.search(value) for value in values):
            return None
        return ProbeFailure(
            Reason.HEADER_MISMATCH,
            f"header {self.name}: {_quote(values[0])} does not match /{self.matches.pattern}/",
        )


class JsonAssertion(Model):
    """A JSONPath (RFC 9535) query on the body and what its results must satisfy.

    ``exists`` alone checks whether the query selects anything. Every other
    check needs at least one result and holds only when *every* selected value
    satisfies it (``$.items[*].price`` with ``gt: 0`` means all prices). Numbers
    compare as numbers; ``matches`` searches strings (other values as their JSON text).
    """

    path: str = Field(min_length=1)
    """JSONPath query, e.g. ``$.status`` or ``$.items[?@.sku == 'A-1'].count``."""
    exists: bool | None = None
    """Whether the query must select something (true) or nothing (false)."""
    equals: Any = None
    """The selected values must equal this (JSON comparison: ``1 == 1.0``, but ``true != 1``); may be null."""
    matches: re.Pattern[str] | None = None
    """Regular expression each selected value must contain a match of."""
    gt: float | None = None
    """Each selected value must be a number greater than this."""
    ge: float | None = None
    """Each selected value must be a number at least this."""
    lt: float | None = None
    """Each selected value must be a number less than this."""
    le: float | None = None
    """Each selected value must be a number at most this."""

    _query: jsonpath.JSONPath | jsonpath.CompoundJSONPath = PrivateAttr()
    _has_equals: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _compiles(self) -> JsonAssertion:
        try:
            self._query = _JSONPATH.compile(self.path)
        except jsonpath.JSONPathError as exc:
            raise ValueError(f"not a valid JSONPath: {exc}") from exc
        self._has_equals = "equals" in self.model_fields_set
        valued = self._has_equals or any(c is not None for c in (self.matches, self.gt, self.ge, self.lt, self.le))
        if self.exists is None and not valued:
            raise ValueError("a JSON assertion needs a check: exists, equals, matches, gt, ge, lt or le")
        if self.exists is False and valued:
            raise ValueError("'exists: false' cannot be combined with value checks")
        return self

    def check(self, document: Any) -> ProbeFailure | None:
        """Judge the parsed JSON ``document``."""
        try:
            values = self._query.findall(document)
        except jsonpath.JSONPathError as exc:
            return ProbeFailure(Reason.JSON_MISMATCH, f"{self.path}: cannot be evaluated on this body: {exc}")
        if self.exists is False:
            if values:
                return self._fail(f"selects {_show(values[0])} but must select nothing")
            return None
        if not values:
            return self._fail("selects nothing")
        for value in values:
            problem = self._problem(value)
            if problem is not None:
                return self._fail(problem)
        return None

    def _problem(self, value: Any) -> str | None:
        if self._has_equals and not _json_equal(value, self.equals):
            return f"is {_show(value)}, expected {_show(self.equals)}"
        if self.matches is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            if not self.matches.search(text):
                return f"is {_show(value)}, which does not match /{self.matches.pattern}/"
        bounds: tuple[tuple[float | None, str, Callable[[float, float], bool]], ...] = (
            (self.gt, ">", float.__gt__),
            (self.ge, ">=", float.__ge__),
            (self.lt, "<", float.__lt__),
            (self.le, "<=", float.__le__),
        )
        for bound, sign, holds in bounds:
            if bound is None:
                continue
            number = _number(value)
            if number is None:
                return f"is {_show(value)}, not a number to compare with {sign} {bound:g}"
            if not holds(number, bound):
                return f"is {_show(value)}, expected {sign} {bound:g}"
        return None

    def _fail(self, problem: str) -> ProbeFailure:
        return ProbeFailure(Reason.JSON_MISMATCH, f"{self.path} {problem}")


class ResponseAssertions(Model):
    """What a response's headers and body must satisfy, beyond its status code."""

    body_matches: list[re.Pattern[str]] = Field(default_factory=list)
    """Regular expressions that must each find a match in the body."""
    body_not_matches: list[re.Pattern[str]] = Field(default_factory=list)
    """Regular expressions that must find no match in the body."""
    json_: list[JsonAssertion] = Field(default_factory=list, alias="json")
    """JSONPath assertions; the body must be JSON when there are any."""
    headers: list[HeaderAssertion] = Field(default_factory=list)
    """Response header assertions."""

    def check(self, answer: WireAnswer) -> ProbeFailure | None:
        """The first assertion that does not hold, in the order headers, body regexes, JSON."""
        for header in self.headers:
            failure = header.check(answer)
            if failure is not None:
                return failure
        if self.body_matches or self.body_not_matches:
            failure = _check_body(answer, self.body_matches, self.body_not_matches)
            if failure is not None:
                return failure
        if self.json_:
            try:
                document = answer.json()
            except ValueError:
                return ProbeFailure(Reason.JSON_MISMATCH, f"the body is not JSON ({_content_type(answer)})")
            for assertion in self.json_:
                failure = assertion.check(document)
                if failure is not None:
                    return failure
        return None


def _check_body(
    answer: WireAnswer, must: list[re.Pattern[str]], must_not: list[re.Pattern[str]]
) -> ProbeFailure | None:
    text = answer.text()
    cut = " (the body was cut at its size limit)" if answer.truncated else ""
    for pattern in must:
        if not pattern.search(text):
            return ProbeFailure(Reason.BODY_MISMATCH, f"body does not match /{pattern.pattern}/{cut}")
    for pattern in must_not:
        if pattern.search(text):
            return ProbeFailure(Reason.BODY_MISMATCH, f"body matches forbidden /{pattern.pattern}/")
    return None


def _json_equal(value: Any, expected: Any) -> bool:
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and value == expected
    return bool(value == expected)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _content_type(answer: WireAnswer) -> str:
    kind = answer.header("content-type")
    return f"content-type {_quote(kind)}" if kind else "no content-type"


def _show(value: Any) -> str:
    return _quote(json.dumps(value, default=str))


def _quote(text: str) -> str:
    return text if len(text) <= _QUOTE else text[: _QUOTE - 1] + "…"
