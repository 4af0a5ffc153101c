"""Notifications: notices routed to Slack, webhooks and the log, never holding up a rollout.

The one registry of notifier kinds lives here. The daemon builds a
:class:`Dispatcher` from the ``notifications`` settings, runs it in its task
group, and publishes every engine event to it:

    dispatcher = build_dispatcher(config.notifications, store=store, registry=registry)
    group.create_task(dispatcher.run(), name="notify")
    dispatcher.on_event(event)              # from the engine hooks
    dispatcher.publish(pr_notice("acme/checkout", 42, "build", "passed"))

>>> from prometheus_client import CollectorRegistry
>>> spec = NotificationsSpec.model_validate({"notifiers": [{"name": "ops", "kind": "log"}]})
>>> build_dispatcher(spec, store=None, registry=CollectorRegistry()).notifiers
('ops',)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry

from vouch.core.errors import ConfigError, Problem
from vouch.daemon.notify.base import (
    Notice,
    Notifier,
    NotifyError,
    NotifyRejected,
    Severity,
    notice_from_event,
    pr_notice,
    pr_subject,
    severity_of,
)
from vouch.daemon.notify.dispatcher import Backoff, Dispatcher
from vouch.daemon.notify.logger import LogNotifier
from vouch.daemon.notify.settings import (
    NOTIFIER_KINDS,
    LogNotifierSpec,
    NotificationsSpec,
    NotifierSpec,
    RouteSpec,
    SlackNotifierSpec,
    WebhookNotifierSpec,
)
from vouch.daemon.notify.slack import SlackNotifier
from vouch.daemon.notify.webhook import WebhookNotifier
from vouch.rollout.state import Store

__all__ = [
    "NOTIFIER_KINDS",
    "Backoff",
    "Dispatcher",
    "LogNotifierSpec",
    "Notice",
    "NotificationsSpec",
    "Notifier",
    "NotifierSpec",
    "NotifyError",
    "NotifyRejected",
    "RouteSpec",
    "Severity",
    "SlackNotifierSpec",
    "WebhookNotifierSpec",
    "build_dispatcher",
    "build_notifier",
    "build_notifiers",
    "notice_from_event",
    "pr_notice",
    "pr_subject",
    "severity_of",
]


def build_notifier(spec: NotifierSpec, *, store: Store, clock: Callable[[], float] = time.time) -> Notifier:
    """The notifier for one spec, its secrets read now: a missing secret is a ConfigError at start-up."""
    if isinstance(spec, SlackNotifierSpec):
        return SlackNotifier(spec, token=spec.token.reveal(), store=store, clock=clock)
    if isinstance(spec, WebhookNotifierSpec):
        secret = spec.secret.reveal() if spec.secret is not None else None
        return WebhookNotifier(spec, secret=secret, clock=clock)
    if isinstance(spec, LogNotifierSpec):
        return LogNotifier(spec)
    kind = getattr(spec, "kind", None)
    message = f"unknown notifier kind {kind!r}; known kinds: {', '.join(NOTIFIER_KINDS)}"
    raise ConfigError([Problem("<config>", None, "notifications.notifiers", message)])


def build_notifiers(spec: NotificationsSpec, *, store: Store, clock: Callable[[], float] = time.time) -> list[Notifier]:
    """One notifier per configured spec, in order."""
    return [build_notifier(n, store=store, clock=clock) for n in spec.notifiers]


def build_dispatcher(
    spec: NotificationsSpec,
    *,
    store: Store,
    registry: CollectorRegistry,
    always: Sequence[Notifier] = (),
    clock: Callable[[], float] = time.time,
) -> Dispatcher:
    """The dispatcher for the ``notifications`` settings.

    ``always`` are notifiers made by the daemon itself (the audit log, say)
    that receive every notice whatever the routes; their names must not clash
    with configured ones.
    """
    notifiers = [*build_notifiers(spec, store=store, clock=clock), *always]
    names = [n.name for n in notifiers]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        message = f"notifier names clash with built-in ones: {', '.join(clashes)}"
        raise ConfigError([Problem("<config>", None, "notifications.notifiers", message)])
    return Dispatcher(
        notifiers,
        spec.routes,
        registry=registry,
        always=[n.name for n in always],
        queue_size=spec.queue_size,
        backoff=Backoff(spec.retry_initial, max(spec.retry_initial, spec.retry_max)),
    )
