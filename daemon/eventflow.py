"""Where every event goes once it is on record: the log, the audit log, and the notifiers.

Events come from the engine (transitions, steps, break-glass use), from the controller (grants),
from the overrides folder and from the probes. Each is already in the store when it arrives
here; this fans it out. Nothing here blocks or raises: the audit log and the dispatcher queue
what they are given and write or send it from their own tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from vouch.daemon.notify.base import Notice
from vouch.rollout.state import Event

log = logging.getLogger("vouch.daemon")


class Audit(Protocol):
    """What is asked of the audit log (``AuditLog`` provides it)."""

    def record(
        self,
        kind: str,
        *,
        actor: str,
        data: Mapping[str, Any] | None = None,
        service: str | None = None,
        environment: str | None = None,
        version: str | None = None,
        promotion_id: str | None = None,
        release_id: str | None = None,
    ) -> None: ...


class Publisher(Protocol):
    """What is asked of the notification dispatcher."""

    def on_event(self, event: Event) -> None: ...

    def publish(self, notice: Notice) -> tuple[str, ...]: ...


class EventFlow:
    """Fans each recorded event out; ``audit`` and ``publisher`` are optional (None: not configured)."""

    def __init__(self, *, audit: Audit | None = None, publisher: Publisher | None = None) -> None:
        self._audit = audit
        self._publisher = publisher

    def __call__(self, event: Event) -> None:
        data = event.data
        where = f"{data.get('service') or ''}/{data.get('environment') or ''}".strip("/")
        level = logging.WARNING if event.kind.startswith("override.") else logging.INFO
        log.log(level, "%s %s: %s", event.kind, where or event.release_id or "-", event.message)
        if self._audit is not None:
            self._audit.record(
                event.kind,
                actor=str(data.get("actor") or "vouch"),
                data={"message": event.message, "event_id": event.id, **data},
                service=_text(data.get("service")),
                environment=_text(data.get("environment")),
                version=_text(data.get("version")),
                promotion_id=event.promotion_id,
                release_id=event.release_id,
            )
        if self._publisher is not None:
            self._publisher.on_event(event)

    def notify(self, notice: Notice) -> tuple[str, ...]:
        """A notice that is not an engine event (a pull request's pipeline step): audit it, then publish it.

        Returns the notifiers it was queued for."""
        log.info("%s %s: %s", notice.kind, notice.subject or "-", notice.message)
        if self._audit is not None:
            self._audit.record(notice.kind, actor=notice.actor, data={"message": notice.message, **notice.data})
        return self._publisher.publish(notice) if self._publisher is not None else ()


def _text(value: object) -> str | None:
    return None if value is None else str(value)
