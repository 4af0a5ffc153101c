"""What ``vouch demo`` checks once the story is told: the outcomes, who heard of the break-glass, the audit log.

The story says what should happen; this module reads what did (the promotions, the
overrides, the notices the security receiver accepted, the escalation lines in the
daemon's log, the audit log on disk) and names every difference. Reading is kept apart
from judging, so :func:`surprises` is a pure function of the facts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text

from vouch.core.errors import VouchError
from vouch.daemon.audit.verify import AuditFilter, AuditReport, read_records, verify_log
from vouch.rollout.attestations.keys import load_public_key

ESCALATION_LOGGER = "vouch.escalation"
"""Logger of the demo's ``escalation`` notifier (a ``log`` notifier): its lines land in ``daemon.log``."""

EXPECTED_ENDINGS = (("v5", "staging", "Denied"), ("v6", "staging", "Succeeded"), ("v6", "production", "Denied"))
"""v5 is refused; v6 passes staging on the break-glass and is refused where nobody broke it."""

_LOG_LINE = re.compile(rf" {re.escape(ESCALATION_LOGGER)}: (\S+) ")


@dataclass(frozen=True)
class AuditCheck:
    """The audit log as the demo found it after the daemon stopped."""

    report: AuditReport
    overrides: tuple[str, ...] = ()
    """``kind by actor`` of every break-glass record in the log, in order."""
    error: str | None = None
    """Why the log could not be read at all (then ``report`` is empty and not ok)."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.report.ok

    def describe(self) -> str:
        """``audit log: N records, chain intact`` or what is wrong, for the narration."""
        r = self.report
        if self.error is not None:
            return f"audit log: cannot be read: {self.error}"
        if not r.ok:
            return f"audit log: {r.records} good records, then seq {r.first_bad_seq} (line {r.line}): {r.problem}"
        signed = ", every record signed by vouch's key" if r.signatures_checked else ""
        return f"audit log: {r.records} records, chain intact{signed} ({r.path})"


def check_audit(path: Path, *, public_key: Path | None) -> AuditCheck:
    """Verify the log at ``path`` (signatures too, with ``public_key``) and list its break-glass records."""
    try:
        keys = [load_public_key(public_key)] if public_key is not None else None
        report = verify_log(path, public_keys=keys)
        records = read_records(path, AuditFilter(kind="override.*"))
    except VouchError as exc:
        empty = AuditReport(False, str(path), 0, -1, "", None, False, problem=str(exc))
        return AuditCheck(empty, error=str(exc))
    return AuditCheck(report, tuple(f"{r['kind']} by {r.get('actor')}" for r in records))


def escalation_kinds(daemon_log: Path, *, start: int = 0) -> tuple[str, ...]:
    """The notice kinds the ``escalation`` log notifier wrote to the daemon's log from byte ``start`` on, in order."""
    try:
        with daemon_log.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
    except OSError:
        return ()
    return tuple(m.group(1) for line in text.splitlines() if (m := _LOG_LINE.search(line)))


# --------------------------------------------------------------------------- judging


def surprises(
    promotions: Sequence[Mapping[str, Any]],
    *,
    overrides: Sequence[Mapping[str, Any]],
    security: Sequence[str],
    refused: int,
    escalation: Sequence[str],
    audit: AuditCheck,
) -> tuple[str, ...]:
    """Every way the demo did not go as told; empty when it did."""
    found = list(_release_surprises(promotions))
    found += _override_surprises(promotions, overrides)
    found += _notice_surprises(security, refused=refused, escalation=escalation)
    if not audit.ok:
        found.append(f"the audit log does not verify: {audit.describe()}")
    elif not {"override.granted by oncall", "override.used by oncall"} <= set(audit.overrides):
        found.append(f"the audit log lacks the break-glass records (found: {', '.join(audit.overrides) or 'none'})")
    return tuple(found)


