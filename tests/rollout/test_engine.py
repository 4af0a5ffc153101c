"""The engine's I/O shell (``Engine`` and ``Driver``) on the real SQLite store and an in-memory platform.

Gates are scripted fakes; intervals are tens of milliseconds, and every wait
is a poll of a condition under ``asyncio.wait_for``, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.fake_platform import FakePlatform

from vouch.core.errors import ConflictError, InputError, NotFoundError, PlatformError, PlatformUnavailable
from vouch.daemon.store.sqlite import SqliteStore
from vouch.rollout.config import AnalysisSpec, EnvironmentSpec, PlanSpec, ServiceEnvironment, ServiceSpec
from vouch.rollout.engine.driver import DriverSettings
from vouch.rollout.engine.plan import resolve_limits, resolve_plan
from vouch.rollout.engine.runner import Engine
from vouch.rollout.gates.base import Gate
from vouch.rollout.model import GateContext, GatePhase, Measurement, Target, Verdict
from vouch.rollout.platforms.base import Platform
from vouch.rollout.state import Event, Phase, Promotion, Release, StepPhase, StepRecord

SHOP = "shop"
STAGING = Target(SHOP, "staging")
PRODUCTION = Target(SHOP, "production")
REPLICAS = 4
SERVICES = {
    SHOP: ServiceSpec(
        replicas=REPLICAS,
        environments=[ServiceEnvironment(name="staging"), ServiceEnvironment(name="production")],
    )
}
SETTINGS = DriverSettings(poll_interval=0.01, retry_max=0.02, gate_timeout_min=0.1)
INTERVAL = 0.05
END_KINDS = ("release.succeeded", "release.failed")
TIMEOUT = 5.0


def environment(*, steps: Sequence[int | str] = (1, "100%"), pause: float = 0.0, deadline: float = 60.0, **analysis):
    return EnvironmentSpec(
        plan=PlanSpec(steps=list(steps), pause=pause),
        analysis=AnalysisSpec(interval=INTERVAL, **analysis),
        gates=["slo"],
        progress_deadline=deadline,
    )


# --------------------------------------------------------------------------- gates


@dataclass
class ScriptedGate:
    """Answers the scripted phases in turn; the last one repeats."""

    name: str = "slo"
    phases: Sequence[GatePhase] = (GatePhase.PASS,)
    seen: list[GateContext] = field(default_factory=list)

    async def evaluate(self, ctx: GateContext) -> Verdict:
        self.seen.append(ctx)
        phase = self.phases[min(len(self.seen), len(self.phases)) - 1]
        return Verdict(self.name, phase, (f"{self.name} says {phase.value}",), (Measurement("error_ratio", 0.0),))


@dataclass
class RaisingGate:
    name: str = "boom"

    async def evaluate(self, ctx: GateContext) -> Verdict:
        raise RuntimeError("metrics backend exploded")


@dataclass
class HangingGate:
    """Never answers; counts how often it was cancelled."""

    name: str = "slow"
    cancelled: int = 0

    async def evaluate(self, ctx: GateContext) -> Verdict:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------- hooks


@dataclass
class Recorder:
    """EngineHooks that remember every call, in order."""

    calls: list[tuple[str, object]] = field(default_factory=list)

    def on_transition(self, before: Promotion | None, after: Promotion) -> None:
        self.calls.append(("transition", (before, after)))

    def on_verdicts(self, promotion: Promotion, verdicts: Sequence[Verdict]) -> None:
        self.calls.append(("verdicts", (promotion, tuple(verdicts))))

    def on_step(self, promotion: Promotion, step: StepRecord) -> None:
        self.calls.append(("step", (promotion, step)))

    def on_event(self, event: Event) -> None:
        self.calls.append(("event", event))

    def of(self, kind: str) -> list:
        return [value for k, value in self.calls if k == kind]

    def transitions(self) -> list[tuple[str, str, Phase]]:
        """(promotion id, environment, phase) of every transition, in order."""
        return [(after.id, after.environment, after.phase) for _, after in self.of("transition")]

    async def release_end(self, release_id: str) -> Event:
        """The release's final event, once the engine has told the hooks about it."""

        def found() -> Event | None:
            return next((e for e in self.of("event") if e.release_id == release_id and e.kind in END_KINDS), None)

        return await until(found)


