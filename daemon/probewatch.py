"""Meta-monitoring: are the probes' own series in Prometheus fresh, and do they report success?

A prober that has silently stopped looks exactly like a healthy target unless
someone checks that its results keep arriving where alerts are computed. The
watch asks Prometheus, on an interval, for every scheduled probe's last run
and success; a probe whose series are older than ``stale_after`` or absent is
reported as its own event and metric, as is one Prometheus sees failing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from vouch.core.errors import MetricQueryError
from vouch.daemon.probing import Scheduled
from vouch.rollout.metrics.base import MetricProvider

log = logging.getLogger(__name__)

LAST_RUN = "probe_last_run_timestamp_seconds"
SUCCESS = "probe_success"


@dataclass(frozen=True)
class Freshness:
    """What Prometheus knows of one scheduled probe."""

    probe: str
    target: str
    age: float | None
    """Seconds since its last run as Prometheus saw it; ``None`` when Prometheus has no series."""
    success: bool | None
    stale: bool

    @property
    def state(self) -> str:
        if self.age is None:
            return "absent"
        if self.stale:
            return "stale"
        return "fresh" if self.success else "failing"


def judge(
    expected: Sequence[Scheduled],
    last_runs: dict[tuple[str, str], float],
    successes: dict[tuple[str, str], float],
    *,
    now: float,
    stale_after: float | None,
) -> list[Freshness]:
    """Pure: compare what should be running with what Prometheus has.

    >>> item = Scheduled("p@t", "p", "t", 60.0, {})
    >>> [f.state for f in judge([item], {("p", "t"): 900.0}, {("p", "t"): 1.0}, now=1000.0, stale_after=None)]
    ['fresh']
    >>> [f.state for f in judge([item], {}, {}, now=1000.0, stale_after=None)]
    ['absent']
    """
    found = []
    for item in expected:
        key = (item.probe, item.target)
        last = last_runs.get(key)
        limit = stale_after if stale_after is not None else 2 * item.interval + 60
        age = None if last is None else max(0.0, now - last)
        success = None if key not in successes else successes[key] >= 1
        found.append(Freshness(item.probe, item.target, age, success, stale=age is None or age > limit))
    return found


class ProbeWatch:
    """Checks the probes' series through a Prometheus provider and reports what is stale or absent."""

    def __init__(
        self,
        provider: MetricProvider,
        expected: Callable[[], Sequence[Scheduled]],
        registry: CollectorRegistry,
        *,
        interval: float,
        stale_after: float | None,
        on_change: Callable[[Freshness], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider
        self._expected = expected
        self._interval = interval
        self._stale_after = stale_after
        self._on_change = on_change
        self._clock = clock
        self._states: dict[tuple[str, str], str] = {}
        labels = ("probe", "target")
        self._stale = Gauge(
            "vouch_probe_series_stale",
            "1 when a probe's series in Prometheus are stale or absent.",
            labels,
            registry=registry,
        )
        self._age = Gauge(
            "vouch_probe_series_age_seconds",
            "Age of a probe's last run as Prometheus has it.",
            labels,
            registry=registry,
        )
        self._errors = Counter("vouch_probe_watch_errors", "Checks that could not ask Prometheus.", registry=registry)

    async def run(self) -> None:
        while True:
            started = self._clock()
            await self.check()
            await asyncio.sleep(max(0.0, started + self._interval - self._clock()))

    async def check(self) -> list[Freshness] | None:
        """One check; ``None`` when Prometheus could not be asked (counted, logged, nothing judged)."""
        try:
            last_runs, successes = await asyncio.gather(self._by_probe(LAST_RUN), self._by_probe(SUCCESS))
        except MetricQueryError as exc:
            self._errors.inc()
            log.warning("cannot check the probes' series in Prometheus: %s", exc)
            return None
        found = judge(self._expected(), last_runs, successes, now=self._clock(), stale_after=self._stale_after)
        for item in found:
            self._stale.labels(item.probe, item.target).set(1 if item.stale else 0)
            if item.age is not None:
                self._age.labels(item.probe, item.target).set(item.age)
            key = (item.probe, item.target)
            if self._states.get(key, "fresh") != item.state:
                self._report(item)
            self._states[key] = item.state
        return found

    async def _by_probe(self, metric: str) -> dict[tuple[str, str], float]:
        samples = await self._provider.query(f"max by (probe, target) ({metric})")
        return {(s.labels.get("probe", ""), s.labels.get("target", "")): s.value for s in samples}

    def _report(self, item: Freshness) -> None:
        if item.state == "fresh":
            log.info("probe %s on %s: its series in Prometheus are fresh again", item.probe, item.target)
        else:
            age = "no series" if item.age is None else f"last run {item.age:.0f}s ago"
            log.warning("probe %s on %s is %s in Prometheus (%s)", item.probe, item.target, item.state, age)
        if self._on_change is not None:
            self._on_change(item)
