"""What the local router saw: requests, errors and latency per version, over sliding windows.

The router records every request here; the ``builtin`` metric provider reads
windows back for SLO gates, and the same counts are exported on ``/metrics``
(``vouch_router_requests_total``, ``vouch_router_request_duration_seconds``)
so a real Prometheus can scrape and alert on them.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from vouch.rollout.model import Target

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the latency histogram; a last, unbounded bucket follows."""

RETENTION_SECONDS = 900
"""How far back windows can look."""


@dataclass(frozen=True)
class TrafficWindow:
    """Aggregated traffic of one version over a window.

    ``counts[i]`` is the number of requests with latency in bucket ``i``
    (``BUCKETS[i-1] < latency <= BUCKETS[i]``; the last is unbounded).
    """

    seconds: float
    requests: int
    errors: int
    counts: tuple[int, ...]

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def request_rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        """Latency quantile, interpolated within buckets like PromQL's ``histogram_quantile``."""
        if not self.requests:
            return None
        rank = q * self.requests
        seen = 0
        for i, count in enumerate(self.counts):
            if seen + count >= rank and count:
                lower = BUCKETS[i - 1] if i > 0 else 0.0
                if i >= len(BUCKETS):
                    return lower
                return lower + (BUCKETS[i] - lower) * ((rank - seen) / count)
            seen += count
        return BUCKETS[-1]


class _Series:
    """Per-second buckets of one version, newest last."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: deque[list[int]] = deque()  # [second, requests, errors, *counts]

    def add(self, second: int, is_error: bool, bucket: int) -> None:
        if not self.seconds or self.seconds[-1][0] != second:
            self.seconds.append([second, 0, 0] + [0] * (len(BUCKETS) + 1))
            while self.seconds and self.seconds[0][0] <= second - RETENTION_SECONDS:
                self.seconds.popleft()
        row = self.seconds[-1]
        row[1] += 1
        row[2] += is_error
        row[3 + bucket] += 1


class TrafficRecorder:
    """Counts requests per (service, environment, version) for windows and for ``/metrics``.

    >>> rec = TrafficRecorder()
    >>> rec.record(Target("shop", "staging"), "v2", "canary", status=500, seconds=0.02, now=100.0)
    >>> rec.window(Target("shop", "staging"), "v2", 10, now=100.5).error_ratio
    1.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._series: dict[tuple[str, str, str], _Series] = {}
        labels = ("service", "environment", "version", "track")
        self._requests = Counter(
            "vouch_router_requests",
            "Requests the local router forwarded, by version, track (stable or canary) and status code.",
            (*labels, "code"),
            registry=registry,
        )
        self._latency = Histogram(
            "vouch_router_request_duration_seconds",
            "Time from the router receiving a request to the replica's full answer.",
            labels,
            buckets=(*BUCKETS, math.inf),
            registry=registry,
        )

    def record(
        self, target: Target, version: str, track: str, *, status: int, seconds: float, now: float | None = None
    ) -> None:
        """Count one request. Status 5xx is an error (the router answers 502/504 for dead replicas)."""
        now = time.time() if now is None else now
        key = (target.service, target.environment, version)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.add(int(now), status >= 500, bisect.bisect_left(BUCKETS, seconds))
        self._requests.labels(target.service, target.environment, version, track, str(status)).inc()
        self._latency.labels(target.service, target.environment, version, track).observe(seconds)

    def window(self, target: Target, version: str, seconds: float, *, now: float | None = None) -> TrafficWindow:
        """Traffic of ``version`` over the last ``seconds`` (whole seconds, the current one included)."""
        now = time.time() if now is None else now
        since = int(now) - max(1, math.ceil(seconds)) + 1
        series = self._series.get((target.service, target.environment, version))
        requests = errors = 0
        counts = [0] * (len(BUCKETS) + 1)
        if series is not None:
            for row in reversed(series.seconds):
                if row[0] > int(now):
                    continue  # a window ending in the past must not see later traffic
                if row[0] < since:
                    break
                requests += row[1]
                errors += row[2]
                for i, c in enumerate(row[3:]):
                    counts[i] += c
        return TrafficWindow(seconds=seconds, requests=requests, errors=errors, counts=tuple(counts))