# --------------------------------------------------------------------------- harness


async def until(condition: Callable[[], Any], *, timeout: float = TIMEOUT) -> Any:
    """Poll ``condition`` (plain or async) until it returns something truthy, and return that."""

    async def poll() -> Any:
        while True:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.002)

    return await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "vouch.db")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def platform() -> FakePlatform:
    fake = FakePlatform()
    fake.deploy(STAGING, "v1", replicas=REPLICAS)
    fake.deploy(PRODUCTION, "v1", replicas=REPLICAS)
    return fake


@dataclass
class Harness:
    store: SqliteStore
    platform: FakePlatform
    hooks: Recorder = field(default_factory=Recorder)
    environments: dict[str, EnvironmentSpec] = field(
        default_factory=lambda: {"staging": environment(), "production": environment()}
    )
    gates: dict[str, list[Gate]] = field(default_factory=dict)

    def engine(self) -> Engine:
        return Engine(
            store=self.store,
            platform=self.platform,
            services=SERVICES,
            environments=self.environments,
            gates=lambda p: self.gates.get(p.environment) or [ScriptedGate()],
            hooks=self.hooks,
            settings=SETTINGS,
        )

    async def finish(self, release: Release) -> Release:
        await self.hooks.release_end(release.id)
        return await self.store.get_release(release.id)

    async def promotions(self, release: Release) -> dict[str, Promotion]:
        found = await self.store.list_promotions(release_id=release.id)
        return {p.environment: p for p in found}


@pytest.fixture
def harness(store: SqliteStore, platform: FakePlatform) -> Harness:
    return Harness(store, platform)


@contextlib.asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[Engine]:
    """Run ``engine`` in the background; cancel it (and surface any crash of it) on the way out."""
    task = asyncio.create_task(engine.run(), name="engine")
    try:
        started = asyncio.ensure_future(engine.started.wait())
        await asyncio.wait({task, started}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()
        assert engine.started.is_set(), "the engine did not start"
        yield engine
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def submit(engine: Engine, version: str = "v2", environment: str | None = None) -> Release:
    return await engine.submit(service=SHOP, version=version, environment=environment, actor="ci")


def kinds(events: Sequence[Event]) -> list[str]:
    return [e.kind for e in events]


# --------------------------------------------------------------------------- releases


async def test_a_release_walks_the_chain_and_the_next_environment_starts_only_after_the_first_held(harness):
    hold = harness.platform.hold("scale")
    engine = harness.engine()
    async with running(engine):
        release = await submit(engine)
        await asyncio.wait_for(harness.platform.entered("scale").wait(), TIMEOUT)
        assert list(await harness.promotions(release)) == ["staging"]
        harness.platform.deploy(PRODUCTION, "v1.1", replicas=REPLICAS)  # production changed meanwhile
        hold.set()
        release = await harness.finish(release)

    promotions = await harness.promotions(release)
    staging, production = promotions["staging"], promotions["production"]
    assert release.phase.value == "Succeeded"
    assert release.promotion_ids == (staging.id, production.id)
    assert release.index == 1
    assert (staging.phase, production.phase) == (Phase.SUCCEEDED, Phase.SUCCEEDED)
    assert staging.stable_version == "v1"
    assert production.stable_version == "v1.1", "production's stable version is read when its promotion starts"
    assert staging.finished_at is not None
    assert production.created_at >= staging.finished_at
    transitions = harness.hooks.transitions()
    created = transitions.index((production.id, "production", Phase.PENDING))
    assert created > transitions.index((staging.id, "staging", Phase.SUCCEEDED))
    calls = harness.platform.calls
    first_production_call = next(i for i, c in enumerate(calls) if c.target == PRODUCTION)
    assert first_production_call > max(i for i, c in enumerate(calls) if c.method == "promote" and c.target == STAGING)
    for target in (STAGING, PRODUCTION):
        assert harness.platform.methods(target) == ["scale", "scale", "promote"]
        assert [c.args for c in harness.platform.calls_of("scale", target)] == [(3, "v2", 1), (0, "v2", 4)]
        assert harness.platform.state(target).stable_version == "v2"


async def test_a_failing_gate_rolls_back_and_the_release_stops_there(harness):
    harness.gates["staging"] = [ScriptedGate(phases=[GatePhase.FAIL])]
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine))

    promotions = await harness.promotions(release)
    assert list(promotions) == ["staging"], "the next environment never starts"
    staging = promotions["staging"]
    assert release.phase.value == "Failed"
    assert staging.phase is Phase.ROLLED_BACK
    assert staging.abort is not None
    assert staging.abort.cause == "gate:slo"
    assert harness.platform.methods(STAGING) == ["scale", "rollback"]
    assert not [c for c in harness.platform.calls if c.target == PRODUCTION]
    assert harness.platform.state(STAGING).stable_version == "v1"
    end = (await harness.store.list_events(release_id=release.id))[-1]
    assert end.kind == "release.failed"
    assert "stopped at staging" in end.message


