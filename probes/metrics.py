"""Probe results as Prometheus series: blackbox_exporter's names where the meaning is the same, plus what it lacks.

blackbox_exporter answers one scrape with one probe; vouch runs probes on its
own schedule and keeps the latest state of each (probe, target) as gauges, so
one scrape of ``/metrics`` shows every probe. Beyond blackbox_exporter's
series it exports the failure reason, run and failure counters, the time of
the last run (how staleness is noticed), consecutive failures, the failing
state, the interval in effect and how late runs start.

Every series carries the labels ``probe``, ``kind``, ``target``, ``service``
and ``environment`` (empty when the probe does not set them). ``target`` is the
configured target without URL credentials: header values, bodies and secrets
are never exported. Other labels of a probe stay out of the series, so each
probe has a fixed, small number of them (about twenty; the lateness histogram
is most of it, hence its few buckets).

Pure bookkeeping, no clock and no I/O::

    metrics = ProbeMetrics(registry)
    scheduler = Scheduler(on_result=metrics.observe)
    ...
    scheduler.remove(key)
    metrics.forget(key)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from vouch.probes.base import PHASES, ProbeResult
from vouch.probes.scheduler import ProbeRun, public_target

LABELS = ("probe", "kind", "target", "service", "environment")
"""The labels of every probe series, in order."""

HTTP_KINDS = frozenset({"http", "flow"})
"""Kinds that always export the HTTP status code and phase timings (0 when there was no answer)."""

LATENESS_BUCKETS = (0.01, 0.05, 0.25, 1.0, 5.0)
"""Seconds; a healthy scheduler starts runs within milliseconds, one second late is already trouble."""


@dataclass
class _Exported:
    """What is exported for one key, so that :meth:`ProbeMetrics.forget` removes exactly that."""

    values: tuple[str, ...]
    reasons: set[str] = field(default_factory=set)
    http: bool = False
    status: bool = False
    tls: bool = False
    reason_info: bool = False


class ProbeMetrics:
    """Series about every probe run, in the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._exported: dict[str, _Exported] = {}
        self._define_blackbox(registry)
        self._define_own(registry)

    def _define_blackbox(self, registry: CollectorRegistry) -> None:
        self.success = Gauge(
            "probe_success", "1 when the latest run of the probe succeeded, else 0.", LABELS, registry=registry
        )
        self.duration = Gauge(
            "probe_duration_seconds",
            "How long the latest run took, retries included, in seconds.",
            LABELS,
            registry=registry,
        )
        self.http_status = Gauge(
            "probe_http_status_code",
            "HTTP status code of the latest answer; 0 when no answer came (HTTP and flow probes).",
            LABELS,
            registry=registry,
        )
        self.http_phase = Gauge(
            "probe_http_duration_seconds",
            "Seconds the latest HTTP run spent in each phase: resolve, connect, tls, processing, transfer.",
            [*LABELS, "phase"],
            registry=registry,
        )
        self.cert_expiry = Gauge(
            "probe_ssl_earliest_cert_expiry",
            "Earliest expiry (Unix seconds) of the certificates the target presented; kept from the last "
            "run that saw them.",
            LABELS,
            registry=registry,
        )

    def _define_own(self, registry: CollectorRegistry) -> None:
        self.reason = Info(
            "probe_failure_reason",
            "The reason label names why the latest run failed; the series is absent while the probe succeeds.",
            LABELS,
            registry=registry,
        )
        self.runs = Counter("probe_runs", "Runs of the probe since vouch started.", LABELS, registry=registry)
        self.failures = Counter(
            "probe_failures",
            "Failed runs of the probe since vouch started, by reason.",
            [*LABELS, "reason"],
            registry=registry,
        )
        self.last_run = Gauge(
            "probe_last_run_timestamp_seconds",
            "When the latest run finished (Unix seconds); an old value means the probe has stopped running.",
            LABELS,
            registry=registry,
        )
        self.interval = Gauge(
            "probe_interval_seconds",
            "The interval in effect, in seconds: the probe's interval, or its failing interval while failing.",
            LABELS,
            registry=registry,
        )
        self.consecutive = Gauge(
            "probe_consecutive_failures", "Failed runs in a row up to the latest one.", LABELS, registry=registry
        )
        self.failing = Gauge(
            "probe_failing",
            "1 while the probe is failing by its failing policy (N in a row or M of the last K), else 0.",
            LABELS,
            registry=registry,
        )
        self.lateness = Histogram(
            "probe_lateness_seconds",
            "How much later than scheduled runs started (waiting for a concurrency slot included).",
            LABELS,
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )

    # ----------------------------------------------------------------- updates

    def observe(self, run: ProbeRun) -> None:
        """Record one finished run: the scheduler's ``on_result``."""
        values = label_values(run)
        seen = self._exported.get(run.key)
        if seen is not None and seen.values != values:
            self.forget(run.key)
            seen = None
        if seen is None:
            seen = self._exported[run.key] = _Exported(values)
        result = run.result
        self.success.labels(*values).set(1 if result.success else 0)
        self.duration.labels(*values).set(result.duration)
        self.runs.labels(*values).inc()
        self.last_run.labels(*values).set(run.completed_at)
        self.interval.labels(*values).set(run.interval)
        self.consecutive.labels(*values).set(run.state.consecutive_failures)
        self.failing.labels(*values).set(1 if run.state.failing else 0)
        self.lateness.labels(*values).observe(max(run.lateness, 0.0))
        self._observe_reason(seen, result)
        self._observe_details(seen, result)

    def _observe_reason(self, seen: _Exported, result: ProbeResult) -> None:
        if result.success:
            if seen.reason_info:
                self.reason.remove(*seen.values)
                seen.reason_info = False
            return
        reason = result.reason.value if result.reason is not None else "unknown"
        self.reason.labels(*seen.values).info({"reason": reason})
        seen.reason_info = True
        self.failures.labels(*seen.values, reason).inc()
        seen.reasons.add(reason)

    def _observe_details(self, seen: _Exported, result: ProbeResult) -> None:
        values = seen.values
        if result.kind in HTTP_KINDS or result.status_code is not None:
            self.http_status.labels(*values).set(result.status_code or 0)
            seen.status = True
        if result.kind in HTTP_KINDS:
            for phase in PHASES:
                self.http_phase.labels(*values, phase).set(result.phases.get(phase, 0.0))
            seen.http = True
        if result.tls_expiry is not None:
            self.cert_expiry.labels(*values).set(result.tls_expiry)
            seen.tls = True

    def forget(self, key: str) -> None:
        """Remove every series of ``key`` (a probe that is no longer scheduled); unknown keys are ignored."""
        seen = self._exported.pop(key, None)
        if seen is None:
            return
        values = seen.values
        for metric in (
            self.success,
            self.duration,
            self.runs,
            self.last_run,
            self.interval,
            self.consecutive,
            self.failing,
            self.lateness,
        ):
            metric.remove(*values)
        for reason in seen.reasons:
            self.failures.remove(*values, reason)
        if seen.reason_info:
            self.reason.remove(*values)
        if seen.status:
            self.http_status.remove(*values)
        if seen.http:
            for phase in PHASES:
                self.http_phase.remove(*values, phase)
        if seen.tls:
            self.cert_expiry.remove(*values)


def label_values(run: ProbeRun) -> tuple[str, ...]:
    """The values of :data:`LABELS` for ``run``, target without credentials, absent labels empty."""
    labels = run.labels
    return (
        labels.get("probe", run.result.probe),
        labels.get("kind", run.result.kind),
        public_target(labels.get("target", run.result.target)),
        labels.get("service", ""),
        labels.get("environment", ""),
    )
