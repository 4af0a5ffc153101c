"""The routing table: who hears of what."""

from __future__ import annotations

import pytest
from support.notify_fakes import notice

from vouch.daemon.notify.base import Severity
from vouch.daemon.notify.routing import destinations, route_matches
from vouch.daemon.notify.settings import RouteSpec

NOTIFIERS = ("team", "payments", "security", "oncall", "ops")
ROUTES = [
    RouteSpec(kinds=["override.*", "promotion.denied"], to=["security", "oncall"]),
    RouteSpec(services=["checkout"], to=["team"]),
    RouteSpec(services=["payments"], environments=["production"], to=["payments"]),
    RouteSpec(min_severity=Severity.CRITICAL, to=["oncall", "ops"]),
]


@pytest.mark.parametrize(
    ("kind", "service", "environment", "expected"),
    [
        ("override.used", "checkout", "staging", ("security", "oncall", "team", "ops")),
        ("override.granted", "checkout", "staging", ("security", "oncall", "team")),
        ("promotion.denied", "payments", "staging", ("security", "oncall", "ops")),
        ("step.analysing", "checkout", "production", ("team",)),
        ("step.analysing", "payments", "production", ("payments",)),
        ("step.analysing", "payments", "staging", ()),
        ("promotion.rolledback", "payments", "production", ("payments", "oncall", "ops")),
        ("probe.failing", None, None, ()),
        ("release.failed", None, None, ("oncall", "ops")),
    ],
)
def test_routing_table(kind: str, service: str | None, environment: str | None, expected: tuple[str, ...]) -> None:
    n = notice(kind, service=service, environment=environment)
    assert destinations(n, ROUTES, notifiers=NOTIFIERS) == expected


def test_kinds_are_globs_matched_whole() -> None:
    route = RouteSpec(kinds=["override.*"], to=["security"])
    assert route_matches(route, notice("override.used"))
    assert not route_matches(route, notice("promotion.override"))
    assert not route_matches(route, notice("override"))


def test_min_severity_lets_more_severe_through() -> None:
    route = RouteSpec(min_severity=Severity.WARNING, to=["ops"])
    assert route_matches(route, notice("promotion.paused"))
    assert route_matches(route, notice("promotion.rolledback"))
    assert not route_matches(route, notice("step.settling"))


def test_a_notice_about_no_service_never_matches_a_service_list() -> None:
    assert not route_matches(RouteSpec(services=["checkout"], to=["team"]), notice("probe.failing", service=None))


def test_without_routes_everyone_hears_everything() -> None:
    assert destinations(notice("analysis"), [], notifiers=NOTIFIERS) == NOTIFIERS


def test_always_receivers_come_first_and_once() -> None:
    got = destinations(notice("override.used"), ROUTES, notifiers=NOTIFIERS, always=["audit", "ops"])
    assert got == ("audit", "ops", "security", "oncall", "team")
