"""The ``notifications`` section: named notifiers, and routes that say which notices go to which.

    notifications:
      notifiers:
        - {name: team, kind: slack, channel: "#checkout", token: {from_env: SLACK_BOT_TOKEN}}
        - {name: security, kind: slack, channel: "#security", token: {from_env: SLACK_BOT_TOKEN}}
        - {name: oncall, kind: webhook, url: "https://pager.example/hook", secret: {from_env: PAGER_HMAC}}
      routes:
        - {kinds: ["override.*", "promotion.denied"], to: [security, oncall]}
        - {services: [checkout], to: [team]}

A route naming a notifier that does not exist is a configuration error naming it.

>>> spec = NotificationsSpec.model_validate({
...     "notifiers": [{"name": "ops", "kind": "log"}],
...     "routes": [{"min_severity": "warning", "to": ["ops"]}]})
>>> spec.routes[0].min_severity
<Severity.WARNING: 'warning'>
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from vouch.core.durations import Duration
from vouch.core.settings import Model
from vouch.daemon.notify.base import Severity
from vouch.probes.settings import Secret
from vouch.rollout.config import NAME_PATTERN

NotifierName = Annotated[str, Field(pattern=NAME_PATTERN)]


class SlackNotifierSpec(Model):
    """A Slack channel: one message per release, updated in place, its steps threaded under it."""

    kind: Literal["slack"] = "slack"
    name: NotifierName
    """How routes refer to this notifier; also keys its threads in the store, so keep it stable."""
    channel: str
    """Channel name (``#checkout``) or id (``C0123ABCD``) to post in; the bot must be a member."""
    token: Secret
    """The bot token (``xoxb-…``), from the environment or a file."""
    base_url: str = "https://slack.com/api/"
    """Slack Web API root; change it only for a proxy or a test server."""
    timeout: Duration = 10.0
    """Longest wait for one API call; a call that takes longer is retried later."""
    rate_limit_retries: int = Field(default=3, ge=0, le=20)
    """How many times one call waits out a 429's ``Retry-After`` before the notice goes back to the retry queue."""


class WebhookNotifierSpec(Model):
    """An HTTP endpoint receiving each notice as JSON, signed with HMAC-SHA256 when a secret is set."""

    kind: Literal["webhook"] = "webhook"
    name: NotifierName
    """How routes refer to this notifier."""
    url: str = Field(pattern=r"^https?://")
    """Where each notice is POSTed."""
    secret: Secret | None = None
    """Shared key for ``X-Vouch-Signature: sha256=HMAC(secret, timestamp + "." + body)``; unsigned when absent."""
    timeout: Duration = 10.0
    """Longest wait for one request; a request that takes longer is retried later."""


class LogNotifierSpec(Model):
    """The daemon's own log, at a level from the notice's severity."""

    kind: Literal["log"] = "log"
    name: NotifierName
    """How routes refer to this notifier."""
    logger: str = "vouch.notify"
    """Logger name the notices are written to."""


NotifierSpec = Annotated[SlackNotifierSpec | WebhookNotifierSpec | LogNotifierSpec, Field(discriminator="kind")]

NOTIFIER_KINDS = ("slack", "webhook", "log")


class RouteSpec(Model):
    """Which notices go to which notifiers. Every condition given must hold; an empty list matches anything."""

    kinds: list[str] = Field(default_factory=list)
    """Notice kinds, as globs (``override.*``, ``promotion.denied``)."""
    min_severity: Severity = Severity.INFO
    """Only notices at least this severe: ``info``, ``warning`` or ``critical``."""
    services: list[str] = Field(default_factory=list)
    """Only notices about these services (a notice about no service never matches a list)."""
    environments: list[str] = Field(default_factory=list)
    """Only notices about these environments."""
    to: list[NotifierName] = Field(min_length=1)
    """Names of the notifiers that receive the matching notices."""


class NotificationsSpec(Model):
    """Notifiers and routes. With no routes, every notifier receives every notice."""

    notifiers: list[NotifierSpec] = Field(default_factory=list)
    """The destinations, each with a unique name."""
    routes: list[RouteSpec] = Field(default_factory=list)
    """A notice goes to the notifiers of every route it matches, each once."""
    queue_size: int = Field(default=1000, ge=1)
    """Notices waiting per notifier; when full the oldest info (then warning) notice is dropped, never a critical."""
    retry_initial: Duration = 1.0
    """First wait before retrying a failed delivery; it doubles on each failure."""
    retry_max: Duration = 60.0
    """Longest wait between retries: a receiver back from an outage hears within this."""

    @field_validator("notifiers")
    @classmethod
    def _unique_names(cls, notifiers: list[NotifierSpec]) -> list[NotifierSpec]:
        names = [n.name for n in notifiers]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"notifier names must be unique; repeated: {', '.join(twice)}")
        return notifiers

    @field_validator("routes")
    @classmethod
    def _known_names(cls, routes: list[RouteSpec], info: ValidationInfo) -> list[RouteSpec]:
        notifiers = info.data.get("notifiers")
        if notifiers is None:  # the notifiers are invalid and reported already
            return routes
        known = {n.name for n in notifiers}
        unknown = sorted({name for r in routes for name in r.to if name not in known})
        if unknown:
            raise ValueError(
                f"routes name unknown notifiers: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known)) if known else '(none configured)'}"
            )
        return routes
