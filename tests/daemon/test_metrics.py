"""The daemon's own metrics, read back from the registry they were given."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.api_fakes import NOW, make_promotion

from vouch.daemon.metrics import DaemonMetrics, cause_class
from vouch.rollout.model import GatePhase, Verdict
from vouch.rollout.state import Abort, AlertRecord, Phase, Promotion, StepRecord


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> DaemonMetrics:
    return DaemonMetrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else float(found)


def promotion(pid: str = "p1", environment: str = "staging", **changes: object) -> Promotion:
    base = make_promotion(pid, release_id="r1", service="checkout", environment=environment, version="2")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_every_phase_is_exported_from_the_start(registry: CollectorRegistry, metrics: DaemonMetrics) -> None:
    text = generate_latest(registry).decode()
    for phase in Phase:
        assert f'vouch_promotions{{phase="{phase.value}"}} 0.0' in text


def test_reset_counts_then_transitions_move_counts(registry: CollectorRegistry, metrics: DaemonMetrics) -> None:
    metrics.reset(
        [
            promotion("a", phase=Phase.PROGRESSING),
            promotion("b", phase=Phase.PROGRESSING),
            promotion("c", phase=Phase.SUCCEEDED),
        ]
    )
    assert value(registry, "vouch_promotions", phase="Progressing") == 2
    assert value(registry, "vouch_promotions", phase="Succeeded") == 1
    new = promotion("d")
    metrics.transition(None, new)
    assert value(registry, "vouch_promotions", phase="Pending") == 1
    verifying = dataclasses.replace(new, phase=Phase.VERIFYING)
    metrics.transition(new, verifying)
    metrics.transition(verifying, verifying)  # a write without a phase change moves nothing
    assert value(registry, "vouch_promotions", phase="Pending") == 0
    assert value(registry, "vouch_promotions", phase="Verifying") == 1
    metrics.reset([])
    assert value(registry, "vouch_promotions", phase="Progressing") == 0
    assert value(registry, "vouch_promotions", phase="Verifying") == 0


def test_counts_never_go_negative(registry: CollectorRegistry, metrics: DaemonMetrics) -> None:
    before = promotion(phase=Phase.PAUSED)
    metrics.transition(before, dataclasses.replace(before, phase=Phase.PROGRESSING))
    assert value(registry, "vouch_promotions", phase="Paused") == 0
    assert value(registry, "vouch_promotions", phase="Progressing") == 1


def test_a_success_observes_the_promotion_duration_once(registry: CollectorRegistry, metrics: DaemonMetrics) -> None:
    promoting = promotion(phase=Phase.PROMOTING, created_at=NOW)
    done = dataclasses.replace(promoting, phase=Phase.SUCCEEDED, finished_at=NOW + 120, updated_at=NOW + 120)
    metrics.transition(promoting, done)
    metrics.transition(done, done)
    labels = {"environment": "staging", "phase": "Succeeded"}
    assert value(registry, "vouch_promotion_duration_seconds_count", **labels) == 1
    assert value(registry, "vouch_promotion_duration_seconds_sum", **labels) == 120
    assert value(registry, "vouch_rollbacks_total", cause="gate") == 0


@pytest.mark.parametrize(
    ("cause", "label"),
    [
        ("gate:slo", "gate"),
        ("alarm:HighErrorRate", "alarm"),
        ("deadline:Progressing", "deadline"),
        ("user", "user"),
        ("platform", "platform"),
        ("something:new", "other"),
    ],
)
def test_a_rollback_is_counted_by_class_of_cause(
    registry: CollectorRegistry, metrics: DaemonMetrics, cause: str, label: str
) -> None:
    aborting = promotion(phase=Phase.ABORTING, abort=Abort(cause=cause, reason="r", requested_at=NOW + 10))
    rolled_back = dataclasses.replace(aborting, phase=Phase.ROLLED_BACK, finished_at=NOW + 30)
    metrics.transition(aborting, rolled_back)
    metrics.transition(rolled_back, rolled_back)
    assert value(registry, "vouch_rollbacks_total", cause=label) == 1
    assert value(registry, "vouch_promotion_duration_seconds_count", environment="staging", phase="RolledBack") == 1
    assert cause_class(cause) == label


def test_alarm_to_rollback_is_timed_when_the_canary_stops(registry: CollectorRegistry, metrics: DaemonMetrics) -> None:
    alarm = Abort(cause="alarm:HighErrorRate", reason="firing", requested_at=NOW + 100)
    aborting = promotion(phase=Phase.ABORTING, abort=alarm)
    stopped = dataclasses.replace(aborting, canary_stopped_at=NOW + 100.75)
    metrics.transition(aborting, stopped)
    metrics.transition(stopped, dataclasses.replace(stopped, phase=Phase.ROLLED_BACK))
    assert value(registry, "vouch_alarm_to_rollback_seconds_count") == 1
    assert value(registry, "vouch_alarm_to_rollback_seconds_sum") == pytest.approx(0.75)
    gate = Abort(cause="gate:slo", reason="failed", requested_at=NOW)
    other = promotion("p2", phase=Phase.ABORTING, abort=gate)
    metrics.transition(other, dataclasses.replace(other, canary_stopped_at=NOW + 1))
    assert value(registry, "vouch_alarm_to_rollback_seconds_count") == 1


def test_step_durations(registry: CollectorRegistry, metrics: DaemonMetrics) -> None:
    running = StepRecord("p1", 0, "1", canary_replicas=1, stable_replicas=3, started_at=NOW)
    metrics.step_finished(running, environment="staging")
    assert value(registry, "vouch_step_duration_seconds_count", environment="staging") == 0
    metrics.step_finished(dataclasses.replace(running, completed_at=NOW + 45), environment="staging")
    assert value(registry, "vouch_step_duration_seconds_count", environment="staging") == 1
    assert value(registry, "vouch_step_duration_seconds_sum", environment="staging") == 45


def test_verdicts_are_counted_by_gate_and_phase(registry: CollectorRegistry, metrics: DaemonMetrics) -> None:
    metrics.verdicts(
        [Verdict("slo", GatePhase.PASS), Verdict("alarms", GatePhase.FAIL), Verdict("slo", GatePhase.PASS)]
    )
    assert value(registry, "vouch_verdicts_total", gate="slo", phase="Pass") == 2
    assert value(registry, "vouch_verdicts_total", gate="alarms", phase="Fail") == 1
    assert value(registry, "vouch_verdicts_total", gate="slo", phase="Fail") == 0


def test_alerts_are_counted_by_status_and_match(registry: CollectorRegistry, metrics: DaemonMetrics) -> None:
    def alert(status: str, matched: tuple[str, ...]) -> AlertRecord:
        return AlertRecord(NOW, status, {}, {}, "f", matched)

    metrics.alert(alert("firing", ("p1",)))
    metrics.alert(alert("firing", ()))
    metrics.alert(alert("resolved", ()))
    metrics.alert(alert("weird", ()))
    assert value(registry, "vouch_alerts_received_total", status="firing", matched="true") == 1
    assert value(registry, "vouch_alerts_received_total", status="firing", matched="false") == 1
    assert value(registry, "vouch_alerts_received_total", status="resolved", matched="false") == 1
    assert value(registry, "vouch_alerts_received_total", status="other", matched="false") == 1


def test_two_instances_in_two_registries_do_not_clash() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    DaemonMetrics(first).verdicts([Verdict("slo", GatePhase.PASS)])
    DaemonMetrics(second)
    assert value(first, "vouch_verdicts_total", gate="slo", phase="Pass") == 1
    assert value(second, "vouch_verdicts_total", gate="slo", phase="Pass") == 0