async def test_a_first_deploy_promotes_at_once_without_steps_or_gates(harness):
    harness.platform.deploy(STAGING, None, replicas=REPLICAS)
    gate = ScriptedGate()
    harness.gates["staging"] = [gate]
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    staging = (await harness.promotions(release))["staging"]
    assert (release.phase.value, staging.phase, staging.plan) == ("Succeeded", Phase.SUCCEEDED, ())
    assert harness.platform.methods(STAGING) == ["promote"]
    assert gate.seen == []
    assert await harness.store.list_steps(staging.id) == []


# --------------------------------------------------------------------------- submit


async def test_submit_of_an_unknown_service_or_environment_names_the_known_ones(harness):
    engine = harness.engine()
    with pytest.raises(NotFoundError, match=r"unknown service 'cart'.*\['shop'\]"):
        await engine.submit(service="cart", version="v2", environment=None, actor="ci")
    with pytest.raises(NotFoundError, match=r"'qa'.*\['staging', 'production'\]"):
        await submit(engine, environment="qa")
    assert await harness.store.list_releases() == []


async def test_a_second_submit_while_one_is_active_is_a_conflict_naming_it(harness):
    harness.platform.hold("scale")
    engine = harness.engine()
    async with running(engine):
        first = await submit(engine)
        active = (await harness.promotions(first))["staging"]
        for version in ("v2", "v3"):
            with pytest.raises(ConflictError, match=rf"{active.id} of v2"):
                await submit(engine, version)
        with pytest.raises(ConflictError, match=active.id):
            await submit(engine, "v3", environment="staging")
    assert [r.id for r in await harness.store.list_releases()] == [first.id]


async def test_submitting_the_stable_version_is_an_input_error(harness):
    engine = harness.engine()
    with pytest.raises(InputError, match="v1 is already the stable version of shop/staging"):
        await submit(engine, "v1")
    assert await harness.store.list_releases() == []
    assert await harness.store.list_promotions() == []


# --------------------------------------------------------------------------- abort


