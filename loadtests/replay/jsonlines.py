"""Access logs written as JSON lines: one object per line, with field names each site chooses.

:class:`JsonFields` lists, for each thing a replay needs, the names tried in order; the defaults
cover nginx ``escape=json`` templates, Caddy, Envoy and ECS-style logs. A name with dots
(``http.request.method``) also looks inside nested objects. A ``request`` field holding a whole
request line (``GET /cart HTTP/1.1``) stands in for method and path.

>>> r = parse_json_line('{"ts": 1700000000.25, "method": "get", "uri": "/a?b=1", "status": 200}', line_number=3)
>>> (r.at, r.method, r.path, r.status, r.line)
(1700000000.25, 'GET', '/a?b=1', 200, 3)
>>> JsonFields().with_overrides({"time": "when"}).time
('when',)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vouch.loadtests.replay.combined import parse_time_local
from vouch.loadtests.replay.record import BadRecords, LoggedRequest, ParsedLog, path_of, safe_headers


@dataclass(frozen=True)
class JsonFields:
    """The field names tried, in order, for each part of a request."""

    time: tuple[str, ...] = ("time", "timestamp", "@timestamp", "ts", "time_iso8601", "time_local", "start_time")
    method: tuple[str, ...] = ("method", "request_method", "http.request.method", "verb")
    path: tuple[str, ...] = ("path", "uri", "request_uri", "url", "url.original", "url.path")
    request: tuple[str, ...] = ("request",)
    status: tuple[str, ...] = ("status", "status_code", "response_status", "http.response.status_code")
    headers: tuple[str, ...] = ("headers", "request_headers", "http.request.headers")
    body: tuple[str, ...] = ("body", "request_body", "http.request.body.content")

    def with_overrides(self, overrides: Mapping[str, str]) -> JsonFields:
        """These fields with some replaced by one exact name each (``{"time": "ts"}``); unknown parts are errors."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown JSON log field {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **{part: (name,) for part, name in overrides.items()})


def _lookup(record: Mapping[str, Any], names: tuple[str, ...], *, scalar: bool = True) -> Any:
    """The first of ``names`` present; with ``scalar``, objects and lists are passed over (``url`` vs ``url.path``)."""
    for name in names:
        node: Any = record.get(name)
        if node is None:
            node = record
            for key in name.split("."):
                node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None and not (scalar and isinstance(node, Mapping | list)):
            return node
    return None


def json_time(value: Any) -> float:
    """A logged time as epoch seconds: a number (seconds, or ms/µs/ns when that large), ISO 8601, or nginx's local.

    >>> json_time(1700000000123), json_time("2023-11-14T22:13:20Z"), json_time("14/Nov/2023:22:13:20 +0000")
    (1700000000.123, 1700000000.0, 1700000000.0)
    """
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                return parse_time_local(value)
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a time: {value!r}")
    for scale in (1e9, 1e6, 1e3):
        if value > 1e8 * scale:
            return value / scale
    return float(value)


def _headers(value: Any) -> list[tuple[str, str]]:
    """Headers as an object, a list of ``[name, value]`` pairs or a list of HAR-style ``{name, value}``."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(h["name"], h["value"]) if isinstance(h, Mapping) else tuple(h) for h in value]
    else:
        raise ValueError("headers are neither an object nor a list")
    return [(str(k), ", ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in items]


def parse_json_line(
    line: str, *, line_number: int, fields: JsonFields = JsonFields(), keep_credentials: bool = False
) -> LoggedRequest:
    """One JSON line as a request; ``ValueError`` says why it is not one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    method, target = _lookup(record, fields.method), _lookup(record, fields.path)
    request = _lookup(record, fields.request)
    if (method is None or target is None) and isinstance(request, str) and len(request.split(" ")) in (2, 3):
        method, target = request.split(" ")[:2]
    when = _lookup(record, fields.time)
    for part, value in (("time", when), ("method", method), ("path", target)):
        if value is None:
            raise ValueError(f"no {part}: none of the fields {', '.join(getattr(fields, part))}")
    if not str(method).isalpha():
        raise ValueError(f"not a method: {str(method)[:40]!r}")
    status = _lookup(record, fields.status)
    body = _lookup(record, fields.body)
    headers = _headers(_lookup(record, fields.headers, scalar=False))
    return LoggedRequest(
        at=json_time(when),
        method=str(method).upper(),
        path=path_of(str(target)),
        headers=safe_headers(headers, keep_credentials=keep_credentials),
        body=body.encode() if isinstance(body, str) and body else None,
        status=int(status) if isinstance(status, int | str) and str(status).isdigit() else None,
        line=line_number,
    )


def read_json_lines(
    lines: Iterable[str],
    *,
    file: str,
    fields: JsonFields = JsonFields(),
    skip_bad: bool = False,
    keep_credentials: bool = False,
) -> ParsedLog:
    """Every request of a JSON lines log; blank lines are not records."""
    bad = BadRecords(file, skip_bad=skip_bad)
    found = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            found.append(parse_json_line(line, line_number=number, fields=fields, keep_credentials=keep_credentials))
        except (ValueError, TypeError, KeyError) as exc:
            bad.bad(number, str(exc))
    return bad.result("jsonl", found)
