"""Break-glass in the real daemon: by CLI and by file, used once, refused when expired, heard by everyone.

The daemon runs as a child process on the local platform; v1 is stable and v2 answers 60% of its
requests with errors, so every analysis run of v2 fails the SLO gate. An override of ``slo`` lets
exactly one of those failures pass: the first step goes on, the next run fails and rolls back.
Security (a webhook receiver checking the HMAC) and the escalation chain (Slack, the real
``slack_sdk`` against the fake Web API) hear of every grant and use; the audit log keeps them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.daemon import Daemon, local_config, wait_for
from support.fake_slack import FakeSlack, running_fake_slack
from support.notify_fakes import Receiver, running_receiver
from support.traffic import steady_traffic

from vouch.daemon.audit.verify import read_records, verify_log

pytestmark = pytest.mark.e2e

SECRET = "security-hmac-secret"
SECRET_ENV = "TEST_SECURITY_SECRET"
GRANT = ("break-glass", "grant", "shop", "--env", "staging", "--gate", "slo")


@dataclass
class Setup:
    daemon: Daemon
    overrides: Path
    security: Receiver
    slack: FakeSlack


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    monkeypatch.setenv("TEST_SLACK_TOKEN", "xoxb-fake-0123456789")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    overrides = tmp_path / "overrides"
    overrides.mkdir()
    async with running_fake_slack() as slack, running_receiver(SECRET) as security:
        state = tmp_path / "state"
        config = local_config(state, steps=[1, "100%"], faults={"v2": {"error_ratio": 0.6}})
        config["break_glass"] = {"directory": str(overrides), "scan_interval": "100ms", "max_ttl": "2h"}
        config["notifications"] = {
            "notifiers": [
                {
                    "name": "security",
                    "kind": "webhook",
                    "url": security.url,
                    "secret": {"from_env": "TEST_SECURITY_SECRET"},
                },
                {
                    "name": "escalation",
                    "kind": "slack",
                    "channel": "#oncall",
                    "token": {"from_env": "TEST_SLACK_TOKEN"},
                    "base_url": slack.url,
                },
            ],
            "routes": [{"kinds": ["override.*"], "to": ["security", "escalation"]}],
            "retry_initial": "100ms",
            "retry_max": "1s",
        }
        daemon = Daemon(config, state)
        client = await asyncio.to_thread(daemon.start)
        try:
            await asyncio.to_thread(release_and_wait, client, "v1")
            yield Setup(daemon, overrides, security, slack)
        finally:
            client.close()
            await asyncio.to_thread(daemon.stop)


def release_and_wait(client: Any, version: str, *, timeout: float = 90) -> dict[str, Any]:
    release = client.submit("shop", version, environment="staging")["release"]
    return wait_ended(client, release["id"], timeout=timeout)


def wait_ended(client: Any, release_id: str, *, timeout: float = 90) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        got: dict[str, Any] = client.get_release(release_id)
        return got if got["release"]["phase"] != "Progressing" else None

    result: dict[str, Any] = wait_for(ended, timeout=timeout, what=f"release {release_id} to end")
    return result


def vouch(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    token = (daemon.state / "token").read_text().strip()
    command = [sys.executable, "-m", "vouch.daemon", *args, "--url", daemon.url, "--token", token]
    env = {"USER": "ana", "PATH": "", "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=daemon.state)


def promotion_of(daemon: Daemon, result: dict[str, Any]) -> dict[str, Any]:
    (promotion,) = result["promotions"]
    with daemon.client() as client:
        detail: dict[str, Any] = client.get_promotion(promotion["id"])
    return detail


def overridden_runs(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        v
        for v in detail["verdicts"]
        if v["verdict"]["gate"] == "slo" and any("break-glass" in r for r in v["verdict"]["reasons"])
    ]


def failing_runs(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in detail["verdicts"] if v["verdict"]["gate"] == "slo" and v["verdict"]["phase"] == "Fail"]


async def heard(setup: Setup, kinds: list[str]) -> None:
    """Security got ``kinds`` (signed) and the escalation channel a message for each."""

    def security_has() -> bool:
        return [d.body["kind"] for d in setup.security.deliveries] == kinds

    await setup.security.wait_until(security_has, timeout=30)
    assert all(d.signature_ok for d in setup.security.deliveries), "every delivery carries a valid HMAC"
    await setup.slack.wait_until(lambda: len(setup.slack.calls_to("chat.postMessage")) >= len(kinds), timeout=30)


def audit_of(daemon: Daemon, kind: str) -> list[dict[str, Any]]:
    path = daemon.state / "audit.jsonl"
    report = verify_log(path)
    assert report.ok, report.problem
    return [r for r in read_records(path) if r["kind"] == kind]


async def test_by_cli_one_failure_passes_the_next_rolls_back_and_everyone_hears(setup: Setup) -> None:
    daemon = setup.daemon
    with steady_traffic([daemon.router()]):
        done = await asyncio.to_thread(
            vouch,
            daemon,
            "promote",
            "shop",
            "v2",
            "--env",
            "staging",
            "--break-glass",
            "slo",
            "--reason",
            "INC-1234: error budget misreported",
            "--wait",
            "--json",
        )
    assert done.returncode == 1, done.stderr  # rolled back: the override covered one failure only
    result = json.loads(done.stdout)
    (promotion,) = result["promotions"]
    assert promotion["phase"] == "RolledBack"
    assert promotion["rollback_cause"] == "gate:slo"
    detail = await asyncio.to_thread(promotion_of, daemon, result)
    assert len(overridden_runs(detail)) == 1, "the first failing run passed, once"
    assert len(failing_runs(detail)) == 1, "the next failure was not overridden"
    assert [s["outcome"] for s in detail["steps"]] == ["passed", "aborted"]

    with daemon.client() as client:
        (override,) = client.list_overrides(service="shop")["overrides"]
    assert override["used_at"] is not None
    assert override["promotion_id"] == promotion["id"]
    assert override["actor"] == "ana"
    assert override["version"] == "v2"
    assert override["overridden"]["phase"] == "Fail", "the verdict it let through is kept with it"

    await heard(setup, ["override.granted", "override.used"])
    (granted,) = audit_of(daemon, "override.granted")
    (used,) = audit_of(daemon, "override.used")
    assert granted["actor"] == used["actor"] == "ana"
    assert used["promotion_id"] == promotion["id"]


async def test_a_file_is_used_once_even_after_a_restart(setup: Setup) -> None:
    daemon = setup.daemon
    grant = {
        "service": "shop",
        "environment": "staging",
        "gate": "slo",
        "reason": "INC-99: latency SLO query broken",
        "actor": "bob",
    }
    text = yaml.safe_dump(grant)
    (setup.overrides / "inc-99.yaml").write_text(text)
    await heard(setup, ["override.granted"])

    with steady_traffic([daemon.router()]):
        first = await asyncio.to_thread(lambda: release_and_wait(daemon.client(), "v2"))
    detail = await asyncio.to_thread(promotion_of, daemon, first)
    assert len(overridden_runs(detail)) == 1
    await heard(setup, ["override.granted", "override.used"])
    await asyncio.to_thread(
        wait_for, lambda: (setup.overrides / "inc-99.yaml.used").exists(), what="the file marked used"
    )

    # The same file again (a ConfigMap keeps its files), and a restart: the store remembers its use.
    (setup.overrides / "inc-99.yaml").write_text(text)
    await asyncio.to_thread(daemon.stop)
    await asyncio.to_thread(daemon.start)
    with steady_traffic([daemon.router()]):
        second = await asyncio.to_thread(lambda: release_and_wait(daemon.client(), "v2"))
    detail = await asyncio.to_thread(promotion_of, daemon, second)
    assert overridden_runs(detail) == [], "a used override is never used again"
    assert len(failing_runs(detail)) == 1
    assert second["promotions"][0]["phase"] == "RolledBack"
    with daemon.client() as client:
        overrides = client.list_overrides(service="shop")["overrides"]
    assert len(overrides) == 1, "re-reading the file granted nothing new"
    assert len(audit_of(daemon, "override.used")) == 1


async def test_expired_and_out_of_scope_grants_are_refused_with_a_reason(setup: Setup) -> None:
    daemon = setup.daemon
    expired = {"service": "shop", "environment": "staging", "gate": "slo", "reason": "old", "actor": "bob"}
    expired["expires_at"] = "2020-01-01T00:00:00Z"
    (setup.overrides / "stale.yaml").write_text(yaml.safe_dump(expired))
    (setup.overrides / "broken.yaml").write_text("service: [unclosed\n")
    wrong_gate = {**expired, "gate": "probes", "expires_at": None}
    (setup.overrides / "wrong-gate.json").write_text(json.dumps({k: v for k, v in wrong_gate.items() if v}))

    def refusals() -> list[dict[str, Any]] | None:
        with daemon.client() as client:
            found = [e for e in client.events(limit=1000)["events"] if e["kind"] == "override.refused"]
        return found if len(found) == 3 else None

    found = await asyncio.to_thread(wait_for, refusals, timeout=30, what="three refusals")
    reasons = {e["data"]["file"]: e["data"]["reason"] for e in found}
    assert "already have expired" in reasons["stale.yaml"]
    assert "not YAML or JSON" in reasons["broken.yaml"]
    assert "'probes' does not run in staging" in reasons["wrong-gate.json"]

    too_long = await asyncio.to_thread(
        vouch,
        daemon,
        "break-glass",
        "grant",
        "shop",
        "--env",
        "staging",
        "--gate",
        "slo",
        "--reason",
        "x",
        "--ttl",
        "3h",
    )
    assert too_long.returncode == 2
    assert "longer than break_glass.max_ttl" in too_long.stderr

    # Granted for a moment only: by the time v2 fails, it has expired and the failure stands.
    short = await asyncio.to_thread(
        vouch,
        daemon,
        "break-glass",
        "grant",
        "shop",
        "--env",
        "staging",
        "--gate",
        "slo",
        "--reason",
        "y",
        "--ttl",
        "1s",
    )
    assert short.returncode == 0, short.stderr
    await asyncio.sleep(1.5)
    with steady_traffic([daemon.router()]):
        result = await asyncio.to_thread(lambda: release_and_wait(daemon.client(), "v2"))
    detail = await asyncio.to_thread(promotion_of, daemon, result)
    assert overridden_runs(detail) == []
    assert result["promotions"][0]["phase"] == "RolledBack"
    listed = await asyncio.to_thread(vouch, daemon, "break-glass", "list", "shop")
    assert "expired" in listed.stdout
