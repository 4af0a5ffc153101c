"""``vouch loadtest replay`` refusing what it cannot replay: exit 2 and a message naming the problem, before Locust."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vouch.daemon.cli import app as cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TARGET = "http://127.0.0.1:9"
"""Nothing listens there, and nothing must try: every case here stops before Locust starts."""


def replay(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["loadtest", "replay", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def bad_log(tmp_path: Path) -> Path:
    path = tmp_path / "access.log"
    good = (EXAMPLES / "access.log").read_text().splitlines()[:3]
    path.write_text("\n".join([*good[:2], "this is not a log line", good[2]]) + "\n")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--include", "^/nothing-matches"], "nothing to replay: 200 requests read, 12 mutating dropped"),
        (["--include", "(unclosed"], "--include (unclosed: not a regular expression"),
        (["--field", "time"], "--field 'time': write PART=NAME"),
        (["--field", "tiem=ts"], "--field: unknown JSON log field tiem"),
        (["--max-duration", "soon"], "--max-duration: 'soon' is not a duration"),
        (["--format", "w3c"], "unknown log format 'w3c'; known: combined, jsonl, har"),
        (["--format", "jsonl"], "access.log:1: not JSON"),
        (["--speed", "0"], "speed must be a positive number"),
    ],
)
def test_usage_problems_exit_2_with_a_json_error(args: list[str], message: str) -> None:
    code, stdout, _ = replay(str(EXAMPLES / "access.log"), "--target", TARGET, *args, "--json")
    assert code == 2, stdout
    assert message in json.loads(stdout)["error"]["message"]


def test_a_bad_line_is_named_by_file_and_line(bad_log: Path) -> None:
    code, stdout, stderr = replay(str(bad_log), "--target", TARGET)
    assert code == 2
    assert stdout == ""
    assert f"error: {bad_log}:3: not in combined or common log format" in stderr
    assert "--skip-bad" in stderr


def test_targets_that_are_not_urls_and_missing_logs_exit_2(tmp_path: Path) -> None:
    code, _, stderr = replay(str(EXAMPLES / "access.log"), "--target", "127.0.0.1:8080")
    assert (code, "target must be an http(s) URL" in stderr) == (2, True)
    code, _, stderr = replay(str(tmp_path / "gone.log"), "--target", TARGET)
    assert (code, "gone.log: cannot read: No such file or directory" in stderr) == (2, True)
