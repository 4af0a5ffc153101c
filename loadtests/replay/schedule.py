"""When each request of a replay fires: offsets from the first logged request, scaled by a speed factor.

Pure: the schedule is computed here and written as JSON lines, one request per line
(``{"offset", "method", "path", "headers", "body_b64", "status", "line"}``), which the replay
locustfile reads in Locust's own process. Requests are ordered by logged time (nginx writes a line
when a request ends, so file order is not start order); ties keep file order.

>>> from vouch.loadtests.replay.record import LoggedRequest
>>> logged = [LoggedRequest(100.0, "GET", "/a"), LoggedRequest(104.0, "GET", "/b"), LoggedRequest(102.0, "GET", "/c")]
>>> s = build_schedule(logged, speed=2.0)
>>> [(e.offset, e.path) for e in s.entries], s.span, s.duration
([(0.0, '/a'), (1.0, '/c'), (2.0, '/b')], 4.0, 2.0)
>>> [e.path for e in build_schedule(logged, speed=2.0, max_duration=1.5).entries]
['/a', '/c']
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.replay.record import LoggedRequest


@dataclass(frozen=True)
class ScheduledRequest:
    """One request of the replay and when it fires."""

    offset: float
    """Seconds after the replay starts (already divided by the speed factor)."""
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    status: int | None = None
    """The status the log recorded, if any: a replayed request that fails where the logged one did not is a failure."""
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for name, value in self.headers:  # a repeated header travels as one, its values joined (RFC 9110 5.3)
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return {
            "offset": round(self.offset, 6),
            "method": self.method,
            "path": self.path,
            "headers": headers,
            "body_b64": base64.b64encode(self.body).decode() if self.body is not None else None,
            "status": self.status,
            "line": self.line,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduledRequest:
        body = data.get("body_b64")
        return cls(
            offset=float(data["offset"]),
            method=str(data["method"]),
            path=str(data["path"]),
            headers=tuple((str(k), str(v)) for k, v in (data.get("headers") or {}).items()),
            body=base64.b64decode(body) if body is not None else None,
            status=data.get("status"),
            line=int(data.get("line", 0)),
        )


@dataclass(frozen=True)
class Schedule:
    """The requests of one replay in firing order, and how the log's time was mapped onto the replay's."""

    entries: tuple[ScheduledRequest, ...]
    speed: float
    span: float
    """Seconds of log time from the first to the last request kept."""
    dropped_by_cap: int = 0
    """Requests left out because they would fire after ``max_duration``."""

    @property
    def duration(self) -> float:
        """Seconds from the first request fired to the last, at this speed."""
        return self.entries[-1].offset if self.entries else 0.0


def build_schedule(
    requests: Sequence[LoggedRequest], *, speed: float = 1.0, max_duration: float | None = None
) -> Schedule:
    """The firing schedule of ``requests``: ``speed`` 2.0 replays twice as fast; ``max_duration`` caps replay time."""
    if not math.isfinite(speed) or speed <= 0:
        raise LoadTestError(f"speed must be a positive number (2.0 is twice as fast), not {speed}")
    if max_duration is not None and not max_duration >= 0:
        raise LoadTestError(f"max_duration must be zero or more seconds, not {max_duration}")
    ordered = sorted(requests, key=lambda r: r.at)
    if not ordered:
        return Schedule((), speed=speed, span=0.0)
    start = ordered[0].at
    entries = []
    for request in ordered:
        offset = (request.at - start) / speed
        if max_duration is not None and offset > max_duration:
            break
        entries.append(
            ScheduledRequest(
                offset=offset,
                method=request.method,
                path=request.path,
                headers=request.headers,
                body=request.body,
                status=request.status,
                line=request.line,
            )
        )
    span = (ordered[len(entries) - 1].at - start) if entries else 0.0
    return Schedule(tuple(entries), speed=speed, span=span, dropped_by_cap=len(ordered) - len(entries))


def schedule_lines(entries: Iterable[ScheduledRequest]) -> Iterator[str]:
    """The schedule as JSON lines, the form the replay locustfile reads."""
    for entry in entries:
        yield json.dumps(entry.to_dict(), separators=(",", ":")) + "\n"


def write_schedule(entries: Iterable[ScheduledRequest], path: Path) -> Path:
    """Write the schedule to ``path`` (JSON lines) and return it."""
    with path.open("w", encoding="utf-8") as stream:
        stream.writelines(schedule_lines(entries))
    return path


def read_schedule(path: Path) -> tuple[ScheduledRequest, ...]:
    """A schedule written by :func:`write_schedule`."""
    with path.open(encoding="utf-8") as stream:
        return tuple(ScheduledRequest.from_dict(json.loads(line)) for line in stream if line.strip())
