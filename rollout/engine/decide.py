"""The promotion state machine as pure functions.

``decide(promotion, event, now)`` returns the next state; it does no I/O and
reads no clock, so every path is testable with a fake clock. The shell
(:mod:`vouch.rollout.engine.runner`) persists what ``decide`` returns *before*
acting on it, and derives what to do next from the persisted state alone, so
a daemon killed at any point resumes exactly where it stood.

    Pending → Verifying → Progressing(step k: scaling → settling → analysing) → Promoting → Succeeded
                                    ↘ Paused (inconclusive) ↗
    any active phase before Promoting → Aborting → RolledBack

A first deploy (no stable version yet) is verified like any other, then has
nothing to compare with and goes from Verifying straight to Promoting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from vouch.core.durations import format_duration
from vouch.rollout.model import GatePhase, Observed, Verdict, worst
from vouch.rollout.state import Abort, Counters, Phase, Promotion, StepPhase


@dataclass(frozen=True)
class Begin:
    """The engine picked up a pending promotion."""


@dataclass(frozen=True)
class Verified:
    """Pre-rollout verification passed (or there was none to run)."""

    note: str = "no verification gates configured"


@dataclass(frozen=True)
class Denied:
    """Pre-rollout verification refused the release; every reason is kept."""

    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Observation:
    """What the platform reported while the engine waited for it."""

    observed: Observed


@dataclass(frozen=True)
class Settled:
    """The step's pause is over."""


@dataclass(frozen=True)
class Analysed:
    """One analysis run finished with these verdicts."""

    verdicts: tuple[Verdict, ...]


@dataclass(frozen=True)
class CanaryStopped:
    """The rollback took the canary out of traffic and stopped it."""


@dataclass(frozen=True)
class AbortRequested:
    """An alarm, a failed gate or a person asked for a rollback."""

    abort: Abort


@dataclass(frozen=True)
class PlatformFailed:
    """The platform refused an operation for good."""

    error: str


@dataclass(frozen=True)
class Tick:
    """Time passed; deadlines may have expired."""


Event = (
    Begin
    | Verified
    | Denied
    | Observation
    | Settled
    | Analysed
    | CanaryStopped
    | AbortRequested
    | PlatformFailed
    | Tick
)


def decide(p: Promotion, event: Event, now: float) -> Promotion:
    """The state that follows ``p`` after ``event`` at ``now``. Terminal states never change."""
    if p.phase.terminal:
        return p
    if isinstance(event, AbortRequested):
        return _abort(p, event.abort, now)
    if isinstance(event, PlatformFailed):
        if p.phase is Phase.ABORTING:
            return _finish(p, Phase.ROLLED_BACK, now, f"rollback incomplete: {event.error}")
        return _abort(p, Abort("platform", event.error, now), now, force=True)
    expired = _deadline_abort(p, now)
    if expired is not None:
        return expired
    handler = _HANDLERS.get(type(event))
    return handler(p, event, now) if handler else p


def can_abort(p: Promotion) -> bool:
    """Whether an abort still changes anything: not once promoting has begun or the end was reached."""
    return p.phase not in (Phase.PROMOTING, Phase.ABORTING) and not p.phase.terminal


def deadline(p: Promotion) -> float | None:
    """When the current phase times out, if it is one that can hang."""
    if p.phase is Phase.PROMOTING:
        # A first deploy that never gets ready must end; otherwise promoting is past the point of no
        # return and keeps converging (the canary's version already held at every step).
        return p.phase_since + p.limits.progress_deadline if p.initial else None
    if p.phase is Phase.ABORTING:
        if p.canary_stopped_at is None:
            return None  # the canary must go first, however long it takes
        return p.canary_stopped_at + p.limits.progress_deadline
    waiting = p.step_phase is StepPhase.SCALING or p.phase is Phase.PAUSED
    return p.phase_since + p.limits.progress_deadline if waiting else None


def wake_at(p: Promotion) -> float | None:
    """The next moment the engine must act on ``p`` without being told to."""
    times: list[float] = []
    if (limit := deadline(p)) is not None:
        times.append(limit)
    if p.step_phase is StepPhase.SETTLING:
        times.append(p.phase_since + p.plan[p.step].pause)
    if p.step_phase is StepPhase.ANALYSING and p.next_analysis_at is not None:
        times.append(p.next_analysis_at)
    return min(times) if times else None


def is_scaled(p: Promotion, obs: Observed) -> bool:
    """The current step's canary and stable replicas are all ready."""
    step = p.plan[p.step]
    return (
        obs.canary_version == p.version
        and obs.canary_ready >= step.canary_replicas
        and obs.stable_ready >= step.stable_replicas
        and obs.stable_desired == step.stable_replicas
    )


