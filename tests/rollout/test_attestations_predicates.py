"""Predicate types: steps, shipped schemas, and the problems a malformed predicate reports."""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from support.attestations import DSSE_BUNDLE, sigstore_file

from vouch.core.errors import InputError
from vouch.rollout.attestations.predicates import (
    DEPLOYED_V1,
    PREDICATE_TYPES,
    SLSA_PROVENANCE_V1,
    TEST_RESULT_V01,
    VOUCH_PREFIX,
    VOUCH_STEPS,
    VULNS_V02,
    has_property,
    predicate_type_for,
    step_of,
    validate_predicate,
)

COMMIT = "3f2a9c41d0b7e6f58a1c2d3e4f5061728394a5b6"

VALID: dict[str, dict[str, Any]] = {
    "dco": {
        "commit": COMMIT,
        "range": "main..feature",
        "passed": True,
        "commits": [{"sha": COMMIT, "author": "Ada <ada@example.com>", "signed_off": True}],
    },
    "signed-commits": {
        "passed": False,
        "commits": [{"sha": COMMIT, "verified": False, "format": "none", "status": "N", "reason": "unsigned"}],
    },
    "coverage": {"commit": COMMIT, "percent": 91.2, "lines_covered": 912, "lines_total": 1000, "tool": "coverage.py"},
    "secret-scan": {"scanner": {"name": "gitleaks", "version": "8.18"}, "findings": []},
    "review-approval": {"change": "#42", "author": "ada", "approvers": [{"name": "grace", "commit": COMMIT}]},
    "ephemeral-environment-health": {"healthy": True, "checks": [{"name": "http", "passed": True}]},
    "network-tests": {"result": "PASSED", "passed": 40, "failed": 0, "mocked_backends": ["payments"]},
    "deployed": {
        "environment": "staging",
        "service": "checkout",
        "version": "2.4.1",
        "promotion_id": "p-123",
        "steps": [{"label": "1"}, {"label": "50%", "canary_replicas": 2, "stable_replicas": 2, "outcome": "passed"}],
        "finished_at": "2024-05-01T12:00:00Z",
    },
    "artifact-signature": {"digest": "sha256:" + "ab" * 32},
}


def test_every_vouch_step_has_a_valid_schema_whose_id_is_its_type() -> None:
    folder = resources.files("vouch.rollout.attestations.schemas")
    for step in VOUCH_STEPS:
        schema = json.loads(folder.joinpath(f"{step}.v1.json").read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == predicate_type_for(step) == f"{VOUCH_PREFIX}{step}/v1"
    assert set(VALID) == set(VOUCH_STEPS)


@pytest.mark.parametrize("step", VOUCH_STEPS)
def test_a_well_formed_predicate_has_no_problems(step: str) -> None:
    assert validate_predicate(predicate_type_for(step), VALID[step]) == []


@pytest.mark.parametrize(
    ("step", "predicate", "problems"),
    [
        ("dco", {"passed": True}, ["predicate: 'commits' is a required property"]),
        ("dco", {"passed": True, "commits": [{"sha": "xyz", "signed_off": "yes"}]}, None),
        ("coverage", {"percent": 101}, ["percent: 101 is greater than the maximum of 100"]),
        ("review-approval", {"author": "ada", "approvers": [{}]}, ["approvers[0]: 'name' is a required property"]),
        ("deployed", {**VALID["deployed"], "finished_at": "yesterday"}, None),
        ("deployed", {**VALID["deployed"], "steps": []}, ["steps: [] should be non-empty"]),
        ("network-tests", {"result": "GREEN"}, None),
    ],
)
def test_a_malformed_predicate_names_each_problem(step: str, predicate: dict[str, Any], problems: Any) -> None:
    found = validate_predicate(predicate_type_for(step), predicate)
    assert found
    if problems is not None:
        assert found == problems


def test_nested_problems_name_their_path() -> None:
    found = validate_predicate(
        predicate_type_for("dco"), {"passed": True, "commits": [{"sha": "xyz", "signed_off": 1}]}
    )
    assert found == [
        "commits[0].sha: 'xyz' does not match '^[0-9a-f]{7,64}$'",
        "commits[0].signed_off: 1 is not of type 'boolean'",
    ]


def test_standard_types_map_to_steps() -> None:
    assert step_of(SLSA_PROVENANCE_V1) == "build"
    assert step_of(TEST_RESULT_V01) == "tests"
    assert step_of(VULNS_V02) == "vulnerability-scan"
    assert step_of(DEPLOYED_V1) == "deployed"
    assert step_of("https://example.com/unknown/v1") is None
    assert predicate_type_for("vulnerability-scan") == VULNS_V02
    assert len(set(PREDICATE_TYPES.values())) == len(PREDICATE_TYPES), "one predicate type per step"


def test_an_unknown_step_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"unknown step 'lint'; known steps: artifact-signature, build, coverage"):
        predicate_type_for("lint")
    assert predicate_type_for("https://example.com/lint/v1") == "https://example.com/lint/v1"


def test_real_slsa_provenance_passes_the_structural_checks() -> None:
    bundle = json.loads(sigstore_file(DSSE_BUNDLE).read_bytes())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert validate_predicate(statement["predicateType"], statement["predicate"]) == []


@pytest.mark.parametrize(
    ("predicate_type", "predicate", "problems"),
    [
        (SLSA_PROVENANCE_V1, {}, ["buildDefinition: expected an object", "runDetails: expected an object"]),
        (
            SLSA_PROVENANCE_V1,
            {"buildDefinition": {"buildType": ""}, "runDetails": {"builder": {}}},
            [
                "buildDefinition.buildType: expected a non-empty string",
                "runDetails.builder.id: expected a non-empty string",
            ],
        ),
        (TEST_RESULT_V01, {"result": "PASSED", "configuration": []}, []),
        (
            TEST_RESULT_V01,
            {"result": "OK", "failedTests": "all"},
            [
                "result: expected PASSED, WARNED or FAILED, got 'OK'",
                "configuration: expected a list of resource descriptors",
                "failedTests: expected a list of test names",
            ],
        ),
        (VULNS_V02, {"scanner": {"uri": "pkg:github/aquasecurity/trivy", "result": []}}, []),
        (
            VULNS_V02,
            {
                "scanner": {
                    "uri": "pkg:trivy",
                    "result": [{"id": "CVE-1", "severity": [{"method": "nvd", "score": "9"}]}],
                }
            },
            [],
        ),
        (
            VULNS_V02,
            {"scanner": {"uri": "pkg:trivy"}},
            ["scanner.result: expected a list (empty when nothing was found)"],
        ),
        (VULNS_V02, {"scanner": {"uri": "x", "result": [{"severity": "high"}]}}, None),
        ("https://example.com/anything/v1", {"free": "form"}, []),
    ],
)
def test_standard_predicates_get_structural_checks(predicate_type: str, predicate: Any, problems: Any) -> None:
    found = validate_predicate(predicate_type, predicate)
    if problems is None:
        assert found == [
            "scanner.result[0].id: expected a non-empty string",
            "scanner.result[0].severity: expected a list",
        ]
    else:
        assert found == problems


def test_which_types_record_a_commit() -> None:
    assert has_property(predicate_type_for("dco"), "commit")
    assert has_property(predicate_type_for("coverage"), "commit")
    assert not has_property(SLSA_PROVENANCE_V1, "commit")
    assert not has_property(predicate_type_for("artifact-signature"), "commit")
