"""Policy inputs for tests: verified attestations for every pipeline step, passing unless told otherwise.

Everything is built through the real model (``Attestation``) and ``policy_input``,
so the tests read the same documents the gate will give the policy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from vouch.rollout.attestations.model import Attestation, Rejected, Signer, Statement, Subject
from vouch.rollout.attestations.predicates import predicate_type_for
from vouch.rollout.policy.input import policy_input

ARTIFACT = "sha256:" + "ab" * 32
OTHER_ARTIFACT = "sha256:" + "cd" * 32
MERGED = "1f" * 20
"""The released commit."""
PR_HEAD = "2e" * 20
"""A pull request head that is not the released commit (a non-fast-forward merge)."""
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CI_KEY = Signer(kind="key", keyid="ci-key")
VOUCH_KEY = Signer(kind="key", keyid="vouch-key")

STAGING_STEPS = (
    "build",
    "tests",
    "dco",
    "signed-commits",
    "vulnerability-scan",
    "secret-scan",
    "coverage",
    "review-approval",
    "ephemeral-environment-health",
    "network-tests",
)
PRODUCTION_STEPS = (*STAGING_STEPS, "deployed")
DEV_STEPS = ("build", "tests")


def passing_predicate(step: str, commit: str) -> dict[str, Any]:
    """A predicate recording that ``step`` passed on ``commit``."""
    predicates: dict[str, dict[str, Any]] = {
        "build": {
            "buildDefinition": {
                "buildType": "https://ci.example.com/build/v1",
                "externalParameters": {"repository": "https://git.example.com/checkout"},
                "resolvedDependencies": [
                    {"uri": "git+https://git.example.com/checkout", "digest": {"gitCommit": commit}}
                ],
            },
            "runDetails": {"builder": {"id": "https://ci.example.com/runner"}},
        },
        "tests": {
            "result": "PASSED",
            "configuration": [{"name": "ci.yaml", "digest": {"gitCommit": commit}}],
            "url": "https://ci.example.com/runs/1",
            "passedTests": ["test_checkout"],
            "warnedTests": [],
            "failedTests": [],
        },
        "vulnerability-scan": {
            "scanner": {
                "uri": "pkg:github/aquasecurity/trivy@0.50.0",
                "version": "0.50.0",
                "result": [
                    {"id": "CVE-2024-0001", "severity": [{"method": "nvd", "score": "MEDIUM"}]},
                    {"id": "CVE-2024-0002", "severity": [{"method": "cvss_score", "score": "7.5"}]},
                ],
            },
            "metadata": {"scanStartedOn": "2026-03-01T10:00:00Z", "scanFinishedOn": "2026-03-01T10:01:00Z"},
        },
        "dco": {
            "commit": commit,
            "range": "main.." + commit,
            "passed": True,
            "commits": [{"sha": commit, "author": "Ann <ann@example.com>", "signed_off": True}],
        },
        "signed-commits": {
            "commit": commit,
            "range": "main.." + commit,
            "passed": True,
            "commits": [{"sha": commit, "verified": True, "signer": "ann@example.com", "format": "ssh"}],
        },
        "coverage": {"commit": commit, "percent": 91.5, "tool": "coverage.py 7.6"},
        "secret-scan": {"commit": commit, "scanner": {"name": "gitleaks", "version": "8.18"}, "findings": []},
        "review-approval": {
            "commit": commit,
            "change": "42",
            "author": "ann",
            "approvers": [{"name": "bob", "commit": commit}],
        },
        "ephemeral-environment-health": {
            "commit": commit,
            "healthy": True,
            "checks": [{"name": "http", "passed": True}],
        },
        "network-tests": {
            "commit": commit,
            "result": "PASSED",
            "passed": 12,
            "failed": 0,
            "mocked_backends": ["payments"],
        },
        "deployed": {
            "commit": commit,
            "environment": "staging",
            "service": "checkout",
            "version": "2.4.1",
            "promotion_id": "p-1",
            "steps": [{"label": "1"}, {"label": "100%"}],
            "finished_at": "2026-03-01T11:00:00Z",
        },
    }
    return copy.deepcopy(predicates[step])


def attestation(
    step: str,
    predicate: Mapping[str, Any] | None = None,
    *,
    commit: str = MERGED,
    digest: str = ARTIFACT,
    signers: tuple[Signer, ...] | None = None,
    source: str | None = None,
) -> Attestation:
    """A verified attestation for ``step`` about ``digest``, passing on ``commit`` unless ``predicate`` says else."""
    body = passing_predicate(step, commit) if predicate is None else dict(predicate)
    statement = Statement(
        subjects=(Subject(name="checkout", digest={"sha256": digest.removeprefix("sha256:")}),),
        predicate_type=predicate_type_for(step),
        predicate=body,
    )
    signed_by = signers if signers is not None else ((VOUCH_KEY,) if step == "deployed" else (CI_KEY,))
    return Attestation(
        statement=statement,
        signers=signed_by,
        source=source or f"attestations/{step}.json",
        digest="sha256:" + (step.encode().hex() * 64)[:64],
        step=step,
    )


def complete(steps: Iterable[str], *, commit: str = MERGED) -> list[Attestation]:
    return [attestation(step, commit=commit) for step in steps]


def document(
    environment: str = "staging",
    attestations: Iterable[Attestation] | None = None,
    *,
    merge: str | None = "fast-forward",
    pr_head: str | None = MERGED,
    author: str | None = "ann",
    rejected: Iterable[Rejected] = (),
    settings: Mapping[str, Any] | None = None,
    full_statements: bool = False,
) -> dict[str, Any]:
    """The policy input for releasing ``checkout`` 2.4.1 (``ARTIFACT`` at ``MERGED``) into ``environment``."""
    if attestations is None:
        steps = {"dev": DEV_STEPS, "staging": STAGING_STEPS}.get(environment, PRODUCTION_STEPS)
        attestations = complete(steps)
    commit: dict[str, Any] = {"sha": MERGED, "merge": merge, "pr_head": pr_head}
    if author is not None:
        commit["author"] = author
    return policy_input(
        environment=environment,
        service="checkout",
        version="2.4.1",
        artifact={"name": "registry.example.com/checkout", "digest": ARTIFACT},
        commit=commit,
        attestations=list(attestations),
        rejected=list(rejected),
        now=NOW,
        settings=settings,
        full_statements=full_statements,
    )


def replace(attestations: Iterable[Attestation], *new: Attestation) -> list[Attestation]:
    """``attestations`` with those of the steps in ``new`` swapped for ``new``."""
    steps = {a.step for a in new}
    return [a for a in attestations if a.step not in steps] + list(new)


def without(attestations: Iterable[Attestation], *steps: str) -> list[Attestation]:
    return [a for a in attestations if a.step not in steps]
