"""The promotion state machine, driven by hand with a fake clock: no I/O anywhere."""

from __future__ import annotations

import dataclasses

import pytest

from vouch.rollout.config import AnalysisSpec, EnvironmentSpec, PlanSpec
from vouch.rollout.engine import decide as d
from vouch.rollout.engine.plan import resolve_limits, resolve_plan
from vouch.rollout.model import GatePhase, Observed, Verdict
from vouch.rollout.state import Abort, Phase, Promotion, StepPhase

T0 = 1_000_000.0


def promotion(*, steps=(1, "50%"), pause=0.0, stable="v1", replicas=4, **analysis) -> Promotion:
    env = EnvironmentSpec(
        plan=PlanSpec(steps=list(steps), pause=pause),
        analysis=AnalysisSpec(interval=10, **analysis),
        progress_deadline=60,
    )
    return Promotion(
        id="p-1",
        release_id="r-1",
        service="shop",
        environment="staging",
        version="v2",
        stable_version=stable,
        replicas=replicas,
        plan=resolve_plan(env.plan, replicas=replicas) if stable else (),
        limits=resolve_limits(env),
        gates=("slo",),
        created_at=T0,
        phase_since=T0,
    )


def observed(p: Promotion, *, canary_ready=None, stable_ready=None, stable_version="v1") -> Observed:
    step = p.plan[min(p.step, len(p.plan) - 1)] if p.plan else None
    canary = step.canary_replicas if step else 0
    stable = step.stable_replicas if step else p.replicas
    return Observed(
        stable_version=stable_version,
        canary_version=p.version if canary else None,
        stable_desired=stable,
        stable_ready=stable if stable_ready is None else stable_ready,
        canary_desired=canary,
        canary_ready=canary if canary_ready is None else canary_ready,
    )


def verdict(phase: GatePhase, *, errored=False, gate="slo") -> d.Analysed:
    return d.Analysed((Verdict(gate, phase, (f"{gate} said {phase.value}",), errored=errored),))


def to_analysing(p: Promotion, now: float) -> Promotion:
    p = d.decide(p, d.Begin(), now)
    p = d.decide(p, d.Verified(), now)
    return d.decide(p, d.Observation(observed(p)), now)


def test_a_healthy_promotion_walks_every_step_then_promotes():
    p = promotion(steps=(1, "50%", "100%"))
    p = d.decide(p, d.Begin(), T0)
    assert p.phase is Phase.VERIFYING
    p = d.decide(p, d.Verified(), T0)
    assert (p.phase, p.step, p.step_phase) == (Phase.PROGRESSING, 0, StepPhase.SCALING)
    now = T0
    for index, (canary, stable) in enumerate([(1, 3), (2, 2), (4, 0)]):
        assert (p.plan[index].canary_replicas, p.plan[index].stable_replicas) == (canary, stable)
        p = d.decide(p, d.Observation(observed(p)), now)
        assert p.step_phase is StepPhase.ANALYSING
        assert p.next_analysis_at == now + 10
        assert d.wake_at(p) == now + 10
        now += 10
        p = d.decide(p, verdict(GatePhase.PASS), now)
    assert p.phase is Phase.PROMOTING
    assert p.steps_completed == 3
    done = Observed("v2", None, 4, 4, 0, 0)
    p = d.decide(p, d.Observation(done), now + 1)
    assert p.phase is Phase.SUCCEEDED
    assert p.finished_at == now + 1


def test_not_ready_yet_changes_nothing():
    p = to_analysing(promotion(), T0)
    p = d.decide(promotion(), d.Begin(), T0)
    p = d.decide(p, d.Verified(), T0)
    same = d.decide(p, d.Observation(observed(p, canary_ready=0)), T0 + 1)
    assert same == p


def test_a_step_pause_settles_before_analysis():
    p = promotion(pause=30)
    p = d.decide(d.decide(p, d.Begin(), T0), d.Verified(), T0)
    p = d.decide(p, d.Observation(observed(p)), T0 + 2)
    assert p.step_phase is StepPhase.SETTLING
    assert d.wake_at(p) == T0 + 32
    assert d.decide(p, d.Settled(), T0 + 31) == p
    p = d.decide(p, d.Settled(), T0 + 32)
    assert p.step_phase is StepPhase.ANALYSING
    assert p.next_analysis_at == T0 + 42