async def test_abort_interrupts_a_scale_in_flight_and_rolls_back(harness):
    harness.platform.hold("scale")  # never released: only the abort can end the call
    engine = harness.engine()
    async with running(engine):
        release = await submit(engine)
        await asyncio.wait_for(harness.platform.entered("scale").wait(), TIMEOUT)
        promotion_id = release.promotion_ids[0]
        aborted = await engine.abort(promotion_id, actor="alice", reason="dashboards look wrong")
        assert aborted.phase is Phase.ABORTING
        assert harness.platform.cancelled == harness.platform.calls_of("scale")
        release = await harness.finish(release)

    promotion = await harness.store.get_promotion(promotion_id)
    assert promotion.phase is Phase.ROLLED_BACK
    assert promotion.abort is not None
    assert (promotion.abort.cause, promotion.abort.actor, promotion.abort.reason) == (
        "user",
        "alice",
        "dashboards look wrong",
    )
    assert harness.platform.methods(STAGING) == ["scale", "rollback"]
    [step] = await harness.store.list_steps(promotion_id)
    assert (step.outcome, step.ready_at) == ("aborted", None)
    assert step.completed_at is not None
    assert release.phase.value == "Failed"


async def test_abort_once_promoting_or_finished_is_a_conflict(harness):
    hold = harness.platform.hold("promote")
    engine = harness.engine()
    async with running(engine):
        release = await submit(engine, environment="staging")
        await asyncio.wait_for(harness.platform.entered("promote").wait(), TIMEOUT)
        promotion_id = release.promotion_ids[0]
        with pytest.raises(ConflictError, match="Promoting; too late to abort"):
            await engine.abort(promotion_id, actor="alice", reason="late")
        hold.set()
        await harness.finish(release)
        with pytest.raises(ConflictError, match="Succeeded; nothing to abort"):
            await engine.abort(promotion_id, actor="alice", reason="later")
        with pytest.raises(NotFoundError):
            await engine.abort("p-unknown", actor="alice", reason="what")
    promotion = await harness.store.get_promotion(promotion_id)
    assert (promotion.phase, promotion.abort) == (Phase.SUCCEEDED, None)


# --------------------------------------------------------------------------- platform trouble


async def test_transient_platform_errors_are_retried_and_the_promotion_still_succeeds(harness):
    harness.platform.fail("scale", PlatformUnavailable("api server restarting"), times=2)
    harness.platform.fail("promote", PlatformUnavailable("api server restarting"))
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    assert release.phase.value == "Succeeded"
    assert harness.platform.methods(STAGING) == ["scale", "scale", "scale", "scale", "promote", "promote"]
    assert [c.args for c in harness.platform.calls_of("scale")] == [(3, "v2", 1)] * 3 + [(0, "v2", 4)]


async def test_transient_observe_errors_are_retried_in_place(harness, caplog):
    engine = harness.engine()
    async with running(engine):
        submitted = await submit(engine, environment="staging")
        # Scripted only now, so that the driver meets the failures and submit's own observe does not.
        harness.platform.fail("observe", PlatformUnavailable("api server restarting"), times=3, target=STAGING)
        release = await harness.finish(submitted)
    assert release.phase.value == "Succeeded"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no crash-and-resume of the driver"


async def test_a_platform_that_stays_unreachable_is_still_bounded_by_the_progress_deadline(harness):
    harness.environments["staging"] = environment(deadline=0.1)
    engine = harness.engine()
    async with running(engine):
        submitted = await submit(engine, environment="staging")
        harness.platform.fail("observe", PlatformUnavailable("api server gone"), times=None, target=STAGING)
        release = await harness.finish(submitted)

    staging = (await harness.promotions(release))["staging"]
    assert (release.phase.value, staging.phase) == ("Failed", Phase.ROLLED_BACK)
    assert staging.abort is not None
    assert staging.abort.cause == "deadline:scaling"
    assert "stable not fully ready" in staging.message
    assert harness.platform.methods(STAGING) == ["scale", "rollback"]


async def test_a_platform_refusal_rolls_back_with_cause_platform(harness):
    harness.platform.fail("scale", PlatformError("quota exceeded"))
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine))

    staging = (await harness.promotions(release))["staging"]
    assert (release.phase.value, staging.phase) == ("Failed", Phase.ROLLED_BACK)
    assert staging.abort is not None
    assert staging.abort.cause == "platform"
    assert "quota exceeded" in staging.abort.reason
    assert harness.platform.methods(STAGING) == ["scale", "rollback"]


