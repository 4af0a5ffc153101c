"""The projection of a verified attestation that the policy reads, and the whole statement on request."""

from __future__ import annotations

from typing import Any

import pytest
from support.policy_inputs import ARTIFACT, MERGED, PR_HEAD, PRODUCTION_STEPS, attestation, passing_predicate

from vouch.rollout.attestations.model import Attestation, Signer, Statement, Subject
from vouch.rollout.policy.projection import PROJECTION, named_commits, project


def test_a_projection_keeps_what_the_policy_reads_in_the_order_it_reads_it() -> None:
    item = attestation("tests")
    seen = project(item)
    assert list(seen) == ["step", "predicate", "subjects", "commits", "signers", "source", "digest"]
    assert seen["step"] == "tests"
    assert seen["predicate"] == {"result": "PASSED", "failedTests": []}
    assert seen["subjects"] == [ARTIFACT]
    assert seen["commits"] == [MERGED]
    assert seen["signers"] == [{"kind": "key", "keyid": "ci-key"}]
    assert seen["source"] == "attestations/tests.json"
    assert seen["digest"] == item.digest


@pytest.mark.parametrize("step", PRODUCTION_STEPS)
def test_each_step_keeps_only_its_projected_fields(step: str) -> None:
    predicate = passing_predicate(step, MERGED)
    kept = project(attestation(step, predicate))["predicate"]
    assert set(kept) == set(PROJECTION.get(step, {})) & set(predicate)


def test_nested_fields_are_pruned_item_by_item() -> None:
    scan = passing_predicate("vulnerability-scan", MERGED)
    assert project(attestation("vulnerability-scan", scan))["predicate"] == {
        "scanner": {
            "result": [
                {"id": "CVE-2024-0001", "severity": [{"score": "MEDIUM"}]},
                {"id": "CVE-2024-0002", "severity": [{"score": "7.5"}]},
            ]
        }
    }
    dco = passing_predicate("dco", MERGED)
    assert project(attestation("dco", dco))["predicate"] == {
        "passed": True,
        "commits": [{"sha": MERGED, "signed_off": True}],
    }


@pytest.mark.parametrize(
    ("step", "predicate"),
    [
        ("secret-scan", {"findings": 2}),
        ("secret-scan", {"findings": ["aws-key in a.env"]}),
        ("vulnerability-scan", {"scanner": "trivy"}),
        ("review-approval", {"approvers": "bob"}),
    ],
)
def test_a_value_of_another_shape_is_kept_whole_for_the_policy_to_judge(step: str, predicate: dict[str, Any]) -> None:
    assert project(attestation(step, predicate))["predicate"] == predicate


def test_a_step_vouch_does_not_judge_keeps_no_predicate_field() -> None:
    assert project(attestation("build"))["predicate"] == {}
    unknown = Attestation(
        Statement((Subject("app", {"sha256": "ab" * 32}),), "https://example.com/custom/v1", {"x": 1}),
        (Signer("key", keyid="k"),),
        "custom.json",
        "sha256:" + "00" * 32,
        None,
    )
    assert (project(unknown)["step"], project(unknown)["predicate"]) == (None, {})
    assert project(unknown, full_statement=True)["statement"]["predicateType"] == "https://example.com/custom/v1"


def test_subjects_are_sha256_digests_and_other_algorithms_are_left_out() -> None:
    statement = Statement(
        (Subject("app", {"sha256": "ab" * 32}), Subject("app.sig", {"sha512": "cd" * 64})),
        "https://vouch.dev/attestations/coverage/v1",
        {"percent": 90},
    )
    seen = project(Attestation(statement, (Signer("key", keyid="k"),), "c.json", "sha256:" + "00" * 32, "coverage"))
    assert seen["subjects"] == ["sha256:" + "ab" * 32]


def test_signers_leave_out_the_fields_that_do_not_apply() -> None:
    ci = Signer(kind="sigstore", identity="https://ci.example.com/build.yml", issuer="https://token.example.com")
    seen = project(attestation("build", signers=(ci, Signer(kind="key", keyid="k"))))
    assert seen["signers"] == [
        {"kind": "sigstore", "identity": "https://ci.example.com/build.yml", "issuer": "https://token.example.com"},
        {"kind": "key", "keyid": "k"},
    ]


@pytest.mark.parametrize(
    ("step", "predicate", "commits"),
    [
        ("dco", {"commit": MERGED, "configuration": [{"digest": {"gitCommit": PR_HEAD}}]}, [MERGED]),
        ("build", {"buildDefinition": {"resolvedDependencies": [{"digest": {"gitCommit": MERGED}}]}}, [MERGED]),
        (
            "build",
            {
                "buildDefinition": {"resolvedDependencies": "none"},
                "configuration": [{"digest": {"gitCommit": PR_HEAD}}],
            },
            [PR_HEAD],
        ),
        ("tests", {"configuration": [{"digest": {"gitCommit": MERGED}}, {"digest": {"gitCommit": MERGED}}]}, [MERGED]),
        (
            "tests",
            {"configuration": [{"digest": {"gitCommit": PR_HEAD}}, {"digest": {"gitCommit": MERGED}}]},
            [PR_HEAD, MERGED],
        ),
        ("tests", {"configuration": [{"uri": "ci.yaml"}, {"digest": {"gitCommit": 42}}, "x"]}, []),
        ("tests", {"buildDefinition": {"resolvedDependencies": [{"digest": {"gitCommit": MERGED}}]}}, []),
        ("coverage", {"commit": 42, "percent": 90}, []),
        ("vulnerability-scan", {"scanner": {"result": []}}, []),
    ],
    ids=[
        "own-commit-wins",
        "slsa-dependencies",
        "slsa-falls-back-to-configuration",
        "each-once",
        "in-order",
        "only-string-git-commits",
        "dependencies-only-for-build",
        "a-commit-that-is-no-string",
        "none",
    ],
)
def test_named_commits(step: str, predicate: dict[str, Any], commits: list[str]) -> None:
    assert named_commits(step, predicate) == commits


def test_a_full_statement_is_the_in_toto_statement_as_signed() -> None:
    item = attestation("coverage")
    seen = project(item, full_statement=True)
    assert seen["statement"] == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "checkout", "digest": {"sha256": ARTIFACT.removeprefix("sha256:")}}],
        "predicateType": "https://vouch.dev/attestations/coverage/v1",
        "predicate": passing_predicate("coverage", MERGED),
    }
    assert {k: v for k, v in seen.items() if k != "statement"} == project(item)
