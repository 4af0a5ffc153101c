"""The ``alarms`` gate: FAIL while an alert about the promotion fires, PASS otherwise."""

from __future__ import annotations

from typing import Any

from vouch.rollout.alarms import AlertBook, parse_webhook
from vouch.rollout.config import AlarmSpec
from vouch.rollout.gates.alarms import AlarmGate
from vouch.rollout.gates.base import Gate
from vouch.rollout.model import GateContext, GatePhase, Measurement, Observed, Target

STARTS = "2026-01-01T10:00:00Z"


def context(*, service: str = "checkout", environment: str = "staging", version: str = "2.4.1") -> GateContext:
    return GateContext(
        promotion_id="p-1",
        target=Target(service, environment),
        canary_version=version,
        stable_version="2.4.0",
        step_index=0,
        step_started_at=1_000.0,
        now=1_060.0,
        observed=Observed("2.4.0", version, 4, 4, 1, 1),
    )


def firing(fingerprint: str, summary: str | None = None, **labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"service": "checkout", "environment": "staging", **labels},
        "annotations": {} if summary is None else {"summary": summary},
        "startsAt": STARTS,
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }


def book_with(*alerts: dict[str, Any]) -> AlertBook:
    book = AlertBook()
    book.update(parse_webhook({"version": "4", "status": "firing", "alerts": list(alerts)}))
    return book


def test_is_a_gate() -> None:
    gate = AlarmGate(AlertBook(), AlarmSpec())
    assert isinstance(gate, Gate)
    assert gate.name == "alarms"
    assert AlarmGate(AlertBook(), AlarmSpec(), name="prod-alarms").name == "prod-alarms"


async def test_passes_with_no_alert_firing() -> None:
    verdict = await AlarmGate(AlertBook(), AlarmSpec()).evaluate(context())
    assert verdict.phase is GatePhase.PASS
    assert verdict.reasons == ("no alert firing for checkout/staging",)
    assert verdict.measurements == (Measurement("firing alerts", 0, threshold="== 0"),)
    assert not verdict.errored


async def test_passes_while_only_other_promotions_alerts_fire() -> None:
    book = book_with(
        firing("a", "down", alertname="HighErrorRate", environment="production"),
        firing("b", "down", alertname="HighErrorRate", service="cart"),
    )
    verdict = await AlarmGate(book, AlarmSpec()).evaluate(context())
    assert verdict.phase is GatePhase.PASS
    assert verdict.measurements[0].value == 0


async def test_fails_with_one_reason_per_matching_alert() -> None:
    book = book_with(
        firing("a", "canary error ratio above 10%", alertname="HighErrorRate"),
        firing("b", None, alertname="LatencyP99"),
        firing("c", "elsewhere", alertname="HighErrorRate", environment="production"),
    )
    verdict = await AlarmGate(book, AlarmSpec()).evaluate(context())
    assert verdict.phase is GatePhase.FAIL
    assert verdict.reasons == (
        "alert HighErrorRate is firing for checkout/staging: canary error ratio above 10%",
        "alert LatencyP99 is firing for checkout/staging",
    )
    assert verdict.measurements[0].value == 2
    assert not verdict.errored


async def test_version_matching_spares_other_versions() -> None:
    spec = AlarmSpec(match_labels=["service", "environment", "version"])
    book = book_with(firing("a", "broken", alertname="Crashloop", version="2.4.1"))
    failed = await AlarmGate(book, spec).evaluate(context(version="2.4.1"))
    passed = await AlarmGate(book, spec).evaluate(context(version="2.5.0"))
    assert failed.phase is GatePhase.FAIL
    assert failed.reasons == ("alert Crashloop is firing for checkout/staging: broken",)
    assert passed.phase is GatePhase.PASS


async def test_passes_again_once_the_alert_resolves() -> None:
    book = book_with(firing("a", "broken", alertname="Crashloop"))
    gate = AlarmGate(book, AlarmSpec(matchers={"alertname": "Crashloop"}))
    assert (await gate.evaluate(context())).phase is GatePhase.FAIL
    resolved = {**firing("a", "broken", alertname="Crashloop"), "status": "resolved"}
    resolved["endsAt"] = "2026-01-01T10:05:00Z"
    book.update(parse_webhook({"version": "4", "status": "resolved", "alerts": [resolved]}))
    assert (await gate.evaluate(context())).phase is GatePhase.PASS
