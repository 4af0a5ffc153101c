"""Hands notices to notifiers without ever holding up whoever publishes them.

``publish`` is synchronous and only queues: the engine calls it from its hooks
and goes on. Each notifier has its own bounded queue and its own task, so a
Slack outage delays Slack only. A failed delivery is retried with capped
exponential backoff, in order, until it lands (or the receiver refuses it for
good); when a queue is full the oldest least severe notice is dropped, and a
critical notice never is. Every outcome is counted.

    dispatcher = Dispatcher([slack, webhook], spec.routes, registry=registry)
    group.create_task(dispatcher.run(), name="notify")
    dispatcher.publish(notice_from_event(event))
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from vouch.core.errors import ConfigError, Problem, VouchError
from vouch.daemon.notify.base import Notice, Notifier, NotifyRejected, Severity, notice_from_event
from vouch.daemon.notify.routing import destinations
from vouch.daemon.notify.settings import RouteSpec
from vouch.rollout.state import Event

log = logging.getLogger(__name__)

OUTCOMES = ("sent", "failed", "dropped", "rejected")
"""``sent``: delivered; ``failed``: one attempt failed (it is retried); ``dropped``: pushed out of a full
queue; ``rejected``: refused for good by the receiver, or failing unexpectedly too often, and given up."""

UNEXPECTED_ATTEMPTS = 3
"""Attempts at a notice whose delivery fails with an error not known to be transient, before giving it up."""


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts at one notice: ``initial``, doubling, at most ``maximum``.

    >>> [Backoff(1.0, 5.0).delay(n) for n in (1, 2, 3, 4)]
    [1.0, 2.0, 4.0, 5.0]
    """

    initial: float = 1.0
    maximum: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.initial * 2.0 ** max(0, failures - 1))


def overflow_victim(queued: Sequence[Notice], incoming: Notice) -> int | None:
    """Which notice a full queue drops: the oldest of the least severe, counting the incoming one last.

    Returns an index into ``queued``, ``len(queued)`` for the incoming notice,
    or ``None`` when every one is critical (the queue then grows past its bound).

    >>> from vouch.daemon.notify.base import Severity as S
    >>> q = [Notice("a", S.WARNING, "", 0.0), Notice("b", S.INFO, "", 0.0)]
    >>> overflow_victim(q, Notice("c", S.CRITICAL, "", 0.0))
    1
    """
    candidates = [*queued, incoming]
    lowest = min(n.severity.rank for n in candidates)
    if lowest == Severity.CRITICAL.rank:
        return None
    return next(i for i, n in enumerate(candidates) if n.severity.rank == lowest)


class NotifyMetrics:
    """``vouch_notifications_total{notifier,outcome}`` and ``vouch_notification_queue{notifier}``."""

    def __init__(self, registry: CollectorRegistry, names: Iterable[str]) -> None:
        self.total = Counter(
            "vouch_notifications",
            "Notices handled per notifier, by outcome (sent, failed attempt, dropped, rejected).",
            ["notifier", "outcome"],
            registry=registry,
        )
        self.queued = Gauge(
            "vouch_notification_queue",
            "Notices waiting for (or in) delivery per notifier.",
            ["notifier"],
            registry=registry,
        )
        for name in names:
            for outcome in OUTCOMES:
                self.total.labels(notifier=name, outcome=outcome)
            self.queued.labels(notifier=name).set(0)


class _Lane:
    """One notifier's queue, and whether its task is busy with a notice."""

    def __init__(self, notifier: Notifier, capacity: int) -> None:
        self.notifier = notifier
        self.capacity = capacity
        self.queue: deque[Notice] = deque()
        self.busy = False
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def depth(self) -> int:
        return len(self.queue) + int(self.busy)

    def put(self, notice: Notice) -> Notice | None:
        """Queues ``notice``; returns the notice dropped to make room, if any."""
        dropped = None
        if len(self.queue) >= self.capacity:
            victim = overflow_victim(self.queue, notice)
            if victim == len(self.queue):
                return notice
            if victim is not None:
                dropped = self.queue[victim]
                del self.queue[victim]
        self.queue.append(notice)
        self.idle.clear()
        self.wake.set()
        return dropped


