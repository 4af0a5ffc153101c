"""The loadtest gate, with real Locust runs against demo-service replicas aimed at directly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import TypeAdapter
from support.demo import eventually
from support.loadtarget import demo_targets, locust_children

from vouch.loadtests.locustfiles import Request
from vouch.loadtests.settings import LoadTestSpec
from vouch.probes.registry import ProbeDefinition
from vouch.rollout.config import ServiceSpec
from vouch.rollout.gates import GATE_KINDS, build_gates
from vouch.rollout.gates.loadtest import (
    LoadTestGate,
    LoadTests,
    gate_wait,
    inconclusive_runs,
    requests_from_probes,
    resolve_step,
)
from vouch.rollout.model import Endpoint, GateContext, GatePhase, Observed, Target, Verdict
from vouch.rollout.state import AnalysisLimits, PlannedStep, Promotion


def spec(**values: Any) -> LoadTestSpec:
    base: dict[str, Any] = {"paths": ["/work"], "users": 4, "spawn_rate": 100, "rate": 40, "duration": "3s"}
    return LoadTestSpec.model_validate({**base, **values})


def context(
    canary: Sequence[Endpoint], stable: Sequence[Endpoint] = (), *, step: int = 0, promotion: str = "p-1"
) -> GateContext:
    observed = Observed("1.0.0", "2.0.0", len(stable), len(stable), len(canary), len(canary), tuple(stable),
                        tuple(canary))  # fmt: skip
    return GateContext(promotion, Target("shop", "staging"), "2.0.0", "1.0.0", step, 0.0, 10.0, observed)


def gate(load: LoadTestSpec | None, tests: LoadTests, *, steps: Sequence[str] = ("1", "100%"), wait: float = 60.0):
    return LoadTestGate(load, tests=tests, steps=steps, wait=wait)


def measured(verdict: Verdict, name: str) -> float | None:
    return next(m.value for m in verdict.measurements if m.name == name)


async def test_a_canary_with_injected_latency_fails_while_an_equal_one_passes() -> None:
    registry = CollectorRegistry()
    tests = LoadTests(registry=registry)
    # Medians of 50 ms against 200 ms: a noisy machine moves neither near the 2× bound.
    bounds = {"max_latency_ms": {"p95": 1000}, "max_canary_regression": {"p50": 2.0}, "min_rate_ratio": 0.7}
    load = spec(users=8, rate=20, duration="4s", compare_stable=True, thresholds=bounds)
    async with demo_targets() as start:
        stable = await start("1.0.0", latency_ms=50)
        equal = await start("2.0.0", latency_ms=50)
        slow = await start("2.0.0", latency_ms=200)
        passed = await gate(load, tests).evaluate(context([equal], [stable], promotion="p-equal"))
        failed = await gate(load, tests).evaluate(context([slow], [stable], promotion="p-slow"))
    assert passed.phase is GatePhase.PASS, passed.reasons
    assert failed.phase is GatePhase.FAIL, failed.reasons
    assert failed.reasons[0].startswith("p50 latency 2")
    assert "above the maximum 2×" in failed.reasons[0]
    assert measured(failed, "p50 latency vs stable") > 2  # type: ignore[operator]
    assert measured(passed, "p50 latency vs stable") <= 2  # type: ignore[operator]
    assert measured(passed, "requests (stable)") > 0  # type: ignore[operator]
    assert not passed.errored
    assert not failed.errored
    for track in ("canary", "stable"):
        labels = {"service": "shop", "environment": "staging", "version": "2.0.0" if track == "canary" else "1.0.0"}
        assert registry.get_sample_value("vouch_loadtest_requests_total", {**labels, "track": track}) > 0
    assert not locust_children()


async def test_the_load_runs_once_at_its_step_and_is_awaited_across_analysis_runs() -> None:
    """Built as the daemon builds it: the requests come from the service's GET probes."""
    registry = CollectorRegistry()
    tests = LoadTests(registry=registry)
    service = ServiceSpec.model_validate(
        {
            "command": ["demo", "{port}"],
            "environments": [{"name": "staging"}],
            "probes": [{"name": "home", "kind": "http", "targets": ["http://{address}/home"]}],
            "performance_critical": True,
            "loadtest": {
                "users": 2,
                "spawn_rate": 100,
                "rate": 20,
                "duration": "2s",
                "step": "100%",
                "thresholds": {"min_rate_ratio": 0.5},
            },
        }
    )
    async with demo_targets() as start:
        canary = await start("2.0.0")
        first = await tests.gate(service, promotion(interval=0.5)).evaluate(context([canary], step=1))
        assert first.phase is GatePhase.INCONCLUSIVE
        assert not first.errored
        assert first.reasons[0].startswith("load test running (")
        assert first.reasons[0].endswith("s of 2s)")
        verdicts: list[Verdict] = []

        async def analysed() -> bool:
            verdicts.append(await tests.gate(service, promotion(interval=0.5)).evaluate(context([canary], step=1)))
            return verdicts[-1].phase is not GatePhase.INCONCLUSIVE

        await eventually(analysed, timeout=30, what="the load test's verdict")
    verdict = verdicts[-1]
    assert verdict.phase is GatePhase.PASS, verdict.reasons
    again = await tests.gate(service, promotion(interval=0.5)).evaluate(context([canary], step=1))
    assert again is verdict  # remembered: the step's load is never repeated
    labels = {"service": "shop", "environment": "staging", "version": "2.0.0", "track": "canary"}
    assert registry.get_sample_value("vouch_loadtest_requests_total", labels) == measured(verdict, "requests")


