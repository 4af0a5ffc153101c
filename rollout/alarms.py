"""Alertmanager's webhook, understood: what fires, and which promotions it concerns.

Alarms are events, not polls: Alertmanager posts its webhook (payload version 4)
to vouch, and an alert whose labels match a promotion aborts it. This module is
the pure half of that: it parses the payload exactly as Alertmanager sends it,
keeps the set of alerts firing right now (:class:`AlertBook`), and decides
whether an alert concerns a promotion (:func:`matches`). No I/O, no clock.

Example::

    book = AlertBook()
    firing, resolved = book.update(parse_webhook(json.loads(body)))
    hits = book.firing_for(service="checkout", environment="staging", version="2.4.1", spec=AlarmSpec())
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from vouch.core.errors import InputError
from vouch.rollout.config import AlarmSpec

AlertStatus = Literal["firing", "resolved"]

_MAX_PROBLEMS = 10
"""Problems named in one error message; a payload with thousands of bad alerts stays readable."""

# --------------------------------------------------------------------------- the payload


def _strings(value: object) -> dict[str, str]:
    """Accept only a JSON object of strings: labels are compared by exact value, never coerced."""
    if not isinstance(value, Mapping):
        raise PydanticCustomError("str_map", "expected an object of strings, got {got}", {"got": _kind(value)})
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise PydanticCustomError(
                "str_map",
                "expected an object of strings ({key} is {got})",
                {"key": json.dumps(str(key)), "got": _kind(item)},
            )
    return dict(value)


def _strings_or_null(value: object) -> dict[str, str]:
    """Like :func:`_strings`, but a Go ``nil`` map (JSON ``null``) is the empty map."""
    return {} if value is None else _strings(value)


def _kind(value: object) -> str:
    """Name a JSON value's type the way the sender thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


Labels = Annotated[dict[str, str], BeforeValidator(_strings)]
OptionalLabels = Annotated[dict[str, str], BeforeValidator(_strings_or_null)]


class _Payload(BaseModel):
    """Alertmanager may add fields in later releases: unknown ones are ignored, never an error."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class WebhookAlert(_Payload):
    """One alert of the webhook, as Alertmanager renders it.

    A firing alert's ``endsAt`` is Go's zero time (``0001-01-01T00:00:00Z``):
    Alertmanager hides an end that has not been reached yet.
    """

    status: AlertStatus
    labels: Labels
    annotations: OptionalLabels = Field(default_factory=dict)
    starts_at: datetime | None = Field(default=None, alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str | None = None


class AlertmanagerWebhook(_Payload):
    """The body of Alertmanager's ``webhook_config`` notification, version 4.

    ``truncated_alerts`` counts alerts left out because of the receiver's
    ``max_alerts``: the ones present are still real, the rest unknown.
    """

    version: Literal["4"]
    group_key: str = Field(default="", alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    status: AlertStatus = "firing"
    receiver: str = ""
    group_labels: OptionalLabels = Field(default_factory=dict, alias="groupLabels")
    common_labels: OptionalLabels = Field(default_factory=dict, alias="commonLabels")
    common_annotations: OptionalLabels = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[WebhookAlert]


def parse_webhook(data: object) -> AlertmanagerWebhook:
    """Validate a decoded webhook body, naming the JSON path of every problem.

    >>> parse_webhook({"version": "4", "alerts": []}).alerts
    []
    """
    try:
        return AlertmanagerWebhook.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        more = len(problems) - _MAX_PROBLEMS
        listed = "; ".join(problems[:_MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        raise InputError(f"not an Alertmanager webhook (version 4): {listed}") from exc


def webhook_for(
    labels: Mapping[str, str],
    *,
    status: Literal["firing", "resolved"] = "firing",
    annotations: Mapping[str, str] | None = None,
    receiver: str = "vouch",
    external_url: str = "http://alertmanager:9093",
) -> dict[str, Any]:
    """One alert as Alertmanager's webhook (version 4) carries it: what :func:`parse_webhook` reads.

    For sending an alarm by hand (``vouch demo``, the benchmarks) exactly as Alertmanager would.

    >>> parse_webhook(webhook_for({"alertname": "Down", "service": "shop"})).alerts[0].status
    'firing'
    """
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    name = labels.get("alertname", "unnamed")
    alert = {
        "status": status,
        "labels": dict(labels),
        "annotations": dict(annotations or {}),
        "startsAt": now,
        "endsAt": now if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint_of(labels),
    }
    return {
        "version": "4",
        "groupKey": json.dumps({"alertname": name}),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": name},
        "commonLabels": dict(labels),
        "commonAnnotations": dict(annotations or {}),
        "externalURL": external_url,
        "alerts": [alert],
    }


def _describe(error: ErrorDetails) -> str:
    """One problem as ``path: what was expected``, with the path written as in JSON."""
    path = _json_path(error["loc"])
    kind = error["type"]
    if kind == "missing":
        what = "required field is missing"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        what = f"expected an object, got {_kind(error['input'])}"
    elif kind == "list_type":
        what = f"expected a list, got {_kind(error['input'])}"
    elif kind == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        what = f"expected {expected}, got {json.dumps(error['input'], default=str)}"
    else:
        what = error["msg"]
    return f"{path}: {what}"


def _json_path(loc: tuple[int | str, ...]) -> str:
    """``("alerts", 0, "labels")`` becomes ``alerts[0].labels``; the empty path is the body itself."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


