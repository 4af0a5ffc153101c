"""The audit log: every kind of tampering found at the right record, a chain that resumes, order kept, fail closed."""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from support.audit_logs import (
    RECORDS,
    Written,
    cut_mid_line,
    delete,
    edit,
    encoded,
    fake_clock,
    fill,
    insert,
    insert_and_rewrite,
    install,
    make_log,
    record_at,
    snapshot,
    swap,
    truncate,
    write_log,
)

from vouch.core.errors import InputError, StoreError
from vouch.daemon.audit.log import AuditLog
from vouch.daemon.audit.settings import AuditSpec
from vouch.daemon.audit.verify import GENESIS, AuditFilter, AuditReport, head_path, read_head, read_records, verify_log
from vouch.rollout.attestations.keys import generate_keypair, load_public_key, load_signer

MIDDLE = RECORDS // 2
LAST = RECORDS - 1


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[CryptoSigner, Path]:
    pair = generate_keypair(tmp_path_factory.mktemp("keys") / "vouch.key", key_type="ecdsa-p256")
    return load_signer(pair.private_path), pair.public_path


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A real unsigned log of 10,000 records."""
    return write_log(tmp_path_factory.mktemp("plain") / "audit.jsonl")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: tuple[CryptoSigner, Path]) -> Written:
    """A real log of 10,000 records signed with an ECDSA P-256 key."""
    return write_log(tmp_path_factory.mktemp("signed") / "audit.jsonl", signer=keys[0])


# --------------------------------------------------------------------------- verifying


def test_an_untouched_log_verifies(tmp_path: Path, plain: Written) -> None:
    report = verify_log(install(tmp_path / "audit.jsonl", plain.lines, plain.head))
    assert report.ok, report.problem
    assert (report.records, report.last_seq, report.head_seq) == (RECORDS, LAST, LAST)
    assert report.first_bad_seq is None
    assert record_at(plain.lines, 0)["prev"] == GENESIS
    assert record_at(plain.lines, 1)["prev"] == record_at(plain.lines, 0)["hash"]


def problem(report: AuditReport) -> str:
    assert report.problem is not None
    return report.problem


Tamper = Callable[[list[bytes]], list[bytes]]


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "line", "words"),
    [
        pytest.param(lambda ls: edit(ls, MIDDLE), MIDDLE, MIDDLE + 1, "hash does not match", id="edit-a-field"),
        pytest.param(
            lambda ls: edit(ls, MIDDLE, rehash=True), MIDDLE + 1, MIDDLE + 2, "prev is not", id="edit-and-rehash"
        ),
        pytest.param(lambda ls: delete(ls, MIDDLE), MIDDLE + 1, MIDDLE + 1, f"seq {MIDDLE} missing", id="delete"),
        pytest.param(lambda ls: delete(ls, 0), 1, 1, "seq 0 missing", id="delete-the-first"),
        pytest.param(lambda ls: insert(ls, MIDDLE), MIDDLE, MIDDLE + 2, "inserted", id="insert-forged"),
        pytest.param(
            lambda ls: insert_and_rewrite(ls, MIDDLE), LAST, RECORDS, "head", id="insert-and-rewrite-the-rest"
        ),
        pytest.param(lambda ls: swap(ls, MIDDLE), MIDDLE + 1, MIDDLE + 1, f"seq {MIDDLE} missing", id="swap"),
        pytest.param(lambda ls: truncate(ls, 3), RECORDS - 3, RECORDS - 2, "3 record(s) cut off", id="truncate-3"),
        pytest.param(lambda ls: truncate(ls, RECORDS), 0, 1, "log is empty", id="truncate-all"),
        pytest.param(cut_mid_line, LAST, RECORDS, "cut short", id="truncate-mid-line"),
        pytest.param(
            lambda ls: [*ls[:MIDDLE], b"not json\n", *ls[MIDDLE + 1 :]], MIDDLE, MIDDLE + 1, "not an audit record",
            id="malformed-line",
        ),
        pytest.param(
            lambda ls: [*ls[:MIDDLE], b"\n", *ls[MIDDLE:]], MIDDLE, MIDDLE + 1, "not an audit record", id="blank-line"
        ),
        pytest.param(
            lambda ls: [*ls[:MIDDLE], json.dumps(json.loads(ls[MIDDLE])).encode() + b"\n", *ls[MIDDLE + 1 :]],
            MIDDLE, MIDDLE + 1, "canonical", id="reformatted",
        ),
    ],
)  # fmt: skip
def test_tampering_is_found_at_the_first_bad_record(
    tmp_path: Path, plain: Written, tamper: Tamper, bad_seq: int, line: int, words: str
) -> None:
    report = verify_log(install(tmp_path / "audit.jsonl", tamper(list(plain.lines)), plain.head))
    assert not report.ok
    assert (report.first_bad_seq, report.line) == (bad_seq, line), report.problem
    assert words in problem(report)
    assert report.records == line - 1  # every record before the bad one chained


def test_a_tampered_head_is_found(tmp_path: Path, plain: Written) -> None:
    head = json.loads(plain.head)
    head["hash"] = record_at(plain.lines, LAST - 1)["hash"]
    report = verify_log(install(tmp_path / "audit.jsonl", plain.lines, json.dumps(head).encode()))
    assert (report.ok, report.first_bad_seq, report.line) == (False, LAST, RECORDS)
    assert "head checkpoint names another record" in problem(report)


def test_a_missing_head_is_a_failure_unless_allowed(tmp_path: Path, plain: Written) -> None:
    path = install(tmp_path / "audit.jsonl", plain.lines, None)
    report = verify_log(path)
    assert (report.ok, report.first_bad_seq) == (False, RECORDS)
    assert "no head checkpoint" in problem(report)
    assert verify_log(path, require_head=False).ok


def test_a_malformed_head_is_a_failure(tmp_path: Path, plain: Written) -> None:
    report = verify_log(install(tmp_path / "audit.jsonl", plain.lines, b'{"seq": "last"}'))
    assert not report.ok
    assert "not an audit head checkpoint" in problem(report)


def test_signatures_verify_with_the_right_key(tmp_path: Path, signed: Written, keys: tuple[CryptoSigner, Path]) -> None:
    report = verify_log(install(tmp_path / "audit.jsonl", signed.lines, signed.head), public_keys=[keys[0].public_key])
    assert report.ok, report.problem
    assert report.signatures_checked
    assert record_at(signed.lines, 0)["keyid"] == keys[0].public_key.keyid


def test_the_wrong_key_fails_at_the_first_record(tmp_path: Path, signed: Written) -> None:
    other = CryptoSigner.generate_ed25519().public_key
    report = verify_log(install(tmp_path / "audit.jsonl", signed.lines, signed.head), public_keys=[other])
    assert (report.ok, report.first_bad_seq, report.line) == (False, 0, 1)
    assert "not one of the trusted keys" in problem(report)


def test_a_forged_signature_is_found(tmp_path: Path, signed: Written, keys: tuple[CryptoSigner, Path]) -> None:
    record = record_at(signed.lines, MIDDLE)
    record["sig"] = record_at(signed.lines, MIDDLE + 1)["sig"]  # a real signature, of another record
    lines = [*signed.lines[:MIDDLE], encoded(record), *signed.lines[MIDDLE + 1 :]]
    report = verify_log(install(tmp_path / "audit.jsonl", lines, signed.head), public_keys=[keys[0].public_key])
    assert (report.ok, report.first_bad_seq) == (False, MIDDLE)
    assert "does not verify" in problem(report)


def test_forged_records_fail_when_signatures_are_required(
    tmp_path: Path, signed: Written, keys: tuple[CryptoSigner, Path]
) -> None:
    lines = insert_and_rewrite(signed.lines, MIDDLE)
    report = verify_log(install(tmp_path / "audit.jsonl", lines, signed.head), public_keys=[keys[0].public_key])
    assert (report.ok, report.first_bad_seq, report.line) == (False, MIDDLE, MIDDLE + 1)
    assert "not signed" in problem(report)


def test_an_unsigned_head_fails_when_signatures_are_required(
    tmp_path: Path, signed: Written, keys: tuple[CryptoSigner, Path]
) -> None:
    head = {k: v for k, v in json.loads(signed.head).items() if k not in ("sig", "keyid")}
    path = install(tmp_path / "audit.jsonl", signed.lines, json.dumps(head).encode())
    report = verify_log(path, public_keys=[load_public_key(keys[1])])
    assert not report.ok
    assert "head" in problem(report)
    assert "not signed" in problem(report)


def test_a_missing_log_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such audit log"):
        verify_log(tmp_path / "nowhere.jsonl")


# --------------------------------------------------------------------------- reading


def test_read_records_filters(tmp_path: Path, plain: Written) -> None:
    path = install(tmp_path / "audit.jsonl", plain.lines, plain.head)
    overrides = read_records(path, AuditFilter(kind="override.*", service="checkout", environment="production"))
    assert overrides
    assert all(r["kind"].startswith("override.") and r["service"] == "checkout" for r in overrides)
    assert all(r["environment"] == "production" for r in overrides)
    last = read_records(path, AuditFilter(actor="api:alice", limit=3))
    assert [r["seq"] for r in last] == [9996, 9989, 9982][::-1]
    since = read_records(path, AuditFilter(since=record_at(plain.lines, LAST - 1)["at"]))
    assert [r["seq"] for r in since] == [LAST - 1, LAST]


def test_read_records_names_a_malformed_line(tmp_path: Path, plain: Written) -> None:
    path = install(tmp_path / "audit.jsonl", [*plain.lines[:3], b"{}\n"], plain.head)
    with pytest.raises(InputError, match=r"audit.jsonl:4: not an audit record"):
        read_records(path)


# --------------------------------------------------------------------------- writing


async def test_a_resumed_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for _ in range(3):
        audit = AuditLog(path, clock=fake_clock())
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(audit.run(), name="audit-log")
            await fill(audit, 4)
            await audit.close()
    records = read_records(path)
    assert [r["seq"] for r in records] == list(range(12))
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    report = verify_log(path)
    assert report.ok, report.problem
    assert report.head_seq == 11


async def test_a_head_left_behind_by_a_crash_is_caught_up(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await make_log(path, records=5)
    lines = snapshot(path).lines
    third = record_at(lines, 2)
    head_path(path).write_text(json.dumps({"seq": 2, "hash": third["hash"], "at": third["at"]}))  # append, no head
    assert verify_log(path).ok
    audit = AuditLog(path)
    await audit.open()
    assert audit.last_seq == 4
    head = read_head(path)
    assert head is not None
    assert head.seq == 4
    await audit.close()


@pytest.mark.parametrize(
    ("damage", "seq"),
    [
        pytest.param(lambda ls: edit(ls, 4), 4, id="edited-tail"),
        pytest.param(lambda ls: truncate(ls, 2), 3, id="truncated"),
        pytest.param(cut_mid_line, 4, id="torn-last-line"),
    ],
)
async def test_a_damaged_log_is_refused(tmp_path: Path, damage: Tamper, seq: int) -> None:
    path = tmp_path / "audit.jsonl"
    await make_log(path, records=5)
    written = snapshot(path)
    install(path, damage(written.lines), written.head)
    before = path.read_bytes()
    audit = AuditLog(path)
    with pytest.raises(StoreError, match=rf"{path}: the audit log is damaged at seq {seq} \(line \d+\)"):
        await audit.open()
    with pytest.raises(StoreError):
        await audit.run()
    audit.record("after.refusal", actor="vouch")  # never raises, even now
    assert path.read_bytes() == before


async def test_a_log_without_its_head_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await make_log(path, records=3)
    head_path(path).unlink()
    with pytest.raises(StoreError, match="no head checkpoint"):
        await AuditLog(path).open()


async def test_a_second_writer_is_refused_while_the_first_holds_the_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path)
    await first.open()
    try:
        with pytest.raises(StoreError, match="another process is appending"):
            await AuditLog(path).open()
    finally:
        await first.close()
    second = AuditLog(path)
    await second.open()
    await second.close()


async def test_records_from_concurrent_tasks_keep_their_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, batch_limit=7)
    made: list[tuple[int, int]] = []

    async def producer(task: int) -> None:
        for step in range(40):
            audit.record("test.step", actor=f"task-{task}", data={"task": task, "step": step})
            made.append((task, step))
            await asyncio.sleep(0)  # let the other producers and the writer interleave

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(audit.run(), name="audit-log")
        async with asyncio.TaskGroup() as producers:
            for task in range(10):
                producers.create_task(producer(task), name=f"producer-{task}")
        await audit.flush()
        await audit.close()
    records = read_records(path)
    assert [(r["data"]["task"], r["data"]["step"]) for r in records] == made
    assert [r["seq"] for r in records] == list(range(400))
    assert verify_log(path).ok


async def test_record_never_raises_and_keeps_odd_data(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    registry = CollectorRegistry()
    audit = AuditLog(path, registry=registry)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(audit.run(), name="audit-log")
        audit.record("odd", actor="vouch", data={"ratio": float("nan"), "path": Path("/x"), "bad": "\ud800", 1: (2,)})
        audit.record("plain", actor="vouch", data={"n": 1}, service="web", promotion_id="p-1")
        await audit.flush()
        await audit.close()
    audit.record("late", actor="vouch")  # after close: refused, counted, not raised
    odd, plain = read_records(path)
    assert odd["data"] == {"unencodable": odd["data"]["unencodable"]}
    assert "nan" in odd["data"]["unencodable"]
    assert (plain["service"], plain["promotion_id"], plain["data"]) == ("web", "p-1", {"n": 1})
    assert registry.get_sample_value("vouch_audit_records_written_total") == 2
    assert registry.get_sample_value("vouch_audit_failures_total", {"what": "record"}) == 1
    assert registry.get_sample_value("vouch_audit_pending_records") == 0


async def test_cancelling_run_still_writes_what_was_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    task = asyncio.create_task(audit.run(), name="audit-log")
    audit.record("first", actor="vouch")
    await audit.flush()
    for i in range(50):
        audit.record("queued", actor="vouch", data={"i": i})
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(read_records(path)) == 51
    assert verify_log(path).ok


async def test_a_write_the_disk_refuses_is_cut_off_and_retried(tmp_path: Path) -> None:
    """The file-size limit makes the kernel write part of a batch and then refuse: a real torn write."""
    path = tmp_path / "audit.jsonl"
    registry = CollectorRegistry()
    audit = AuditLog(path, registry=registry)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(audit.run(), name="audit-log")
        await fill(audit, 3)
        size = path.stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 200, hard))
        try:
            with pytest.raises(StoreError, match="cannot append to the audit log"):
                await fill(audit, 20)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert path.stat().st_size == size  # the torn part was cut off again
        await audit.flush()  # the retry lands them
        await audit.close()
    assert [r["seq"] for r in read_records(path)] == list(range(23))
    assert verify_log(path).ok
    assert registry.get_sample_value("vouch_audit_failures_total", {"what": "append"}) == 1


async def test_from_spec_signs_with_the_daemon_key_when_asked(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path / "vouch.key")
    for sign in (True, False):
        spec = AuditSpec(path=f"audit-{sign}.jsonl", sign=sign)
        audit = AuditLog.from_spec(spec, state_dir=tmp_path / "state", signing_key=pair.private_path)
        assert audit.path == tmp_path / "state" / f"audit-{sign}.jsonl"
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(audit.run(), name="audit-log")
            audit.record("config.loaded", actor="vouch")
            await audit.close()
        report = verify_log(audit.path, public_keys=[load_public_key(pair.public_path)])
        assert report.ok is sign, report.problem