def is_promoted(p: Promotion, obs: Observed) -> bool:
    """The new version is stable at full size and no canary is left."""
    return obs.stable_version == p.version and obs.stable_ready >= p.replicas and obs.canary_desired == 0


def is_restored(p: Promotion, obs: Observed) -> bool:
    """The canary is gone and the old stable serves at full size again."""
    stable_ok = p.stable_version is None or obs.stable_ready >= p.replicas
    return obs.canary_ready == 0 and obs.canary_desired == 0 and stable_ok


# --------------------------------------------------------------------------- transitions


def _begin(p: Promotion, _: Event, now: float) -> Promotion:
    if p.phase is not Phase.PENDING:
        return p
    return _enter(p, Phase.VERIFYING, None, now, "verifying the release")


def _verified(p: Promotion, event: Event, now: float) -> Promotion:
    if p.phase is not Phase.VERIFYING:
        return p
    assert isinstance(event, Verified)
    if p.initial:
        message = f"verified ({event.note}); first deploy of {p.version}: no stable version to compare"
        return _enter(p, Phase.PROMOTING, None, now, message)
    if not p.plan:
        return _enter(p, Phase.PROMOTING, None, now, f"verified ({event.note}); no steps, promoting")
    return _start_step(p, 0, now, prefix=f"verified ({event.note}); ")


def _denied(p: Promotion, event: Event, now: float) -> Promotion:
    if p.phase is not Phase.VERIFYING:
        return p
    assert isinstance(event, Denied)
    reasons = "; ".join(event.reasons) or "no reason given"
    return _finish(p, Phase.DENIED, now, f"denied before any replica started: {reasons}")


def _observation(p: Promotion, event: Event, now: float) -> Promotion:
    assert isinstance(event, Observation)
    obs = event.observed
    if p.step_phase is StepPhase.SCALING and is_scaled(p, obs):
        step = p.plan[p.step]
        if step.pause > 0:
            message = f"step {_step_name(p)} ready; pausing {format_duration(step.pause)}"
            return _enter(p, Phase.PROGRESSING, StepPhase.SETTLING, now, message)
        return _start_analysis(p, now)
    if p.phase is Phase.PROMOTING and is_promoted(p, obs):
        return _finish(p, Phase.SUCCEEDED, now, f"{p.version} is stable with {p.replicas} replicas")
    if p.phase is Phase.ABORTING and p.canary_stopped_at is not None and is_restored(p, obs):
        back = f"{p.stable_version} serves all traffic" if p.stable_version else "canary removed"
        return _finish(p, Phase.ROLLED_BACK, now, f"rolled back: {back}")
    return p


def _settled(p: Promotion, _: Event, now: float) -> Promotion:
    if p.step_phase is not StepPhase.SETTLING or now < p.phase_since + p.plan[p.step].pause:
        return p
    return _start_analysis(p, now)


def _canary_stopped(p: Promotion, _: Event, now: float) -> Promotion:
    if p.phase is not Phase.ABORTING or p.canary_stopped_at is not None:
        return p
    return dataclasses.replace(p, canary_stopped_at=now, updated_at=now, message="canary stopped; restoring stable")


def _analysed(p: Promotion, event: Event, now: float) -> Promotion:
    assert isinstance(event, Analysed)
    if p.step_phase is not StepPhase.ANALYSING:
        return p
    verdicts = event.verdicts
    phase = worst(v.phase for v in verdicts)
    c = p.counters
    errored = any(v.errored for v in verdicts)
    c = dataclasses.replace(c, runs=c.runs + 1, consecutive_errors=c.consecutive_errors + 1 if errored else 0)
    summary = _summary(verdicts, phase)
    lim = p.limits
    if c.consecutive_errors >= lim.consecutive_errors:
        reason = f"{c.consecutive_errors} analysis runs in a row could not measure: {summary}"
        return _abort(p, Abort(_cause(verdicts, GatePhase.INCONCLUSIVE), reason, now), now, counters=c)
    if phase is GatePhase.FAIL:
        c = dataclasses.replace(c, failures=c.failures + 1)
        if c.failures > lim.failure_limit:
            return _abort(p, Abort(_cause(verdicts, GatePhase.FAIL), summary, now), now, counters=c)
        return _next_run(p, c, Phase.PROGRESSING, now, f"run {c.runs} failed ({c.failures} tolerated): {summary}")
    if phase is GatePhase.INCONCLUSIVE:
        c = dataclasses.replace(c, inconclusives=c.inconclusives + 1)
        if c.inconclusives > lim.inconclusive_limit:
            reason = f"inconclusive {c.inconclusives} times (limit {lim.inconclusive_limit}): {summary}"
            return _abort(p, Abort(_cause(verdicts, GatePhase.INCONCLUSIVE), reason, now), now, counters=c)
        return _next_run(p, c, Phase.PAUSED, now, f"paused, waiting for data: {summary}")
    c = dataclasses.replace(c, passes=c.passes + 1)
    if c.passes < lim.runs:
        return _next_run(p, c, Phase.PROGRESSING, now, f"run {c.runs} passed ({c.passes}/{lim.runs}): {summary}")
    if p.step + 1 < len(p.plan):
        passed = f"step {_step_name(p)} passed ({summary}); "
        return _start_step(dataclasses.replace(p, counters=c), p.step + 1, now, prefix=passed)
    message = f"step {_step_name(p)} passed ({summary}); all {len(p.plan)} steps held, promoting {p.version}"
    return _enter(dataclasses.replace(p, step=len(p.plan), counters=c), Phase.PROMOTING, None, now, message)


