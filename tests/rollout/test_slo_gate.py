"""The SLO gate over a real TrafficRecorder and builtin provider, judged at explicit times (no sleeps)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from vouch.core.errors import MetricQueryError
from vouch.rollout.config import CompareSpec, SloSpec
from vouch.rollout.gates.base import Gate
from vouch.rollout.gates.slo import SloGate
from vouch.rollout.metrics.base import MetricProvider, Sample
from vouch.rollout.metrics.builtin import BuiltinProvider
from vouch.rollout.model import GateContext, GatePhase, Observed, Target
from vouch.rollout.platforms.traffic import TrafficRecorder

SHOP = Target("shop", "staging")
NOW = 50_000.0


def record(traffic: TrafficRecorder, version: str, *, ok: int, errors: int, latency: float = 0.01) -> None:
    """Spread ``ok`` and ``errors`` requests over the 10 seconds before NOW."""
    total = ok + errors
    for i in range(total):
        status = 500 if i < errors else 200
        traffic.record(SHOP, version, "canary", status=status, seconds=latency, now=NOW - 9 + (i * 10) // total)


def context(canary: str = "2.0", stable: str | None = "1.0") -> GateContext:
    observed = Observed(stable, canary, stable_desired=3, stable_ready=3, canary_desired=1, canary_ready=1)
    return GateContext(
        promotion_id="p1",
        target=SHOP,
        canary_version=canary,
        stable_version=stable,
        step_index=0,
        step_started_at=NOW - 60,
        now=NOW,
        observed=observed,
    )


def slo(name: str = "error-ratio", **fields: Any) -> SloSpec:
    fields.setdefault("metric", "error_ratio")
    return SloSpec.model_validate({"name": name, **fields})


@pytest.fixture
def traffic() -> TrafficRecorder:
    traffic = TrafficRecorder()
    record(traffic, "2.0", ok=90, errors=10)  # canary: 10% errors
    record(traffic, "1.0", ok=198, errors=2)  # stable: 1% errors
    return traffic


def gate(traffic: TrafficRecorder, *slos: SloSpec, **extra: MetricProvider) -> SloGate:
    # The clock is far in the future: only the context's ``now`` may decide the window.
    providers: dict[str, MetricProvider] = {"builtin": BuiltinProvider(traffic, clock=lambda: NOW + 10_000)}
    return SloGate(slos, {**providers, **extra})


class Canned:
    """A provider in another language: answers each query from a table, remembering what it was asked."""

    kind = "prometheus"

    def __init__(self, answers: dict[str, list[Sample]] | None = None, error: str | None = None) -> None:
        self.answers = answers or {}
        self.error = error
        self.asked: list[tuple[str, float | None]] = []

    async def query(self, expr: str, *, at: float | None = None) -> list[Sample]:
        self.asked.append((expr, at))
        if self.error:
            raise MetricQueryError(self.error)
        return self.answers.get(expr, [])

    async def close(self) -> None:
        pass


async def test_passes_within_the_maximum_and_shows_what_it_measured(traffic: TrafficRecorder) -> None:
    the_gate = gate(traffic, slo(max=0.2))
    assert isinstance(the_gate, Gate)
    verdict = await the_gate.evaluate(context())
    assert (verdict.gate, verdict.phase, verdict.errored) == ("slo", GatePhase.PASS, False)
    assert verdict.reasons == ("error-ratio is 0.1 on 2.0, within <= 0.2",)
    ratio, count = verdict.measurements
    assert (ratio.name, ratio.threshold, ratio.error) == ("error-ratio", "<= 0.2", None)
    assert ratio.value == pytest.approx(0.1)
    assert ratio.query == 'error_ratio{service="shop",environment="staging",version="2.0"}[30s]'
    assert (count.name, count.value, count.threshold) == ("error-ratio (requests)", 100, ">= 1")


async def test_fails_above_the_maximum(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo(max=0.05)).evaluate(context())
    assert verdict.phase is GatePhase.FAIL
    assert verdict.reasons == ("error-ratio is 0.1 on 2.0, above the maximum 0.05",)


async def test_fails_below_the_minimum(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo("throughput", metric="request_rate", window="20s", min=10)).evaluate(context())
    assert verdict.phase is GatePhase.FAIL
    assert verdict.reasons == ("throughput is 5 on 2.0, below the minimum 10",)
    assert verdict.measurements[0].query == 'request_rate{service="shop",environment="staging",version="2.0"}[20s]'


async def test_latency_quantile(traffic: TrafficRecorder) -> None:
    record(traffic, "3.0", ok=100, errors=0, latency=0.3)
    p99 = {"metric": "latency", "quantile": 0.99, "window": "1m"}
    slow = await gate(traffic, slo("p99", **p99, max=0.25)).evaluate(context("3.0"))
    fast = await gate(traffic, slo("p99", **p99, max=0.25)).evaluate(context("2.0"))
    assert slow.phase is GatePhase.FAIL
    assert slow.reasons[0].startswith("p99 is 0.4")
    assert "above the maximum 0.25" in slow.reasons[0]
    assert (
        slow.measurements[0].query == 'latency_quantile(0.99){service="shop",environment="staging",version="3.0"}[1m]'
    )
    assert fast.phase is GatePhase.PASS


async def test_compare_bounds_the_increase_over_stable(traffic: TrafficRecorder) -> None:
    tight = await gate(traffic, slo(compare=CompareSpec(max_increase=0.05))).evaluate(context())
    loose = await gate(traffic, slo(compare=CompareSpec(max_increase=0.2))).evaluate(context())
    assert tight.phase is GatePhase.FAIL
    assert tight.reasons == (
        "error-ratio is 0.1 on 2.0, 0.09 above the 0.01 of stable 1.0; at most 0.05 more is allowed",
    )
    names = [(m.name, m.value) for m in tight.measurements]
    assert names == [
        ("error-ratio", pytest.approx(0.1)),
        ("error-ratio (requests)", 100),
        ("error-ratio (stable)", pytest.approx(0.01)),
        ("error-ratio (stable requests)", 200),
    ]
    assert tight.measurements[0].threshold == "<= stable + 0.05"
    assert loose.phase is GatePhase.PASS


async def test_compare_bounds_the_ratio_to_stable(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo(max=0.5, compare=CompareSpec(max_ratio=2))).evaluate(context())
    assert verdict.phase is GatePhase.FAIL
    assert verdict.reasons == ("error-ratio is 0.1 on 2.0, 10× the 0.01 of stable 1.0; at most 2× is allowed",)
    assert verdict.measurements[0].threshold == "<= 0.5 and <= stable × 2"


async def test_a_stable_of_zero_is_exceeded_by_any_canary_value(traffic: TrafficRecorder) -> None:
    record(traffic, "0.9", ok=100, errors=0)
    ratio = slo(compare=CompareSpec(max_ratio=3))
    worse = await gate(traffic, ratio).evaluate(context("2.0", "0.9"))
    same = await gate(traffic, ratio).evaluate(context("0.9", "0.9"))
    assert worse.phase is GatePhase.FAIL
    assert worse.reasons == ("error-ratio is 0.1 on 2.0 while stable 0.9 is 0; at most 3× stable is allowed",)
    assert same.phase is GatePhase.PASS


async def test_compare_without_a_stable_version_is_inconclusive(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo(compare=CompareSpec(max_increase=0.5))).evaluate(context(stable=None))
    assert (verdict.phase, verdict.errored) == (GatePhase.INCONCLUSIVE, False)
    assert verdict.reasons == (
        "error-ratio cannot be compared with stable: there is no stable version yet (first deploy)",
    )


async def test_compare_with_a_silent_stable_is_inconclusive(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo(compare=CompareSpec(max_increase=0.5))).evaluate(context(stable="0.5"))
    assert verdict.phase is GatePhase.INCONCLUSIVE
    assert verdict.reasons[0].startswith("error-ratio could not be measured on stable 0.5: only 0 requests")


async def test_an_absolute_failure_stands_even_without_stable(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo(max=0.05, compare=CompareSpec(max_increase=0.5))).evaluate(context(stable=None))
    assert verdict.phase is GatePhase.FAIL
    assert "above the maximum 0.05" in verdict.reasons[0]


async def test_no_traffic_is_no_data_never_a_pass(traffic: TrafficRecorder) -> None:
    counted = await gate(traffic, slo(max=0.05)).evaluate(context("4.0"))
    uncounted = await gate(traffic, slo(max=0.05, min_requests=0)).evaluate(context("4.0"))
    assert counted.phase is uncounted.phase is GatePhase.INCONCLUSIVE
    assert not counted.errored
    assert not uncounted.errored
    assert counted.reasons == (
        "error-ratio could not be measured on 4.0: only 0 requests in the last 30s, fewer than the 1 needed to judge",
    )
    assert uncounted.reasons == ("error-ratio could not be measured on 4.0: the query returned no data",)
    assert uncounted.measurements[0].value is None
    assert uncounted.measurements[0].error == "the query returned no data"


async def test_min_requests_holds_back_judgement_on_thin_traffic(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo(max=0.05, min_requests=500)).evaluate(context())
    assert verdict.phase is GatePhase.INCONCLUSIVE
    assert "only 100 requests in the last 30s, fewer than the 500 needed" in verdict.reasons[0]
    count = verdict.measurements[1]
    assert (count.name, count.value, count.threshold) == ("error-ratio (requests)", 100, ">= 500")


async def test_the_window_ends_at_the_context_now_not_the_provider_clock(traffic: TrafficRecorder) -> None:
    the_gate = gate(traffic, slo(max=0.5))
    assert (await the_gate.evaluate(context())).phase is GatePhase.PASS
    assert (await the_gate.evaluate(dataclasses.replace(context(), now=NOW + 60))).phase is GatePhase.INCONCLUSIVE


async def test_a_provider_error_is_an_errored_inconclusive(traffic: TrafficRecorder) -> None:
    down = Canned(error="cannot connect to Prometheus at http://prom:9090: connection refused")
    verdict = await gate(traffic, slo(provider="prom", metric=None, query="up", max=1), prom=down).evaluate(context())
    assert (verdict.phase, verdict.errored) == (GatePhase.INCONCLUSIVE, True)
    assert verdict.reasons == (f"error-ratio could not be measured on 2.0: {down.error}",)
    assert verdict.measurements[0].error == down.error


async def test_an_unknown_provider_is_an_errored_inconclusive(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo(provider="thanos", max=1)).evaluate(context())
    assert (verdict.phase, verdict.errored) == (GatePhase.INCONCLUSIVE, True)
    assert verdict.reasons == ("error-ratio: no metric provider named 'thanos' (configured: builtin)",)


async def test_a_builtin_metric_on_another_provider_is_an_errored_inconclusive(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic, slo(provider="prom", max=1), prom=Canned()).evaluate(context())
    assert (verdict.phase, verdict.errored) == (GatePhase.INCONCLUSIVE, True)
    assert "write a 'query' in its language instead" in verdict.reasons[0]


async def test_no_slos_is_inconclusive(traffic: TrafficRecorder) -> None:
    verdict = await gate(traffic).evaluate(context())
    assert verdict.phase is GatePhase.INCONCLUSIVE
    assert verdict.reasons == ("no SLOs configured for service shop",)
    assert verdict.measurements == ()


TEMPLATE = (
    'sum(rate(http_requests_total{job="{service}",env="{environment}",version="{version}",code=~"5.."}[{window}]))'
    ' / sum(rate(http_requests_total{job="{service}",version="{version}"}[{window}]))'
)


def promql(version: str) -> str:
    """What the gate must send for ``TEMPLATE`` and ``version``: PromQL's own braces untouched."""
    return (
        f'sum(rate(http_requests_total{{job="shop",env="staging",version="{version}",code=~"5.."}}[2m]))'
        f' / sum(rate(http_requests_total{{job="shop",version="{version}"}}[2m]))'
    )


