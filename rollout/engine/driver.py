"""The I/O shell around one promotion: persist the decision, then act on it.

A :class:`Driver` owns one promotion and is the only writer of its state.
Each turn it derives the work from the *persisted* state (scale, wait,
analyse, promote, roll back), does it, feeds the outcome to
:func:`~vouch.rollout.engine.decide.decide`, and writes the result before the
next turn. An abort request interrupts whatever is in flight at once; that
is what makes an alarm roll back within milliseconds rather than at the next
analysis tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from vouch.core.errors import PlatformError, PlatformUnavailable
from vouch.rollout.engine import decide as d
from vouch.rollout.engine.breakglass import OverrideShell
from vouch.rollout.gates.base import Gate
from vouch.rollout.model import GateContext, GatePhase, Observed, Verdict
from vouch.rollout.platforms.base import Platform
from vouch.rollout.state import Abort, Event, Phase, Promotion, StepPhase, StepRecord, Store, VerdictRecord

log = logging.getLogger(__name__)

GateFactory = Callable[[Promotion], Sequence[Gate]]
"""Builds the gates that judge a promotion's steps (from its environment's ``gates``)."""

Verifier = Callable[[Promotion], Awaitable["d.Verified | d.Denied"]]
"""Decides before any replica starts whether the release may enter the promotion's environment."""


class EngineHooks(Protocol):
    """Told of every persisted change, for metrics and notifications. Must not block or raise."""

    def on_transition(self, before: Promotion | None, after: Promotion) -> None: ...
    def on_verdicts(self, promotion: Promotion, verdicts: Sequence[Verdict]) -> None: ...
    def on_step(self, promotion: Promotion, step: StepRecord) -> None: ...
    def on_event(self, event: Event) -> None: ...


class NoHooks:
    """Hooks that do nothing."""

    def on_transition(self, before: Promotion | None, after: Promotion) -> None:
        pass

    def on_verdicts(self, promotion: Promotion, verdicts: Sequence[Verdict]) -> None:
        pass

    def on_step(self, promotion: Promotion, step: StepRecord) -> None:
        pass

    def on_event(self, event: Event) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class DriverSettings:
    """Pacing of the shell. The defaults suit both the local platform and Kubernetes."""

    poll_interval: float = 0.1
    """How often readiness is polled while waiting for the platform."""
    retry_max: float = 5.0
    """Longest back-off between retries of a platform call that failed transiently."""
    gate_timeout_min: float = 5.0
    """An analysis run may take its interval, but at least this long, before gates count as errored."""