def _tick(p: Promotion, _: Event, __: float) -> Promotion:
    return p  # deadlines were checked before any handler runs


_HANDLERS: dict[type, Callable[[Promotion, Event, float], Promotion]] = {
    Begin: _begin,
    Verified: _verified,
    Denied: _denied,
    Observation: _observation,
    Settled: _settled,
    Analysed: _analysed,
    CanaryStopped: _canary_stopped,
    Tick: _tick,
}


# --------------------------------------------------------------------------- helpers


def _enter(p: Promotion, phase: Phase, step_phase: StepPhase | None, now: float, message: str) -> Promotion:
    return dataclasses.replace(p, phase=phase, step_phase=step_phase, phase_since=now, updated_at=now, message=message)


def _start_step(p: Promotion, index: int, now: float, *, prefix: str = "") -> Promotion:
    p = dataclasses.replace(p, step=index, step_started_at=now, counters=Counters(), next_analysis_at=None)
    step = p.plan[index]
    message = f"{prefix}step {_step_name(p)}: {step.canary_replicas} canary + {step.stable_replicas} stable"
    return _enter(p, Phase.PROGRESSING, StepPhase.SCALING, now, message)


def _start_analysis(p: Promotion, now: float) -> Promotion:
    p = dataclasses.replace(p, next_analysis_at=now + p.limits.interval)
    message = f"step {_step_name(p)} ready; first analysis in {format_duration(p.limits.interval)}"
    return _enter(p, Phase.PROGRESSING, StepPhase.ANALYSING, now, message)


def _next_run(p: Promotion, c: Counters, phase: Phase, now: float, message: str) -> Promotion:
    since = p.phase_since if phase is p.phase else now
    return dataclasses.replace(
        p, phase=phase, counters=c, next_analysis_at=now + p.limits.interval, phase_since=since,
        updated_at=now, message=message,
    )  # fmt: skip


def _abort(
    p: Promotion, abort: Abort, now: float, *, counters: Counters | None = None, force: bool = False
) -> Promotion:
    """Roll back; ``force`` also interrupts promoting (the platform failed it or it can never finish)."""
    if not can_abort(p) and not (force and p.phase is Phase.PROMOTING):
        return p
    p = dataclasses.replace(p, abort=abort, counters=counters or p.counters, next_analysis_at=None)
    return _enter(p, Phase.ABORTING, p.step_phase, now, f"rolling back ({abort.cause}): {abort.reason}")


def _finish(p: Promotion, phase: Phase, now: float, message: str) -> Promotion:
    p = dataclasses.replace(p, finished_at=now, next_analysis_at=None)
    return _enter(p, phase, None, now, message)


def _deadline_abort(p: Promotion, now: float) -> Promotion | None:
    limit = deadline(p)
    if limit is None or now < limit:
        return None
    waited = format_duration(p.limits.progress_deadline)
    if p.phase is Phase.ABORTING:
        return _finish(p, Phase.ROLLED_BACK, now, f"rolled back; stable not fully ready after {waited}")
    if p.phase is Phase.PROMOTING:
        what = f"{p.version} not ready"
    elif p.phase is Phase.PAUSED:
        what = "paused without conclusive data"
    else:
        what = f"step {_step_name(p)} not ready"
    cause = f"deadline:{(p.step_phase or p.phase).value.lower()}"
    return _abort(p, Abort(cause, f"{what} after {waited}", now), now, force=True)


def _step_name(p: Promotion) -> str:
    if not p.plan:
        return "-"
    index = min(p.step, len(p.plan) - 1)
    return f"{index + 1}/{len(p.plan)} ({p.plan[index].label})"


def _cause(verdicts: tuple[Verdict, ...], phase: GatePhase) -> str:
    gates = [v.gate for v in verdicts if v.phase is phase] or [v.gate for v in verdicts]
    return "gate:" + ",".join(gates)


def _summary(verdicts: tuple[Verdict, ...], phase: GatePhase) -> str:
    if not verdicts:
        return "no gates ran"
    reasons = [r for v in verdicts if v.phase is phase for r in (v.reasons or (f"{v.gate}: {v.phase.value}",))]
    return "; ".join(reasons) if reasons else phase.value
