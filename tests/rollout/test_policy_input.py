"""The policy input document: built from verified attestations, documented by its JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from support.policy_inputs import ARTIFACT, MERGED, PR_HEAD, PRODUCTION_STEPS, attestation, document

from vouch.core.errors import InputError
from vouch.rollout.attestations.model import Rejected
from vouch.rollout.policy.input import canonical_digest, canonical_json, input_schema, policy_input, read_decision
from vouch.rollout.policy.projection import project


def validator() -> Draft202012Validator:
    schema = input_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator().iter_errors(doc)]


def test_a_built_input_validates_against_the_schema() -> None:
    rejected = [Rejected(source="attestations/x.json", digest="sha256:" + "0" * 64, reason="signature does not verify")]
    doc = document(
        "production",
        rejected=rejected,
        settings={"min_coverage": 90, "signers": {"deployed": [{"keyid": "vouch-key"}]}},
    )
    assert len(doc["attestations"]) == len(PRODUCTION_STEPS)
    assert errors(doc) == []


@pytest.mark.parametrize(
    ("merge", "pr_head", "author"),
    [("fast-forward", MERGED, "ann"), ("non-fast-forward", PR_HEAD, None), (None, None, None)],
)
def test_every_commit_shape_validates(merge: str | None, pr_head: str | None, author: str | None) -> None:
    doc = document("dev", merge=merge, pr_head=pr_head, author=author)
    assert doc["commit"]["merge"] == merge
    assert ("author" in doc["commit"]) is (author is not None)
    assert errors(doc) == []


def test_the_schema_catches_a_malformed_input() -> None:
    doc = document("dev")
    doc["commit"]["merge"] = "squash"
    doc["artifact"]["digest"] = "sha256:XYZ"
    del doc["now"]
    found = errors(doc)
    assert any("'now' is a required property" in e for e in found)
    assert any("'squash' is not one of" in e for e in found)
    assert any("does not match" in e for e in found)


def test_attestations_are_their_projections() -> None:
    item = attestation("coverage")
    doc = document("dev", [item])
    assert doc["attestations"] == [project(item)]
    assert doc["attestations"][0]["predicate"] == {"percent": 91.5}
    assert "statement" not in doc["attestations"][0]


def test_full_statements_carry_each_statement_as_signed_and_validate() -> None:
    items = [attestation(step) for step in PRODUCTION_STEPS]
    doc = policy_input(
        environment="production",
        service="checkout",
        version="2.4.1",
        artifact={"digest": ARTIFACT},
        commit={"sha": MERGED},
        attestations=items,
        rejected=[],
        now=datetime(2026, 1, 1, tzinfo=UTC),
        full_statements=True,
    )
    assert errors(doc) == []
    for item, seen in zip(items, doc["attestations"], strict=True):
        assert seen["statement"] == {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": s.name, "digest": dict(s.digest)} for s in item.statement.subjects],
            "predicateType": item.statement.predicate_type,
            "predicate": dict(item.statement.predicate),
        }
        assert {k: v for k, v in seen.items() if k != "statement"} == project(item)


def test_now_is_utc_rfc3339() -> None:
    later = datetime(2026, 3, 1, 14, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))
    doc = policy_input(
        environment="dev",
        service="s",
        version="1",
        artifact={"digest": "sha256:" + "a" * 64},
        commit={"sha": MERGED},
        attestations=[],
        rejected=[],
        now=later,
    )
    assert doc["now"] == "2026-03-01T12:30:15.250000Z"
    assert doc["commit"] == {"sha": MERGED, "merge": None, "pr_head": None}
    assert "settings" not in doc
    assert errors(doc) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("artifact", {"digest": "sha512:abc"}, "artifact.digest"),
        ("artifact", {"name": "x"}, "artifact.digest"),
        ("commit", {"sha": "HEAD"}, "commit.sha"),
        ("commit", {"sha": MERGED, "merge": "squash"}, "commit.merge"),
        ("commit", {"sha": MERGED, "pr_head": "main"}, "commit.pr_head"),
        ("environment", "", "'environment'"),
        ("now", datetime(2026, 1, 1), "timezone-aware"),
    ],
)
def test_a_malformed_argument_is_an_input_error_naming_it(field: str, value: Any, message: str) -> None:
    arguments: dict[str, Any] = {
        "environment": "dev",
        "service": "s",
        "version": "1",
        "artifact": {"digest": "sha256:" + "a" * 64},
        "commit": {"sha": MERGED},
        "attestations": [],
        "rejected": [],
        "now": datetime(2026, 1, 1, tzinfo=UTC),
    }
    arguments[field] = value
    with pytest.raises(InputError, match=message):
        policy_input(**arguments)


def test_canonical_json_sorts_keys_and_drops_spaces() -> None:
    assert canonical_json({"b": {"d": 1, "c": [2, 1]}, "a": "é"}) == '{"a":"é","b":{"c":[2,1],"d":1}}'
    assert canonical_digest({"b": 1, "a": 2}) == canonical_digest(json.loads('{"a": 2, "b": 1}'))
    assert canonical_digest({"a": 1}) != canonical_digest({"a": 1.5})
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_digest({"a": float("nan")})


def test_read_decision_fails_closed() -> None:
    assert read_decision({"allow": True, "denials": []}) == (True, (), False)
    assert read_decision({"allow": False, "denials": ["b", "a", "b"]}) == (False, ("b", "a"), False)
    assert read_decision({"allow": True, "denials": ["x"]}) == (False, ("x",), False)
    assert read_decision({"allow": False, "denials": []}) == (False, ("policy denied without giving a reason",), False)
    assert read_decision(None)[:1] + read_decision(None)[2:] == (False, True), "no decision: a failure"
    allow, denials, failed = read_decision({"allow": 1, "denials": {"x": True}})
    assert not allow
    assert failed
    assert len(denials) == 2
