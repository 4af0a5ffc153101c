"""Probes inside the real daemon: on schedule against each environment, and as a gate against the canary."""

from __future__ import annotations

import httpx
import pytest
from support.daemon import Daemon, local_config, wait_for

pytestmark = pytest.mark.e2e

PROBES = [
    {"name": "ping", "kind": "http", "targets": ["http://{address}/ping"], "interval": "10s", "timeout": "2s"},
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("probes-e2e")
    config = local_config(state, replicas=2, steps=[1, "100%"], interval="1s", gates=["probes"])
    config["services"]["shop"]["probes"] = PROBES
    config["services"]["shop"]["slos"] = []
    config["probes"] = [
        {
            "name": "closed-port",
            "kind": "tcp",
            "targets": ["127.0.0.1:9"],
            "interval": "10s",
            "timeout": "1s",
            "failing": {"consecutive": 1},
            "labels": {"service": "legacy", "environment": "staging"},
        }
    ]
    (state / "faults.json").write_text('{"v3": {"error_ratio": 1.0}}')
    daemon = Daemon(config, state)
    client = daemon.start()
    try:
        release = client.submit("shop", "v1")["release"]
        wait_for(lambda: client.get_release(release["id"])["release"]["phase"] == "Succeeded", what="v1")
        yield daemon, client
    finally:
        client.close()
        daemon.stop()


def _promote(client, version: str) -> dict:
    release = client.submit("shop", version, environment="staging")["release"]
    done = wait_for(
        lambda: (r := client.get_release(release["id"]))["release"]["phase"] != "Progressing" and r,
        what=f"{version} to finish",
    )
    return client.get_promotion(done["promotions"][0]["id"])


def test_the_probes_gate_passes_a_healthy_canary_and_probes_keep_running_on_schedule(daemon):
    d, client = daemon
    detail = _promote(client, "v2")
    assert detail["promotion"]["phase"] == "Succeeded", detail["promotion"]["message"]
    verdicts = [v["verdict"] for v in detail["verdicts"]]
    assert verdicts
    assert all(v["gate"] == "probes" and v["phase"] == "Pass" for v in verdicts)

    def scheduled_probe_succeeded() -> bool:
        text = httpx.get(f"{d.url}/metrics").text
        return any(
            line.startswith("probe_success{")
            and 'probe="ping"' in line
            and 'environment="staging"' in line
            and line.rstrip().endswith(" 1.0")
            for line in text.splitlines()
        )

    wait_for(scheduled_probe_succeeded, timeout=30, interval=0.5, what="the scheduled probe's success on /metrics")


def test_the_probes_gate_rolls_back_a_canary_that_fails_them(daemon):
    _, client = daemon
    detail = _promote(client, "v3")
    promotion = detail["promotion"]
    assert promotion["phase"] == "RolledBack"
    assert promotion["rollback_cause"] == "gate:probes"
    assert "http_status" in promotion["abort"]["reason"]
    assert "/ping" in promotion["abort"]["reason"]


def test_a_fixed_probe_that_starts_failing_is_an_event(daemon):
    _, client = daemon

    def failing_event():
        events = client.events(limit=500)["events"]
        return next((e for e in events if e["kind"] == "probe.failing"), None)

    event = wait_for(failing_event, timeout=30, interval=0.5, what="a probe.failing event")
    assert event["data"]["probe"] == "closed-port"
    assert "connect_refused" in event["message"]