def test_a_failed_run_beyond_the_limit_rolls_back_naming_the_gate():
    p = to_analysing(promotion(failure_limit=1), T0)
    p = d.decide(p, verdict(GatePhase.FAIL), T0 + 10)
    assert p.phase is Phase.PROGRESSING, "one failure is tolerated"
    assert p.counters.failures == 1
    p = d.decide(p, verdict(GatePhase.FAIL), T0 + 20)
    assert p.phase is Phase.ABORTING
    assert p.abort == Abort("gate:slo", "slo said Fail", T0 + 20)


def test_worst_verdict_wins():
    p = to_analysing(promotion(), T0)
    both = d.Analysed(
        (
            Verdict("alarms", GatePhase.PASS),
            Verdict("slo", GatePhase.FAIL, ("error ratio 0.2 above 0.05",)),
        )
    )
    p = d.decide(p, both, T0 + 10)
    assert p.phase is Phase.ABORTING
    assert p.abort.cause == "gate:slo"
    assert "error ratio 0.2" in p.abort.reason


def test_inconclusive_pauses_then_fails_at_its_limit_and_never_promotes():
    p = to_analysing(promotion(steps=(1,), inconclusive_limit=2), T0)
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE), T0 + 10)
    assert p.phase is Phase.PAUSED
    assert d.deadline(p) == T0 + 10 + 60
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE), T0 + 20)
    assert p.phase is Phase.PAUSED
    assert d.deadline(p) == T0 + 10 + 60, "the pause deadline runs from when the pause began"
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE), T0 + 30)
    assert p.phase is Phase.ABORTING
    assert p.abort.cause == "gate:slo"


def test_a_pass_after_a_pause_resumes_progress():
    p = to_analysing(promotion(steps=(1, 2), inconclusive_limit=2), T0)
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE), T0 + 10)
    p = d.decide(p, verdict(GatePhase.PASS), T0 + 20)
    assert (p.phase, p.step, p.step_phase) == (Phase.PROGRESSING, 1, StepPhase.SCALING)


def test_paused_too_long_hits_the_progress_deadline():
    p = to_analysing(promotion(inconclusive_limit=100), T0)
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE), T0 + 10)
    assert d.wake_at(p) == T0 + 20
    p = d.decide(p, d.Tick(), T0 + 70)
    assert p.phase is Phase.ABORTING
    assert p.abort.cause == "deadline:analysing"


def test_consecutive_measurement_errors_roll_back():
    p = to_analysing(promotion(inconclusive_limit=100, consecutive_errors=2), T0)
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE, errored=True), T0 + 10)
    assert p.counters.consecutive_errors == 1
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE, errored=False), T0 + 20)
    assert p.counters.consecutive_errors == 0, "a run that measured resets the streak"
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE, errored=True), T0 + 30)
    p = d.decide(p, verdict(GatePhase.INCONCLUSIVE, errored=True), T0 + 40)
    assert p.phase is Phase.ABORTING
    assert "could not measure" in p.abort.reason


def test_several_runs_per_step():
    p = to_analysing(promotion(steps=(1, 2), runs=2), T0)
    p = d.decide(p, verdict(GatePhase.PASS), T0 + 10)
    assert (p.step, p.counters.passes) == (0, 1)
    p = d.decide(p, verdict(GatePhase.PASS), T0 + 20)
    assert (p.step, p.step_phase, p.counters.passes) == (1, StepPhase.SCALING, 0)


def test_scaling_that_never_gets_ready_rolls_back_at_the_deadline():
    p = d.decide(d.decide(promotion(), d.Begin(), T0), d.Verified(), T0)
    assert d.wake_at(p) == T0 + 60
    p = d.decide(p, d.Observation(observed(p, canary_ready=0)), T0 + 61)
    assert p.phase is Phase.ABORTING
    assert p.abort.cause == "deadline:scaling"


def test_an_alarm_aborts_at_once_in_any_active_phase():
    for p in (promotion(), to_analysing(promotion(), T0)):
        alarm = Abort("alarm:HighErrorRate", "error ratio high", T0 + 3, "alertmanager")
        after = d.decide(p, d.AbortRequested(alarm), T0 + 3)
        assert after.phase is Phase.ABORTING
        assert after.abort == alarm
        assert d.wake_at(after) is None, "the canary must go first, with no deadline on it"


def test_no_abort_once_promoting():
    p = to_analysing(promotion(steps=(1,)), T0)
    p = d.decide(p, verdict(GatePhase.PASS), T0 + 10)
    assert p.phase is Phase.PROMOTING
    assert not d.can_abort(p)
    assert d.decide(p, d.AbortRequested(Abort("user", "stop", T0)), T0 + 11) == p


