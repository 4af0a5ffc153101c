"""Probe metrics, read back from the registry they were given and from its text exposition."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vouch.probes.base import PHASES, ProbeResult, Reason
from vouch.probes.failing import FailingState
from vouch.probes.metrics import LABELS, ProbeMetrics
from vouch.probes.scheduler import ProbeRun
from vouch.probes.settings import FailingPolicy

WEB = {"probe": "web", "kind": "http", "target": "https://shop.test/", "service": "shop", "environment": "prod"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ProbeMetrics:
    return ProbeMetrics(registry)


def run(
    key: str = "web",
    *,
    labels: Mapping[str, str] = WEB,
    success: bool = True,
    state: FailingState | None = None,
    lateness: float = 0.002,
    **result: object,
) -> ProbeRun:
    fields: dict[str, object] = {
        "probe": labels["probe"],
        "kind": labels["kind"],
        "target": labels["target"],
        "success": success,
        "started_at": 1_700_000_000.0,
        "duration": 0.125,
        "reason": None if success else Reason.HTTP_STATUS,
    }
    fields.update(result)
    return ProbeRun(
        key=key,
        result=ProbeResult(**fields),  # type: ignore[arg-type]
        scheduled_at=50.0,
        started_at=50.0 + lateness,
        lateness=lateness,
        state=state or FailingState(),
        labels=labels,
        interval=60.0,
        completed_at=1_700_000_000.2,
    )


def value(registry: CollectorRegistry, name: str, labels: Mapping[str, str] = WEB, **extra: str) -> float | None:
    found = registry.get_sample_value(name, {**labels, **extra})
    return None if found is None else float(found)


def series_of(registry: CollectorRegistry, probe: str) -> list[str]:
    return [
        sample.name for family in registry.collect() for sample in family.samples if sample.labels.get("probe") == probe
    ]


def test_a_success(registry: CollectorRegistry, metrics: ProbeMetrics) -> None:
    metrics.observe(run(status_code=200, phases={"connect": 0.01, "processing": 0.05}))
    assert value(registry, "probe_success") == 1
    assert value(registry, "probe_duration_seconds") == 0.125
    assert value(registry, "probe_runs_total") == 1
    assert value(registry, "probe_last_run_timestamp_seconds") == 1_700_000_000.2
    assert value(registry, "probe_interval_seconds") == 60
    assert value(registry, "probe_consecutive_failures") == 0
    assert value(registry, "probe_failing") == 0
    assert value(registry, "probe_lateness_seconds_count") == 1
    assert value(registry, "probe_lateness_seconds_bucket", le="0.01") == 1
    assert value(registry, "probe_http_status_code") == 200
    assert value(registry, "probe_http_duration_seconds", phase="connect") == 0.01
    assert value(registry, "probe_http_duration_seconds", phase="tls") == 0  # every phase, as blackbox_exporter
    assert value(registry, "probe_failure_reason_info", reason="http_status") is None
    assert value(registry, "probe_ssl_earliest_cert_expiry") is None


def test_failures_count_by_reason_and_the_current_reason_is_the_only_one(
    registry: CollectorRegistry, metrics: ProbeMetrics
) -> None:
    policy = FailingPolicy(consecutive=2)
    state = FailingState().update(False, policy)
    metrics.observe(run(success=False, state=state, status_code=503))
    state = state.update(False, policy)
    metrics.observe(run(success=False, state=state, reason=Reason.TIMEOUT))
    assert value(registry, "probe_success") == 0
    assert value(registry, "probe_failures_total", reason="http_status") == 1
    assert value(registry, "probe_failures_total", reason="timeout") == 1
    assert value(registry, "probe_failure_reason_info", reason="timeout") == 1
    assert value(registry, "probe_failure_reason_info", reason="http_status") is None
    assert value(registry, "probe_consecutive_failures") == 2
    assert value(registry, "probe_failing") == 1
    assert value(registry, "probe_http_status_code") == 0  # no answer this time

    metrics.observe(run(state=state.update(True, policy)))
    assert value(registry, "probe_failure_reason_info", reason="timeout") is None
    assert value(registry, "probe_failures_total", reason="timeout") == 1
    assert value(registry, "probe_runs_total") == 3
    assert value(registry, "probe_failing") == 0


def test_non_http_kinds_export_no_http_series_and_keep_the_certificate_expiry(
    registry: CollectorRegistry, metrics: ProbeMetrics
) -> None:
    tls = {"probe": "cert", "kind": "tls", "target": "shop.test:443"}
    metrics.observe(run("cert", labels=tls, tls_expiry=1_800_000_000.0))
    metrics.observe(run("cert", labels=tls, success=False, reason=Reason.CONNECT_REFUSED))
    labels = {**tls, "service": "", "environment": ""}  # unset labels are exported empty
    assert value(registry, "probe_success", labels) == 0
    assert value(registry, "probe_ssl_earliest_cert_expiry", labels) == 1_800_000_000.0
    assert not [name for name in series_of(registry, "cert") if name.startswith("probe_http_")]


def test_forget_removes_every_series_of_the_key_and_only_those(
    registry: CollectorRegistry, metrics: ProbeMetrics
) -> None:
    other = {**WEB, "probe": "other", "target": "https://other.test/"}
    metrics.observe(run(success=False, status_code=500, tls_expiry=1.9e9, phases={"tls": 0.02}))
    metrics.observe(run("other", labels=other))
    assert len(series_of(registry, "web")) > 20
    metrics.forget("web")
    assert series_of(registry, "web") == []
    assert series_of(registry, "other") != []
    metrics.forget("web")  # twice is harmless
    metrics.forget("never-seen")


def test_changed_labels_move_the_series(registry: CollectorRegistry, metrics: ProbeMetrics) -> None:
    metrics.observe(run())
    moved = {**WEB, "environment": "staging"}
    metrics.observe(run(labels=moved))
    assert value(registry, "probe_success") is None
    assert value(registry, "probe_success", moved) == 1
    assert value(registry, "probe_runs_total", moved) == 1


def test_no_credentials_or_messages_are_exported(registry: CollectorRegistry, metrics: ProbeMetrics) -> None:
    secret = {**WEB, "target": "https://bot:s3cret@shop.test/"}
    metrics.observe(run(labels=secret, success=False, message="Authorization: Bearer t0ken"))
    text = generate_latest(registry).decode()
    assert "s3cret" not in text
    assert "t0ken" not in text
    assert 'target="https://shop.test/"' in text


def test_every_family_is_documented_with_the_same_labels(registry: CollectorRegistry, metrics: ProbeMetrics) -> None:
    metrics.observe(run(success=False, status_code=500, tls_expiry=1.9e9))
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "probe_success",
        "probe_duration_seconds",
        "probe_http_status_code",
        "probe_http_duration_seconds",
        "probe_ssl_earliest_cert_expiry",
        "probe_failure_reason_info",
        "probe_runs",
        "probe_failures",
        "probe_last_run_timestamp_seconds",
        "probe_interval_seconds",
        "probe_consecutive_failures",
        "probe_failing",
        "probe_lateness_seconds",
    }
    assert expected <= set(families)
    for name in expected:
        family = families[name]
        assert len(family.documentation) > 20, name
        for sample in family.samples:
            assert set(LABELS) <= set(sample.labels), (name, sample.labels)
    phases = {s.labels["phase"] for s in families["probe_http_duration_seconds"].samples}
    assert phases == set(PHASES)
