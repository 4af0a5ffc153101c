"""The router's traffic windows: what the builtin provider and the SLO gate read."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vouch.rollout.model import Target
from vouch.rollout.platforms.traffic import TrafficRecorder

SHOP = Target("shop", "staging")
NOW = 1_700_000_000.0


def test_a_window_counts_requests_errors_and_latency_of_one_version():
    rec = TrafficRecorder()
    for i in range(10):
        rec.record(SHOP, "v2", "canary", status=500 if i < 2 else 200, seconds=0.02, now=NOW + i % 3)
    rec.record(SHOP, "v1", "stable", status=500, seconds=0.02, now=NOW)
    window = rec.window(SHOP, "v2", 5, now=NOW + 2.5)
    assert (window.requests, window.errors) == (10, 2)
    assert window.error_ratio == pytest.approx(0.2)
    assert 0.01 < window.quantile(0.5) <= 0.025
    assert window.request_rate == pytest.approx(2.0)


def test_old_seconds_fall_out_of_the_window_and_later_ones_are_not_seen_from_the_past():
    rec = TrafficRecorder()
    rec.record(SHOP, "v2", "canary", status=200, seconds=0.01, now=NOW)
    rec.record(SHOP, "v2", "canary", status=500, seconds=0.01, now=NOW + 10)
    assert rec.window(SHOP, "v2", 5, now=NOW + 10).errors == 1
    assert rec.window(SHOP, "v2", 5, now=NOW + 10).requests == 1
    assert rec.window(SHOP, "v2", 5, now=NOW + 1).requests == 1
    assert rec.window(SHOP, "v2", 5, now=NOW + 1).errors == 0


def test_no_traffic_is_no_ratio_not_zero():
    window = TrafficRecorder().window(SHOP, "v9", 30, now=NOW)
    assert window.requests == 0
    assert window.error_ratio is None
    assert window.quantile(0.99) is None


def test_counts_are_exported_for_prometheus_with_version_and_track():
    registry = CollectorRegistry()
    rec = TrafficRecorder(registry)
    rec.record(SHOP, "v2", "canary", status=503, seconds=0.2, now=NOW)
    text = generate_latest(registry).decode()
    assert (
        'vouch_router_requests_total{code="503",environment="staging",service="shop",track="canary",version="v2"} 1.0'
        in text
    )
    assert "vouch_router_request_duration_seconds_bucket" in text
