"""The pure half of a mocked backend: which route answers a request, what its answer says, which fault hits it.

Kept apart from the server (:mod:`vouch.daemon.preview.mock`) so that matching, templating and the
fault draw can be read and tested without a socket.

Templates are plain substitution, never evaluation: ``{{path.NAME}}`` (a ``{NAME}`` segment of the
route's path), ``{{query.NAME}}`` (first value), ``{{header.NAME}}`` (any case), ``{{json.FIELD}}``
(of the request's JSON body; ``json.a.b.0`` walks objects and lists) and ``{{method}}``. A value that
is missing renders as the empty string; a JSON value that is not a string renders as compact JSON.
In a ``json`` answer, every string is a template, and a string that is exactly one placeholder
takes the value itself, type and all::

    route: {method: POST, path: /orders/{id}, json: {"id": "{{path.id}}", "amount": "{{json.amount}}"}}
    POST /orders/7 {"amount": 12.5}  ->  {"id": "7", "amount": 12.5}
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vouch.core.errors import InputError
from vouch.rollout.preview import MockFaults, MockRoute

CONTROL_PREFIX = "/__vouch/"
"""The mock's own API lives under this path; no route may use it."""

_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z]+)(?:\.([^{}\s]+))?\s*\}\}")
_MISSING = object()


@dataclass(frozen=True)
class RequestView:
    """What a template may read of one request."""

    method: str
    path: Mapping[str, str] = field(default_factory=dict)
    """The values of the route's ``{NAME}`` segments."""
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-cased names."""
    json: Any = None
    """The request body parsed as JSON; None when it was not JSON."""

    def lookup(self, source: str, name: str | None) -> Any:
        """The value a placeholder names, or ``_MISSING``."""
        if source == "method":
            return self.method if name is None else _MISSING
        if name is None:
            return _MISSING
        if source == "path":
            return self.path.get(name, _MISSING)
        if source == "query":
            return self.query.get(name, _MISSING)
        if source == "header":
            return self.headers.get(name.lower(), _MISSING)
        if source == "json":
            return _walk(self.json, name.split("."))
        return _MISSING


def _walk(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, _MISSING)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def _text(value: Any) -> str:
    if value is _MISSING:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def render(template: str, view: RequestView) -> str:
    """``template`` with every placeholder replaced by the request's value (missing: empty)."""
    return _PLACEHOLDER.sub(lambda m: _text(view.lookup(m.group(1), m.group(2))), template)


def render_json(value: Any, view: RequestView) -> Any:
    """A JSON answer with its strings rendered; a string that is one placeholder keeps the value's type."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value.strip())
        if whole is not None:
            found = view.lookup(whole.group(1), whole.group(2))
            return "" if found is _MISSING else found
        return render(value, view)
    if isinstance(value, dict):
        return {key: render_json(item, view) for key, item in value.items()}
    if isinstance(value, list):
        return [render_json(item, view) for item in value]
    return value


def compile_path(path: str) -> re.Pattern[str]:
    """A route path as a pattern: ``{NAME}`` matches one non-empty segment (no ``/``), the rest literally."""
    parts: list[str] = []
    position = 0
    for segment in _SEGMENT.finditer(path):
        parts.append(re.escape(path[position : segment.start()]))
        parts.append(f"(?P<{segment.group(1)}>[^/]+)")
        position = segment.end()
    parts.append(re.escape(path[position:]))
    try:
        return re.compile("".join(parts))
    except re.error as exc:  # a name used twice
        raise InputError(f"route path {path!r}: {exc}") from exc


@dataclass(frozen=True)
class Match:
    """The route that answers a request, and the values of its ``{NAME}`` segments."""

    index: int
    route: MockRoute
    params: Mapping[str, str]


class RouteTable:
    """A mock's routes in order; the first whose method and path match answers.

    Example::

        table = RouteTable([MockRoute(method="POST", path="/reserve/{sku}")])
        table.match("POST", "/reserve/tea")  # Match(index=0, route=..., params={"sku": "tea"})
    """

    def __init__(self, routes: Sequence[MockRoute]) -> None:
        for index, route in enumerate(routes):
            if route.path.startswith(CONTROL_PREFIX):
                raise InputError(f"route {index} ({route.path}): paths under {CONTROL_PREFIX} are the mock's own")
        self._routes = tuple((route, compile_path(route.path)) for route in routes)

    def match(self, method: str, path: str) -> Match | None:
        for index, (route, pattern) in enumerate(self._routes):
            if route.method != method.upper():
                continue
            found = pattern.fullmatch(path)
            if found is not None:
                return Match(index, route, found.groupdict())
        return None

    def describe(self) -> list[str]:
        """``METHOD PATH`` of every route, for the answer to a request no route matched."""
        return [f"{route.method} {route.path}" for route, _ in self._routes]


@dataclass(frozen=True)
class Outcome:
    """What a request gets besides its route's answer: ``fault`` is ``drop``, ``error``, ``latency`` or None."""

    fault: str | None
    latency: float
    status: int | None
    """The status answered; None when the connection is dropped."""


def draw(faults: MockFaults | None, status: int, rng: random.Random) -> Outcome:
    """Decide one request's fault. A ratio of 0 draws nothing, so a seeded sequence depends only on faults.

    The drop is drawn before the error (a dropped request gets no answer at all); latency applies to
    every request, dropped or not.
    """
    if faults is None:
        return Outcome(None, 0.0, status)
    latency = faults.latency
    if faults.drop_ratio > 0 and rng.random() < faults.drop_ratio:
        return Outcome("drop", latency, None)
    if faults.error_ratio > 0 and rng.random() < faults.error_ratio:
        return Outcome("error", latency, faults.error_status)
    return Outcome("latency" if latency > 0 else None, latency, status)
