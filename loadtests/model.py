"""What a load test is asked to do and what it measured: frozen data every runner and judge shares.

A :class:`LoadPlan` says where to send load, with which locustfile, how many users and for how
long; a :class:`LoadResult` is what Locust reported, reduced to the figures vouch judges (request
and failure counts, achieved rate, latency quantiles), per endpoint and in total. Measuring is
separate from judging (:mod:`vouch.loadtests.judge`).

>>> r = LoadResult(target="http://127.0.0.1:8080", duration=10.0, requests=1000, failures=5, rps=100.0,
...                latency=Quantiles(p50=4.0, p90=8.0, p95=9.0, p99=20.0, max=40.0))
>>> r.error_ratio
0.005
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Quantiles:
    """Response-time quantiles in milliseconds (Locust's own percentiles)."""

    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None

    def get(self, name: str) -> float | None:
        """``p95`` -> the 95th percentile; a name that is not a field is an error, not ``None``."""
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(f"unknown quantile {name!r}; known: p50, p90, p95, p99, max")
        value: float | None = getattr(self, name)
        return value


@dataclass(frozen=True)
class EndpointStats:
    """One request name (method and path, or the name a locustfile gave it)."""

    name: str
    method: str
    requests: int
    failures: int
    rps: float
    latency: Quantiles

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured against one target."""

    target: str
    duration: float
    """Seconds of load actually applied (after spawning)."""
    requests: int
    failures: int
    rps: float
    """Requests per second achieved over ``duration``."""
    latency: Quantiles
    endpoints: tuple[EndpointStats, ...] = ()
    errors: tuple[str, ...] = ()
    """The most frequent failure messages, most frequent first (at most a handful)."""
    users: int = 0
    runner: str = "locust"
    """``locust`` (a subprocess) or ``locust-kubernetes`` (master and workers as Jobs)."""
    tool_version: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    """Anything a runner adds (the command line, the Job names), for people reading the result."""

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["error_ratio"] = self.error_ratio
        out["data"] = dict(self.data)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadResult:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["latency"] = Quantiles(**values["latency"])
        values["endpoints"] = tuple(
            EndpointStats(**{**e, "latency": Quantiles(**e["latency"])}) for e in values.get("endpoints", ())
        )
        values["errors"] = tuple(values.get("errors", ()))
        values["data"] = dict(values.get("data") or {})
        return cls(**values)


@dataclass(frozen=True)
class LoadPlan:
    """One load run: ``users`` Locust users against ``target`` for ``duration`` seconds.

    ``rate`` (requests per second in total) paces the users when set; otherwise each user sends as
    fast as the target answers. ``env`` reaches the locustfile as environment variables (a
    generated locustfile reads its paths and pacing from there).
    """

    target: str
    locustfile: Path
    users: int
    spawn_rate: float
    duration: float
    rate: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    """A runner's view of a run in flight, for progress bars: seconds elapsed and the latest figures."""

    elapsed: float
    duration: float
    requests: int = 0
    failures: int = 0
    rps: float = 0.0


class LoadRunner(Protocol):
    """Runs a :class:`LoadPlan` and returns what it measured.

    Never imports Locust into the caller's process (gevent patches break asyncio): Locust runs as
    a subprocess or in Kubernetes Jobs. A run that could not happen (Locust missing, the target
    unreachable before any request, the Job never started) raises
    :class:`vouch.loadtests.errors.LoadTestError`; failed *requests* are data in the result.
    """

    async def run(self, plan: LoadPlan, *, on_progress: Callable[[Progress], None] | None = None) -> LoadResult: ...