async def test_a_step_that_never_gets_ready_rolls_back_at_the_progress_deadline(harness):
    harness.platform.ready_after = 10**9
    harness.environments["staging"] = environment(deadline=0.1)
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    staging = (await harness.promotions(release))["staging"]
    assert staging.phase is Phase.ROLLED_BACK
    assert staging.abort is not None
    assert staging.abort.cause == "deadline:scaling"
    assert harness.platform.methods(STAGING) == ["scale", "rollback"]


async def test_a_refused_promote_rolls_back_with_cause_platform(harness):
    harness.platform.fail("promote", PlatformError("admission webhook said no"), times=None)
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    staging = (await harness.promotions(release))["staging"]
    assert (release.phase.value, staging.phase) == ("Failed", Phase.ROLLED_BACK)
    assert staging.abort is not None
    assert staging.abort.cause == "platform"
    assert "admission webhook said no" in staging.abort.reason
    assert harness.platform.methods(STAGING) == ["scale", "scale", "promote", "rollback"]
    assert harness.platform.state(STAGING).stable_version == "v1"


# --------------------------------------------------------------------------- gates


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (RaisingGate, "boom failed: RuntimeError: metrics backend exploded"),
        (HangingGate, "slow gave no verdict within 0.1s"),
    ],
    ids=["raises", "hangs"],
)
async def test_a_gate_that_raises_or_hangs_is_an_errored_inconclusive_never_a_pass(harness, kind, reason):
    broken = kind()
    harness.gates["staging"] = [ScriptedGate(), broken]
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    staging = (await harness.promotions(release))["staging"]
    records = await harness.store.list_verdicts(staging.id)
    mine = [r.verdict for r in records if r.verdict.gate == broken.name]
    assert [r.run for r in records if r.verdict.gate == broken.name] == [1, 2]  # inconclusive_limit is 1
    for verdict in mine:
        assert (verdict.phase, verdict.errored, verdict.reasons) == (GatePhase.INCONCLUSIVE, True, (reason,))
    assert Phase.PAUSED in [phase for pid, _, phase in harness.hooks.transitions() if pid == staging.id]
    assert staging.phase is Phase.ROLLED_BACK
    assert staging.abort is not None
    assert staging.abort.cause == f"gate:{broken.name}"
    assert harness.platform.methods(STAGING) == ["scale", "rollback"], "never promoted, never a next step"
    if isinstance(broken, HangingGate):
        assert broken.cancelled == 2


async def test_gates_see_the_promotion_and_the_canary_they_judge(harness):
    gate = ScriptedGate()
    harness.gates["staging"] = [gate]
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))
    promotion_id = release.promotion_ids[0]
    assert [(c.promotion_id, c.step_index, c.canary_version, c.stable_version) for c in gate.seen] == [
        (promotion_id, 0, "v2", "v1"),
        (promotion_id, 1, "v2", "v1"),
    ]
    assert [(c.observed.canary_ready, c.observed.stable_ready) for c in gate.seen] == [(1, 3), (4, 0)]


# --------------------------------------------------------------------------- history


async def test_step_records_carry_each_milestone_and_the_outcome(harness):
    harness.environments["staging"] = environment(pause=0.02)
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    steps = await harness.store.list_steps(release.promotion_ids[0])
    assert [(s.index, s.label, s.canary_replicas, s.stable_replicas, s.outcome) for s in steps] == [
        (0, "1", 1, 3, "passed"),
        (1, "100%", 4, 0, "passed"),
    ]
    for step in steps:
        assert step.ready_at is not None
        assert step.analysis_started_at is not None
        assert step.completed_at is not None
        assert step.started_at <= step.ready_at < step.analysis_started_at <= step.completed_at
    assert steps[0].completed_at <= steps[1].started_at


