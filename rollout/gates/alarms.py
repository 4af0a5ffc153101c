"""The ``alarms`` gate: a step may not continue while an alert about the promotion fires.

Alertmanager's webhooks abort a matching promotion the moment they arrive; this
gate is the same rule checked at every analysis run, so an alert that fired
between two runs, or before the promotion started, still stops it. It reads
an in-memory :class:`~vouch.rollout.alarms.AlertBook`, so it always measures:
it never returns an errored verdict.

Example::

    gate = AlarmGate(book, environment_spec.alarms)
    verdict = await gate.evaluate(ctx)
"""

from __future__ import annotations

from vouch.rollout.alarms import Alert, AlertBook
from vouch.rollout.config import AlarmSpec
from vouch.rollout.model import GateContext, GatePhase, Measurement, Target, Verdict


class AlarmGate:
    """FAIL while any firing alert matches the promotion's service, environment and canary version."""

    def __init__(self, book: AlertBook, spec: AlarmSpec, *, name: str = "alarms") -> None:
        self.name = name
        self._book = book
        self._spec = spec

    async def evaluate(self, ctx: GateContext) -> Verdict:
        alerts = self._book.firing_for(
            service=ctx.service,
            environment=ctx.environment,
            version=ctx.canary_version,
            spec=self._spec,
        )
        measurement = Measurement("firing alerts", float(len(alerts)), threshold="== 0")
        if not alerts:
            reason = f"no alert firing for {ctx.target}"
            return Verdict(self.name, GatePhase.PASS, reasons=(reason,), measurements=(measurement,))
        reasons = tuple(_reason(alert, ctx.target) for alert in alerts)
        return Verdict(self.name, GatePhase.FAIL, reasons=reasons, measurements=(measurement,))


def _reason(alert: Alert, target: Target) -> str:
    """``alert HighErrorRate is firing for checkout/staging: canary error ratio above 10%``."""
    text = f"alert {alert.name} is firing for {target}"
    return f"{text}: {alert.summary}" if alert.summary else text
