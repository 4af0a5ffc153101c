"""``vouch policy eval|schema``: allow or deny with every reason, and vouch's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.policy_inputs import STAGING_STEPS, complete, document, without
from typer.testing import CliRunner

from vouch.daemon.policycmd import policy_app
from vouch.rollout.policy.input import canonical_digest
from vouch.rollout.policy.rego import RegoPolicy


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(tmp_path: Path, doc: object, name: str = "input.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_an_allowed_input_exits_0(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(policy_app, ["eval", "--input", str(write(tmp_path, document("staging")))])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("allowed (")
    assert f"policy {RegoPolicy.default().policy_digest}" in result.stdout


def test_a_denied_input_exits_1_and_prints_every_reason(runner: CliRunner, tmp_path: Path) -> None:
    doc = document("staging", without(complete(STAGING_STEPS), "tests", "coverage"))
    result = runner.invoke(policy_app, ["eval", "--input", str(write(tmp_path, doc))])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("denied (")
    assert [line for line in lines if line.startswith("  - ")] == [
        f"  - staging: step 'coverage' is missing: expected a coverage report of at least 80%, "
        f"for artifact {doc['artifact']['digest']} at commit {doc['commit']['sha']}",
        f"  - staging: step 'tests' is missing: expected test results that PASSED, "
        f"for artifact {doc['artifact']['digest']} at commit {doc['commit']['sha']}",
    ]
    assert f"input  {canonical_digest(doc)}" in lines


def test_json_output_is_the_decision(runner: CliRunner, tmp_path: Path) -> None:
    doc = document("production", complete(STAGING_STEPS))
    result = runner.invoke(policy_app, ["eval", "--input", str(write(tmp_path, doc)), "--json"])
    assert result.exit_code == 1
    decision = json.loads(result.stdout)
    assert decision["allow"] is False
    assert len(decision["denials"]) == 1
    assert decision["denials"][0].startswith("production: step 'deployed' is missing")
    assert decision["input_digest"] == canonical_digest(doc)
    assert decision["failed"] is False, "the policy denied: it did not fail to decide"
    assert set(decision) == {"allow", "denials", "failed", "input_digest", "policy_digest", "elapsed"}


def test_a_policy_directory_and_query_can_be_given(runner: CliRunner, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "corp.rego").write_text(
        'package corp\n\nverdict := {"allow": input.environment == "dev", "denials": []}\n'
    )
    doc = write(tmp_path, {"environment": "dev"})
    args = ["eval", "--input", str(doc), "--policy", str(rules), "--query", "data.corp.verdict", "--json"]
    result = runner.invoke(policy_app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["allow"] is True
    result = runner.invoke(policy_app, ["eval", "--input", str(doc), "--policy", str(rules), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["denials"] == ["policy gave no decision (undefined)"]


def test_a_custom_policy_decides(runner: CliRunner, tmp_path: Path) -> None:
    policy = tmp_path / "only-dev.rego"
    policy.write_text(
        "package vouch\n\n"
        'reasons contains "only dev may be released" if input.environment != "dev"\n\n'
        'decision := {"allow": count(reasons) == 0, "denials": reasons}\n'
    )
    for environment, code in (("dev", 0), ("staging", 1)):
        doc = write(tmp_path, {"environment": environment})
        result = runner.invoke(policy_app, ["eval", "-i", str(doc), "-p", str(policy)])
        assert result.exit_code == code, result.output
    assert "  - only dev may be released" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the input"),
        ("{not json", "the input is not JSON"),
        ("[1, 2]", "the input must be a JSON object, got list"),
    ],
)
def test_an_unreadable_input_exits_2(runner: CliRunner, tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(policy_app, ["eval", "--input", str(path)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_an_invalid_policy_exits_2_naming_file_and_line(runner: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.rego"
    broken.write_text("package vouch\n\ndecision := {\n")
    result = runner.invoke(policy_app, ["eval", "--input", str(write(tmp_path, {})), "--policy", str(broken)])
    assert result.exit_code == 2
    assert "invalid policy" in result.stderr
    assert "broken.rego:3:" in result.stderr


def test_missing_input_option_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(policy_app, ["eval"])
    assert result.exit_code == 2


def test_schema_prints_the_input_schema(runner: CliRunner) -> None:
    result = runner.invoke(policy_app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "attestations" in schema["required"]


def test_stdout_of_a_real_process_is_only_the_json_decision(tmp_path: Path) -> None:
    # regopy prints some evaluation errors on stdout at its default log level; --json output must stay parseable.
    policy = tmp_path / "conflict.rego"
    policy.write_text(
        "package vouch\n\n"
        'keys[k] := v if { some k, v in {"a": 1} }\nkeys[k] := v if { some k, v in {"a": 2} }\n\n'
        'decision := {"allow": count(keys) == 1, "denials": set()}\n'
    )
    code = "from vouch.daemon.policycmd import policy_app; policy_app()"
    args = [sys.executable, "-c", code, "eval", "--input", str(write(tmp_path, {})), "--policy", str(policy), "--json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    decision = json.loads(done.stdout)
    assert decision["denials"] == ["policy evaluation failed: object keys must be unique (eval_conflict_error)"]


def test_a_policy_of_your_own_that_never_returns_is_stopped_at_the_timeout_and_denies(
    runner: CliRunner, tmp_path: Path
) -> None:
    policy = tmp_path / "split.rego"
    policy.write_text(
        'package vouch\n\nparts := regex.split(input.separator, "a,b")\n\n'
        'decision := {"allow": count(parts) == 2, "denials": set()}\n'
    )
    allowed = write(tmp_path, {"separator": ","})
    result = runner.invoke(policy_app, ["eval", "-i", str(allowed), "-p", str(policy), "--timeout", "1"])
    assert result.exit_code == 0, result.output
    hangs = write(tmp_path, {"separator": ""}, "hangs.json")
    result = runner.invoke(policy_app, ["eval", "-i", str(hangs), "-p", str(policy), "--timeout", "1", "--json"])
    assert result.exit_code == 1, result.output
    [denial] = json.loads(result.stdout)["denials"]
    assert denial.startswith("policy evaluation took longer than 1s and was stopped")