def _release_surprises(promotions: Sequence[Mapping[str, Any]]) -> list[str]:
    by = {(p["version"], p["environment"]): p for p in promotions}
    found = []
    for env in ("staging", "production"):
        for version in ("v1", "v2"):
            if by.get((version, env), {}).get("phase") != "Succeeded":
                found.append(f"{version} did not succeed in {env}")
    for version, env, phase in EXPECTED_ENDINGS:
        got = by.get((version, env), {}).get("phase")
        if got != phase:
            found.append(f"{version} ended {got or 'unstarted'} in {env}, not {phase}")
    if ("v5", "production") in by:
        found.append("v5 reached production")
    for version, cause in (("v3", "gate:"), ("v4", "alarm:")):
        p = by.get((version, "staging"), {})
        if p.get("phase") != "RolledBack" or not str(p.get("rollback_cause")).startswith(cause):
            found.append(f"{version} was not rolled back by {cause.rstrip(':')} in staging")
        if (version, "production") in by:
            found.append(f"{version} reached production")
    return found


def _override_surprises(promotions: Sequence[Mapping[str, Any]], overrides: Sequence[Mapping[str, Any]]) -> list[str]:
    """The one override granted must have been used, once, by v6's staging promotion."""
    if len(overrides) != 1:
        return [f"expected one break-glass override, found {len(overrides)}"]
    [override] = overrides
    v6 = next((p for p in promotions if (p["version"], p["environment"]) == ("v6", "staging")), None)
    if override.get("used_at") is None:
        return ["the break-glass override was never used"]
    if v6 is None or override.get("promotion_id") != v6.get("id"):
        return ["the break-glass override was used by another promotion than v6's in staging"]
    return []


def _notice_surprises(security: Sequence[str], *, refused: int, escalation: Sequence[str]) -> list[str]:
    found = []
    heard = Counter(security)
    for kind in ("override.granted", "override.used"):
        if heard[kind] != 1:
            found.append(f"the security receiver heard {kind} {heard[kind]} times, not once")
        if kind not in escalation:
            found.append(f"the escalation chain did not hear of {kind}")
    if refused:
        found.append(f"the security receiver refused {refused} notices (signature or timestamp wrong)")
    return found


# --------------------------------------------------------------------------- telling


def summary(p: Mapping[str, Any]) -> dict[str, Any]:
    """One promotion as ``vouch demo --json`` lists it."""
    keys = ("service", "version", "environment", "phase", "steps_completed", "rollback_cause", "detect_to_rollback_ms")
    return {key: p.get(key) for key in keys}


def outcome(release: Mapping[str, Any], promotions: Sequence[Mapping[str, Any]]) -> str:
    """How one release ended, in a few words: ``held in staging, then was refused in production``."""
    if release.get("phase") == "Succeeded" or not promotions:
        return "held everywhere"
    *before, last = promotions
    held = [p["environment"] for p in before if p["phase"] == "Succeeded"]
    prefix = f"held in {', '.join(held)}, then " if held else ""
    where = last["environment"]
    if last["phase"] == "Denied":
        return f"{prefix}was refused in {where} before any pod started there"
    return f"{prefix}was stopped in {where} and rolled back"


def table(promotions: Sequence[Mapping[str, Any]]) -> Text:
    """The closing summary, one row per promotion."""
    lines = Text("\nSummary\n", style="bold")
    lines.append(f"{'VERSION':<8} {'ENV':<11} {'PHASE':<11} {'STEPS':<6} {'CAUSE':<26} DETECT→ROLLBACK\n", style="bold")
    for p in promotions:
        ms = p["detect_to_rollback_ms"]
        detect = f"{ms:.0f} ms" if ms is not None else "-"
        style = "green" if p["phase"] == "Succeeded" else "red"
        row = f"{p['version']:<8} {p['environment']:<11} {p['phase']:<11} {p['steps_completed']!s:<6} "
        lines.append(row, style=style)
        lines.append(f"{p['rollback_cause'] or '-':<26} {detect}\n")
    return lines