async def test_every_transition_emits_an_event_in_order(harness):
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    events = await harness.store.list_events(release_id=release.id)
    assert kinds(events) == [
        "release.started",
        "promotion.verifying",
        "promotion.progressing",
        "step.analysing",
        "step.scaling",
        "step.analysing",
        "promotion.promoting",
        "promotion.succeeded",
        "release.succeeded",
    ]
    ids = [e.id for e in events]
    assert ids == sorted(ids)
    promotion_events = [e for e in events if e.promotion_id is not None]
    assert {e.promotion_id for e in promotion_events} == set(release.promotion_ids)
    assert [e.data["step"] for e in promotion_events] == [0, 0, 0, 1, 1, 2, 2]


async def test_a_rollback_emits_its_events_in_order(harness):
    harness.gates["staging"] = [ScriptedGate(phases=[GatePhase.FAIL])]
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    events = await harness.store.list_events(release_id=release.id)
    assert kinds(events) == [
        "release.started",
        "promotion.verifying",
        "promotion.progressing",
        "step.analysing",
        "promotion.aborting",
        "promotion.update",
        "promotion.rolledback",
        "release.failed",
    ]
    assert [e.data.get("rollback_cause") for e in events[4:7]] == ["gate:slo"] * 3


async def test_hooks_hear_of_every_transition_verdict_step_and_event(harness):
    engine = harness.engine()
    async with running(engine):
        release = await harness.finish(await submit(engine, environment="staging"))

    hooks = harness.hooks
    transitions = hooks.of("transition")
    assert transitions[0][0] is None
    for (_, previous), (before, _) in itertools.pairwise(transitions):
        assert before == previous, "each transition starts where the last one ended"
    final = await harness.store.get_promotion(release.promotion_ids[0])
    assert transitions[-1][1] == final
    assert [[v.phase for v in verdicts] for _, verdicts in hooks.of("verdicts")] == [[GatePhase.PASS]] * 2
    assert [(s.index, s.outcome) for _, s in hooks.of("step")] == [(0, "passed"), (1, "passed")]
    stored = await harness.store.list_events(release_id=release.id)
    assert [e.id for e in hooks.of("event")] == [e.id for e in stored]


# --------------------------------------------------------------------------- resume


def _mid_flight(step_phase: StepPhase, now: float) -> tuple[Release, Promotion, list[StepRecord]]:
    """A one-environment release stopped at step 1 of 2, as a killed daemon would have left it."""
    env = environment()
    plan = resolve_plan(env.plan, replicas=REPLICAS)
    release = Release("r-resume", SHOP, "v2", ("staging",), promotion_ids=("p-resume",), created_at=now)
    promotion = Promotion(
        id="p-resume",
        release_id=release.id,
        service=SHOP,
        environment="staging",
        version="v2",
        stable_version="v1",
        replicas=REPLICAS,
        plan=plan,
        limits=resolve_limits(env),
        gates=("slo",),
        phase=Phase.PROGRESSING,
        step=1,
        step_phase=step_phase,
        phase_since=now,
        step_started_at=now,
        next_analysis_at=now if step_phase is StepPhase.ANALYSING else None,
        created_at=now,
        updated_at=now,
    )
    analysing = step_phase is StepPhase.ANALYSING
    steps = [
        StepRecord(promotion.id, 0, "1", 1, 3, now - 3, now - 2, now - 2, now - 1, "passed"),
        StepRecord(promotion.id, 1, "100%", 4, 0, now, now if analysing else None, now if analysing else None),
    ]
    return release, promotion, steps


