"""vouch's default policy: what each environment requires, and a denial of its own for each thing missing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support.policy_inputs import (
    ARTIFACT,
    DEV_STEPS,
    MERGED,
    OTHER_ARTIFACT,
    PR_HEAD,
    PRODUCTION_STEPS,
    STAGING_STEPS,
    attestation,
    complete,
    document,
    passing_predicate,
    replace,
    without,
)

from vouch.rollout.attestations.model import Rejected, Signer
from vouch.rollout.attestations.predicates import predicate_type_for, validate_predicate
from vouch.rollout.policy.base import Decision
from vouch.rollout.policy.rego import RegoPolicy


@pytest.fixture(scope="module")
def policy() -> RegoPolicy:
    return RegoPolicy.default()


def decide(policy: RegoPolicy, doc: dict[str, Any]) -> Decision:
    decision = policy.evaluate(doc)
    assert decision.allow is (not decision.denials)
    # The policy's own reasons, never the engine failing closed on it (see the sprintf trap in the policy).
    assert not any(d.startswith(("policy evaluation failed", "policy decision malformed")) for d in decision.denials)
    return decision


def changed(step: str, change: Callable[[dict[str, Any]], None], *, commit: str = MERGED) -> Any:
    predicate = passing_predicate(step, commit)
    change(predicate)
    return attestation(step, predicate, commit=commit)


@pytest.mark.parametrize("step", PRODUCTION_STEPS)
def test_the_test_predicates_are_well_formed_for_vouchs_schemas(step: str) -> None:
    assert validate_predicate(predicate_type_for(step), passing_predicate(step, MERGED)) == []


@pytest.mark.parametrize("environment", ["dev", "staging", "production"])
def test_a_complete_input_is_allowed(policy: RegoPolicy, environment: str) -> None:
    decision = decide(policy, document(environment))
    assert decision.allow, decision.denials


def test_dev_needs_only_build_and_tests(policy: RegoPolicy) -> None:
    assert decide(policy, document("dev", complete(DEV_STEPS))).allow
    assert not decide(policy, document("staging", complete(DEV_STEPS))).allow


@pytest.mark.parametrize("step", STAGING_STEPS)
def test_each_missing_staging_step_is_its_own_denial(policy: RegoPolicy, step: str) -> None:
    decision = decide(policy, document("staging", without(complete(STAGING_STEPS), step)))
    assert len(decision.denials) == 1, decision.denials
    denial = decision.denials[0]
    assert denial.startswith(f"staging: step '{step}' is missing: expected ")
    assert f"for artifact {ARTIFACT} at commit {MERGED}" in denial


def test_every_missing_step_is_listed(policy: RegoPolicy) -> None:
    decision = decide(policy, document("staging", complete(["build"])))
    missing = {d.split("'")[1] for d in decision.denials}
    assert missing == set(STAGING_STEPS) - {"build"}


def test_production_requires_vouchs_own_deployed_attestation_from_staging(policy: RegoPolicy) -> None:
    decision = decide(policy, document("production", complete(STAGING_STEPS)))
    assert decision.denials == (
        "production: step 'deployed' is missing: expected vouch's own attestation that it deployed this digest "
        f"to staging and it held, for artifact {ARTIFACT} at commit {MERGED}",
    )


def test_production_refuses_a_deployment_to_another_environment_or_of_another_digest(policy: RegoPolicy) -> None:
    to_dev = changed("deployed", lambda p: p.update(environment="dev"))
    decision = decide(policy, document("production", replace(complete(PRODUCTION_STEPS), to_dev)))
    assert decision.denials == (
        "production: step 'deployed': attestation attestations/deployed.json does not count: "
        "it records a deployment to dev, expected staging",
    )
    other_digest = attestation("deployed", digest=OTHER_ARTIFACT)
    decision = decide(policy, document("production", replace(complete(PRODUCTION_STEPS), other_digest)))
    assert len(decision.denials) == 1
    assert "do not include the artifact" in decision.denials[0]


FAILURES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("tests", lambda p: p.update(result="FAILED", failedTests=["test_pay"]), "the tests' result is FAILED"),
    ("coverage", lambda p: p.update(percent=71.2), "coverage is 71.2%, below the minimum of 80% for staging"),
    ("coverage", lambda p: p.pop("percent"), "the coverage report gives no percent"),
    (
        "vulnerability-scan",
        lambda p: p["scanner"]["result"].append(
            {"id": "CVE-2024-9", "severity": [{"method": "nvd", "score": "CRITICAL"}]}
        ),
        '1 critical vulnerabilities, at most 0 allowed in staging: ["CVE-2024-9"]',
    ),
    (
        "vulnerability-scan",
        lambda p: p["scanner"]["result"].append(
            {"id": "CVE-2024-8", "severity": [{"method": "cvss_score", "score": 9.8}]}
        ),
        '1 critical vulnerabilities, at most 0 allowed in staging: ["CVE-2024-8"]',
    ),
    (
        "vulnerability-scan",
        lambda p: p["scanner"]["result"].extend(
            {"id": f"CVE-2024-10{n}", "severity": [{"method": "nvd", "score": "high"}]} for n in range(3)
        ),
        "4 high vulnerabilities, at most 3 allowed in staging",
    ),
    ("vulnerability-scan", lambda p: p["scanner"].pop("result"), "the vulnerability scan has no scanner.result list"),
    (
        "secret-scan",
        lambda p: p.update(findings=[{"rule": "aws-access-key", "file": "config.py", "line": 3}]),
        'the secret scan found 1 secret(s): ["aws-access-key in config.py"]',
    ),
    (
        "dco",
        lambda p: p.update(passed=False) or p["commits"][0].update(signed_off=False, reason="no Signed-off-by"),
        f"commit {MERGED} is not signed off (DCO): no Signed-off-by",
    ),
    (
        "signed-commits",
        lambda p: p.update(passed=False) or p["commits"][0].update(verified=False, reason="no signature"),
        f"commit {MERGED} has no verified signature: no signature",
    ),
    ("signed-commits", lambda p: p.update(passed=False), "the signed-commits check did not pass"),
    ("dco", lambda p: p.update(passed=False), "the DCO check did not pass"),
    (
        "dco",
        lambda p: p["commits"].append({"sha": PR_HEAD, "signed_off": False}),
        f"commit {PR_HEAD} is not signed off (DCO): (not given)",
    ),
    (
        "secret-scan",
        lambda p: p.update(findings=[{"rule": "private-key"}, {"rule": "token", "file": "a.env"}]),
        'the secret scan found 2 secret(s): ["private-key in (not given)", "token in a.env"]',
    ),
    ("secret-scan", lambda p: p.update(findings=2), "the secret scan reports findings: 2"),
    (
        "review-approval",
        lambda p: p.update(approvers=[{"name": "Ann", "commit": MERGED}]),
        "no approval by someone other than the author ann",
    ),
    (
        "review-approval",
        lambda p: p.update(approvers=[{"name": "bob", "commit": PR_HEAD}]),
        f"no approval by someone other than the author ann for commit {MERGED}",
    ),
    (
        "ephemeral-environment-health",
        lambda p: p.update(healthy=False, checks=[{"name": "http", "passed": False}]),
        'the ephemeral environment was not healthy (failed checks: ["http"])',
    ),
    ("network-tests", lambda p: p.update(result="FAILED", failed_tests=["test_refund"]), "the tests' result is FAILED"),
]


@pytest.mark.parametrize(("step", "change", "reason"), FAILURES)
def test_each_failed_step_is_its_own_denial_saying_why(
    policy: RegoPolicy, step: str, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    attestations = replace(complete(STAGING_STEPS), changed(step, change))
    decision = decide(policy, document("staging", attestations))
    prefix = f"staging: step '{step}': attestation attestations/{step}.json does not count: "
    assert len(decision.denials) == 1, decision.denials
    assert decision.denials[0].startswith(prefix), decision.denials
    assert reason in decision.denials[0]


def test_the_commit_author_may_not_approve_either(policy: RegoPolicy) -> None:
    bob_approves = changed("review-approval", lambda p: p.update(approvers=[{"name": "bob"}]))
    doc = document("staging", replace(complete(STAGING_STEPS), bob_approves), author="Bob")
    assert "no approval by someone other than the author" in decide(policy, doc).denials[0]
    assert decide(policy, document("staging", replace(complete(STAGING_STEPS), bob_approves))).allow


def test_several_failures_give_several_denials(policy: RegoPolicy) -> None:
    low = changed("coverage", lambda p: p.update(percent=50))
    attestations = replace(without(complete(STAGING_STEPS), "tests", "dco"), low)
    denials = decide(policy, document("staging", attestations)).denials
    assert len(denials) == 3
    assert sum("is missing" in d for d in denials) == 2
    assert sum("coverage is 50%" in d for d in denials) == 1


def test_one_passing_attestation_is_enough_for_a_step(policy: RegoPolicy) -> None:
    failed = changed("tests", lambda p: p.update(result="FAILED"))
    attestations = [*complete(STAGING_STEPS), failed]
    assert decide(policy, document("staging", attestations)).allow


# --------------------------------------------------------------------------- commit identity


def test_a_fast_forward_merge_reuses_the_pull_requests_attestations(policy: RegoPolicy) -> None:
    # Fast-forward: the pull request's head is the released commit, so its attestations name it.
    doc = document("staging", complete(STAGING_STEPS, commit=MERGED), merge="fast-forward", pr_head=MERGED)
    assert decide(policy, doc).allow


def test_a_non_fast_forward_merge_must_earn_its_attestations_again(policy: RegoPolicy) -> None:
    from_the_pr = complete(STAGING_STEPS, commit=PR_HEAD)
    doc = document("staging", from_the_pr, merge="non-fast-forward", pr_head=PR_HEAD)
    denials = decide(policy, doc).denials
    commit_bound = set(STAGING_STEPS) - {"vulnerability-scan"}
    assert {d.split("'")[1] for d in denials} == commit_bound
    for denial in denials:
        assert (
            f"it was made for the pull request head {PR_HEAD}; a non-fast-forward merge made the new commit" in (denial)
            or "no approval" in denial
        )
    fresh = complete(STAGING_STEPS, commit=MERGED)
    assert decide(policy, document("staging", fresh, merge="non-fast-forward", pr_head=PR_HEAD)).allow


def test_a_fast_forward_whose_pull_request_head_is_another_commit_is_denied(policy: RegoPolicy) -> None:
    decision = decide(policy, document("staging", merge="fast-forward", pr_head=PR_HEAD))
    assert decision.denials == (
        f"staging: commit: the merge is reported as fast-forward, but the pull request head {PR_HEAD} "
        f"is not the released commit {MERGED}",
    )


def test_an_attestation_for_another_commit_does_not_count(policy: RegoPolicy) -> None:
    elsewhere = "3d" * 20
    decision = decide(
        policy, document("staging", replace(complete(STAGING_STEPS), attestation("build", commit=elsewhere)))
    )
    assert decision.denials == (
        "staging: step 'build': attestation attestations/build.json does not count: "
        f'it was made for commit {{"{elsewhere}"}}, not the released commit {MERGED}',
    )


def test_a_commit_bound_step_must_name_a_commit_but_an_artifact_scan_need_not(policy: RegoPolicy) -> None:
    anonymous = changed("coverage", lambda p: p.pop("commit"))
    decision = decide(policy, document("staging", replace(complete(STAGING_STEPS), anonymous)))
    assert decision.denials == (
        "staging: step 'coverage': attestation attestations/coverage.json does not count: "
        f"it names no commit; expected one made for commit {MERGED}",
    )
    scan = attestation("vulnerability-scan")
    assert "commit" not in scan.statement.predicate
    assert decide(policy, document("staging", replace(complete(STAGING_STEPS), scan))).allow


def test_an_unknown_merge_kind_still_needs_attestations_for_the_commit(policy: RegoPolicy) -> None:
    assert decide(policy, document("staging", merge=None, pr_head=None)).allow
    denied = decide(policy, document("staging", complete(STAGING_STEPS, commit=PR_HEAD), merge=None, pr_head=None))
    assert {d.split("'")[1] for d in denied.denials} == set(STAGING_STEPS) - {"vulnerability-scan"}
    assert all("not the released commit" in d or "no approval" in d for d in denied.denials), denied.denials


def test_an_attestation_about_another_artifact_does_not_count(policy: RegoPolicy) -> None:
    other = attestation("tests", digest=OTHER_ARTIFACT)
    decision = decide(policy, document("staging", replace(complete(STAGING_STEPS), other)))
    assert decision.denials == (
        "staging: step 'tests': attestation attestations/tests.json does not count: "
        f'its subjects ["{OTHER_ARTIFACT}"] do not include the artifact {ARTIFACT}',
    )


# --------------------------------------------------------------------------- signers, rejected, settings


def test_a_step_signed_by_a_signer_not_accepted_does_not_count(policy: RegoPolicy) -> None:
    settings = {"signers": {"deployed": [{"kind": "key", "keyid": "vouch-key"}]}}
    assert decide(policy, document("production", settings=settings)).allow
    forged = attestation("deployed", signers=(Signer(kind="key", keyid="ci-key"),))
    doc = document("production", replace(complete(PRODUCTION_STEPS), forged), settings=settings)
    assert decide(policy, doc).denials == (
        "production: step 'deployed': attestation attestations/deployed.json does not count: "
        "signed by [\"key ci-key\"], none of the signers accepted for 'deployed' in production: "
        '[{"keyid": "vouch-key", "kind": "key"}]',
    )


def test_a_sigstore_identity_can_be_required(policy: RegoPolicy) -> None:
    ci = Signer(kind="sigstore", identity="https://ci.example.com/build.yml", issuer="https://token.example.com")
    settings = {"signers": {"build": [{"identity": ci.identity, "issuer": ci.issuer}]}}
    signed = attestation("build", signers=(ci,))
    assert decide(policy, document("staging", replace(complete(STAGING_STEPS), signed), settings=settings)).allow
    missing = decide(policy, document("staging", without(complete(STAGING_STEPS), "build"), settings=settings))
    assert missing.denials[0].endswith(f', signed by one of [{{"identity": "{ci.identity}", "issuer": "{ci.issuer}"}}]')


def test_rejected_attestations_are_listed_when_a_step_is_missing(policy: RegoPolicy) -> None:
    rejected = [
        Rejected(source="attestations/scan.json", digest="sha256:" + "9" * 64, reason="signed by an untrusted key")
    ]
    doc = document("staging", without(complete(STAGING_STEPS), "vulnerability-scan"), rejected=rejected)
    denials = decide(policy, doc).denials
    assert len(denials) == 2
    assert (
        "staging: an attestation was rejected, so it counts for no step: attestations/scan.json "
        f"(sha256:{'9' * 64}): signed by an untrusted key"
    ) in denials
    assert decide(policy, document("staging", rejected=rejected)).allow


def test_an_environment_without_defaults_gets_productions(policy: RegoPolicy) -> None:
    decision = decide(policy, document("canary-eu", complete(STAGING_STEPS)))
    assert len(decision.denials) == 1
    assert decision.denials[0].startswith("canary-eu: step 'deployed' is missing")


def test_settings_override_the_environment_defaults(policy: RegoPolicy) -> None:
    stricter = decide(policy, document("staging", settings={"min_coverage": 95, "max_high": 0}))
    assert len(stricter.denials) == 2
    assert any("coverage is 91.5%, below the minimum of 95% for staging" in d for d in stricter.denials)
    assert any("1 high vulnerabilities, at most 0 allowed in staging" in d for d in stricter.denials)
    only_build = decide(policy, document("staging", complete(["build"]), settings={"required": ["build"]}))
    assert only_build.allow
    custom = decide(policy, document("dev", settings={"required": ["build", "tests", "load-test"]}))
    assert custom.denials == (
        "dev: step 'load-test' is missing: expected a verified 'load-test' attestation that passed, "
        f"for artifact {ARTIFACT} at commit {MERGED}",
    )


def test_an_input_the_policy_cannot_read_denies(policy: RegoPolicy) -> None:
    # Without these checks every rule would be undefined, the set of denials empty, and the answer an allow.
    assert decide(policy, {}).denials == (
        "policy input malformed: input.artifact.digest must be sha256:HEX",
        "policy input malformed: input.attestations must be a list",
        "policy input malformed: input.commit.sha must be the released commit",
        "policy input malformed: input.environment must be a non-empty string",
    )
    doc = document("dev", settings={"required": "build"})
    assert decide(policy, doc).denials == (
        "policy input malformed: the environment's required steps must be a list of step names",
    )


# --------------------------------------------------------------------------- failing closed on the predicate's shape


@pytest.mark.parametrize(
    ("step", "change"),
    [
        # test-result v0.1 makes failedTests optional, and vouch's network-tests schema failed_tests.
        ("tests", lambda p: p.update(result="FAILED") or p.pop("failedTests")),
        ("network-tests", lambda p: p.update(result="FAILED")),
    ],
    ids=["tests-without-failedTests", "network-tests-without-failed_tests"],
)
def test_failed_tests_that_name_no_failed_test_still_deny(
    policy: RegoPolicy, step: str, change: Callable[[dict[str, Any]], None]
) -> None:
    decision = decide(policy, document("staging", replace(complete(STAGING_STEPS), changed(step, change))))
    assert decision.denials == (
        f"staging: step '{step}': attestation attestations/{step}.json does not count: "
        "the tests' result is FAILED, expected PASSED (failed: [])",
    )


def test_a_step_that_fails_for_a_reason_no_rule_words_still_denies_and_says_so(policy: RegoPolicy) -> None:
    # Such a predicate never passes verification (dco's schema wants a list); a hand-made input can hold it.
    odd = changed("dco", lambda p: p.update(commits="1f1f1f1"))
    decision = decide(policy, document("staging", replace(complete(STAGING_STEPS), odd)))
    assert decision.denials == ("staging: step 'dco' did not pass, and this policy could not say why",)


def test_whole_statements_change_no_decision(policy: RegoPolicy) -> None:
    # The default policy reads only the projection; a policy input that also carries the statements is the same case.
    cases = [complete(STAGING_STEPS)] + [
        replace(complete(STAGING_STEPS), changed(step, change)) for step, change, _ in FAILURES
    ]
    for attestations in cases:
        projected = document("staging", attestations)
        whole = document("staging", attestations, full_statements=True)
        assert whole["attestations"] != projected["attestations"]
        assert decide(policy, whole).denials == decide(policy, projected).denials
