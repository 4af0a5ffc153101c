"""What the demo checks after its story: the audit log on disk, the escalation log lines, and the verdict."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.audit_logs import edit, install, snapshot, write_log

from vouch.daemon.audit.verify import AuditReport
from vouch.daemon.demo.evidence import AuditCheck, check_audit, escalation_kinds, outcome, surprises
from vouch.rollout.attestations.keys import generate_keypair, load_signer

# --------------------------------------------------------------------------- reading the audit log


@pytest.fixture
def signed_log(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "vouch.key"
    generate_keypair(key)
    log = tmp_path / "audit.jsonl"
    write_log(log, records=25, signer=load_signer(key))
    return log, key.with_name("vouch.key.pub")


def test_an_intact_signed_log_is_told_as_such_with_its_break_glass_records(signed_log: tuple[Path, Path]) -> None:
    log, public = signed_log
    found = check_audit(log, public_key=public)
    assert found.ok
    assert found.report.records == 25
    assert found.describe() == f"audit log: 25 records, chain intact, every record signed by vouch's key ({log})"
    assert found.overrides[:2] == ("override.granted by vouch", "override.used by vouch")
    assert all(o.startswith("override.") for o in found.overrides)


def test_an_edited_record_is_named(signed_log: tuple[Path, Path]) -> None:
    log, public = signed_log
    written = snapshot(log)
    install(log, edit(written.lines, 7), written.head)
    found = check_audit(log, public_key=public)
    assert not found.ok
    assert found.describe().startswith("audit log: 7 good records, then seq 7 (line 8): its hash does not match")


def test_a_missing_log_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    found = check_audit(tmp_path / "nothing.jsonl", public_key=None)
    assert not found.ok
    assert found.describe().startswith("audit log: ")


def test_escalation_kinds_come_from_the_escalation_loggers_lines_of_this_run_only(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(
        "2026-11-27T00:16:42Z INFO    vouch.daemon: promotion.denied checkout/staging: denied\n"
        "2026-11-27T00:16:42Z CRITICAL vouch.escalation: promotion.denied checkout/staging: denied\n"
        "2026-11-27T00:16:43Z WARNING vouch.escalation: override.granted checkout/staging: granted by oncall\n"
        "not a log line at all\n"
    )
    assert escalation_kinds(log) == ("promotion.denied", "override.granted")
    second_run = log.read_bytes().index(b"2026-11-27T00:16:43Z")
    assert escalation_kinds(log, start=second_run) == ("override.granted",)
    assert escalation_kinds(tmp_path / "absent.log") == ()


# --------------------------------------------------------------------------- judging


def promotion(version: str, environment: str, phase: str, cause: str | None = None) -> dict[str, Any]:
    return {
        "id": f"p-{version}-{environment}",
        "version": version,
        "environment": environment,
        "phase": phase,
        "rollback_cause": cause,
    }


TOLD = [
    promotion("v1", "staging", "Succeeded"),
    promotion("v1", "production", "Succeeded"),
    promotion("v2", "staging", "Succeeded"),
    promotion("v2", "production", "Succeeded"),
    promotion("v3", "staging", "RolledBack", "gate:slo"),
    promotion("v4", "staging", "RolledBack", "alarm:CheckoutMemoryLeak"),
    promotion("v5", "staging", "Denied"),
    promotion("v6", "staging", "Succeeded"),
    promotion("v6", "production", "Denied"),
]
INTACT = AuditCheck(
    AuditReport(True, "audit.jsonl", 80, 79, "0" * 64, 79, True),
    overrides=("override.granted by oncall", "override.used by oncall"),
)
FACTS: dict[str, Any] = {
    "promotions": TOLD,
    "overrides": [{"id": "bg-1", "used_at": 10.0, "promotion_id": "p-v6-staging"}],
    "security": ["promotion.denied", "override.granted", "override.used", "promotion.denied"],
    "refused": 0,
    "escalation": ["promotion.denied", "override.granted", "override.used", "promotion.denied"],
    "audit": INTACT,
}


def test_the_story_as_told_has_no_surprises() -> None:
    assert surprises(**FACTS) == ()


def swapped(version: str, environment: str, phase: str) -> list[dict[str, Any]]:
    return [
        promotion(version, environment, phase) if (p["version"], p["environment"]) == (version, environment) else p
        for p in TOLD
    ]


BROKEN = AuditCheck(
    AuditReport(
        False, "audit.jsonl", 3, 2, "0" * 64, 9, True, first_bad_seq=3, line=4, problem="its hash does not match"
    )
)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"promotions": swapped("v6", "staging", "RolledBack")}, "v6 ended RolledBack in staging, not Succeeded"),
        ({"promotions": swapped("v6", "production", "Succeeded")}, "v6 ended Succeeded in production, not Denied"),
        ({"promotions": TOLD[:-1]}, "v6 ended unstarted in production, not Denied"),
        ({"overrides": []}, "expected one break-glass override, found 0"),
        ({"overrides": [{"id": "bg-1", "used_at": None}]}, "the break-glass override was never used"),
        (
            {"overrides": [{"id": "bg-1", "used_at": 1.0, "promotion_id": "p-v5-staging"}]},
            "used by another promotion than v6's in staging",
        ),
        ({"security": ["override.granted"]}, "the security receiver heard override.used 0 times, not once"),
        (
            {"security": ["override.granted", "override.used", "override.used"]},
            "the security receiver heard override.used 2 times, not once",
        ),
        ({"refused": 2}, "the security receiver refused 2 notices"),
        ({"escalation": ["override.granted"]}, "the escalation chain did not hear of override.used"),
        ({"audit": BROKEN}, "the audit log does not verify: audit log: 3 good records, then seq 3 (line 4)"),
        ({"audit": replace(INTACT, overrides=())}, "the audit log lacks the break-glass records"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_way_the_story_can_go_wrong_is_named(change: dict[str, Any], named: str) -> None:
    found = surprises(**(FACTS | change))
    assert any(named in s for s in found), found


def test_outcome_says_where_a_release_stopped() -> None:
    v6 = [promotion("v6", "staging", "Succeeded"), promotion("v6", "production", "Denied")]
    assert (
        outcome({"phase": "Failed"}, v6)
        == "held in staging, then was refused in production before any pod started there"
    )
    assert outcome({"phase": "Failed"}, TOLD[4:5]) == "was stopped in staging and rolled back"
    assert outcome({"phase": "Succeeded"}, TOLD[:2]) == "held everywhere"