# --------------------------------------------------------------------------- alerts


@dataclass(frozen=True)
class Alert:
    """One alert as vouch keeps it: times are seconds since the epoch, ``None`` when unknown."""

    status: AlertStatus
    labels: Mapping[str, str] = field(hash=False)
    annotations: Mapping[str, str] = field(hash=False)
    starts_at: float | None
    ends_at: float | None
    fingerprint: str
    generator_url: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname") or "unnamed"

    @property
    def summary(self) -> str:
        """What the alert says about itself, for people: its summary, description or message."""
        for key in ("summary", "description", "message"):
            text = self.annotations.get(key, "").strip()
            if text:
                return text
        return ""

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    @classmethod
    def from_webhook(cls, alert: WebhookAlert) -> Alert:
        return cls(
            status=alert.status,
            labels=dict(alert.labels),
            annotations=dict(alert.annotations),
            starts_at=_epoch(alert.starts_at),
            ends_at=_epoch(alert.ends_at),
            fingerprint=alert.fingerprint or fingerprint_of(alert.labels),
            generator_url=alert.generator_url,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "name": self.name,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "fingerprint": self.fingerprint,
            "generator_url": self.generator_url,
        }


def fingerprint_of(labels: Mapping[str, str]) -> str:
    """A stable identity for a label set, for senders that leave ``fingerprint`` out.

    It differs from Alertmanager's own hash; it only has to agree with itself.
    """
    canonical = json.dumps(sorted(labels.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _epoch(moment: datetime | None) -> float | None:
    """Seconds since the epoch; Go's zero time (year 1) means "not set" and becomes ``None``."""
    if moment is None or moment.year <= 1:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def alerts_of(webhook: AlertmanagerWebhook) -> list[Alert]:
    """The webhook's alerts, in the order Alertmanager sent them."""
    return [Alert.from_webhook(alert) for alert in webhook.alerts]


# --------------------------------------------------------------------------- matching


def matches(alert_labels: Mapping[str, str], *, service: str, environment: str, version: str, spec: AlarmSpec) -> bool:
    """Whether an alert with these labels concerns this promotion.

    Every label named in ``spec.match_labels`` must be on the alert with the
    promotion's own value, and every ``spec.matchers`` pair must be present as
    given. A missing label never matches.

    >>> matches({"service": "checkout", "environment": "staging"},
    ...         service="checkout", environment="staging", version="2.4.1", spec=AlarmSpec())
    True
    """
    own = {"service": service, "environment": environment, "version": version}
    for label in spec.match_labels:
        expected = own.get(label)
        if expected is None or alert_labels.get(label) != expected:
            return False
    return all(alert_labels.get(key) == value for key, value in spec.matchers.items())


# --------------------------------------------------------------------------- the book


class AlertBook:
    """The alerts firing right now, by fingerprint, as told by Alertmanager's webhooks.

    Webhooks can arrive out of order (retries, several Alertmanagers), so a
    notification never overrides a newer one about the same fingerprint: a
    resolve of an older firing (earlier ``startsAt``) leaves a newer firing in
    place, and a late firing of an instance already resolved is ignored.
    ``remember_resolved`` bounds how many resolved fingerprints are kept for
    that second check.
    """

    def __init__(self, *, remember_resolved: int = 10_000) -> None:
        self._firing: dict[str, Alert] = {}
        # fingerprint -> startsAt of the last instance seen resolved, oldest first
        self._resolved: dict[str, float | None] = {}
        self._remember = remember_resolved

    def update(self, webhook: AlertmanagerWebhook) -> tuple[list[Alert], list[Alert]]:
        """Apply one webhook; return the alerts it reports (newly or still firing, resolved).

        Notifications found stale (older than what the book already knows) are
        left out of both lists.
        """
        firing: list[Alert] = []
        resolved: list[Alert] = []
        for alert in alerts_of(webhook):
            if alert.firing:
                if self._fire(alert):
                    firing.append(alert)
            elif self._resolve(alert):
                resolved.append(alert)
        return firing, resolved

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Replay alerts as recorded, oldest first: after a restart the book knows what still fires.

        Without it, an alert that fired before a restart would go unnoticed by
        the alarms gate until Alertmanager repeats it (``repeat_interval``).
        """
        for alert in alerts:
            if alert.firing:
                self._fire(alert)
            else:
                self._resolve(alert)

    def firing(self) -> list[Alert]:
        """Every alert firing now, by name then fingerprint."""
        return sorted(self._firing.values(), key=lambda a: (a.name, a.fingerprint))

    def firing_for(self, *, service: str, environment: str, version: str, spec: AlarmSpec) -> list[Alert]:
        """The firing alerts that concern this promotion (see :func:`matches`)."""
        return [
            alert
            for alert in self.firing()
            if matches(alert.labels, service=service, environment=environment, version=version, spec=spec)
        ]

    def __len__(self) -> int:
        return len(self._firing)

    def _fire(self, alert: Alert) -> bool:
        fp = alert.fingerprint
        if fp in self._resolved and _at_or_before(alert.starts_at, self._resolved[fp]):
            return False  # this instance (or an older one) was already resolved
        current = self._firing.get(fp)
        if current is not None and _before(alert.starts_at, current.starts_at):
            return False  # a newer instance is already firing
        self._firing[fp] = alert
        self._resolved.pop(fp, None)
        return True

    def _resolve(self, alert: Alert) -> bool:
        fp = alert.fingerprint
        current = self._firing.get(fp)
        mark = alert.starts_at if alert.starts_at is not None else alert.ends_at
        if current is not None and _before(mark, current.starts_at):
            return False  # resolves an older instance; the newer one still fires
        self._firing.pop(fp, None)
        self._resolved.pop(fp, None)
        self._resolved[fp] = alert.starts_at
        _trim(self._resolved, self._remember)
        return True


def _before(a: float | None, b: float | None) -> bool:
    """``a < b`` when both are known; unknown times never make a notification stale."""
    return a is not None and b is not None and a < b


def _at_or_before(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a <= b


def _trim(entries: dict[str, float | None], keep: int) -> None:
    """Drop the oldest entries beyond ``keep`` (dicts keep insertion order)."""
    excess = len(entries) - max(keep, 0)
    if excess > 0:
        for key in list(entries)[:excess]:
            del entries[key]