class Driver:
    """Carries one promotion to Succeeded or RolledBack."""

    def __init__(
        self,
        promotion: Promotion,
        *,
        store: Store,
        platform: Platform,
        gates: GateFactory,
        hooks: EngineHooks,
        clock: Callable[[], float],
        settings: DriverSettings,
        verifier: Verifier | None = None,
        overrides: OverrideShell | None = None,
    ) -> None:
        self.promotion = promotion
        self._verifier = verifier
        self._overrides = overrides
        self._store = store
        self._platform = platform
        self._gates = gates
        self._hooks = hooks
        self._clock = clock
        self._settings = settings
        self._aborts: list[tuple[Abort, asyncio.Future[Promotion]]] = []
        self._abort_signal = asyncio.Event()
        self._scaled_step: int | None = None
        self._promote_sent = False
        self._step_record: StepRecord | None = None

    # ----------------------------------------------------------------- public

    async def request_abort(self, abort: Abort) -> Promotion:
        """Interrupt the promotion and roll it back; returns once the intention is persisted."""
        future: asyncio.Future[Promotion] = asyncio.get_running_loop().create_future()
        self._aborts.append((abort, future))
        self._abort_signal.set()
        return await future

    async def drive(self) -> Promotion:
        """Run the promotion to a terminal phase and return it."""
        records = await self._store.list_steps(self.promotion.id)
        self._step_record = next((r for r in records if r.index == self.promotion.step), None)
        try:
            while not self.promotion.phase.terminal:
                if self._aborts:
                    await self._apply_aborts()
                    continue
                outcome = await self._interruptible(self._work())
                if outcome is not None:
                    await self._commit(d.decide(self.promotion, outcome, self._clock()))
        finally:
            for _, future in self._aborts:
                if not future.done():
                    future.set_result(self.promotion)
        return self.promotion

    # ----------------------------------------------------------------- turns

    async def _apply_aborts(self) -> None:
        pending, self._aborts = self._aborts, []
        self._abort_signal.clear()
        for abort, _ in pending:
            await self._commit(d.decide(self.promotion, d.AbortRequested(abort), self._clock()))
        for _, future in pending:
            if not future.done():
                future.set_result(self.promotion)

    async def _interruptible(self, work: Awaitable[d.Event]) -> d.Event | None:
        """Await ``work`` unless an abort arrives first (and aborting can still change anything)."""
        task = asyncio.ensure_future(work)
        if not d.can_abort(self.promotion):
            return await task
        signal = asyncio.ensure_future(self._abort_signal.wait())
        try:
            await asyncio.wait({task, signal}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # the driver is being stopped: its platform call or analysis must stop with it
            await asyncio.wait({task})
            raise
        finally:
            signal.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def _work(self) -> d.Event:
        p = self.promotion
        if p.phase is Phase.PENDING:
            return d.Begin()
        if p.phase is Phase.VERIFYING:
            return await self._verify(p)
        if p.phase is Phase.PROMOTING:
            return await self._promote()
        if p.phase is Phase.ABORTING:
            return await self._rollback()
        if p.step_phase is StepPhase.SCALING:
            return await self._scale()
        if p.step_phase is StepPhase.SETTLING:
            await self._sleep_until(p.phase_since + p.plan[p.step].pause)
            return d.Settled()
        return await self._analyse()

    async def _verify(self, p: Promotion) -> d.Event:
        """Run the pre-rollout verification; anything but a clean answer is a denial (fail closed)."""
        if self._verifier is None:
            return d.Verified()
        try:
            outcome = await self._verifier(p)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("verification of %s failed", p.target)
            outcome = d.Denied((f"verification could not complete: {type(exc).__name__}: {exc}",))
        if isinstance(outcome, d.Denied) and self._overrides is not None:
            denial = Verdict("attestations", GatePhase.FAIL, outcome.reasons)
            override = await self._overrides.use(p, "attestations", denial.to_dict())
            if override is not None:
                return d.Verified(f"denied, then let through once by break-glass {override.id}: {override.reason}")
        return outcome

    async def _scale(self) -> d.Event:
        p = self.promotion
        step = p.plan[p.step]
        if self._scaled_step != p.step:
            failed = await self._platform_call(
                lambda: self._platform.scale(
                    p.target,
                    stable_replicas=step.stable_replicas,
                    canary_version=p.version,
                    canary_replicas=step.canary_replicas,
                )
            )
            if failed is not None:
                return failed
            self._scaled_step = p.step
        return await self._wait_for(lambda obs: d.is_scaled(p, obs))

    async def _promote(self) -> d.Event:
        p = self.promotion
        if not self._promote_sent:
            failed = await self._platform_call(lambda: self._platform.promote(p.target, p.version), bounded=False)
            if failed is not None:
                return failed
            self._promote_sent = True
        return await self._wait_for(lambda obs: d.is_promoted(p, obs))

    async def _rollback(self) -> d.Event:
        p = self.promotion
        if p.canary_stopped_at is None:
            failed = await self._platform_call(lambda: self._platform.rollback(p.target), bounded=False)
            return failed if failed is not None else d.CanaryStopped()
        return await self._wait_for(lambda obs: d.is_restored(p, obs))

    async def _analyse(self) -> d.Event:
        p = self.promotion
        limit = d.deadline(p)
        due = p.next_analysis_at if p.next_analysis_at is not None else self._clock()
        await self._sleep_until(min(due, limit) if limit is not None else due)
        if limit is not None and self._clock() >= limit:
            return d.Tick()
        observed = await self._observe()
        if observed is None:
            return d.Tick()
        now = self._clock()
        ctx = GateContext(
            promotion_id=p.id,
            target=p.target,
            canary_version=p.version,
            stable_version=p.stable_version,
            step_index=p.step,
            step_started_at=p.step_started_at,
            now=now,
            observed=observed,
        )
        timeout = max(p.limits.interval, self._settings.gate_timeout_min)
        gates = self._gates(p)
        verdicts = tuple(await asyncio.gather(*(_evaluate(g, ctx, timeout) for g in gates)))
        if self._overrides is not None:
            verdicts = await self._overrides.apply(p, verdicts)
        run = p.counters.runs + 1
        await self._store.add_verdicts([VerdictRecord(p.id, p.step, run, now, v) for v in verdicts])
        self._hooks.on_verdicts(p, verdicts)
        return d.Analysed(verdicts)

    # ----------------------------------------------------------------- helpers

    async def _wait_for(self, done: Callable[[Observed], bool]) -> d.Event:
        """Poll the platform until ``done`` or the phase's deadline; report what was seen."""
        while True:
            observed = await self._observe()
            if observed is None:
                return d.Tick()
            limit = d.deadline(self.promotion)
            if done(observed) or (limit is not None and self._clock() >= limit):
                return d.Observation(observed)
            await asyncio.sleep(self._settings.poll_interval)

    async def _observe(self) -> Observed | None:
        """Observe the target, retrying transient failures with back-off until the phase's deadline (then ``None``)."""
        delay = self._settings.poll_interval
        while True:
            try:
                return await self._platform.observe(self.promotion.target)
            except PlatformUnavailable as exc:
                limit = d.deadline(self.promotion)
                if limit is not None and self._clock() >= limit:
                    return None
                log.warning("%s: cannot observe, retrying in %.1fs: %s", self.promotion.target, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max)

    async def _platform_call(self, call: Callable[[], Awaitable[None]], *, bounded: bool = True) -> d.Event | None:
        """Run a platform call, retrying transient failures with back-off; a refusal becomes data.

        ``bounded`` calls give up at the phase's deadline; promoting and rolling back never give up.
        """
        limit = d.deadline(self.promotion) if bounded else None
        delay = 0.2
        while True:
            try:
                await call()
                return None
            except PlatformError as exc:
                if not exc.retryable:
                    return d.PlatformFailed(str(exc))
                if limit is not None and self._clock() + delay >= limit:
                    return d.PlatformFailed(f"{exc} (still failing at the deadline)")
                log.warning("%s: platform call failed, retrying in %.1fs: %s", self.promotion.target, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max)

    async def _sleep_until(self, when: float) -> None:
        delay = when - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _commit(self, after: Promotion) -> None:
        """Persist ``after`` (and the step history and event it implies) before anything acts on it."""
        before = self.promotion
        if after == before:
            return
        await self._record_step(before, after)
        await self._store.save_promotion(after)
        self.promotion = after
        self._hooks.on_transition(before, after)
        event = await self._store.add_event(_event_for(before, after))
        self._hooks.on_event(event)

    async def _record_step(self, before: Promotion, after: Promotion) -> None:
        now = after.updated_at
        rec = self._step_record
        if rec is not None and rec.index == before.step and rec.outcome is None:
            if after.step != before.step or after.phase in (Phase.PROMOTING, Phase.ABORTING):
                outcome = "aborted" if after.phase is Phase.ABORTING else "passed"
                rec = dataclasses.replace(rec, completed_at=now, outcome=outcome)
            elif before.step_phase is StepPhase.SCALING and after.step_phase is not StepPhase.SCALING:
                rec = dataclasses.replace(rec, ready_at=now)
            if after.step_phase is StepPhase.ANALYSING and rec.analysis_started_at is None and rec.outcome is None:
                rec = dataclasses.replace(rec, analysis_started_at=now)
            if rec != self._step_record:
                await self._store.save_step(rec)
                self._step_record = rec
                if rec.outcome is not None:
                    self._hooks.on_step(after, rec)
        starting = after.step_phase is StepPhase.SCALING and (
            before.step != after.step or before.step_phase is not StepPhase.SCALING
        )
        if starting and after.phase is Phase.PROGRESSING:
            step = after.plan[after.step]
            rec = StepRecord(after.id, after.step, step.label, step.canary_replicas, step.stable_replicas, now)
            await self._store.save_step(rec)
            self._step_record = rec


async def _evaluate(gate: Gate, ctx: GateContext, limit: float) -> Verdict:
    """Run one gate; a gate that hangs or breaks is an errored INCONCLUSIVE, never a pass."""
    try:
        async with asyncio.timeout(limit):
            return await gate.evaluate(ctx)
    except TimeoutError:
        return Verdict(
            gate.name, GatePhase.INCONCLUSIVE, (f"{gate.name} gave no verdict within {limit:g}s",), errored=True
        )
    except Exception as exc:
        log.exception("gate %s failed on %s", gate.name, ctx.target)
        reason = f"{gate.name} failed: {type(exc).__name__}: {exc}"
        return Verdict(gate.name, GatePhase.INCONCLUSIVE, (reason,), errored=True)


def _event_for(before: Promotion, after: Promotion) -> Event:
    if after.phase is not before.phase:
        kind = f"promotion.{after.phase.value.lower()}"
    elif after.step != before.step or after.step_phase is not before.step_phase:
        kind = f"step.{after.step_phase.value}" if after.step_phase else "step"
    elif after.counters != before.counters:
        kind = "analysis"
    else:
        kind = "promotion.update"
    data = {
        "service": after.service,
        "environment": after.environment,
        "version": after.version,
        "phase": after.phase.value,
        "step": after.step,
        "steps": len(after.plan),
        "step_phase": after.step_phase.value if after.step_phase else None,
        "rollback_cause": after.abort.cause if after.abort else None,
        "actor": after.abort.actor if after.abort else after.actor,
    }
    return Event(kind, after.message, after.updated_at, promotion_id=after.id, release_id=after.release_id, data=data)
