"""What Locust wrote, reduced to a :class:`~vouch.loadtests.model.LoadResult`: pure functions, no I/O.

Locust's ``--json-file`` (or what ``--json`` prints, read back by :func:`stats_from_output`) is the
source of truth for counts (its CSV undercounts): a list with one entry per request name, each with
request and failure counts, a response-time histogram (keys in milliseconds, rounded to two
significant digits) and requests per whole second. Quantiles are taken
from the merged histogram exactly as Locust computes its own percentiles. The failures CSV only
names the most frequent failure messages; the stats-history CSV only feeds progress bars.

>>> entries = [{"name": "GET /", "method": "GET", "num_requests": 4, "num_none_requests": 0, "num_failures": 1,
...             "max_response_time": 30.2, "start_time": 100.5, "last_request_timestamp": 102.9,
...             "response_times": {"5": 2, "10": 1, "30": 1}, "num_reqs_per_sec": {"101": 2, "102": 2}}]
>>> result = parse_stats(entries, target="http://127.0.0.1:8080")
>>> result.requests, result.failures, result.latency.p50, result.latency.p99, result.rps
(4, 1, 10.0, 30.0, 2.0)
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.model import EndpointStats, LoadResult, Progress, Quantiles

_QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99))
_REQUIRED = ("name", "num_requests", "num_failures", "response_times", "num_reqs_per_sec")
_LIST_START = re.compile(r"^\[", re.MULTILINE)


@dataclass(frozen=True)
class _Entry:
    """One request name of the JSON, checked and typed."""

    name: str
    method: str
    requests: int
    timed: int
    failures: int
    max_ms: float | None
    start: float | None
    last: float | None
    histogram: dict[float, int]
    per_second: dict[int, int]


def parse_stats(
    entries: object,
    *,
    target: str,
    users: int = 0,
    ramp: float = 0.0,
    errors: Sequence[str] = (),
    runner: str = "locust",
    tool_version: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> LoadResult:
    """The :class:`LoadResult` of Locust's ``--json-file`` document ``entries``.

    ``ramp`` is how long spawning took (``users / spawn_rate``): the achieved rate and ``duration``
    count only whole seconds after it, so a slow ramp does not read as a slow service. A document that
    is not Locust's raises :class:`LoadTestError`; no entries at all is a result with zero requests.
    """
    parsed = [_entry(item, index) for index, item in enumerate(_as_list(entries))]
    start = min((e.start for e in parsed if e.start is not None), default=None)
    last = max((e.last for e in parsed if e.last is not None), default=None)
    window = _window(start, last, ramp)
    endpoints = tuple(
        EndpointStats(
            name=e.name,
            method=e.method,
            requests=e.requests,
            failures=e.failures,
            rps=_rate(e.per_second, e.requests, window, start, last),
            latency=_quantiles(e.histogram, e.timed, e.max_ms),
        )
        for e in sorted(parsed, key=lambda e: (e.name, e.method))
    )
    merged: Counter[float] = Counter()
    per_second: Counter[int] = Counter()
    for e in parsed:
        merged.update(e.histogram)
        per_second.update(e.per_second)
    requests = sum(e.requests for e in parsed)
    maxima = [e.max_ms for e in parsed if e.max_ms is not None]
    return LoadResult(
        target=target,
        duration=_duration(window, start, last, ramp),
        requests=requests,
        failures=sum(e.failures for e in parsed),
        rps=_rate(dict(per_second), requests, window, start, last),
        latency=_quantiles(dict(merged), sum(e.timed for e in parsed), max(maxima) if maxima else None),
        endpoints=endpoints,
        errors=tuple(errors),
        users=users,
        runner=runner,
        tool_version=tool_version,
        data=dict(data or {}),
    )


def percentile(histogram: Mapping[float, int], count: int, fraction: float) -> float:
    """The response time ``fraction`` of ``count`` requests finished within, as Locust computes it.

    >>> percentile({5: 90, 50: 10}, 100, 0.95)
    50
    """
    wanted = int(count * fraction)
    seen = 0
    for value in sorted(histogram, reverse=True):
        seen += histogram[value]
        if count - seen <= wanted:
            return value
    return 0.0


def stats_from_output(text: str) -> list[object]:
    """The JSON document ``locust --json`` printed, from its output (a pod's log): the last JSON list in ``text``
    that starts a line; whatever else was logged around it is skipped.

    Locust prints the statistics as it exits, indented, so the list opens at the start of a line. Output
    without one (Locust crashed, or ran without ``--json``) is a :class:`LoadTestError`, never zero requests.

    >>> stats_from_output('Starting Locust 2.31.0\\n[\\n    {"name": "GET /"}\\n]\\nShutting down\\n')
    [{'name': 'GET /'}]
    """
    decoder = json.JSONDecoder()
    for match in reversed(list(_LIST_START.finditer(text))):
        try:
            found, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(found, list):
            return found
    tail = " | ".join(line for line in text.strip().splitlines()[-5:] if line.strip()) or "(no output)"
    raise LoadTestError(f"Locust printed no JSON statistics; its output ends: {tail}")


def parse_failures(text: str, *, limit: int = 5) -> tuple[str, ...]:
    """The most frequent failure messages of Locust's ``*_failures.csv``, most frequent first.

    Its counts lag the JSON results (it is written before the last requests are), so only the
    messages and their order are kept.

    >>> parse_failures("Method,Name,Error,Occurrences\\nGET,GET /,LocustBadStatusCode(code=500),7\\n")
    ('GET /: LocustBadStatusCode(code=500)',)
    """
    counted: list[tuple[int, object, object]] = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            count = int(row.get("Occurrences") or 0)
        except ValueError:
            continue
        counted.append((count, row.get("Name"), row.get("Error")))
    return _most_frequent(counted, limit)


FAILURES_MARK = "vouch-failures: "
"""Starts the line a Kubernetes load run's master prints last (``failure_report.py.tmpl``)."""


def failures_from_output(text: str, *, limit: int = 5) -> tuple[str, ...]:
    """The failure messages a load run's master printed (see :data:`FAILURES_MARK`), most frequent first.

    The same messages :func:`parse_failures` reads from the failures CSV. A log without the line
    (templates edited without the report, an older image) gives none: messages are for people,
    the counts judged come from the JSON statistics.

    >>> failures_from_output('[]\\nvouch-failures: [{"name": "GET /", "error": "HTTPError(503)", "occurrences": 7}]\\n')
    ('GET /: HTTPError(503)',)
    """
    for line in reversed(text.splitlines()):
        if not line.startswith(FAILURES_MARK):
            continue
        try:
            found = json.loads(line[len(FAILURES_MARK) :])
        except ValueError:
            return ()
        if not isinstance(found, list):
            return ()
        counted = [
            (f["occurrences"] if isinstance(f.get("occurrences"), int) else 0, f.get("name"), f.get("error"))
            for f in found
            if isinstance(f, dict)
        ]
        return _most_frequent(counted, limit)
    return ()


def _most_frequent(counted: list[tuple[int, object, object]], limit: int) -> tuple[str, ...]:
    """``NAME: ERROR`` of the ``limit`` most frequent ``(occurrences, name, error)``, most frequent first."""
    ranked = sorted(counted, key=lambda failure: -failure[0])
    return tuple(f"{name or '?'}: {error or 'failed'}" for _, name, error in ranked[:limit])


def parse_progress(text: str, *, elapsed: float, duration: float) -> Progress:
    """Figures so far from the last ``Aggregated`` row of Locust's ``*_stats_history.csv``.

    Locust flushes that file every few seconds, so the figures lag; ``rps`` is the average since the
    start. An empty or half-written file gives the elapsed time alone: progress is for people, never judged.
    """
    last: dict[str, str] | None = None
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("Name") == "Aggregated":
            last = row
    if last is None:
        return Progress(elapsed=elapsed, duration=duration)
    try:
        requests = int(last.get("Total Request Count") or 0)
        failures = int(last.get("Total Failure Count") or 0)
    except ValueError:
        return Progress(elapsed=elapsed, duration=duration)
    return Progress(elapsed, duration, requests, failures, requests / elapsed if elapsed > 0 else 0.0)


# --------------------------------------------------------------------------- helpers


def _as_list(entries: object) -> list[object]:
    if not isinstance(entries, list):
        raise LoadTestError(f"Locust's JSON results are a list of request entries, not {type(entries).__name__}")
    return entries


def _entry(item: object, index: int) -> _Entry:
    """One entry, checked: a document that is not Locust's is an error, never zeros."""
    if not isinstance(item, dict) or any(key not in item for key in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(item, dict) or k not in item]
        raise LoadTestError(f"entry {index} of Locust's JSON results is not a request entry (missing {missing})")
    try:
        requests = int(item["num_requests"])
        histogram = {float(k): int(v) for k, v in dict(item["response_times"]).items()}
        per_second = {int(float(k)): int(v) for k, v in dict(item["num_reqs_per_sec"]).items()}
        return _Entry(
            name=str(item["name"]),
            method=str(item.get("method") or ""),
            requests=requests,
            timed=requests - int(item.get("num_none_requests") or 0),
            failures=int(item["num_failures"]),
            max_ms=_float(item.get("max_response_time")) if requests else None,
            start=_float(item.get("start_time")),
            last=_float(item.get("last_request_timestamp")),
            histogram=histogram,
            per_second=per_second,
        )
    except (TypeError, ValueError) as exc:
        raise LoadTestError(f"entry {index} of Locust's JSON results has a malformed figure: {exc}") from exc


def _float(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _quantiles(histogram: Mapping[float, int], count: int, max_ms: float | None) -> Quantiles:
    if count <= 0 or not histogram:
        return Quantiles()
    values = {name: float(percentile(histogram, count, fraction)) for name, fraction in _QUANTILES}
    return Quantiles(**values, max=max_ms)


def _window(start: float | None, last: float | None, ramp: float) -> tuple[int, int] | None:
    """Whole seconds ``[a, b)`` after spawning and before the last, partial second; ``None`` if none."""
    if start is None or last is None:
        return None
    first, end = math.ceil(start + max(ramp, 0.0)), math.floor(last)
    return (first, end) if end - first >= 1 else None


def _rate(
    per_second: Mapping[int, int],
    requests: int,
    window: tuple[int, int] | None,
    start: float | None,
    last: float | None,
) -> float:
    """Requests per second in the steady window, or over the whole run when it was too short for one."""
    if window is not None:
        first, end = window
        return sum(n for second, n in per_second.items() if first <= second < end) / (end - first)
    if start is None or last is None or last <= start:
        return 0.0
    return requests / (last - start)


def _duration(window: tuple[int, int] | None, start: float | None, last: float | None, ramp: float) -> float:
    """Seconds from the end of spawning to the last request (from the first, when spawning took it all)."""
    if start is None or last is None:
        return 0.0
    return last - start - max(ramp, 0.0) if window is not None else max(last - start, 0.0)