def test_rollback_completes_when_the_canary_is_gone_and_stable_is_back():
    p = d.decide(to_analysing(promotion(), T0), d.AbortRequested(Abort("user", "stop", T0 + 1)), T0 + 1)
    restored = Observed("v1", None, 4, 4, 0, 0)
    assert d.decide(p, d.Observation(restored), T0 + 2) == p, "nothing counts until the canary is stopped"
    p = d.decide(p, d.CanaryStopped(), T0 + 1.05)
    assert p.canary_stopped_at == T0 + 1.05
    assert p.to_dict()["detect_to_rollback_ms"] == pytest.approx(50, abs=0.5)
    p = d.decide(p, d.Observation(Observed("v1", None, 4, 2, 0, 0)), T0 + 2)
    assert p.phase is Phase.ABORTING
    p = d.decide(p, d.Observation(restored), T0 + 3)
    assert p.phase is Phase.ROLLED_BACK
    assert d.decide(p, d.Begin(), T0 + 4) == p, "terminal states never change"


def test_a_rollback_whose_stable_never_recovers_still_ends():
    p = d.decide(to_analysing(promotion(), T0), d.AbortRequested(Abort("user", "stop", T0)), T0)
    p = d.decide(p, d.CanaryStopped(), T0 + 1)
    p = d.decide(p, d.Observation(Observed("v1", None, 4, 1, 0, 0)), T0 + 62)
    assert p.phase is Phase.ROLLED_BACK
    assert "not fully ready" in p.message


def test_a_platform_refusal_rolls_back():
    p = d.decide(d.decide(promotion(), d.Begin(), T0), d.Verified(), T0)
    p = d.decide(p, d.PlatformFailed("no such command"), T0 + 1)
    assert (p.phase, p.abort.cause) == (Phase.ABORTING, "platform")


def test_a_first_deploy_skips_the_steps():
    p = promotion(stable=None)
    assert p.initial
    assert p.plan == ()
    p = d.decide(p, d.Begin(), T0)
    assert p.phase is Phase.VERIFYING, "a first deploy is verified like any other"
    p = d.decide(p, d.Verified(), T0)
    assert p.phase is Phase.PROMOTING
    p = d.decide(p, d.Observation(Observed("v2", None, 4, 4, 0, 0)), T0 + 1)
    assert p.phase is Phase.SUCCEEDED


def test_state_survives_a_round_trip_through_a_dict():
    p = d.decide(to_analysing(promotion(), T0), verdict(GatePhase.FAIL), T0 + 10)
    assert Promotion.from_dict(p.to_dict()) == p
    assert dataclasses.asdict(Promotion.from_dict(p.to_dict())) == dataclasses.asdict(p)


def test_a_first_deploy_that_never_gets_ready_ends_at_the_deadline():
    p = d.decide(d.decide(promotion(stable=None), d.Begin(), T0), d.Verified(), T0)
    assert d.wake_at(p) == T0 + 60
    p = d.decide(p, d.Observation(Observed("v2", None, 4, 0, 0, 0)), T0 + 61)
    assert (p.phase, p.abort.cause) == (Phase.ABORTING, "deadline:promoting")
    assert "v2 not ready" in p.abort.reason


def test_a_platform_failure_while_promoting_rolls_back_instead_of_retrying_forever():
    p = to_analysing(promotion(steps=(1,)), T0)
    p = d.decide(p, verdict(GatePhase.PASS), T0 + 10)
    assert p.phase is Phase.PROMOTING
    assert d.wake_at(p) is None, "a proven version keeps converging while promoting"
    p = d.decide(p, d.PlatformFailed("cannot start replica"), T0 + 11)
    assert (p.phase, p.abort.cause) == (Phase.ABORTING, "platform")


def test_a_denied_release_ends_before_any_step_with_every_reason():
    p = d.decide(promotion(), d.Begin(), T0)
    p = d.decide(p, d.Denied(("vulnerability-scan missing", "coverage 41% below 80%")), T0 + 1)
    assert p.phase is Phase.DENIED
    assert p.phase.terminal
    assert p.steps_completed == 0
    assert "vulnerability-scan missing" in p.message
    assert "coverage 41% below 80%" in p.message
    assert d.decide(p, d.Verified(), T0 + 2) == p
