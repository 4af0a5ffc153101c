"""The generated alerting rules, checked and unit-tested by the real ``promtool``.

Each alert gets series that make it fire and series that must not: a
failing probe, a flapping one, a healthy one; a probe that stopped running;
a probe whose vouch instance went down next to one removed on purpose; no
probe series at all; a certificate about to expire next to a fresh one.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.components import require_binary

from vouch.core.errors import InputError
from vouch.probes.rules import alerting_rules, render_rules

VOUCH = {"job": "vouch", "instance": "vouch-a:9100"}


def probe(name: str, *, kind: str = "http", **extra: str) -> dict[str, str]:
    return {
        "probe": name,
        "kind": kind,
        "target": f"https://{name}.test/",
        "service": "shop",
        "environment": "prod",
        **VOUCH,
        **extra,
    }


def selector(metric: str, labels: dict[str, str]) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def rule(alert: str) -> dict[str, Any]:
    rules = alerting_rules()["groups"][0]["rules"]
    return next(r for r in rules if r["alert"] == alert)


def expected(alert: str, labels: dict[str, str], value: str = "") -> dict[str, Any]:
    """What promtool must report for ``alert`` on ``labels``: its labels and its rendered annotations."""
    spec = rule(alert)

    def render(template: str) -> str:
        text = template.replace("{{ $value | humanizeDuration }}", value)
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)

    return {
        "exp_labels": {**labels, **spec["labels"]},
        "exp_annotations": {k: render(v) for k, v in spec["annotations"].items()},
    }


def case(alert: str, at: str, *firing: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": list(firing)}


def per_probe_tests() -> dict[str, Any]:
    web, flap, ok, cert, fresh = probe("web"), probe("flap"), probe("ok"), probe("cert", kind="tls"), probe("fresh")
    stopped, gone, removed = probe("stopped"), probe("gone"), probe("removed", instance="vouch-b:9100")
    series = [
        # failing from 2m to 4m, then recovered: fires at once, keeps firing 5m after 4m
        (selector("probe_failing", web), "0 0 1 1 1 0x20"),
        # flapping from 3m to 13m: failing on every other run, firing throughout
        (selector("probe_failing", flap), "0 0 0 1 0 1 0 1 0 1 0 1 0 1 0x20"),
        (selector("probe_failing", ok), "0x25"),
        # runs every minute, then stops at 5m while still exported
        (selector("probe_last_run_timestamp_seconds", stopped), "0+60x5 300x25"),
        (selector("probe_interval_seconds", stopped), "60x30"),
        (selector("probe_last_run_timestamp_seconds", ok), "0+60x30"),
        (selector("probe_interval_seconds", ok), "60x30"),
        # gone: its instance stops answering scrapes; removed: deleted while its instance is up
        (selector("probe_last_run_timestamp_seconds", gone), "0+60x5 stale"),
        (selector("probe_last_run_timestamp_seconds", removed), "0+60x5 stale"),
        (selector("up", VOUCH), "1x5 0x25"),
        (selector("up", {"job": "vouch", "instance": "vouch-b:9100"}), "1x30"),
        # expires 14 days + 1 hour after time 0; the other in a year
        (selector("probe_ssl_earliest_cert_expiry", cert), "1213200x80"),
        (selector("probe_ssl_earliest_cert_expiry", fresh), "31536000x80"),
    ]
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [
            case("ProbeFailing", "1m"),
            case("ProbeFailing", "2m", expected("ProbeFailing", web)),
            case("ProbeFailing", "8m", expected("ProbeFailing", web), expected("ProbeFailing", flap)),
            case("ProbeFailing", "12m", expected("ProbeFailing", flap)),
            case("ProbeFailing", "20m"),
            case("ProbeStale", "10m"),
            case("ProbeStale", "18m", expected("ProbeStale", stopped, "12m 0s")),
            case("ProbeAbsent", "4m"),
            case("ProbeAbsent", "10m", expected("ProbeAbsent", gone)),
            case("ProbesAbsent", "10m"),
            case("CertificateExpiringSoon", "30m"),
            case("CertificateExpiringSoon", "70m", expected("CertificateExpiringSoon", cert, "13d 23h 50m 0s")),
        ],
    }


def nothing_reports_tests() -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [
            {"series": selector("probe_last_run_timestamp_seconds", probe("web")), "values": "0+60x3 stale"}
        ],
        "alert_rule_test": [
            case("ProbesAbsent", "5m"),
            case("ProbesAbsent", "10m", expected("ProbesAbsent", {})),
        ],
    }


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rules_and_every_alert_fires_when_it_should(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(render_rules())
    checked = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 rules found" in checked.stdout
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [per_probe_tests(), nothing_reports_tests()],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness can fail: a healthy probe expected to alert is reported as a failure."""
    (tmp_path / "rules.yml").write_text(render_rules())
    tests = per_probe_tests()
    tests["alert_rule_test"] = [case("ProbeFailing", "1m", expected("ProbeFailing", probe("ok")))]
    document = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [tests]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    tested = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert tested.returncode != 0


def test_parameters_reach_the_expressions() -> None:
    rules = {r["alert"]: r for r in alerting_rules(stale_after=90, expiry_days=30, for_="10m")["groups"][0]["rules"]}
    assert rules["ProbeStale"]["expr"].endswith("> 90")
    assert rules["ProbeStale"]["for"] == "10m"
    assert rules["ProbeFailing"]["keep_firing_for"] == "10m"
    assert rules["ProbesAbsent"]["expr"] == "absent_over_time(probe_last_run_timestamp_seconds[90s])"
    assert rules["CertificateExpiringSoon"]["expr"] == "probe_ssl_earliest_cert_expiry - time() < 2592000"
    assert "30 days" in rules["CertificateExpiringSoon"]["annotations"]["summary"]
    for spec in rules.values():
        assert spec["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(spec["annotations"])


def test_render_is_the_same_document_as_yaml() -> None:
    assert yaml.safe_load(render_rules(stale_after=1.5)) == alerting_rules(stale_after=1.5)
    assert "[1500ms]" in render_rules(stale_after=1.5)


@pytest.mark.parametrize(
    "bad", [{"stale_after": 0}, {"expiry_days": -1}, {"for_": "5 minutes"}, {"absent_lookback": "1hour"}]
)
def test_bad_parameters_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        alerting_rules(**bad)
