"""The ``builtin`` metric provider: the local router's own traffic counts, no Prometheus needed.

Expression language
-------------------
One function of one version's traffic over a trailing window::

    <function>{service="S",environment="E",version="V"}[<window>]

``function`` is one of

- ``error_ratio`` — share of requests answered 5xx (0 to 1);
- ``request_rate`` — requests per second over the window;
- ``requests`` — number of requests in the window;
- ``latency_quantile(q)`` — the ``q`` quantile (0 to 1) of latency in seconds,
  interpolated within histogram buckets like PromQL's ``histogram_quantile``.

All three labels are required, each exactly once, each an exact match
(``=``, double quotes). ``window`` is a duration such as ``30s``, ``2m``,
``500ms``. For example::

    latency_quantile(0.99){service="checkout",environment="staging",version="2.4.1"}[1m]

A window without a single request is "no data": the answer is an empty list,
never a zero that could pass an SLO. Anything malformed raises
:class:`~vouch.core.errors.MetricQueryError` saying what is wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from vouch.core.durations import parse_duration
from vouch.core.errors import MetricQueryError
from vouch.rollout.metrics.base import Sample
from vouch.rollout.model import Target
from vouch.rollout.platforms.traffic import TrafficRecorder, TrafficWindow

FUNCTIONS: tuple[str, ...] = ("error_ratio", "request_rate", "requests", "latency_quantile")
"""The functions of the builtin expression language."""

LABELS: tuple[str, ...] = ("service", "environment", "version")
"""The labels every builtin expression must match exactly."""

_SHAPE = re.compile(
    r"^\s*(?P<fn>[A-Za-z_]\w*)\s*(?:\((?P<arg>[^()]*)\))?\s*"
    r"\{(?P<labels>[^{}]*)\}\s*\[(?P<window>[^\[\]]*)\]\s*$"
)
_MATCHER = re.compile(r'\s*(?P<name>[A-Za-z_]\w*)\s*(?P<op>=~|!=|!~|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*')
_EXAMPLE = 'error_ratio{service="S",environment="E",version="V"}[30s]'


@dataclass(frozen=True)
class BuiltinQuery:
    """A parsed builtin expression."""

    function: str
    target: Target
    version: str
    window: float
    quantile: float | None = None


def parse(expr: str) -> BuiltinQuery:
    """Parse a builtin expression, or raise MetricQueryError naming what is wrong.

    >>> parse('requests{service="shop",environment="dev",version="1"}[2m]').window
    120.0
    """
    match = _SHAPE.match(expr)
    if match is None:
        raise MetricQueryError(f"builtin: cannot parse {expr!r}; expected an expression such as {_EXAMPLE}")
    function, quantile = _function(match.group("fn"), match.group("arg"))
    labels = _labels(match.group("labels"))
    window = _window(match.group("window"))
    target = Target(labels["service"], labels["environment"])
    return BuiltinQuery(function, target, labels["version"], window, quantile)


def _function(name: str, arg: str | None) -> tuple[str, float | None]:
    if name not in FUNCTIONS:
        raise MetricQueryError(f"builtin: unknown function {name!r}; known: {', '.join(FUNCTIONS)}")
    if name != "latency_quantile":
        if arg is not None:
            raise MetricQueryError(f"builtin: {name} takes no argument, got ({arg})")
        return name, None
    if arg is None or not arg.strip():
        raise MetricQueryError("builtin: latency_quantile needs a quantile, e.g. latency_quantile(0.99)")
    try:
        quantile = float(arg)
    except ValueError:
        raise MetricQueryError(f"builtin: latency_quantile({arg}): {arg.strip()!r} is not a number") from None
    if not 0 <= quantile <= 1:
        raise MetricQueryError(f"builtin: latency_quantile({arg}): the quantile must be between 0 and 1")
    return name, quantile


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while text[pos:].strip():
        match = _MATCHER.match(text, pos)
        if match is None:
            raise MetricQueryError(f'builtin: cannot parse label matchers at {text[pos:]!r}; write name="value"')
        name, op = match.group("name"), match.group("op")
        if op != "=":
            raise MetricQueryError(f"builtin: label {name}: only exact matches (=) are supported, not {op}")
        if name not in LABELS:
            raise MetricQueryError(f"builtin: unknown label {name!r}; the labels are {', '.join(LABELS)}")
        if name in labels:
            raise MetricQueryError(f"builtin: label {name!r} is given twice")
        labels[name] = re.sub(r"\\(.)", r"\1", match.group("value"))
        pos = match.end()
        if pos < len(text):
            if text[pos] != ",":
                raise MetricQueryError(f"builtin: expected ',' between label matchers at {text[pos:]!r}")
            pos += 1
    missing = [name for name in LABELS if name not in labels]
    if missing:
        raise MetricQueryError(
            f"builtin: missing label(s) {', '.join(missing)}; all of {', '.join(LABELS)} are required"
        )
    return labels


def _window(text: str) -> float:
    try:
        seconds = parse_duration(text.strip())
    except ValueError as exc:
        raise MetricQueryError(f"builtin: window [{text}]: {exc}") from exc
    if seconds <= 0:
        raise MetricQueryError(f"builtin: window [{text}] must be longer than zero")
    return seconds


class BuiltinProvider:
    """Answers builtin expressions from a :class:`TrafficRecorder`.

    >>> import asyncio
    >>> rec = TrafficRecorder()
    >>> rec.record(Target("shop", "dev"), "2", "canary", status=200, seconds=0.01, now=100.0)
    >>> provider = BuiltinProvider(rec, clock=lambda: 100.0)
    >>> asyncio.run(provider.query('requests{service="shop",environment="dev",version="2"}[30s]'))[0].value
    1.0
    """

    kind = "builtin"

    def __init__(self, traffic: TrafficRecorder, *, clock: Callable[[], float] = time.time) -> None:
        self._traffic = traffic
        self._clock = clock

    async def query(self, expr: str, *, at: float | None = None) -> list[Sample]:
        """Evaluate ``expr`` over the window ending at ``at`` (the clock's now when ``None``)."""
        parsed = parse(expr)
        now = self._clock() if at is None else at
        window = self._traffic.window(parsed.target, parsed.version, parsed.window, now=now)
        value = _evaluate(parsed, window)
        if value is None:
            return []
        labels = {
            "service": parsed.target.service,
            "environment": parsed.target.environment,
            "version": parsed.version,
        }
        return [Sample(value=value, labels=labels, at=now)]

    async def close(self) -> None:
        """Nothing to release: the recorder belongs to the platform."""


def _evaluate(parsed: BuiltinQuery, window: TrafficWindow) -> float | None:
    if not window.requests:
        return None
    if parsed.function == "error_ratio":
        return window.error_ratio
    if parsed.function == "request_rate":
        return window.request_rate
    if parsed.function == "requests":
        return float(window.requests)
    assert parsed.quantile is not None
    return window.quantile(parsed.quantile)
