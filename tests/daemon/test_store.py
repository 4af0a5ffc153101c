"""The SQLite state store, on real files: schema, durability, invariants and every read and write."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vouch.core.errors import ConflictError, InputError, NotFoundError, StoreError
from vouch.daemon.store.migrations import MIGRATIONS, Migration, migrate, schema_version
from vouch.daemon.store.sqlite import SqliteStore
from vouch.rollout.model import GatePhase, Measurement, Verdict
from vouch.rollout.overrides import Override
from vouch.rollout.state import (
    Abort,
    AlertRecord,
    AnalysisLimits,
    ChatThread,
    Counters,
    Event,
    Phase,
    PlannedStep,
    Promotion,
    Release,
    ReleasePhase,
    StepPhase,
    StepRecord,
    Store,
    VerdictRecord,
)

CRASH_SCRIPT = Path(__file__).parents[1] / "support" / "store_crash.py"


def make_promotion(
    promotion_id: str = "p-1",
    *,
    service: str = "checkout",
    environment: str = "staging",
    phase: Phase = Phase.PROGRESSING,
    created_at: float = 1000.0,
    release_id: str = "r-1",
) -> Promotion:
    return Promotion(
        id=promotion_id,
        release_id=release_id,
        service=service,
        environment=environment,
        version="2.4.1",
        stable_version="2.4.0",
        replicas=5,
        plan=(PlannedStep(label="1", canary_replicas=1, stable_replicas=4, pause=0.0),),
        limits=AnalysisLimits(
            interval=30.0,
            runs=1,
            failure_limit=0,
            inconclusive_limit=1,
            consecutive_errors=3,
            progress_deadline=600.0,
        ),
        gates=("slo",),
        phase=phase,
        created_at=created_at,
        updated_at=created_at,
    )


def full_promotion() -> Promotion:
    """A promotion with every field away from its default, so a lost field shows."""
    return Promotion(
        id="p-full",
        release_id="r-full",
        service="checkout",
        environment="production",
        version="2.4.1",
        stable_version="2.4.0",
        replicas=5,
        plan=(
            PlannedStep(label="1", canary_replicas=1, stable_replicas=9, pause=30.0),
            PlannedStep(label="50%", canary_replicas=5, stable_replicas=5, pause=60.5),
            PlannedStep(label="100%", canary_replicas=10, stable_replicas=0, pause=0.0),
        ),
        limits=AnalysisLimits(
            interval=15.0,
            runs=3,
            failure_limit=1,
            inconclusive_limit=2,
            consecutive_errors=4,
            progress_deadline=900.0,
        ),
        gates=("attestations", "slo", "probes", "alarms"),
        phase=Phase.ABORTING,
        step=1,
        step_phase=StepPhase.ANALYSING,
        phase_since=1700000100.25,
        step_started_at=1700000050.5,
        counters=Counters(runs=5, passes=2, failures=1, inconclusives=1, consecutive_errors=1),
        next_analysis_at=1700000115.0,
        abort=Abort(cause="alarm:HighErrorRate", reason="5xx above 1%", requested_at=1700000101.0, actor="am"),
        message="rolling back: alarm HighErrorRate",
        actor="alice",
        created_at=1700000000.0,
        updated_at=1700000101.0,
        finished_at=1700000109.0,
        canary_stopped_at=1700000101.125,
    )


def make_release(
    release_id: str = "r-1",
    *,
    service: str = "checkout",
    phase: ReleasePhase = ReleasePhase.PROGRESSING,
    created_at: float = 1000.0,
) -> Release:
    return Release(
        id=release_id,
        service=service,
        version="2.4.1",
        environments=("staging", "production"),
        phase=phase,
        created_at=created_at,
        updated_at=created_at,
    )


def make_override(
    override_id: str = "bg-1",
    *,
    service: str = "checkout",
    environment: str = "staging",
    gate: str = "slo",
    created_at: float = 1000.0,
) -> Override:
    return Override(
        override_id,
        service,
        environment,
        gate,
        version="2.4.1",
        reason="hotfix for the outage",
        actor="ana",
        created_at=created_at,
        expires_at=created_at + 3600.0,
        source="file:hotfix.yaml",
        data={"ticket": "OPS-7", "approvers": ["bo", "cy"]},
    )


FIRST_USE = {"gate": "slo", "phase": "fail", "reasons": ["error rate 2% above 1%"]}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "state.db")
    try:
        yield opened
    finally:
        await opened.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# schema, settings and versions


async def test_open_creates_folders_and_schema_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    store = await SqliteStore.open(path)
    assert isinstance(store, Store)
    await store.create_promotion(make_promotion())
    await store.close()

    conn = raw(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"releases", "promotions", "steps", "verdicts", "events", "alerts"} <= tables
    assert schema_version(conn) == len(MIGRATIONS)
    conn.close()

    reopened = await SqliteStore.open(path)
    try:
        assert await reopened.get_promotion("p-1") == make_promotion()
        assert (await reopened.info()).schema_version == len(MIGRATIONS)
    finally:
        await reopened.close()


async def test_settings_are_wal_full_sync_and_foreign_keys(store: SqliteStore) -> None:
    info = await store.info()
    assert info.journal_mode == "wal"
    assert info.synchronous == "FULL"
    assert info.foreign_keys is True
    assert info.busy_timeout == 5.0
    conn = raw(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = raw(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError) as caught:
        await SqliteStore.open(path)
    message = str(caught.value)
    assert str(path) in message
    assert "schema version 99" in message
    assert f"versions up to {len(MIGRATIONS)}" in message
    conn = raw(path)
    assert schema_version(conn) == 99
    conn.close()


def test_migrations_apply_in_order_once_and_roll_back_on_failure(tmp_path: Path) -> None:
    conn = raw(tmp_path / "m.db")
    first = Migration(1, "one", ("CREATE TABLE a (x INTEGER)",))
    second = Migration(2, "two", ("CREATE TABLE b (y INTEGER)", "INSERT INTO b VALUES (1)"))
    assert migrate(conn, name="m.db", migrations=[first]) == 1
    assert migrate(conn, name="m.db", migrations=[first, second]) == 2
    assert migrate(conn, name="m.db", migrations=[first, second]) == 2
    assert conn.execute("SELECT count(*) FROM b").fetchone()[0] == 1

    broken = Migration(3, "three", ("CREATE TABLE c (z INTEGER)", "INSERT INTO nowhere VALUES (1)"))
    with pytest.raises(StoreError, match=r"migration 3 \(three\) failed and was rolled back"):
        migrate(conn, name="m.db", migrations=[first, second, broken])
    assert schema_version(conn) == 2
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'c'").fetchone() is None
    conn.close()


async def test_a_file_of_an_older_schema_is_upgraded_and_keeps_its_records(tmp_path: Path) -> None:
    """A state file written before overrides and chat threads existed gains their tables on open."""
    path = tmp_path / "state.db"
    conn = raw(path)
    assert migrate(conn, name=str(path), migrations=MIGRATIONS[:1]) == 1
    release = make_release()
    conn.execute(
        "INSERT INTO releases (id, service, version, phase, active, created_at, updated_at, document)"
        " VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
        (release.id, release.service, release.version, "Progressing", 1.0, 1.0, json.dumps(release.to_dict())),
    )
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'overrides'").fetchone() is None
    conn.close()

    store = await SqliteStore.open(path)
    try:
        assert (await store.info()).schema_version == len(MIGRATIONS) >= 2
        assert await store.get_release("r-1") == release
        assert await store.add_override(make_override()) == make_override()
        await store.save_chat_thread(ChatThread("r-1", "slack", "#deploys", "1700000000.000100", 1.0))
        assert (await store.get_chat_thread("r-1", "slack")) is not None
    finally:
        await store.close()
    conn = raw(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"overrides", "chat_threads"} <= tables
    conn.close()


def test_migrations_must_be_numbered_in_order(tmp_path: Path) -> None:
    conn = raw(tmp_path / "m.db")
    with pytest.raises(StoreError, match="expected 1"):
        migrate(conn, name="m.db", migrations=[Migration(2, "skipped one", ())])
    conn.close()


async def test_garbage_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, only garbage\n" * 200)
    with pytest.raises(StoreError) as caught:
        await SqliteStore.open(path)
    assert str(path) in str(caught.value)
    assert "not a database" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


async def test_damaged_document_is_a_store_error(store: SqliteStore) -> None:
    await store.create_promotion(make_promotion())
    conn = raw(store.path)
    conn.execute("UPDATE promotions SET document = '{\"id\": \"p-1\"}' WHERE id = 'p-1'")
    conn.close()
    with pytest.raises(StoreError, match=r"promotion p-1 in state store .* is unreadable"):
        await store.get_promotion("p-1")


async def test_closed_store_refuses_calls_and_close_is_idempotent(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="is closed; cannot read promotion p-1"):
        await store.get_promotion("p-1")


# round trips


def test_promotion_round_trips_through_its_document() -> None:
    promotion = full_promotion()
    assert Promotion.from_dict(promotion.to_dict()) == promotion
    assert Promotion.from_dict(json.loads(json.dumps(promotion.to_dict()))) == promotion
    minimal = make_promotion(phase=Phase.PENDING)
    assert Promotion.from_dict(json.loads(json.dumps(minimal.to_dict()))) == minimal


async def test_promotion_with_every_field_round_trips_through_the_store(store: SqliteStore) -> None:
    promotion = full_promotion()
    await store.create_promotion(promotion)
    loaded = await store.get_promotion(promotion.id)
    assert loaded == promotion
    assert isinstance(loaded.plan, tuple)
    assert isinstance(loaded.plan[0], PlannedStep)
    assert loaded.phase is Phase.ABORTING


# releases


async def test_release_create_get_save_and_list(store: SqliteStore) -> None:
    await store.create_release(make_release("r-1", created_at=1.0))
    await store.create_release(make_release("r-2", created_at=3.0, service="cart"))
    await store.create_release(make_release("r-3", created_at=2.0))
    assert await store.get_release("r-1") == make_release("r-1", created_at=1.0)

    failed = dataclasses.replace(
        make_release("r-1", created_at=1.0), phase=ReleasePhase.FAILED, index=1, promotion_ids=("p-1", "p-2")
    )
    await store.save_release(failed)
    assert await store.get_release("r-1") == failed

    assert [r.id for r in await store.list_releases()] == ["r-2", "r-3", "r-1"]
    assert [r.id for r in await store.list_releases(service="checkout")] == ["r-3", "r-1"]
    assert [r.id for r in await store.list_releases(active=True)] == ["r-2", "r-3"]
    assert [r.id for r in await store.list_releases(active=False)] == ["r-1"]
    assert [r.id for r in await store.list_releases(limit=1)] == ["r-2"]


async def test_release_errors_name_the_release(store: SqliteStore) -> None:
    await store.create_release(make_release("r-1"))
    with pytest.raises(ConflictError, match="release r-1 already exists"):
        await store.create_release(make_release("r-1"))
    with pytest.raises(NotFoundError, match="release r-9 not found"):
        await store.get_release("r-9")
    with pytest.raises(NotFoundError, match="release r-9 not found"):
        await store.save_release(make_release("r-9"))
    assert [r.id for r in await store.list_releases()] == ["r-1"]


# promotions


async def test_promotion_save_and_list_filters(store: SqliteStore) -> None:
    await store.create_promotion(make_promotion("p-1", created_at=1.0))
    await store.create_promotion(make_promotion("p-2", environment="production", created_at=2.0))
    await store.create_promotion(
        make_promotion("p-3", service="cart", created_at=3.0, release_id="r-2", phase=Phase.SUCCEEDED)
    )
    progressed = dataclasses.replace(
        make_promotion("p-1", created_at=1.0), step=1, step_phase=StepPhase.SETTLING, updated_at=5.0
    )
    await store.save_promotion(progressed)
    assert await store.get_promotion("p-1") == progressed

    async def ids(**filters: Any) -> list[str]:
        return [p.id for p in await store.list_promotions(**filters)]

    assert await ids() == ["p-3", "p-2", "p-1"]
    assert await ids(service="checkout") == ["p-2", "p-1"]
    assert await ids(environment="staging") == ["p-3", "p-1"]
    assert await ids(service="checkout", environment="staging") == ["p-1"]
    assert await ids(active=True) == ["p-2", "p-1"]
    assert await ids(active=False) == ["p-3"]
    assert await ids(release_id="r-2") == ["p-3"]
    assert await ids(limit=2) == ["p-3", "p-2"]
    assert await ids(limit=0) == []
    with pytest.raises(InputError, match="limit"):
        await store.list_promotions(limit=-1)


async def test_promotion_errors_name_the_promotion(store: SqliteStore) -> None:
    with pytest.raises(NotFoundError, match="promotion p-404 not found"):
        await store.get_promotion("p-404")
    with pytest.raises(NotFoundError, match="promotion p-404 not found"):
        await store.save_promotion(make_promotion("p-404"))
    await store.create_promotion(make_promotion("p-1", phase=Phase.SUCCEEDED))
    with pytest.raises(ConflictError, match="promotion p-1 already exists"):
        await store.create_promotion(make_promotion("p-1", phase=Phase.SUCCEEDED))


async def test_second_active_promotion_is_refused_naming_the_first(store: SqliteStore) -> None:
    await store.create_promotion(make_promotion("p-a"))
    with pytest.raises(ConflictError) as caught:
        await store.create_promotion(make_promotion("p-b"))
    assert str(caught.value) == (
        "checkout/staging already has an active promotion p-a of 2.4.1 (Progressing); abort it or wait for it to finish"
    )
    await store.create_promotion(make_promotion("p-c", environment="production"))
    await store.create_promotion(make_promotion("p-d", service="cart"))
    await store.create_promotion(make_promotion("p-e", phase=Phase.ROLLED_BACK))
    assert [p.id for p in await store.list_promotions(service="checkout", environment="staging")] == [
        "p-e",
        "p-a",
    ]


async def test_terminal_promotion_frees_the_slot(store: SqliteStore) -> None:
    first = make_promotion("p-a")
    await store.create_promotion(first)
    await store.save_promotion(dataclasses.replace(first, phase=Phase.ROLLED_BACK, finished_at=9.0))
    await store.create_promotion(make_promotion("p-b"))
    # Reviving the finished one now would make two active promotions.
    with pytest.raises(ConflictError, match="active promotion p-b"):
        await store.save_promotion(dataclasses.replace(first, phase=Phase.PROGRESSING))
    assert (await store.get_promotion("p-a")).phase is Phase.ROLLED_BACK


async def test_concurrent_creates_from_two_tasks_one_wins(store: SqliteStore) -> None:
    results = await asyncio.gather(
        store.create_promotion(make_promotion("p-x")),
        store.create_promotion(make_promotion("p-y")),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "NoneType"]
    assert len(await store.list_promotions(active=True)) == 1


async def test_concurrent_creates_from_two_connections_one_wins(tmp_path: Path) -> None:
    """Two stores (two connections, two threads) on one file: the database itself decides."""
    path = tmp_path / "state.db"
    one, two = await SqliteStore.open(path), await SqliteStore.open(path)
    try:
        for round_ in range(20):
            results = await asyncio.gather(
                one.create_promotion(make_promotion(f"p-{round_}-a", service=f"s{round_}")),
                two.create_promotion(make_promotion(f"p-{round_}-b", service=f"s{round_}")),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["ConflictError", "NoneType"], results
        assert len(await one.list_promotions(active=True)) == 20
    finally:
        await one.close()
        await two.close()


# steps, verdicts, events, alerts


async def test_steps_upsert_by_promotion_and_index(store: SqliteStore) -> None:
    await store.create_promotion(make_promotion())
    second = StepRecord("p-1", 1, "2", canary_replicas=2, stable_replicas=3, started_at=20.0)
    first = StepRecord("p-1", 0, "1", canary_replicas=1, stable_replicas=4, started_at=10.0)
    await store.save_step(second)
    await store.save_step(first)
    done = dataclasses.replace(first, ready_at=11.0, analysis_started_at=12.0, completed_at=19.0, outcome="passed")
    await store.save_step(done)
    assert await store.list_steps("p-1") == [done, second]
    assert await store.list_steps("p-404") == []
    with pytest.raises(NotFoundError, match="promotion p-404 not found; cannot record its step 0"):
        await store.save_step(dataclasses.replace(first, promotion_id="p-404"))


async def test_verdicts_round_trip_and_a_repeated_run_replaces(store: SqliteStore) -> None:
    await store.create_promotion(make_promotion())
    slo = Verdict(
        gate="slo",
        phase=GatePhase.FAIL,
        reasons=("error rate 2% above 1%",),
        measurements=(
            Measurement(name="error_rate", value=0.02, threshold="< 0.01", query="sum(rate(x[1m]))"),
            Measurement(name="latency_p99", value=None, error="no data"),
        ),
    )
    probes = Verdict(gate="probes", phase=GatePhase.INCONCLUSIVE, errored=True)
    records = [
        VerdictRecord("p-1", step=0, run=1, at=5.0, verdict=slo),
        VerdictRecord("p-1", step=0, run=1, at=5.0, verdict=probes),
        VerdictRecord("p-1", step=0, run=0, at=4.0, verdict=Verdict(gate="slo", phase=GatePhase.PASS)),
    ]
    await store.add_verdicts(records)
    assert await store.list_verdicts("p-1") == [records[2], records[0], records[1]]

    again = VerdictRecord("p-1", step=0, run=1, at=6.0, verdict=Verdict(gate="probes", phase=GatePhase.PASS))
    await store.add_verdicts([again])
    assert await store.list_verdicts("p-1") == [records[2], records[0], again]
    with pytest.raises(NotFoundError, match="promotion p-404 not found"):
        await store.add_verdicts([dataclasses.replace(again, promotion_id="p-404")])
    assert len(await store.list_verdicts("p-1")) == 3


async def test_events_are_numbered_and_listed_in_order(store: SqliteStore) -> None:
    added = [
        await store.add_event(Event("created", "one", 1.0, promotion_id="p-1", release_id="r-1")),
        await store.add_event(Event("step", "two", 2.0, promotion_id="p-2", data={"step": 1, "ok": [True]})),
        await store.add_event(Event("created", "three", 3.0, promotion_id="p-1")),
        await store.add_event(Event("release", "four", 4.0, release_id="r-1")),
    ]
    assert [e.id for e in added] == sorted(e.id for e in added if e.id is not None)
    assert len({e.id for e in added}) == 4
    assert await store.list_events() == added
    assert await store.list_events(promotion_id="p-1") == [added[0], added[2]]
    assert await store.list_events(release_id="r-1") == [added[0], added[3]]
    assert await store.list_events(after=added[1].id or 0) == added[2:]
    assert await store.list_events(limit=2) == added[:2]
    assert added[1].data == {"step": 1, "ok": [True]}


async def test_event_data_that_is_not_json_is_a_store_error(store: SqliteStore) -> None:
    with pytest.raises(StoreError, match="event odd: its data is not JSON"):
        await store.add_event(Event("odd", "m", 1.0, data={"when": object()}))
    assert await store.list_events() == []


async def test_writes_keep_the_order_they_were_started_in(store: SqliteStore) -> None:
    tasks = [asyncio.create_task(store.add_event(Event("n", str(i), float(i)))) for i in range(50)]
    events = await asyncio.gather(*tasks)
    assert [e.message for e in sorted(events, key=lambda e: e.id or 0)] == [str(i) for i in range(50)]


async def test_alerts_round_trip_newest_first(store: SqliteStore) -> None:
    older = await store.add_alert(
        AlertRecord(
            received_at=1.0,
            status="firing",
            labels={"alertname": "HighErrorRate", "service": "checkout"},
            annotations={"summary": "5xx"},
            fingerprint="abc",
            matched=("p-1", "p-2"),
        )
    )
    newer = await store.add_alert(AlertRecord(2.0, "resolved", {}, {}, "def", ()))
    assert older.id is not None
    assert newer.id is not None
    assert await store.list_alerts() == [newer, older]
    assert await store.list_alerts(limit=1) == [newer]


# break-glass overrides and chat threads


async def test_override_round_trips_and_adding_it_again_keeps_its_use(store: SqliteStore) -> None:
    granted = make_override()
    assert await store.add_override(granted) == granted
    assert await store.list_overrides() == [granted]

    used = await store.consume_override("bg-1", promotion_id="p-1", at=1_700_000_000.25, overridden=FIRST_USE)
    assert used == dataclasses.replace(granted, used_at=1_700_000_000.25, promotion_id="p-1", overridden=FIRST_USE)
    assert used.used

    # The overrides folder is read again (a restart): the grant comes back unused, the store keeps the use.
    assert await store.add_override(granted) == used
    assert await store.add_override(dataclasses.replace(granted, reason="edited")) == used
    assert await store.list_overrides() == [used]


async def test_override_list_filters(store: SqliteStore) -> None:
    await store.add_override(make_override("bg-3", created_at=3.0))
    await store.add_override(make_override("bg-1", environment="production", created_at=1.0))
    await store.add_override(make_override("bg-2", service="cart", gate="alarms", created_at=2.0))
    await store.consume_override("bg-3", promotion_id="p-1", at=5.0, overridden={})

    async def ids(**filters: Any) -> list[str]:
        return [o.id for o in await store.list_overrides(**filters)]

    assert await ids() == ["bg-1", "bg-2", "bg-3"]
    assert await ids(service="checkout") == ["bg-1", "bg-3"]
    assert await ids(environment="staging") == ["bg-2", "bg-3"]
    assert await ids(service="checkout", environment="staging") == ["bg-3"]
    assert await ids(used=True) == ["bg-3"]
    assert await ids(used=False) == ["bg-1", "bg-2"]
    assert await ids(service="cart", used=True) == []
    assert await ids(service="nobody") == []


async def test_override_is_consumed_once_and_the_second_is_told_by_whom(store: SqliteStore) -> None:
    await store.add_override(make_override())
    await store.consume_override("bg-1", promotion_id="p-1", at=1_700_000_000.0, overridden=FIRST_USE)
    with pytest.raises(ConflictError) as caught:
        await store.consume_override("bg-1", promotion_id="p-2", at=1_700_000_100.0, overridden={"gate": "slo"})
    assert str(caught.value) == (
        "override bg-1 (checkout@2.4.1/staging gate slo) was already used by promotion p-1 at 2023-11-14T22:13:20Z"
    )
    [kept] = await store.list_overrides()
    assert (kept.promotion_id, kept.used_at, kept.overridden) == ("p-1", 1_700_000_000.0, FIRST_USE)


async def test_unknown_override_is_not_found(store: SqliteStore) -> None:
    with pytest.raises(NotFoundError, match="override bg-404 not found"):
        await store.consume_override("bg-404", promotion_id="p-1", at=1.0, overridden={})
    assert await store.list_overrides() == []


async def test_override_use_that_is_not_json_is_refused_and_leaves_it_unused(store: SqliteStore) -> None:
    await store.add_override(make_override())
    with pytest.raises(StoreError, match="not JSON"):
        await store.consume_override("bg-1", promotion_id="p-1", at=1.0, overridden={"when": object()})
    assert [o.used for o in await store.list_overrides()] == [False]
    assert (await store.consume_override("bg-1", promotion_id="p-1", at=2.0, overridden={})).used_at == 2.0


async def test_chat_thread_save_replace_and_get(store: SqliteStore) -> None:
    assert await store.get_chat_thread("r-1", "slack") is None
    thread = ChatThread(
        "r-1", "slack", "C0123", "1700000000.000100", 1_700_000_000.5, state={"envs": {"staging": "running"}}
    )
    await store.save_chat_thread(thread)
    assert await store.get_chat_thread("r-1", "slack") == thread
    assert await store.get_chat_thread("r-1", "webhook") is None
    assert await store.get_chat_thread("r-2", "slack") is None

    redrawn = dataclasses.replace(thread, state={"envs": {"staging": "held", "production": "running"}})
    await store.save_chat_thread(redrawn)
    other = ChatThread("pr:acme/checkout#42", "slack", "C0123", "1700000001.000200", 2.0)
    await store.save_chat_thread(other)
    assert await store.get_chat_thread("r-1", "slack") == redrawn
    assert await store.get_chat_thread("pr:acme/checkout#42", "slack") == other


async def race_for_overrides(one: Store, two: Store, *, rounds: int) -> None:
    """Two stores over the same state race to use each of ``rounds`` overrides: one does, the other is told who."""
    for round_ in range(rounds):
        await one.add_override(make_override(f"bg-{round_}"))
        results = await asyncio.gather(
            one.consume_override(f"bg-{round_}", promotion_id="p-one", at=1.0, overridden={}),
            two.consume_override(f"bg-{round_}", promotion_id="p-two", at=2.0, overridden={}),
            return_exceptions=True,
        )
        [winner] = [r for r in results if isinstance(r, Override)]
        [loser] = [r for r in results if not isinstance(r, Override)]
        assert isinstance(loser, ConflictError), results
        assert f"already used by promotion {winner.promotion_id}" in str(loser)
    assert len(await two.list_overrides(used=True)) == rounds


async def test_concurrent_consumes_from_two_connections_one_wins(tmp_path: Path) -> None:
    """Two daemons on one file race for each override: one uses it, the other is told who did."""
    path = tmp_path / "state.db"
    one, two = await SqliteStore.open(path), await SqliteStore.open(path)
    try:
        await race_for_overrides(one, two, rounds=20)
    finally:
        await one.close()
        await two.close()


async def test_a_used_override_stays_used_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    await store.add_override(make_override())
    await store.consume_override("bg-1", promotion_id="p-1", at=5.0, overridden=FIRST_USE)
    await store.close()
    store = await SqliteStore.open(path)
    try:
        again = await store.add_override(make_override())
        assert (again.used_at, again.promotion_id, again.overridden) == (5.0, "p-1", FIRST_USE)
        with pytest.raises(ConflictError, match="already used by promotion p-1"):
            await store.consume_override("bg-1", promotion_id="p-2", at=6.0, overridden={})
    finally:
        await store.close()


# durability


async def read_lines(proc: asyncio.subprocess.Process, count: int) -> list[str]:
    """The first ``count`` lines the process prints, failing with its stderr if it ends sooner."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while len(lines) < count:
            line = await proc.stdout.readline()
            if not line:
                pytest.fail(f"store_crash.py ended early: {(await proc.stderr.read()).decode()}")
            lines.append(line.decode())
    return lines


async def test_every_write_reported_before_a_sigkill_survives(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CRASH_SCRIPT),
        str(path),
        "1000000",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        lines = await read_lines(proc, 40)
    finally:
        # Exactly once: a second kill() polls the dead child and reaps it behind asyncio's back.
        proc.kill()
        rest = await proc.stdout.read()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    complete = [line.split() for line in lines + rest.decode().splitlines(keepends=True) if line.endswith("\n")]
    promotion_ids = [value for kind, value in complete if kind == "promotion"]
    event_ids = {int(value) for kind, value in complete if kind == "event"}
    assert len(promotion_ids) >= 20

    store = await SqliteStore.open(path)
    try:
        for promotion_id in promotion_ids:
            assert (await store.get_promotion(promotion_id)).id == promotion_id
        stored = {e.id for e in await store.list_events(limit=len(event_ids) + 10)}
        assert event_ids <= stored
    finally:
        await store.close()