def promotion(*, interval: float) -> Promotion:
    limits = AnalysisLimits(interval, 1, 0, 1, 3, 60.0)
    plan = (PlannedStep("1", 1, 1, 0.0), PlannedStep("100%", 2, 0, 0.0))
    return Promotion("p-1", "r-1", "shop", "staging", "2.0.0", "1.0.0", 2, plan, limits, ("loadtest",))


async def test_other_steps_pass_without_loading() -> None:
    tests = LoadTests()
    verdict = await gate(spec(step="100%"), tests).evaluate(context([Endpoint("127.0.0.1", 9)], step=0))
    assert (verdict.phase, verdict.reasons) == (GatePhase.PASS, ("load test runs at step 100%",))
    assert tests.find(("p-1", 1)) is None


@pytest.mark.parametrize(
    ("load", "canary", "stable", "errored", "reason"),
    [
        (None, 1, 0, True, "service shop has no 'loadtest' settings"),
        (spec(step="5%"), 1, 0, True, "the load test runs at step '5%', which is not a step of the plan"),
        (spec(step=2), 1, 0, True, "the load test runs at step index 2, but the plan has 2"),
        (spec(), 0, 0, False, "no ready canary replica to load"),
        (spec(compare_stable=True), 1, 0, False, "compare_stable is set but no stable replica runs at this step"),
        (spec(locust_command=["/nonexistent/locust"]), 1, 0, True, "the load test could not run: cannot start"),
    ],
)
async def test_what_cannot_be_loaded_is_inconclusive(
    load: LoadTestSpec | None, canary: int, stable: int, errored: bool, reason: str
) -> None:
    endpoints = [Endpoint("127.0.0.1", 9)]
    verdict = await gate(load, LoadTests()).evaluate(context(endpoints * canary, endpoints * stable))
    assert verdict.phase is GatePhase.INCONCLUSIVE
    assert verdict.errored is errored
    assert verdict.reasons[0].startswith(reason), verdict.reasons


async def test_a_run_without_a_single_request_is_inconclusive(tmp_path: Path) -> None:
    (tmp_path / "idle.py").write_text(
        "from locust import User, constant, task\n"
        "class Idle(User):\n"
        "    wait_time = constant(1)\n"
        "    @task\n"
        "    def nothing(self):\n"
        "        pass\n"
    )
    tests = LoadTests(resolve=lambda name: tmp_path / name)
    async with demo_targets() as start:
        canary = await start()
        verdict = await gate(spec(paths=[], locustfile="idle.py", duration=1), tests).evaluate(context([canary]))
    assert (verdict.phase, verdict.errored) == (GatePhase.INCONCLUSIVE, True)
    assert "sent no request" in verdict.reasons[0]


async def test_closing_stops_every_load_in_flight() -> None:
    tests = LoadTests()
    async with demo_targets() as start:
        canary = await start()
        verdict = await gate(spec(duration="60s"), tests, wait=0.01).evaluate(context([canary]))
        assert verdict.reasons[0].startswith("load test running")
        await eventually(lambda: bool(locust_children()), what="Locust to start")
        await tests.aclose()
    assert not locust_children()
    assert tests.find(("p-1", 0)).task.cancelled()  # type: ignore[union-attr]


def test_build_gates_adds_the_gate_only_for_performance_critical_services() -> None:
    tests = LoadTests()
    loadtest = gate(spec(), tests)
    common: dict[str, Any] = {"slos": [], "providers": {}, "alerts": None, "alarms": None}
    assert build_gates(["loadtest"], loadtest=loadtest, **common) == [loadtest]
    assert build_gates(["loadtest"], loadtest=None, **common) == []
    assert "loadtest" in GATE_KINDS


def test_steps_waits_and_the_runs_a_load_takes() -> None:
    assert resolve_step("100%", ["1", "100%"]) == 1
    assert resolve_step(" 1 ", ["1", "100%"]) == 0
    with pytest.raises(ValueError, match="not a step of the plan"):
        resolve_step("2", ["1", "100%"])
    assert gate_wait(30) == 29
    assert gate_wait(1) == 0.8
    assert inconclusive_runs(30, 60) == 0
    assert inconclusive_runs(30, 30) == 1
    assert inconclusive_runs(300, 30) == 5


def test_probes_that_load_may_repeat() -> None:
    probes = TypeAdapter(list[ProbeDefinition]).validate_python(
        [
            {"name": "home", "kind": "http", "targets": ["http://{address}/", "https://example.test/x"]},
            {"name": "head", "kind": "http", "method": "HEAD", "targets": ["http://{address}/h?x=1"]},
            {"name": "again", "kind": "http", "targets": ["http://{address}"]},
            {"name": "buy", "kind": "http", "method": "POST", "targets": ["http://{address}/buy"]},
            {"name": "port", "kind": "tcp", "targets": ["{address}:80"]},
        ]
    )
    assert requests_from_probes(probes) == (Request("GET", "/"), Request("HEAD", "/h?x=1"))
