"""``vouch config validate|schema``: exit codes, the FILE:LINE: PATH: MESSAGE form, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vouch.daemon.configcmd import config_app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BROKEN = """\
services:
  web:
    command: [app, "{port}"]
    replica: 2
    environments: [{name: staging}, {name: qa}]
    slos: [{name: e, metric: error_ratio, max: 0.1}]
environments:
  staging: {}
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "vouch.yaml"
    path.write_text(BROKEN)
    return path


def test_valid_file_prints_a_summary_and_exits_0(runner: CliRunner) -> None:
    result = runner.invoke(config_app, ["validate", str(EXAMPLES / "local.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{EXAMPLES / 'local.yaml'}: valid: 1 service (checkout), "
        "2 environments (staging, production), 1 metric provider (builtin)\n"
    )
    assert result.stderr == ""


def test_problems_go_to_stderr_with_file_line_and_path(runner: CliRunner, broken: Path) -> None:
    result = runner.invoke(config_app, ["validate", str(broken)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{broken}:4: services.web.replica: unknown field 'replica' (did you mean 'replicas'?)",
        f"{broken}:5: services.web.environments[1].name: unknown environment 'qa'; defined: 'staging'",
    ]


def test_json_document_for_an_invalid_file(runner: CliRunner, broken: Path) -> None:
    result = runner.invoke(config_app, ["validate", str(broken), "--json"])
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["file"] == str(broken)
    assert document["valid"] is False
    assert document["problems"][0] == {
        "file": str(broken),
        "line": 4,
        "path": "services.web.replica",
        "message": "unknown field 'replica' (did you mean 'replicas'?)",
    }
    assert len(document["problems"]) == 2


def test_json_document_for_a_valid_file(runner: CliRunner) -> None:
    path = str(EXAMPLES / "prometheus.yaml")
    result = runner.invoke(config_app, ["validate", path, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"file": path, "valid": True, "problems": []}


def test_missing_file_is_a_problem_without_a_line(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = runner.invoke(config_app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"{path}: no such file\n"
    as_json = json.loads(runner.invoke(config_app, ["validate", str(path), "--json"]).stdout)
    assert as_json["problems"] == [{"file": str(path), "line": None, "path": "", "message": "no such file"}]


def test_schema_prints_json_schema(runner: CliRunner) -> None:
    result = runner.invoke(config_app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"services", "environments"} <= set(schema["properties"])
    assert schema["properties"]["daemon"]["description"]


@pytest.mark.parametrize(
    ("args", "example"),
    [
        (["--help"], "vouch config validate examples/local.yaml"),
        (["validate", "--help"], "vouch config validate vouch.yaml --json"),
        (["schema", "--help"], "vouch config schema > vouch.schema.json"),
    ],
)
def test_help_shows_an_example(runner: CliRunner, args: list[str], example: str) -> None:
    result = runner.invoke(config_app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert example in result.stdout


def test_no_command_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(config_app, [])
    assert "validate" in result.output
    assert "schema" in result.output
