"""Prometheus alerting rules over the probe series: failing, stale or absent probes, expiring certificates.

Why vouch writes them rather than leaving them to each user: alerting on a
prober's own series is what users of blackbox_exporter keep having to invent,
and the rules must match the series names exactly. Five alerts:

``ProbeFailing``
    ``probe_failing == 1``. vouch already waited for N failures in a row or M
    of the last K, so the rule fires at once; ``keep_firing_for`` (Prometheus
    2.42+) holds it across the single successes of a flapping target, which
    :mod:`vouch.probes.failing` reports as recoveries.
``ProbeStale``
    A probe that vouch still exports but has not run for ``stale_after``
    seconds past its interval: the scheduler is stuck or overloaded.
``ProbeAbsent``
    A probe whose series vanished because the vouch instance exporting it is
    no longer scraped successfully (its ``up`` is 0). Joining on ``up`` keeps
    a probe removed on purpose from raising it.
``ProbesAbsent``
    No probe series at all for ``stale_after`` seconds: vouch is down or not
    scraped, and its ``up`` may be gone too.
``CertificateExpiringSoon``
    The earliest certificate the target presented expires within ``expiry_days``.

Example::

    >>> rules = alerting_rules(expiry_days=30)
    >>> [rule["alert"] for rule in rules["groups"][0]["rules"]]
    ['ProbeFailing', 'ProbeStale', 'ProbeAbsent', 'ProbesAbsent', 'CertificateExpiringSoon']
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from vouch.core.errors import InputError

GROUP = "vouch-probes"
WHERE = "{{ $labels.probe }} ({{ $labels.kind }}) on {{ $labels.target }}"
SCOPE = "service={{ $labels.service }} environment={{ $labels.environment }}"
PROM_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
"""Prometheus' duration syntax: ``5m``, ``1h30m``, ``500ms``."""


def alerting_rules(
    *,
    stale_after: float = 300,
    expiry_days: float = 14,
    for_: str = "5m",
    absent_lookback: str = "1h",
) -> dict[str, Any]:
    """A Prometheus rules document (as data) alerting on the probe series vouch exports.

    ``stale_after``: seconds a probe may be overdue beyond its interval before
    it is stale, and how long no probe series at all means vouch is gone.
    ``expiry_days``: how early to warn about a certificate. ``for_``: how
    long a condition must hold before the alert fires (and how long
    ``ProbeFailing`` keeps firing after the last failing run).
    ``absent_lookback``: how far back a vanished probe series is remembered.
    """
    if stale_after <= 0 or expiry_days <= 0:
        raise InputError("stale_after and expiry_days must be positive")
    for name, value in (("for", for_), ("absent_lookback", absent_lookback)):
        if not PROM_DURATION.match(value):
            raise InputError(f"{name} must be a Prometheus duration such as 5m or 1h30m, not {value!r}")
    stale = _number(stale_after)
    return {
        "groups": [
            {
                "name": GROUP,
                "rules": [
                    _failing(for_),
                    _stale(stale, for_),
                    _absent(absent_lookback),
                    _all_absent(stale),
                    _expiring(expiry_days, for_),
                ],
            }
        ]
    }


def render_rules(
    *,
    stale_after: float = 300,
    expiry_days: float = 14,
    for_: str = "5m",
    absent_lookback: str = "1h",
) -> str:
    """:func:`alerting_rules` as a YAML rules file for Prometheus' ``rule_files``."""
    rules = alerting_rules(stale_after=stale_after, expiry_days=expiry_days, for_=for_, absent_lookback=absent_lookback)
    header = "# Alerting rules for vouch's synthetic probes (written by `vouch probe rules`).\n"
    return header + yaml.safe_dump(rules, sort_keys=False, width=1000)


def _failing(for_: str) -> dict[str, Any]:
    return {
        "alert": "ProbeFailing",
        "expr": "probe_failing == 1",
        "keep_firing_for": for_,
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": f"Probe {WHERE} is failing",
            "description": (
                f"The synthetic probe {WHERE} ({SCOPE}) is failing by its failing policy "
                "(N failed runs in a row or M of the last K). probe_failure_reason_info says why, "
                "probe_consecutive_failures for how long."
            ),
        },
    }


def _stale(stale: str, for_: str) -> dict[str, Any]:
    return {
        "alert": "ProbeStale",
        "expr": f"time() - probe_last_run_timestamp_seconds - probe_interval_seconds > {stale}",
        "for": for_,
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": f"Probe {WHERE} has stopped running",
            "description": (
                f"The synthetic probe {WHERE} ({SCOPE}) is {{{{ $value | humanizeDuration }}}} overdue "
                "beyond its interval: vouch still exports it but no longer runs it on time."
            ),
        },
    }


def _absent(lookback: str) -> dict[str, Any]:
    return {
        "alert": "ProbeAbsent",
        "expr": (
            f"(max_over_time(probe_last_run_timestamp_seconds[{lookback}]) "
            "unless probe_last_run_timestamp_seconds) and on(job, instance) (up == 0)"
        ),
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": f"Probe {WHERE} is absent",
            "description": (
                f"The series of the synthetic probe {WHERE} ({SCOPE}) are gone because the vouch "
                "instance {{ $labels.instance }} exporting them is down or cannot be scraped."
            ),
        },
    }


def _all_absent(stale: str) -> dict[str, Any]:
    return {
        "alert": "ProbesAbsent",
        "expr": f"absent_over_time(probe_last_run_timestamp_seconds[{_range(float(stale))}])",
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "No synthetic probe has reported",
            "description": (
                f"No probe_last_run_timestamp_seconds series for {stale} seconds: vouch is down, "
                "not scraped, or runs no probes."
            ),
        },
    }


def _expiring(expiry_days: float, for_: str) -> dict[str, Any]:
    seconds = _number(expiry_days * 86400)
    return {
        "alert": "CertificateExpiringSoon",
        "expr": f"probe_ssl_earliest_cert_expiry - time() < {seconds}",
        "for": for_,
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": f"Certificate of {{{{ $labels.target }}}} expires within {expiry_days:g} days",
            "description": (
                f"The earliest certificate presented to the probe {WHERE} ({SCOPE}) expires in "
                "{{ $value | humanizeDuration }}."
            ),
        },
    }


def _number(value: float) -> str:
    """A PromQL number literal, never in exponent notation.

    >>> _number(14 * 86400), _number(0.5)
    ('1209600', '0.5')
    """
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _range(seconds: float) -> str:
    """A PromQL range duration (integers only): ``300s``, or ``1500ms`` for fractions.

    >>> _range(300), _range(1.5)
    ('300s', '1500ms')
    """
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"
