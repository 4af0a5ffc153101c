"""Meta-monitoring against a real Prometheus: fresh, stale, absent and failing probes are told apart."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Gauge
from support.components import prometheus, serve_registry, wait_for_query

from vouch.daemon.probewatch import ProbeWatch, judge
from vouch.daemon.probing import Scheduled
from vouch.rollout.config import PrometheusProviderSpec
from vouch.rollout.metrics.prometheus import PrometheusProvider

NOW = 10_000.0


def scheduled(probe: str, target: str = "http://shop/healthz", interval: float = 60.0) -> Scheduled:
    return Scheduled(f"{probe}@{target}", probe, target, interval, {})


def test_judging_is_pure_and_says_why():
    items = [scheduled("fresh"), scheduled("stale"), scheduled("absent"), scheduled("failing")]
    target = items[0].target
    runs = {("fresh", target): NOW - 30, ("stale", target): NOW - 500, ("failing", target): NOW}
    success = {("fresh", target): 1.0, ("stale", target): 1.0, ("failing", target): 0.0}
    found = {f.probe: f for f in judge(items, runs, success, now=NOW, stale_after=None)}
    assert {name: f.state for name, f in found.items()} == {
        "fresh": "fresh",
        "stale": "stale",
        "absent": "absent",
        "failing": "failing",
    }
    assert found["stale"].age == 500
    assert judge(items[:2], runs, success, now=NOW, stale_after=1000)[1].state == "fresh"


@pytest.mark.e2e
async def test_the_watch_reads_what_prometheus_scraped():
    probes = CollectorRegistry()
    last_run = Gauge("probe_last_run_timestamp_seconds", "", ["probe", "target"], registry=probes)
    success = Gauge("probe_success", "", ["probe", "target"], registry=probes)
    last_run.labels("alive", "t").set_to_current_time()
    success.labels("alive", "t").set(1)
    last_run.labels("stopped", "t").set(time.time() - 3600)
    success.labels("stopped", "t").set(1)
    with serve_registry(probes) as target, prometheus([target]) as prom:
        await wait_for_query(prom.url, "count(probe_success)", lambda s: bool(s) and s[0].value == 2)
        provider = PrometheusProvider(PrometheusProviderSpec(kind="prometheus", url=prom.url))
        changes = []
        expected = [scheduled("alive", "t"), scheduled("stopped", "t"), scheduled("never", "t")]
        daemon_metrics = CollectorRegistry()
        watch = ProbeWatch(
            provider, lambda: expected, daemon_metrics, interval=60, stale_after=None, on_change=changes.append
        )
        try:
            found = {f.probe: f.state for f in await watch.check() or []}
        finally:
            await provider.close()
    assert found == {"alive": "fresh", "stopped": "stale", "never": "absent"}
    assert sorted(c.probe for c in changes) == ["never", "stopped"], "each stale or absent probe is an event"
    assert daemon_metrics.get_sample_value("vouch_probe_series_stale", {"probe": "never", "target": "t"}) == 1
    assert daemon_metrics.get_sample_value("vouch_probe_series_stale", {"probe": "alive", "target": "t"}) == 0


async def test_an_unreachable_prometheus_is_counted_and_judges_nothing():
    provider = PrometheusProvider(PrometheusProviderSpec(kind="prometheus", url="http://127.0.0.1:9", timeout=1))
    registry = CollectorRegistry()
    watch = ProbeWatch(provider, lambda: [scheduled("x")], registry, interval=60, stale_after=None)
    try:
        assert await watch.check() is None
    finally:
        await provider.close()
    assert registry.get_sample_value("vouch_probe_watch_errors_total") == 1
