"""What a notification is, how severe it is, and the contract every notifier keeps.

A :class:`Notice` is the one shape every source of news takes on its way to
people: the engine's events (:func:`notice_from_event`), break-glass overrides,
a pull request's pipeline steps (:func:`pr_notice`). Severity comes from a pure
table of kinds, so routing ("security hears of every override") never depends
on how a message happens to be worded.

>>> from vouch.rollout.state import Event
>>> n = notice_from_event(Event("promotion.rolledback", "slo failed", 10.0, "p-1", "r-1",
...                             {"service": "checkout", "environment": "staging", "version": "2.4.1"}))
>>> (n.severity, n.subject, n.service)
(<Severity.CRITICAL: 'critical'>, 'r-1', 'checkout')
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Protocol, runtime_checkable

from vouch.core.errors import VouchError
from vouch.rollout.state import Event


class Severity(StrEnum):
    """How urgently people must hear of a notice; routes filter on it, full queues drop the lowest first."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}

SEVERITIES: tuple[tuple[str, Severity], ...] = (
    ("promotion.rolledback", Severity.CRITICAL),
    ("promotion.aborting", Severity.CRITICAL),
    ("promotion.denied", Severity.CRITICAL),
    ("verification.denied", Severity.CRITICAL),
    ("release.failed", Severity.CRITICAL),
    ("alarm.*", Severity.CRITICAL),
    ("alert.firing", Severity.CRITICAL),
    ("override.used", Severity.CRITICAL),
    ("override.granted", Severity.WARNING),
    ("override.refused", Severity.WARNING),
    ("override.*", Severity.WARNING),
    ("promotion.paused", Severity.WARNING),
    ("probe.failing", Severity.WARNING),
    ("probe.stale", Severity.WARNING),
    ("probe.absent", Severity.WARNING),
)
"""Kind pattern → severity, first match wins; anything else (steps, analysis runs, successes) is info."""


def severity_of(kind: str) -> Severity:
    """The severity of a notice kind, from :data:`SEVERITIES`.

    >>> severity_of("override.granted"), severity_of("step.analysing")
    (<Severity.WARNING: 'warning'>, <Severity.INFO: 'info'>)
    """
    for pattern, severity in SEVERITIES:
        if fnmatchcase(kind, pattern):
            return severity
    return Severity.INFO


@dataclass(frozen=True)
class Notice:
    """One piece of news for people, as every notifier receives it.

    ``subject`` groups notices into one conversation: a release id (one chat
    thread per release), ``pr:<repository>#<number>`` for a pull request's
    pipeline, or ``None`` for a standalone message.
    """

    kind: str
    severity: Severity
    message: str
    at: float
    actor: str = "vouch"
    subject: str | None = None
    service: str | None = None
    environment: str | None = None
    version: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity.value,
            "message": self.message,
            "at": self.at,
            "actor": self.actor,
            "subject": self.subject,
            "service": self.service,
            "environment": self.environment,
            "version": self.version,
            "data": dict(self.data),
        }


def notice_from_event(event: Event) -> Notice:
    """The notice for an engine (or daemon) event: its release is the subject, its data says where."""
    data = event.data
    return Notice(
        kind=event.kind,
        severity=severity_of(event.kind),
        message=event.message,
        at=event.at,
        actor=str(data.get("actor") or "vouch"),
        subject=event.release_id,
        service=_text(data.get("service")),
        environment=_text(data.get("environment")),
        version=_text(data.get("version")),
        data={**data, "promotion_id": event.promotion_id} if event.promotion_id else dict(data),
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


PR_STATUSES = ("pending", "running", "passed", "failed", "skipped")
"""Statuses of a pull request's pipeline step, as CI reports them."""


def pr_subject(repo: str, number: int) -> str:
    """``pr:<repository>#<number>``, the subject of a pull request's thread.

    >>> pr_subject("acme/checkout", 42)
    'pr:acme/checkout#42'
    """
    return f"pr:{repo}#{number}"


def pr_notice(
    repo: str,
    number: int,
    step: str,
    status: str,
    *,
    url: str | None = None,
    actor: str = "ci",
    message: str | None = None,
    at: float | None = None,
) -> Notice:
    """The notice for one step of a pull request's pipeline, fed by CI (``vouch notify pr``).

    A failed step is a warning; the rest is info. ``status`` must be one of
    :data:`PR_STATUSES` (``ValueError`` otherwise).

    >>> pr_notice("acme/checkout", 42, "build", "passed", at=1.0).subject
    'pr:acme/checkout#42'
    """
    if status not in PR_STATUSES:
        raise ValueError(f"unknown step status {status!r}; known: {', '.join(PR_STATUSES)}")
    return Notice(
        kind="pr.step",
        severity=Severity.WARNING if status == "failed" else Severity.INFO,
        message=message or f"{step} {status}",
        at=time.time() if at is None else at,
        actor=actor,
        subject=pr_subject(repo, number),
        data={"repo": repo, "number": number, "step": step, "status": status, "url": url},
    )


class NotifyError(VouchError):
    """Delivering a notice failed in a way that may pass (network, timeout, 5xx, rate limit): try again."""

    retryable = True


class NotifyRejected(VouchError):
    """The receiver refused the notice for good (bad token, unknown channel): retrying cannot help."""


@runtime_checkable
class Notifier(Protocol):
    """Delivers notices to one destination (a Slack channel, a webhook, the log).

    ``send`` is called for one notice at a time, in order, by the dispatcher's
    task for this notifier; it raises :class:`NotifyError` when trying again
    may help and :class:`NotifyRejected` when it cannot, and must be safe to
    call again with the same notice after a failure. ``close`` releases
    connections; it is called once, at shutdown.
    """

    name: str

    async def send(self, notice: Notice) -> None: ...
    async def close(self) -> None: ...
