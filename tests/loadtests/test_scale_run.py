"""The scale test for real: Locust stepping the rate against a demo replica with an injected capacity."""

from __future__ import annotations

import pytest
from support.loadtarget import capacity, demo_targets, locust_children

from vouch.loadtests.errors import LoadTestError
from vouch.loadtests.locust import LocustRunner
from vouch.loadtests.locustfiles import parse_request
from vouch.loadtests.scale import ScaleStep, run_scale, scale_locustfile
from vouch.loadtests.settings import LoadThresholds, ScaleSpec


async def test_the_knee_of_a_replica_matches_its_injected_capacity_within_15_percent() -> None:
    """Four workers of 50 ms: 80 requests per second. The SLO leaves 100 ms of slack for a busy machine below
    the knee; past it the queue grows by the excess every second, so the latency breaks within a step."""
    cap = capacity(latency_ms=50, max_in_flight=4)
    spec = ScaleSpec(start=30, factor=2, resolution=0.1, step_duration=3, retries=1)
    slo = LoadThresholds(max_latency_ms={"p95": 150})
    steps: list[ScaleStep] = []
    async with demo_targets() as start:
        replica = await start("1.0.0", latency_ms=50, max_in_flight=4)
        with scale_locustfile([parse_request("/work")]) as locustfile:
            result = await run_scale(
                replica.url, spec, slo, runner=LocustRunner(), locustfile=locustfile, on_step=steps.append
            )
    curve = [(p.offered, p.achieved, p.p95, p.within_slo) for p in result.curve]
    assert result.knee_rps is not None, curve
    assert abs(result.knee_rps - cap) / cap <= 0.15, curve
    assert result.stop == "bracketed", curve
    assert result.ceiling_rps is not None
    assert result.ceiling_rps <= result.knee_rps * 1.1
    held = [p for p in result.curve if p.within_slo]
    assert max(p.offered for p in held) == result.knee_rps
    assert all(p.achieved >= 0.9 * p.offered and p.requests > 0 for p in held)
    assert all(p.reasons for p in result.curve if not p.within_slo)
    assert result.target == replica.url
    assert result.slo.min_rate_ratio == 0.9
    assert [step.point is None for step in steps] == [True, False] * len(result.curve)
    assert [step.rate for step in steps[1::2]] == [p.offered for p in result.curve]
    assert steps[0].users == 9  # 2 × 30 rps × 150 ms
    assert not locust_children()


async def test_a_locust_that_cannot_start_is_an_error_not_a_knee() -> None:
    spec = ScaleSpec(start=10, step_duration=2)
    with scale_locustfile([parse_request("/")]) as locustfile, pytest.raises(LoadTestError, match="cannot start"):
        await run_scale(
            "http://127.0.0.1:9",
            spec,
            LoadThresholds(max_latency_ms={"p95": 100}),
            runner=LocustRunner(command=["/nonexistent/locust"]),
            locustfile=locustfile,
        )
