"""Load results as Prometheus series in the registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from vouch.loadtests.metrics import LoadTestMetrics, export_result
from vouch.loadtests.model import LoadResult, Quantiles

LABELS = {"service": "shop", "environment": "staging", "version": "2.0.0", "track": "canary"}


def result(requests: int, failures: int, p95: float | None) -> LoadResult:
    return LoadResult(target="t", duration=5, requests=requests, failures=failures, rps=requests / 5,
                      latency=Quantiles(p50=3, p95=p95))  # fmt: skip


def test_counts_add_up_and_gauges_hold_the_last_run() -> None:
    registry = CollectorRegistry()
    metrics = LoadTestMetrics(registry)
    metrics.export(result(100, 5, 12.0), **LABELS)
    metrics.export(result(50, 0, None), **LABELS)
    value = registry.get_sample_value
    assert value("vouch_loadtest_requests_total", LABELS) == 150
    assert value("vouch_loadtest_failures_total", LABELS) == 5
    assert value("vouch_loadtest_rps", LABELS) == 10
    assert value("vouch_loadtest_latency_ms", {**LABELS, "quantile": "p50"}) == 3
    assert value("vouch_loadtest_latency_ms", {**LABELS, "quantile": "p95"}) == 12  # not measured: left as it was
    assert value("vouch_loadtest_latency_ms", {**LABELS, "quantile": "p99"}) is None


def test_export_result_into_a_fresh_registry() -> None:
    registry = CollectorRegistry()
    export_result(result(10, 1, 4.0), registry, **LABELS)
    assert registry.get_sample_value("vouch_loadtest_failures_total", LABELS) == 1
