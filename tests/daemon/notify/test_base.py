"""Notices: the severity table, events turned into notices, pull-request notices."""

from __future__ import annotations

import pytest

from vouch.daemon.notify.base import Notice, Severity, notice_from_event, pr_notice, severity_of
from vouch.rollout.state import Event


@pytest.mark.parametrize(
    ("kind", "severity"),
    [
        ("promotion.rolledback", Severity.CRITICAL),
        ("promotion.aborting", Severity.CRITICAL),
        ("promotion.denied", Severity.CRITICAL),
        ("release.failed", Severity.CRITICAL),
        ("override.used", Severity.CRITICAL),
        ("override.granted", Severity.WARNING),
        ("override.refused", Severity.WARNING),
        ("override.expired", Severity.WARNING),
        ("promotion.paused", Severity.WARNING),
        ("probe.failing", Severity.WARNING),
        ("step.analysing", Severity.INFO),
        ("analysis", Severity.INFO),
        ("release.succeeded", Severity.INFO),
        ("promotion.succeeded", Severity.INFO),
        ("probe.recovered", Severity.INFO),
    ],
)
def test_severity_table(kind: str, severity: Severity) -> None:
    assert severity_of(kind) is severity


def test_severities_are_ordered() -> None:
    assert Severity.INFO.rank < Severity.WARNING.rank < Severity.CRITICAL.rank


def test_engine_event_becomes_a_notice_about_its_release() -> None:
    data = {"service": "checkout", "environment": "production", "version": "2.4.1", "step": 2, "steps": 5}
    event = Event("promotion.aborting", "alarm HighErrorRate", 12.5, "p-9", "r-3", data, id=7)
    notice = notice_from_event(event)
    assert notice == Notice(
        "promotion.aborting",
        Severity.CRITICAL,
        "alarm HighErrorRate",
        12.5,
        actor="vouch",
        subject="r-3",
        service="checkout",
        environment="production",
        version="2.4.1",
        data={**data, "promotion_id": "p-9"},
    )


def test_event_outside_any_release_has_no_subject_and_keeps_its_actor() -> None:
    event = Event("override.granted", "slo on checkout/staging", 1.0, data={"service": "checkout", "actor": "ana"})
    notice = notice_from_event(event)
    assert (notice.subject, notice.actor, notice.environment, notice.severity) == (
        None,
        "ana",
        None,
        Severity.WARNING,
    )


def test_pr_notice() -> None:
    notice = pr_notice("acme/checkout", 42, "scan", "failed", url="https://ci/1", actor="ci-bot", at=3.0)
    assert notice.subject == "pr:acme/checkout#42"
    assert notice.severity is Severity.WARNING
    assert notice.kind == "pr.step"
    assert notice.data == {
        "repo": "acme/checkout",
        "number": 42,
        "step": "scan",
        "status": "failed",
        "url": "https://ci/1",
    }
    assert pr_notice("acme/checkout", 42, "build", "passed", at=3.0).severity is Severity.INFO


def test_pr_notice_refuses_an_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown step status 'green'"):
        pr_notice("acme/checkout", 42, "build", "green")


def test_notice_to_dict_is_plain_json_data() -> None:
    notice = pr_notice("acme/checkout", 1, "build", "running", at=2.0)
    assert notice.to_dict()["severity"] == "info"
    assert notice.to_dict()["data"]["step"] == "build"