class Dispatcher:
    """Routes each published notice to its notifiers' queues and delivers them, one task per notifier.

    ``routes`` decide who hears of what (with none, every notifier hears
    everything); notifiers named in ``always`` (the audit log) receive every
    notice. ``run`` must be running for anything to be delivered; notices
    published before it starts wait in the queues.
    """

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        routes: Sequence[RouteSpec] = (),
        *,
        registry: CollectorRegistry,
        always: Iterable[str] = (),
        queue_size: int = 1000,
        backoff: Backoff | None = None,
    ) -> None:
        self._lanes = {n.name: _Lane(n, queue_size) for n in notifiers}
        self._routes = tuple(routes)
        self._always = tuple(always)
        self._backoff = backoff or Backoff()
        named = {name for r in self._routes for name in r.to} | set(self._always)
        unknown = sorted(named - set(self._lanes))
        if unknown:
            known = ", ".join(self._lanes) or "(none)"
            message = f"unknown notifiers: {', '.join(unknown)}; known: {known}"
            raise ConfigError([Problem("<config>", None, "notifications.routes", message)])
        self.metrics = NotifyMetrics(registry, self._lanes)

    @property
    def notifiers(self) -> tuple[str, ...]:
        return tuple(self._lanes)

    def publish(self, notice: Notice) -> tuple[str, ...]:
        """Queues ``notice`` for every notifier its routes name and returns their names. Never blocks or raises.

        Call it from the event loop's thread (the engine's hooks are).
        """
        try:
            names = destinations(notice, self._routes, notifiers=self._lanes, always=self._always)
            for name in names:
                lane = self._lanes[name]
                dropped = lane.put(notice)
                if dropped is not None:
                    self.metrics.total.labels(notifier=name, outcome="dropped").inc()
                    log.warning("notifier %s is behind; dropped %s: %s", name, dropped.kind, dropped.message)
                self.metrics.queued.labels(notifier=name).set(lane.depth)
            return names
        except Exception:
            log.exception("could not queue notice %s", notice.kind)
            return ()

    def on_event(self, event: Event) -> None:
        """The engine hook: publishes the notice for ``event``."""
        self.publish(notice_from_event(event))

    async def wait_idle(self) -> None:
        """Returns once every queue is empty and nothing is being delivered (say, before a planned shutdown)."""
        while not all(lane.idle.is_set() for lane in self._lanes.values()):
            await asyncio.gather(*(lane.idle.wait() for lane in self._lanes.values()))

    async def run(self) -> None:
        """Delivers until cancelled; then closes every notifier, shielded from the cancellation."""
        try:
            async with asyncio.TaskGroup() as group:
                for name, lane in self._lanes.items():
                    group.create_task(self._deliver(lane), name=f"notify-{name}")
                if not self._lanes:  # nothing to deliver to, but still "running until cancelled"
                    await asyncio.Event().wait()
        finally:
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        for lane in self._lanes.values():
            try:
                await lane.notifier.close()
            except Exception:
                log.exception("error closing notifier %s; continuing", lane.notifier.name)

    async def _deliver(self, lane: _Lane) -> None:
        while True:
            if not lane.queue:
                lane.idle.set()
                lane.wake.clear()
                await lane.wake.wait()
                continue
            notice = lane.queue.popleft()
            lane.busy = True
            try:
                await self._attempt(lane, notice)
            finally:
                lane.busy = False
                self.metrics.queued.labels(notifier=lane.notifier.name).set(lane.depth)

    async def _attempt(self, lane: _Lane, notice: Notice) -> None:
        """Delivers one notice, retrying transient failures with backoff for as long as it takes."""
        name = lane.notifier.name
        failures = 0
        while True:
            try:
                await lane.notifier.send(notice)
            except NotifyRejected as exc:
                self.metrics.total.labels(notifier=name, outcome="rejected").inc()
                log.error("notifier %s refused %s for good: %s", name, notice.kind, exc)
                return
            except Exception as exc:
                failures += 1
                self.metrics.total.labels(notifier=name, outcome="failed").inc()
                transient = isinstance(exc, VouchError) and exc.retryable
                if not transient and failures >= UNEXPECTED_ATTEMPTS:
                    self.metrics.total.labels(notifier=name, outcome="rejected").inc()
                    log.error("notifier %s gave up on %s after %d attempts", name, notice.kind, failures, exc_info=exc)
                    return
                delay = self._backoff.delay(failures)
                log.warning(
                    "notifier %s failed on %s (attempt %d), retrying in %.3gs: %s",
                    name,
                    notice.kind,
                    failures,
                    delay,
                    exc,
                    exc_info=exc if not transient else None,
                )
                await asyncio.sleep(delay)
                continue
            self.metrics.total.labels(notifier=name, outcome="sent").inc()
            return