def query_slo(**fields: Any) -> SloSpec:
    return slo(provider="prom", metric=None, query=TEMPLATE, window="2m", **fields)


async def test_a_query_is_rendered_for_each_version_and_judged(traffic: TrafficRecorder) -> None:
    prom = Canned({promql("2.0"): [Sample(0.03)], promql("1.0"): [Sample(0.01)]})
    verdict = await gate(traffic, query_slo(max=0.05, compare=CompareSpec(max_ratio=2)), prom=prom).evaluate(context())
    assert sorted(prom.asked) == sorted([(promql("1.0"), NOW), (promql("2.0"), NOW)])
    assert verdict.phase is GatePhase.FAIL
    assert verdict.reasons == ("error-ratio is 0.03 on 2.0, 3× the 0.01 of stable 1.0; at most 2× is allowed",)
    assert [m.query for m in verdict.measurements] == [promql("2.0"), promql("1.0")]


async def test_nan_is_inconclusive(traffic: TrafficRecorder) -> None:
    prom = Canned({promql("2.0"): [Sample(math.nan)]})
    verdict = await gate(traffic, query_slo(max=0.05), prom=prom).evaluate(context())
    assert (verdict.phase, verdict.errored) == (GatePhase.INCONCLUSIVE, False)
    assert "NaN" in verdict.reasons[0]


