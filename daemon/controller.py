"""What the HTTP API asks of the daemon: start releases, abort, and act on Alertmanager's alarms.

Alarms are events, not polls: a firing alert that matches a running
promotion aborts it before the webhook is answered, so Alertmanager only
hears "200" once the rollback is on record (and retries if it is not).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from vouch.core.errors import ConflictError, InputError, NotLeaderError
from vouch.daemon.breakglass import GrantRequest, Scope, check_grant
from vouch.daemon.metrics import DaemonMetrics
from vouch.daemon.notify.base import Notice
from vouch.rollout.alarms import Alert, AlertBook, matches, parse_webhook
from vouch.rollout.config import EnvironmentSpec
from vouch.rollout.engine.runner import Engine
from vouch.rollout.overrides import Override
from vouch.rollout.state import AlertRecord, Event, Promotion, Release, Store

log = logging.getLogger(__name__)


class Leadership(Protocol):
    """Who acts among the daemon's replicas (``LeaderElector`` provides it)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def in_touch(self) -> bool: ...

    @property
    def holder(self) -> str | None: ...


class DaemonController:
    """Implements the API's ``Controller`` on top of the engine, the store and the alert book."""

    def __init__(
        self,
        *,
        engine: Engine,
        store: Store,
        alerts: AlertBook,
        environments: Mapping[str, EnvironmentSpec],
        metrics: DaemonMetrics,
        clock: Callable[[], float] = time.time,
        leadership: Leadership | None = None,
        scope: Scope | None = None,
        on_event: Callable[[Event], None] = lambda event: None,
        notify: Callable[[Notice], tuple[str, ...]] = lambda notice: (),
    ) -> None:
        """``leadership`` None means this daemon is the only one and always acts. ``scope`` is what
        break-glass grants are checked against (None: no grants); ``on_event`` hears of each grant."""
        self._leadership = leadership
        self._scope = scope
        self._on_event = on_event
        self._notify = notify
        self.store = store
        self._engine = engine
        self._alerts = alerts
        self._environments = environments
        self._metrics = metrics
        self._clock = clock

    def ready(self) -> bool:
        """The leader is ready once its engine runs; a follower while it keeps in touch with the Lease.

        Followers are ready so that a rolling update of the daemon can finish and a standby is
        known to be healthy; they refuse to act (:meth:`acting`), and the chart's Service routes
        API calls to the leader's pod only.
        """
        if self.acting():
            return True
        lead = self._leadership
        return lead is not None and not lead.is_leader and lead.in_touch

    def acting(self) -> bool:
        """Whether this daemon may act now: it leads (or is alone) and its engine runs."""
        leading = self._leadership is None or self._leadership.is_leader
        return leading and self._engine.started.is_set()

    def _must_act(self) -> None:
        if not self.acting():
            raise NotLeaderError(self._leadership.holder if self._leadership is not None else None)

    async def submit(
        self,
        *,
        service: str,
        version: str,
        environment: str | None,
        actor: str,
        artifact: Mapping[str, str] | None = None,
        commit: Mapping[str, str | None] | None = None,
    ) -> Release:
        self._must_act()
        return await self._engine.submit(
            service=service, version=version, environment=environment, actor=actor, artifact=artifact, commit=commit
        )

    async def abort(self, promotion_id: str, *, actor: str, reason: str) -> Promotion:
        self._must_act()
        return await self._engine.abort(promotion_id, actor=actor, reason=reason or f"aborted by {actor}")

    async def grant_override(self, request: GrantRequest, *, actor: str) -> Override:
        """Check and keep a break-glass override; announce it (security and the escalation chain hear of it)."""
        self._must_act()
        if self._scope is None:
            raise InputError("break-glass overrides are not enabled on this daemon")
        now = self._clock()
        override = check_grant(
            request, self._scope, actor=actor, override_id=f"bg-{uuid.uuid4().hex[:12]}", source="api", now=now
        )
        kept = await self.store.add_override(override)
        message = f"break-glass granted by {kept.actor}: {kept.scope()}, until {_stamp(kept.expires_at)}: {kept.reason}"
        data: dict[str, Any] = {"override": kept.to_dict(), "actor": kept.actor, "service": kept.service}
        data |= {"environment": kept.environment, "version": kept.version, "gate": kept.gate}
        event = await self.store.add_event(Event("override.granted", message, now, data=data))
        log.warning("%s", message)
        self._on_event(event)
        return kept

    def notify(self, notice: Notice) -> tuple[str, ...]:
        """Audit and publish a pull request's pipeline step (any replica may: it changes no state)."""
        return self._notify(notice)

    async def receive_alerts(self, payload: object, *, actor: str) -> list[AlertRecord]:
        """Record every alert; a firing one that matches a running promotion rolls it back now.

        A follower refuses the webhook (503) before looking at it: Alertmanager retries, and
        its retry reaches the leader, which is the one that can roll back.
        """
        self._must_act()
        received = self._clock()
        webhook = parse_webhook(payload)
        if webhook.truncated_alerts:
            log.warning("Alertmanager left %d alerts out of a webhook (max_alerts)", webhook.truncated_alerts)
        firing, resolved = self._alerts.update(webhook)
        records = []
        for alert in firing:
            aborted = await self._abort_matching(alert, received=received, actor=actor)
            records.append(await self._record(alert, received, aborted))
        for alert in resolved:
            records.append(await self._record(alert, received, ()))
        return records

    async def _abort_matching(self, alert: Alert, *, received: float, actor: str) -> tuple[str, ...]:
        """Roll back every running promotion the alert matches, but those a break-glass override of the
        ``alarms`` gate holds back (once)."""
        targets = []
        for promotion in (p for p in self._engine.active() if self._matches(alert, p)):
            held = await self._engine.overrides.use(promotion, "alarms", _alert_dict(alert))
            if held is None:
                targets.append(promotion)
            else:
                log.warning("alert %s held back from %s by break-glass %s", alert.name, promotion.id, held.id)
        reason = f"alert {alert.name} is firing" + (f": {alert.summary}" if alert.summary else "")
        results = await asyncio.gather(
            *(
                self._engine.abort(p.id, actor=actor, reason=reason, cause=f"alarm:{alert.name}", at=received)
                for p in targets
            ),
            return_exceptions=True,
        )
        aborted = []
        for promotion, result in zip(targets, results, strict=True):
            if isinstance(result, ConflictError):
                log.info("alert %s matched %s too late: %s", alert.name, promotion.id, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                aborted.append(promotion.id)
        return tuple(aborted)

    def _matches(self, alert: Alert, promotion: Promotion) -> bool:
        spec = self._environments[promotion.environment].alarms
        return matches(
            alert.labels,
            service=promotion.service,
            environment=promotion.environment,
            version=promotion.version,
            spec=spec,
        )

    async def _record(self, alert: Alert, received: float, aborted: tuple[str, ...]) -> AlertRecord:
        record = AlertRecord(
            received_at=received,
            status=alert.status,
            labels=dict(alert.labels),
            annotations=dict(alert.annotations),
            fingerprint=alert.fingerprint,
            matched=aborted,
        )
        record = await self.store.add_alert(record)
        self._metrics.alert(record)
        return record


def _alert_dict(alert: Alert) -> dict[str, object]:
    return {
        "alert": alert.name,
        "status": alert.status,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "fingerprint": alert.fingerprint,
    }


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
