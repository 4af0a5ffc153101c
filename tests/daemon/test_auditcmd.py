"""``vouch audit verify|show``: tampering on a 10,000-record log exits 1 naming the first bad record; 2 is usage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.audit_logs import (
    RECORDS,
    Written,
    cut_mid_line,
    delete,
    edit,
    fake_clock,
    insert,
    install,
    swap,
    truncate,
    write_log,
)
from typer.testing import CliRunner

from vouch.daemon.auditcmd import audit_app
from vouch.rollout.attestations.keys import KeyPair, generate_keypair, load_signer

MIDDLE = RECORDS // 2
NO_ENV = {"VOUCH_AUDIT_LOG": None}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_log(tmp_path_factory.mktemp("plain") / "audit.jsonl")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "vouch.key")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, pair: KeyPair) -> Written:
    return write_log(tmp_path_factory.mktemp("signed") / "audit.jsonl", signer=load_signer(pair.private_path))


def test_an_intact_log_exits_0(runner: CliRunner, tmp_path: Path, plain: Written) -> None:
    path = install(tmp_path / "audit.jsonl", plain.lines, plain.head)
    result = runner.invoke(audit_app, ["verify", "--path", str(path)], env=NO_ENV)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"intact: {RECORDS} record(s) chained, head at seq {RECORDS - 1}")


@pytest.mark.parametrize(
    ("tamper", "seq", "line"),
    [
        pytest.param(lambda ls: edit(ls, MIDDLE), MIDDLE, MIDDLE + 1, id="edit"),
        pytest.param(lambda ls: delete(ls, MIDDLE), MIDDLE + 1, MIDDLE + 1, id="delete"),
        pytest.param(lambda ls: insert(ls, MIDDLE), MIDDLE, MIDDLE + 2, id="insert"),
        pytest.param(lambda ls: swap(ls, MIDDLE), MIDDLE + 1, MIDDLE + 1, id="reorder"),
        pytest.param(lambda ls: truncate(ls, 10), RECORDS - 10, RECORDS - 9, id="truncate"),
        pytest.param(cut_mid_line, RECORDS - 1, RECORDS, id="truncate-mid-line"),
    ],
)
def test_tampering_exits_1_naming_the_first_bad_record(
    runner: CliRunner, tmp_path: Path, plain: Written, tamper: object, seq: int, line: int
) -> None:
    assert callable(tamper)
    path = install(tmp_path / "audit.jsonl", tamper(list(plain.lines)), plain.head)
    result = runner.invoke(audit_app, ["verify", "--path", str(path)], env=NO_ENV)
    assert result.exit_code == 1, result.output
    assert f"tampered: {path}: seq {seq} (line {line}): " in result.stderr
    as_json = runner.invoke(audit_app, ["verify", "--path", str(path), "--json"], env=NO_ENV)
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert (report["ok"], report["first_bad_seq"], report["line"]) == (False, seq, line)
    assert report["problem"]


def test_the_printed_record_is_the_bad_one(runner: CliRunner, tmp_path: Path, plain: Written) -> None:
    path = install(tmp_path / "audit.jsonl", edit(list(plain.lines), 7), plain.head)
    result = runner.invoke(audit_app, ["verify", "--path", str(path)], env=NO_ENV)
    assert result.exit_code == 1
    assert '"actor":"api:mallory"' in result.stderr
    assert '"seq":7' in result.stderr


def test_signatures_are_checked_with_the_keys_given(
    runner: CliRunner, tmp_path: Path, signed: Written, pair: KeyPair
) -> None:
    path = install(tmp_path / "audit.jsonl", signed.lines, signed.head)
    good = runner.invoke(audit_app, ["verify", "--path", str(path), "--key", str(pair.public_path)], env=NO_ENV)
    assert good.exit_code == 0, good.output
    assert "every signature verified" in good.stdout
    other = generate_keypair(tmp_path / "other.key", key_type="ecdsa-p256")
    bad = runner.invoke(audit_app, ["verify", "--path", str(path), "--key", str(other.public_path)], env=NO_ENV)
    assert bad.exit_code == 1
    assert "seq 0 (line 1): signed by keyid" in bad.stderr


def test_the_path_can_come_from_the_environment(runner: CliRunner, tmp_path: Path, plain: Written) -> None:
    path = install(tmp_path / "audit.jsonl", plain.lines, plain.head)
    result = runner.invoke(audit_app, ["verify", "--json"], env={"VOUCH_AUDIT_LOG": str(path)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["records"] == RECORDS


def test_a_missing_head_needs_an_explicit_switch(runner: CliRunner, tmp_path: Path, plain: Written) -> None:
    path = install(tmp_path / "audit.jsonl", plain.lines, None)
    assert runner.invoke(audit_app, ["verify", "--path", str(path)], env=NO_ENV).exit_code == 1
    allowed = runner.invoke(audit_app, ["verify", "--path", str(path), "--allow-missing-head"], env=NO_ENV)
    assert allowed.exit_code == 0, allowed.output
    assert "no head checkpoint" in allowed.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["verify"], "give --path FILE", id="no-path"),
        pytest.param(["verify", "--path", "{tmp}/nowhere.jsonl"], "no such audit log", id="no-file"),
        pytest.param(["verify", "--path", "{log}", "--key", "{tmp}/none.pub"], "cannot read public key", id="no-key"),
        pytest.param(["show"], "give --path FILE", id="show-no-path"),
        pytest.param(["show", "--path", "{log}", "--since", "yesterday"], "--since", id="bad-since"),
    ],
)
def test_usage_errors_exit_2(
    runner: CliRunner, tmp_path: Path, plain: Written, arguments: list[str], message: str
) -> None:
    log = install(tmp_path / "audit.jsonl", plain.lines[:3], None)
    filled = [a.format(tmp=tmp_path, log=log) for a in arguments]
    result = runner.invoke(audit_app, filled, env=NO_ENV)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    as_json = runner.invoke(audit_app, [*filled, "--json"], env=NO_ENV)
    assert as_json.exit_code == 2
    assert message in json.loads(as_json.stdout)["error"]["message"]


def test_help_says_where_the_log_comes_from(runner: CliRunner) -> None:
    result = runner.invoke(audit_app, ["verify", "--help"], env={**NO_ENV, "COLUMNS": "200"})
    assert result.exit_code == 0
    assert "VOUCH_AUDIT_LOG" in result.stdout


# --------------------------------------------------------------------------- show


@pytest.fixture
def recent(tmp_path: Path) -> Path:
    """100 records, one a minute, the last made a minute ago."""
    path = tmp_path / "recent.jsonl"
    write_log(path, records=100, clock=fake_clock(time.time() - 100 * 60, step=60))
    return path


def test_show_filters_and_prints_json(runner: CliRunner, recent: Path) -> None:
    arguments = ["show", "--path", str(recent), "--kind", "override.*", "--service", "checkout", "--json"]
    result = runner.invoke(audit_app, arguments, env=NO_ENV)
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert records
    assert {r["kind"] for r in records} <= {"override.granted", "override.used"}
    assert {r["service"] for r in records} == {"checkout"}
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)


def test_show_since_env_actor_and_limit(runner: CliRunner, recent: Path) -> None:
    since = runner.invoke(audit_app, ["show", "--path", str(recent), "--since", "10m30s", "--json"], env=NO_ENV)
    assert [r["seq"] for r in json.loads(since.stdout)] == list(range(90, 100))
    arguments = ["show", "--path", str(recent), "--env", "production", "--actor", "api:alice", "--limit", "2"]
    result = runner.invoke(audit_app, [*arguments, "--json"], env=NO_ENV)
    assert [r["seq"] for r in json.loads(result.stdout)] == [63, 84]  # i % 7 == 0 and i % 3 == 0


def test_show_prints_one_line_per_record(runner: CliRunner, recent: Path) -> None:
    result = runner.invoke(audit_app, ["show", "--path", str(recent), "--limit", "3"], env=NO_ENV)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert "  #99  " in lines[-1]
    assert "service=search" in lines[-1]
    assert '{"i":99,"note":"ünïcode"}' in lines[-1]
