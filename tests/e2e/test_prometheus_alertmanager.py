"""End to end with the real Prometheus and Alertmanager.

Prometheus scrapes the daemon's ``/metrics`` (the local router's per-version
counters) and is the SLO gate's provider; a rule on the canary's error ratio
in production fires through Alertmanager, which posts to ``/api/v1/alerts``
with the daemon's token. Staging judges every 3 s on PromQL; production's
analysis interval is two minutes, so only the alarm can stop a bad canary
there in time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.components import alertmanager, prometheus
from support.daemon import Daemon, local_config, wait_for
from support.traffic import steady_traffic

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789abcdef"

ERROR_RATIO = (
    '(sum(rate(vouch_router_requests_total{service="{service}",environment="{environment}",'
    'version="{version}",code=~"5.."}[{window}])) or vector(0))'
    ' / sum(rate(vouch_router_requests_total{service="{service}",environment="{environment}",'
    'version="{version}"}[{window}]))'
)
"""Canary error ratio; ``or vector(0)`` keeps it defined while there are no errors at all."""

RULES = """
groups:
  - name: vouch-canary
    rules:
      - alert: CanaryErrorRatioHigh
        expr: |
          sum by (service, environment) (
            rate(vouch_router_requests_total{track="canary",environment="production",code=~"5.."}[5s])
          )
          / sum by (service, environment) (
            rate(vouch_router_requests_total{track="canary",environment="production"}[5s])
          )
          > 0.1
        labels:
          severity: critical
        annotations:
          summary: canary error ratio above 10%
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    state: Path = tmp_path_factory.mktemp("e2e-prom")
    (state / "token").write_text(TOKEN)
    (state / "token").chmod(0o600)
    config = local_config(
        state,
        replicas=4,
        steps=[1, "50%"],
        interval="3s",
        environments=("staging", "production"),
        faults={"v3": {"error_ratio": 0.5}, "v4": {"error_ratio": 0.5}},
        slos=[{"name": "error-ratio", "provider": "prom", "query": ERROR_RATIO, "window": "6s", "max": 0.05}],
    )
    listen = config["daemon"]["listen"]
    with (
        alertmanager(f"http://{listen}/api/v1/alerts", bearer_token=TOKEN) as am,
        prometheus([listen], rules_yaml=RULES, alertmanager_url=am.url) as prom,
    ):
        config["metric_providers"] = {"prom": {"kind": "prometheus", "url": prom.url, "timeout": "5s"}}
        config["environments"]["production"]["analysis"]["interval"] = "120s"
        daemon = Daemon(config, state)
        client = daemon.start()
        try:
            release = client.submit("shop", "v1")["release"]
            wait_for(lambda: client.get_release(release["id"])["release"]["phase"] == "Succeeded", what="v1 deployed")
            with steady_traffic([daemon.router("staging"), daemon.router("production")], rate=40):
                yield daemon, client
        finally:
            client.close()
            daemon.stop()


def _finish(client, version: str, env: str) -> dict:
    release = client.submit("shop", version, environment=env)["release"]
    done = wait_for(
        lambda: (r := client.get_release(release["id"]))["release"]["phase"] != "Progressing" and r,
        timeout=120,
        what=f"{version} in {env} to finish",
    )
    return done["promotions"][0]


def test_a_healthy_promotion_succeeds_on_the_promql_slo_gate(stack):
    _, client = stack
    promotion = _finish(client, "v2", "staging")
    assert promotion["phase"] == "Succeeded", promotion["message"]
    detail = client.get_promotion(promotion["id"])
    slo = [v["verdict"] for v in detail["verdicts"] if v["verdict"]["gate"] == "slo"]
    passed = [v for v in slo if v["phase"] == "Pass"]
    assert len(passed) >= 2, "each of the two steps passed on a PromQL measurement"
    measurement = passed[-1]["measurements"][0]
    assert "vouch_router_requests_total" in measurement["query"]
    assert measurement["value"] is not None
    assert measurement["value"] <= 0.05


def test_a_faulty_promotion_is_rolled_back_by_the_slo_gate(stack):
    _, client = stack
    promotion = _finish(client, "v3", "staging")
    assert promotion["phase"] == "RolledBack"
    assert promotion["rollback_cause"] == "gate:slo"
    assert "error-ratio" in promotion["abort"]["reason"]


def test_a_faulty_promotion_is_rolled_back_by_an_alertmanager_alarm_before_the_next_analysis(stack):
    _, client = stack
    started = time.time()
    promotion = _finish(client, "v4", "production")
    assert promotion["phase"] == "RolledBack", promotion["message"]
    assert promotion["rollback_cause"] == "alarm:CanaryErrorRatioHigh"
    assert promotion["abort"]["actor"] == "api"
    detail = client.get_promotion(promotion["id"])
    assert detail["verdicts"] == [], "the SLO gate never got to judge: the alarm came first"
    ready = detail["steps"][0]["ready_at"]
    assert ready is not None
    assert promotion["canary_stopped_at"] - ready < 120, "rolled back before the first 120 s analysis was due"
    assert promotion["canary_stopped_at"] - started < 120
    alerts = client.list_alerts()["alerts"]
    assert any(promotion["id"] in a["matched"] for a in alerts)
