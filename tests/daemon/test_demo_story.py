"""``vouch demo``: its configuration is one the daemon accepts, and the whole story runs as told.

The full run is the demo itself (about a minute): a real daemon, forty replicas, a
security receiver checking signatures, the audit log verified at the end. It is
run once, as a user runs it, and every test reads what it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from vouch.daemon.audit.verify import verify_log
from vouch.daemon.configload import validate_text
from vouch.daemon.demo.story import SECURITY_KINDS, demo_config
from vouch.daemon.notify import build_dispatcher
from vouch.rollout.attestations.keys import load_public_key


def test_the_demo_configuration_validates_and_wires_security_and_escalation(tmp_path: Path) -> None:
    (tmp_path / "security.hmac").write_text("s3cret\n")
    document = demo_config(
        tmp_path, api_port=1, ports={"staging": 2, "production": 3}, security_url="http://127.0.0.1:4/vouch"
    )
    config = validate_text(yaml.safe_dump(document), file="vouch.yaml")
    [route] = config.notifications.routes
    assert (route.kinds, route.to) == (SECURITY_KINDS, ["security", "escalation"])
    assert config.audit.resolve_path(tmp_path) == tmp_path / "audit.jsonl"
    dispatcher = build_dispatcher(config.notifications, store=None, registry=CollectorRegistry())  # no slack: no store
    assert dispatcher.notifiers == ("security", "escalation")


@dataclass(frozen=True)
class Told:
    returncode: int
    document: dict[str, Any]
    narration: str


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> Told:
    state = tmp_path_factory.mktemp("demo") / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOUCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "vouch.daemon", "demo", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    return Told(result.returncode, document, result.stderr)


@pytest.mark.e2e
def test_the_demo_goes_as_told(told: Told) -> None:
    assert told.returncode == 0, told.narration[-4000:]
    assert "the demo did not go as told" not in told.narration
    ends = {(p["version"], p["environment"]): p["phase"] for p in told.document["promotions"]}
    assert ends[("v6", "staging")] == "Succeeded"
    assert ends[("v6", "production")] == "Denied"
    assert ends[("v5", "staging")] == "Denied"


@pytest.mark.e2e
def test_the_break_glass_is_heard_once_by_security_and_told(told: Told) -> None:
    assert told.document["security_notices"] == [
        "promotion.denied",
        "override.granted",
        "override.used",
        "promotion.denied",
    ]
    for line in (
        "oncall breaks the glass",
        "denied, then let through once by break-glass",
        "security ← override.granted (warning)",
        "security ← override.used (critical)",
        "v6 held in staging, then was refused in production",
        "The glass broke once, in one place",
    ):
        assert line in told.narration, line


@pytest.mark.e2e
def test_the_audit_log_it_names_verifies_with_vouchs_key(told: Told) -> None:
    audit_log = Path(told.document["audit_log"])
    key = Path(told.document["state_dir"]) / "keys" / "vouch.key.pub"
    report = verify_log(audit_log, public_keys=[load_public_key(key)])
    assert report.ok, report.problem
    assert report.records == told.document["audit_records"] > 0
    assert f"audit log: {report.records} records, chain intact" in told.narration
