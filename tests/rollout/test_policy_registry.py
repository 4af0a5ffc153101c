"""Policy engines are chosen from settings by ``kind``; a bad policy fails when configured, not at a promotion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from vouch.core.errors import ConfigError
from vouch.rollout.policy import POLICY_KINDS, OpaPolicySpec, PolicySpec, RegoPolicySpec, build_policy
from vouch.rollout.policy.isolated import IsolatedRegoPolicy
from vouch.rollout.policy.opa import OpaPolicy
from vouch.rollout.policy.rego import DEFAULT_QUERY, RegoPolicy

ADAPTER: TypeAdapter[Any] = TypeAdapter(PolicySpec)


async def test_the_default_is_the_shipped_rego_policy() -> None:
    engine = build_policy(RegoPolicySpec())
    assert isinstance(engine, RegoPolicy)
    assert engine.query == DEFAULT_QUERY
    assert list(engine.sources) == ["vouch.rego"]
    assert engine.policy_digest == RegoPolicy.default().policy_digest
    decision = await engine.decide({})
    assert not decision.allow
    assert decision.denials
    await engine.close()


async def test_a_rego_path_and_query_are_used(tmp_path: Path) -> None:
    (tmp_path / "mine.rego").write_text('package corp\n\nverdict := {"allow": true, "denials": []}\n')
    engine = build_policy(RegoPolicySpec(path=str(tmp_path), query="data.corp.verdict"))
    try:
        assert isinstance(engine, IsolatedRegoPolicy)
        assert engine.query == "data.corp.verdict"
        assert (await engine.decide({})).allow
    finally:
        await engine.close()


@pytest.mark.parametrize(
    ("fields", "full"),
    [
        ({}, False),
        ({"full_statements": True}, True),
        ({"path": "mine.rego"}, True),
        ({"path": "mine.rego", "full_statements": False}, False),
    ],
    ids=["default-policy", "default-policy-asks", "own-policy", "own-policy-declines"],
)
def test_whole_statements_go_to_a_policy_of_your_own_unless_it_declines(
    tmp_path: Path, fields: dict[str, Any], full: bool
) -> None:
    (tmp_path / "mine.rego").write_text('package vouch\n\ndecision := {"allow": true, "denials": []}\n')
    if "path" in fields:
        fields = {**fields, "path": str(tmp_path / fields["path"])}
    assert build_policy(RegoPolicySpec(**fields)).full_statements is full


async def test_an_opa_server_gets_whole_statements_unless_it_declines() -> None:
    for fields, full in (({}, True), ({"full_statements": False}, False)):
        engine = build_policy(OpaPolicySpec(kind="opa", url="http://127.0.0.1:8181", **fields))
        assert engine.full_statements is full
        await engine.close()


def test_an_invalid_rego_policy_is_a_config_error_when_built(tmp_path: Path) -> None:
    (tmp_path / "bad.rego").write_text("package corp\n\nverdict := {\n")
    with pytest.raises(ConfigError) as raised:
        build_policy(RegoPolicySpec(path=str(tmp_path)))
    assert raised.value.problems[0].file == "bad.rego"
    with pytest.raises(ConfigError, match="cannot read the policy"):
        build_policy(RegoPolicySpec(path=str(tmp_path / "absent")))


async def test_an_opa_spec_builds_an_opa_client() -> None:
    engine = build_policy(
        OpaPolicySpec(kind="opa", url="http://127.0.0.1:8181", path="corp/release/decision", timeout="2s")
    )
    assert isinstance(engine, OpaPolicy)
    assert engine.endpoint == "http://127.0.0.1:8181/v1/data/corp/release/decision"
    assert engine.timeout == 2.0
    await engine.close()


def test_settings_are_told_apart_by_kind() -> None:
    assert isinstance(ADAPTER.validate_python({"kind": "rego"}), RegoPolicySpec)
    assert isinstance(ADAPTER.validate_python({"kind": "opa", "url": "https://opa:8181"}), OpaPolicySpec)
    with pytest.raises(ValidationError, match="tag 'cedar'"):
        ADAPTER.validate_python({"kind": "cedar"})


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "opa:8181"},
        {"url": "http://opa:8181", "path": "data.vouch.decision"},
        {"url": "http://opa:8181", "path": "/vouch/decision"},
        {"url": "http://opa:8181", "timeout": "soon"},
        {"url": "http://opa:8181", "typo": 1},
    ],
)
def test_malformed_opa_settings_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OpaPolicySpec(kind="opa", **fields)


def test_an_unknown_kind_names_the_known_ones() -> None:
    class Cedar:
        kind = "cedar"

    with pytest.raises(ConfigError, match="unknown policy kind 'cedar'; known kinds: rego, opa"):
        build_policy(Cedar())  # type: ignore[arg-type]
    assert POLICY_KINDS == ("rego", "opa")
