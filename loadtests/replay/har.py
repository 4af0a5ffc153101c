"""HAR 1.2 archives (a browser's or a proxy's recording): ``log.entries[]`` with their requests.

Each entry gives ``startedDateTime`` (ISO 8601, millisecond resolution), ``request.method``,
``request.url`` (absolute: the replay keeps its path and query), ``request.headers`` and
``request.postData.text``; ``response.status`` is the status recorded. Records are numbered by entry,
from 1, since a HAR is one JSON document rather than lines.

>>> har = {"log": {"version": "1.2", "entries": [{"startedDateTime": "2024-05-01T10:00:00.500Z",
...     "request": {"method": "GET", "url": "https://shop.example/cart", "headers": []},
...     "response": {"status": 200}}]}}
>>> read_har(har, file="shop.har").requests[0].path
'/cart'
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from vouch.loadtests.errors import AccessLogError
from vouch.loadtests.replay.record import BadRecords, LoggedRequest, ParsedLog, path_of, safe_headers


def _body(request: Mapping[str, Any]) -> bytes | None:
    post = request.get("postData")
    if not isinstance(post, Mapping) or not post.get("text"):
        return None
    text = str(post["text"])
    if post.get("encoding") == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"postData.text is not base64: {exc}") from exc
    return text.encode()


def _started(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError("no startedDateTime")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"startedDateTime is not ISO 8601: {value!r}") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def parse_har_entry(entry: Any, *, number: int, keep_credentials: bool = False) -> LoggedRequest:
    """One ``log.entries[]`` item as a request; ``ValueError`` says why it is not one."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("request"), Mapping):
        raise ValueError("no request object")
    request = entry["request"]
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or not method.isalpha():
        raise ValueError(f"request.method is not a method: {method!r}")
    if not isinstance(url, str):
        raise ValueError("no request.url")
    raw_headers = request.get("headers") or []
    if not isinstance(raw_headers, list) or not all(isinstance(h, Mapping) for h in raw_headers):
        raise ValueError("request.headers is not a list of {name, value}")
    response = entry.get("response")
    status = response.get("status") if isinstance(response, Mapping) else None
    return LoggedRequest(
        at=_started(entry.get("startedDateTime")),
        method=method.upper(),
        path=path_of(url),
        headers=safe_headers(
            ((str(h.get("name", "")), str(h.get("value", ""))) for h in raw_headers), keep_credentials=keep_credentials
        ),
        body=_body(request),
        # HAR writes 0 (or -1) for a request that got no response: nothing to compare against.
        status=status if isinstance(status, int) and status > 0 else None,
        line=number,
    )


def read_har(document: Any, *, file: str, skip_bad: bool = False, keep_credentials: bool = False) -> ParsedLog:
    """Every request of a parsed HAR document; a document that is not a HAR at all is an error even with skip_bad."""
    log = document.get("log") if isinstance(document, Mapping) else None
    entries = log.get("entries") if isinstance(log, Mapping) else None
    if not isinstance(entries, list):
        raise AccessLogError(f"{file}: not a HAR archive: no log.entries list")
    bad = BadRecords(file, skip_bad=skip_bad)
    found = []
    for number, entry in enumerate(entries, start=1):
        try:
            found.append(parse_har_entry(entry, number=number, keep_credentials=keep_credentials))
        except ValueError as exc:
            bad.bad(number, str(exc), unit="entry")
    return bad.result("har", found)
