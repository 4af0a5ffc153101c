"""The notifications section: the documented example, secrets, and routes naming unknown notifiers."""

from __future__ import annotations

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from vouch.core.errors import ConfigError
from vouch.daemon.notify import build_dispatcher, build_notifiers
from vouch.daemon.notify.settings import NotificationsSpec, SlackNotifierSpec, WebhookNotifierSpec

EXAMPLE = """
notifiers:
  - {name: team, kind: slack, channel: "#checkout", token: {from_env: SLACK_BOT_TOKEN}}
  - {name: security, kind: slack, channel: "#security", token: {from_env: SLACK_BOT_TOKEN}}
  - {name: oncall, kind: webhook, url: "https://pager.example/hook", secret: {from_env: PAGER_HMAC}}
  - {name: ops, kind: log}
routes:
  - {kinds: ["override.*", "promotion.denied"], to: [security, oncall]}
  - {services: [checkout], to: [team]}
"""


def test_the_documented_example_parses() -> None:
    spec = NotificationsSpec.model_validate(yaml.safe_load(EXAMPLE))
    team, _, oncall, ops = spec.notifiers
    assert isinstance(team, SlackNotifierSpec)
    assert team.channel == "#checkout"
    assert team.base_url == "https://slack.com/api/"
    assert isinstance(oncall, WebhookNotifierSpec)
    assert oncall.secret is not None
    assert ops.kind == "log"
    assert spec.routes[0].to == ["security", "oncall"]


def test_routes_naming_unknown_notifiers_are_an_error_naming_them() -> None:
    doc = yaml.safe_load(EXAMPLE)
    doc["routes"].append({"kinds": ["release.*"], "to": ["pager", "team", "audit"]})
    with pytest.raises(ValidationError) as caught:
        NotificationsSpec.model_validate(doc)
    (error,) = caught.value.errors()
    assert error["loc"] == ("routes",)
    assert "unknown notifiers: audit, pager" in error["msg"]
    assert "known: oncall, ops, security, team" in error["msg"]


def test_notifier_names_are_unique() -> None:
    doc = {"notifiers": [{"name": "ops", "kind": "log"}, {"name": "ops", "kind": "log", "logger": "x"}]}
    with pytest.raises(ValidationError, match="repeated: ops"):
        NotificationsSpec.model_validate(doc)


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="'slack', 'webhook', 'log'"):
        NotificationsSpec.model_validate({"notifiers": [{"name": "x", "kind": "teams"}]})


def test_a_route_needs_somewhere_to_go() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        NotificationsSpec.model_validate({"routes": [{"kinds": ["*"], "to": []}]})


def test_secrets_are_read_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = NotificationsSpec.model_validate(yaml.safe_load(EXAMPLE))
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.setenv("PAGER_HMAC", "k")
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN"):
        build_notifiers(spec, store=None)  # type: ignore[arg-type]
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    assert [n.name for n in build_notifiers(spec, store=None)] == ["team", "security", "oncall", "ops"]  # type: ignore[arg-type]


def test_dispatcher_settings_come_from_the_spec() -> None:
    spec = NotificationsSpec.model_validate(
        {"notifiers": [{"name": "ops", "kind": "log"}], "queue_size": 5, "retry_initial": "250ms", "retry_max": "2s"}
    )
    registry = CollectorRegistry()
    dispatcher = build_dispatcher(spec, store=None, registry=registry)  # type: ignore[arg-type]
    assert dispatcher.notifiers == ("ops",)
    assert registry.get_sample_value("vouch_notification_queue", {"notifier": "ops"}) == 0