@pytest.mark.parametrize("step_phase", [StepPhase.SCALING, StepPhase.ANALYSING])
async def test_a_new_engine_resumes_a_promotion_where_it_stood(tmp_path, step_phase):
    now = time.time()
    release, promotion, steps = _mid_flight(step_phase, now)
    platform = FakePlatform()
    platform.deploy(STAGING, "v1", replicas=REPLICAS)
    if step_phase is StepPhase.SCALING:  # killed before step 1 was asked for: the platform still runs step 0
        await platform.scale(STAGING, stable_replicas=3, canary_version="v2", canary_replicas=1)
    else:
        await platform.scale(STAGING, stable_replicas=0, canary_version="v2", canary_replicas=4)
    platform.calls.clear()
    store = await SqliteStore.open(tmp_path / "fresh.db")
    try:
        await store.create_release(release)
        await store.create_promotion(promotion)
        for step in steps:
            await store.save_step(step)
        harness = Harness(store, platform)
        async with running(harness.engine()):
            release = await harness.finish(release)

        final = await store.get_promotion(promotion.id)
        assert (release.phase.value, final.phase) == ("Succeeded", Phase.SUCCEEDED)
        scales = [c.args for c in platform.calls_of("scale")]
        assert scales == ([(0, "v2", 4)] if step_phase is StepPhase.SCALING else []), "step 0 is never redone"
        assert platform.methods(STAGING) == [*["scale"] * len(scales), "promote"]
        assert {r.step for r in await store.list_verdicts(promotion.id)} == {1}
        stored = await store.list_steps(promotion.id)
        assert stored[0] == steps[0]
        assert (stored[1].started_at, stored[1].outcome) == (now, "passed")
        assert stored[1].completed_at is not None
    finally:
        await store.close()


@pytest.mark.parametrize("same_engine", [True, False], ids=["same-engine", "new-engine"])
async def test_a_release_whose_promotion_ended_while_down_moves_on_exactly_once(harness, same_engine):
    now = time.time()
    env = environment()
    release = Release("r-down", SHOP, "v2", ("staging", "production"), promotion_ids=("p-staging",), created_at=now)
    staging = Promotion(
        id="p-staging",
        release_id=release.id,
        service=SHOP,
        environment="staging",
        version="v2",
        stable_version="v1",
        replicas=REPLICAS,
        plan=resolve_plan(env.plan, replicas=REPLICAS),
        limits=resolve_limits(env),
        gates=("slo",),
        phase=Phase.SUCCEEDED,
        step=2,
        created_at=now,
        updated_at=now,
        finished_at=now,
    )
    await harness.store.create_release(release)
    await harness.store.create_promotion(staging)
    harness.platform.deploy(STAGING, "v2", replicas=REPLICAS)
    hold = harness.platform.hold("scale")

    first = harness.engine()
    async with running(first):
        await asyncio.wait_for(harness.platform.entered("scale").wait(), TIMEOUT)
    assert harness.platform.cancelled == harness.platform.calls_of("scale"), "stopping the engine stops its calls"
    hold.set()
    second = first if same_engine else harness.engine()
    async with running(second):
        release = await harness.finish(release)

    promotions = await harness.store.list_promotions(release_id=release.id)
    assert sorted(p.environment for p in promotions) == ["production", "staging"]
    production = next(p for p in promotions if p.environment == "production")
    assert release.phase.value == "Succeeded"
    assert release.promotion_ids == (staging.id, production.id)
    events = await harness.store.list_events(release_id=release.id)
    assert kinds(events).count("release.next") == 1
    assert [c.args for c in harness.platform.calls_of("scale", PRODUCTION)] == [(3, "v2", 1)] * 2 + [(0, "v2", 4)]


async def test_stopping_the_engine_cancels_the_platform_call_in_flight(harness):
    harness.platform.hold("scale")
    engine = harness.engine()
    async with running(engine):
        await submit(engine)
        await asyncio.wait_for(harness.platform.entered("scale").wait(), TIMEOUT)
    assert harness.platform.cancelled == harness.platform.calls_of("scale")
    assert harness.platform.methods() == ["scale"]


def test_the_fake_platform_is_a_platform():
    assert isinstance(FakePlatform(), Platform)