async def test_several_series_where_one_was_expected_is_inconclusive(traffic: TrafficRecorder) -> None:
    prom = Canned({promql("2.0"): [Sample(0.01, {"pod": "a"}), Sample(0.2, {"pod": "b"})]})
    verdict = await gate(traffic, query_slo(max=0.05), prom=prom).evaluate(context())
    assert verdict.phase is GatePhase.INCONCLUSIVE
    assert "the query returned 2 series where one was expected" in verdict.reasons[0]


async def test_a_query_naming_stable_on_a_first_deploy_is_inconclusive(traffic: TrafficRecorder) -> None:
    prom = Canned()
    spec = slo(provider="prom", metric=None, query='x{v="{version}"} - x{v="{stable_version}"}', max=1)
    verdict = await gate(traffic, spec, prom=prom).evaluate(context(stable=None))
    assert (verdict.phase, verdict.errored) == (GatePhase.INCONCLUSIVE, False)
    assert "uses {stable_version} but there is no stable version yet" in verdict.reasons[0]
    assert prom.asked == []


async def test_the_worst_slo_decides_and_only_its_reasons_are_given(traffic: TrafficRecorder) -> None:
    down = Canned(error="timeout")
    slos = [slo("ok", max=0.5), slo("bad", max=0.05), slo("down", provider="prom", metric=None, query="up", min=1)]
    verdict = await gate(traffic, *slos, prom=down).evaluate(context())
    assert (verdict.phase, verdict.errored) == (GatePhase.FAIL, True)
    assert verdict.reasons == (
        "bad is 0.1 on 2.0, above the maximum 0.05",
        "down could not be measured on 2.0: timeout",
    )
    assert [m.name for m in verdict.measurements] == ["ok", "ok (requests)", "bad", "bad (requests)", "down"]


async def test_a_crashing_provider_is_contained(traffic: TrafficRecorder) -> None:
    class Broken(Canned):
        async def query(self, expr: str, *, at: float | None = None) -> list[Sample]:
            raise RuntimeError("boom")

    slos = [slo("ok", max=0.5), slo("broken", provider="prom", metric=None, query="up", max=1)]
    verdict = await gate(traffic, *slos, prom=Broken()).evaluate(context())
    assert (verdict.phase, verdict.errored) == (GatePhase.INCONCLUSIVE, True)
    assert verdict.reasons == ("broken could not be evaluated: RuntimeError: boom",)
