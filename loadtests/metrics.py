"""Load-run results as Prometheus metrics, in the registry the caller passes (never the global one).

Series are labelled ``service``, ``environment``, ``version`` and ``track`` (``canary`` or
``stable``): request and failure counters grow with every run; rate and latency gauges hold the
last run's figures.

>>> from prometheus_client import CollectorRegistry
>>> from vouch.loadtests.model import LoadResult, Quantiles
>>> registry = CollectorRegistry()
>>> metrics = LoadTestMetrics(registry)
>>> metrics.export(LoadResult(target="t", duration=10, requests=100, failures=2, rps=10.0, latency=Quantiles(p95=12)),
...                service="shop", environment="staging", version="2.0.0", track="canary")
>>> registry.get_sample_value("vouch_loadtest_failures_total",
...                           {"service": "shop", "environment": "staging", "version": "2.0.0", "track": "canary"})
2.0
"""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, Counter, Gauge

from vouch.loadtests.model import LoadResult

LABELS = ("service", "environment", "version", "track")


class LoadTestMetrics:
    """The load-test series of one registry. Create it once per registry (a name registers only once)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter("vouch_loadtest_requests", "Requests sent by load tests.", LABELS, registry=registry)
        self._failures = Counter(
            "vouch_loadtest_failures", "Requests of load tests that failed.", LABELS, registry=registry
        )
        self._rps = Gauge(
            "vouch_loadtest_rps", "Requests per second the last load test achieved.", LABELS, registry=registry
        )
        self._latency = Gauge(
            "vouch_loadtest_latency_ms",
            "Response-time quantiles of the last load test, in milliseconds.",
            (*LABELS, "quantile"),
            registry=registry,
        )

    def export(self, result: LoadResult, *, service: str, environment: str, version: str, track: str) -> None:
        """Add ``result``'s counts and set its rate and latency quantiles (unmeasured quantiles are left out)."""
        labels = {"service": service, "environment": environment, "version": version, "track": track}
        self._requests.labels(**labels).inc(result.requests)
        self._failures.labels(**labels).inc(result.failures)
        self._rps.labels(**labels).set(result.rps)
        for field in dataclasses.fields(result.latency):
            value = result.latency.get(field.name)
            if value is not None:
                self._latency.labels(**labels, quantile=field.name).set(value)


def export_result(
    result: LoadResult,
    registry: CollectorRegistry,
    *,
    service: str,
    environment: str,
    version: str,
    track: str,
) -> LoadTestMetrics:
    """Export one result into a fresh ``registry`` (a command's own, for instance); returns the metrics so later
    results go through :meth:`LoadTestMetrics.export` (registering the names a second time is an error)."""
    metrics = LoadTestMetrics(registry)
    metrics.export(result, service=service, environment=environment, version=version, track=track)
    return metrics
