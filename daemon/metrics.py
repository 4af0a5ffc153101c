"""The daemon's own Prometheus metrics: what it is doing and how fast it reacts.

Pure bookkeeping: the engine reports what it wrote (a promotion before and
after, the verdicts of a run, a finished step, an alert) and this module turns
it into series. Nothing here does I/O or reads a clock; every duration comes
from the timestamps the records carry, so the numbers match the store.

    metrics = DaemonMetrics(registry)
    metrics.reset(await store.list_promotions(limit=10_000))
    metrics.transition(before, after)
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vouch.rollout.model import Verdict
from vouch.rollout.state import AlertRecord, Phase, Promotion, StepRecord

ROLLBACK_CAUSES = ("gate", "alarm", "deadline", "user", "platform")
"""The classes of ``Abort.cause``; anything else is counted as ``other`` to bound the label."""

ALERT_STATUSES = ("firing", "resolved")

# Steps and promotions last minutes to hours; reacting to an alarm takes well under a minute.
STEP_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
PROMOTION_BUCKETS = (30, 60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
ALARM_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)


def cause_class(cause: str) -> str:
    """``gate:slo`` → ``gate``; an unknown prefix → ``other``.

    >>> cause_class("alarm:HighErrorRate")
    'alarm'
    """
    prefix = cause.split(":", 1)[0].strip().lower()
    return prefix if prefix in ROLLBACK_CAUSES else "other"


class DaemonMetrics:
    """Series about promotions, verdicts, rollbacks and alerts, in the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: Tally[Phase] = Tally()
        self.promotions = Gauge(
            "vouch_promotions",
            "Promotions currently in each phase.",
            ["phase"],
            registry=registry,
        )
        self.step_duration = Histogram(
            "vouch_step_duration_seconds",
            "Time from a step's start to its completion.",
            ["environment"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.promotion_duration = Histogram(
            "vouch_promotion_duration_seconds",
            "Time from a promotion's creation to its end, by the phase it ended in.",
            ["environment", "phase"],
            buckets=PROMOTION_BUCKETS,
            registry=registry,
        )
        self.verdicts_total = Counter(
            "vouch_verdicts",
            "Gate verdicts given, by gate and phase.",
            ["gate", "phase"],
            registry=registry,
        )
        self.rollbacks_total = Counter(
            "vouch_rollbacks",
            "Promotions rolled back, by class of cause.",
            ["cause"],
            registry=registry,
        )
        self.alerts_total = Counter(
            "vouch_alerts_received",
            "Alerts received from Alertmanager, by status and whether they matched a promotion.",
            ["status", "matched"],
            registry=registry,
        )
        self.alarm_to_rollback = Histogram(
            "vouch_alarm_to_rollback_seconds",
            "Time from an alarm's abort request until the canary was out of traffic and stopped.",
            buckets=ALARM_BUCKETS,
            registry=registry,
        )
        self.leader = Gauge(
            "vouch_leader",
            "1 while this daemon replica acts (leads, or runs alone), 0 while it follows.",
            registry=registry,
        )
        self.leader.set(1)
        self._publish()

    def follow_leadership(self, acting: Callable[[], bool]) -> None:
        """Have ``vouch_leader`` read ``acting()`` at every scrape."""
        self.leader.set_function(lambda: 1.0 if acting() else 0.0)

    def _publish(self) -> None:
        for phase in Phase:
            self.promotions.labels(phase=phase.value).set(self._counts[phase])

    def reset(self, promotions: Iterable[Promotion]) -> None:
        """Counts the phases afresh, from the store, when the daemon starts."""
        self._counts = Tally(p.phase for p in promotions)
        self._publish()

    def transition(self, before: Promotion | None, after: Promotion) -> None:
        """Records a promotion written as ``after`` (``before`` is None when it was just created).

        Moves the phase counts and, on the transition that causes them, observes
        the promotion's duration, counts a rollback and times an alarm's rollback.
        """
        if before is None or before.phase is not after.phase:
            if before is not None:
                self._counts[before.phase] = max(0, self._counts[before.phase] - 1)
            self._counts[after.phase] += 1
            self._publish()
        newly_terminal = after.phase.terminal and (before is None or not before.phase.terminal)
        if newly_terminal:
            end = after.finished_at if after.finished_at is not None else after.updated_at
            self.promotion_duration.labels(environment=after.environment, phase=after.phase.value).observe(
                max(0.0, end - after.created_at)
            )
            if after.phase is Phase.ROLLED_BACK:
                cause = after.abort.cause if after.abort else "platform"
                self.rollbacks_total.labels(cause=cause_class(cause)).inc()
        stopped_now = before is not None and before.canary_stopped_at is None and after.canary_stopped_at is not None
        if stopped_now and after.abort is not None and cause_class(after.abort.cause) == "alarm":
            assert after.canary_stopped_at is not None
            self.alarm_to_rollback.observe(max(0.0, after.canary_stopped_at - after.abort.requested_at))

    def step_finished(self, step: StepRecord, *, environment: str) -> None:
        """Observes a completed step's duration; a step still running is ignored."""
        if step.completed_at is None:
            return
        self.step_duration.labels(environment=environment).observe(max(0.0, step.completed_at - step.started_at))

    def verdicts(self, verdicts: Iterable[Verdict]) -> None:
        """Counts the verdicts of one analysis run."""
        for verdict in verdicts:
            self.verdicts_total.labels(gate=verdict.gate, phase=verdict.phase.value).inc()

    def alert(self, record: AlertRecord) -> None:
        """Counts one received alert."""
        status = record.status if record.status in ALERT_STATUSES else "other"
        matched = "true" if record.matched else "false"
        self.alerts_total.labels(status=status, matched=matched).inc()
