"""The embedded state store: one SQLite file that is written before anything is acted on.

Every write is committed with ``synchronous=FULL`` before its coroutine
returns, so the engine can record an intended transition, then act on it, and
a daemon killed in between finds the intention on restart. The rule "one
active promotion per service and environment" is a partial unique index, so it
holds atomically whoever writes, from however many connections or processes;
so does "a break-glass override is used at most once", a conditional UPDATE.

All SQLite calls run on one dedicated worker thread that owns the one
connection: the event loop never blocks on disk, and writes are applied in the
order their calls start. SQLite errors never leave this module as such; they
become :class:`~vouch.core.errors.StoreError` naming the file and the operation.

    store = await SqliteStore.open(Path("/var/lib/vouch/state.db"))
    try:
        await store.create_promotion(promotion)
    finally:
        await store.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from vouch.core.errors import ConflictError, InputError, NotFoundError, StoreError, VouchError
from vouch.daemon.store.documents import (
    already_used,
    chat_thread_dict,
    chat_thread_from_dict,
    consumed,
    override_not_found,
)
from vouch.daemon.store.migrations import migrate, schema_version
from vouch.rollout.model import GatePhase, Measurement, Verdict
from vouch.rollout.overrides import Override
from vouch.rollout.state import AlertRecord, ChatThread, Event, Promotion, Release, StepRecord, VerdictRecord

T = TypeVar("T")

_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@dataclass(frozen=True)
class StoreInfo:
    """How the open database is set up, for diagnostics (``/readyz``, ``vouch status``) and tests."""

    path: Path
    schema_version: int
    journal_mode: str
    synchronous: str
    foreign_keys: bool
    busy_timeout: float


class SqliteStore:
    """The SQLite implementation of :class:`vouch.rollout.state.Store`.

    Create it with :meth:`open`, never directly, and :meth:`close` it when done.
    """

    def __init__(self, db: _Database, executor: ThreadPoolExecutor, path: Path) -> None:
        self._db = db
        self._executor = executor
        self._path = path
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, busy_timeout: float = 5.0) -> SqliteStore:
        """Open (or create, with its parent folders) the store at ``path`` and bring its schema up to date.

        ``busy_timeout`` is how long, in seconds, a write waits for another
        connection to the same file before failing. Raises ``StoreError`` when
        the file is not a database, is damaged, or was written by a newer vouch.
        """
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vouch-store")
        future = executor.submit(_Database.connect, path, busy_timeout=busy_timeout)
        try:
            db = await asyncio.wrap_future(future)
        except BaseException as exc:
            # Runs after the connect job on the same thread: closes what it opened if we were cancelled.
            executor.submit(_close_if_opened, future)
            executor.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open state store {path}: {exc}") from exc
            raise
        return cls(db, executor, path)

    @property
    def path(self) -> Path:
        return self._path

    async def info(self) -> StoreInfo:
        return await self._run("read settings", self._db.info)

    async def create_release(self, release: Release) -> None:
        await self._run(f"create release {release.id}", self._db.create_release, release)

    async def save_release(self, release: Release) -> None:
        await self._run(f"save release {release.id}", self._db.save_release, release)

    async def get_release(self, release_id: str) -> Release:
        return await self._run(f"read release {release_id}", self._db.get_release, release_id)

    async def list_releases(
        self, *, service: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Release]:
        _check_limit(limit)
        return await self._run("list releases", self._db.list_releases, service=service, active=active, limit=limit)

    async def create_promotion(self, promotion: Promotion) -> None:
        await self._run(f"create promotion {promotion.id}", self._db.create_promotion, promotion)

    async def save_promotion(self, promotion: Promotion) -> None:
        await self._run(f"save promotion {promotion.id}", self._db.save_promotion, promotion)

    async def get_promotion(self, promotion_id: str) -> Promotion:
        return await self._run(f"read promotion {promotion_id}", self._db.get_promotion, promotion_id)

    async def list_promotions(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        active: bool | None = None,
        release_id: str | None = None,
        limit: int = 100,
    ) -> list[Promotion]:
        _check_limit(limit)
        filters = {"service": service, "environment": environment, "release_id": release_id}
        return await self._run("list promotions", self._db.list_promotions, filters=filters, active=active, limit=limit)

    async def save_step(self, step: StepRecord) -> None:
        await self._run(f"save step {step.index} of {step.promotion_id}", self._db.save_step, step)

    async def list_steps(self, promotion_id: str) -> list[StepRecord]:
        return await self._run(f"list steps of {promotion_id}", self._db.list_steps, promotion_id)

    async def add_verdicts(self, records: list[VerdictRecord]) -> None:
        await self._run("add verdicts", self._db.add_verdicts, list(records))

    async def list_verdicts(self, promotion_id: str) -> list[VerdictRecord]:
        return await self._run(f"list verdicts of {promotion_id}", self._db.list_verdicts, promotion_id)

    async def add_event(self, event: Event) -> Event:
        return await self._run(f"add event {event.kind}", self._db.add_event, event)

    async def list_events(
        self,
        *,
        promotion_id: str | None = None,
        release_id: str | None = None,
        after: int = 0,
        limit: int = 500,
    ) -> list[Event]:
        _check_limit(limit)
        filters = {"promotion_id": promotion_id, "release_id": release_id}
        return await self._run("list events", self._db.list_events, filters=filters, after=after, limit=limit)

    async def add_alert(self, alert: AlertRecord) -> AlertRecord:
        return await self._run(f"add alert {alert.fingerprint}", self._db.add_alert, alert)

    async def list_alerts(self, *, limit: int = 100) -> list[AlertRecord]:
        _check_limit(limit)
        return await self._run("list alerts", self._db.list_alerts, limit=limit)

    async def add_override(self, override: Override) -> Override:
        return await self._run(f"add override {override.id}", self._db.add_override, override)

    async def list_overrides(
        self, *, service: str | None = None, environment: str | None = None, used: bool | None = None
    ) -> list[Override]:
        """The overrides that pass every filter given, in the order they were granted (oldest first)."""
        return await self._run(
            "list overrides", self._db.list_overrides, service=service, environment=environment, used=used
        )

    async def consume_override(
        self, override_id: str, *, promotion_id: str, at: float, overridden: Mapping[str, Any]
    ) -> Override:
        return await self._run(
            f"consume override {override_id}",
            self._db.consume_override,
            override_id,
            promotion_id=promotion_id,
            at=at,
            overridden=dict(overridden),
        )

    async def get_chat_thread(self, subject: str, notifier: str) -> ChatThread | None:
        return await self._run(f"read chat thread of {subject}", self._db.get_chat_thread, subject, notifier)

    async def save_chat_thread(self, thread: ChatThread) -> None:
        await self._run(f"save chat thread of {thread.subject}", self._db.save_chat_thread, thread)

    async def close(self) -> None:
        """Checkpoint the write-ahead log into the file and close; calling it again does nothing.

        Runs to the end even if the caller is cancelled meanwhile.
        """
        if self._closed:
            return
        self._closed = True
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=False)  # the close job still runs; nothing can be queued after it
        try:
            await asyncio.shield(future)
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self._path}: cannot close cleanly: {exc}") from exc

    async def _run(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreError(f"state store {self._path} is closed; cannot {what}")
        # Submitted before the first await, so calls reach the worker in the order they started.
        future = asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args, **kwargs))
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self._path}: cannot {what}: {exc}") from exc


class _Database:
    """The connection and every statement; used only on the store's worker thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path

    @classmethod
    def connect(cls, path: Path, *, busy_timeout: float) -> _Database:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of state store {path}: {exc}") from exc
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            _configure(conn, path, busy_timeout=busy_timeout)
            migrate(conn, name=str(path))
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def info(self) -> StoreInfo:
        pragma = self._pragma
        return StoreInfo(
            path=self._path,
            schema_version=schema_version(self._conn),
            journal_mode=str(pragma("journal_mode")).lower(),
            synchronous=_SYNCHRONOUS.get(int(pragma("synchronous")), "unknown"),
            foreign_keys=bool(pragma("foreign_keys")),
            busy_timeout=int(pragma("busy_timeout")) / 1000,
        )

    def close(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()

    # releases

    def create_release(self, release: Release) -> None:
        with self._write() as conn:
            try:
                conn.execute(_INSERT_RELEASE, _release_row(release))
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"release {release.id} already exists") from exc

    def save_release(self, release: Release) -> None:
        with self._write() as conn:
            if conn.execute(_UPDATE_RELEASE, _release_row(release)).rowcount == 0:
                raise NotFoundError(f"release {release.id} not found; create it before saving it")

    def get_release(self, release_id: str) -> Release:
        row = self._conn.execute("SELECT id, document FROM releases WHERE id = ?", (release_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"release {release_id} not found")
        return self._decode("release", row, Release.from_dict)

    def list_releases(self, *, service: str | None, active: bool | None, limit: int) -> list[Release]:
        where, params = _where({"service": service, "active": active})
        rows = self._conn.execute(
            f"SELECT id, document FROM releases{where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            [*params, limit],
        )
        return [self._decode("release", row, Release.from_dict) for row in rows]

    # promotions

    def create_promotion(self, promotion: Promotion) -> None:
        with self._write() as conn:
            try:
                conn.execute(_INSERT_PROMOTION, _promotion_row(promotion))
            except sqlite3.IntegrityError as exc:
                raise self._promotion_conflict(promotion) from exc

    def save_promotion(self, promotion: Promotion) -> None:
        with self._write() as conn:
            try:
                updated = conn.execute(_UPDATE_PROMOTION, _promotion_row(promotion)).rowcount
            except sqlite3.IntegrityError as exc:
                raise self._promotion_conflict(promotion) from exc
            if updated == 0:
                raise NotFoundError(f"promotion {promotion.id} not found; create it before saving it")

    def get_promotion(self, promotion_id: str) -> Promotion:
        row = self._conn.execute("SELECT id, document FROM promotions WHERE id = ?", (promotion_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"promotion {promotion_id} not found")
        return self._decode("promotion", row, Promotion.from_dict)

    def list_promotions(self, *, filters: Mapping[str, str | None], active: bool | None, limit: int) -> list[Promotion]:
        where, params = _where({**filters, "active": active})
        rows = self._conn.execute(
            f"SELECT id, document FROM promotions{where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            [*params, limit],
        )
        return [self._decode("promotion", row, Promotion.from_dict) for row in rows]

    def _promotion_conflict(self, promotion: Promotion) -> VouchError:
        """Say which invariant a refused promotion write broke; runs inside the failed write's transaction."""
        row = self._conn.execute(
            "SELECT id, version, phase FROM promotions"
            " WHERE service = ? AND environment = ? AND active = 1 AND id != ?",
            (promotion.service, promotion.environment, promotion.id),
        ).fetchone()
        if row is not None:
            return ConflictError(
                f"{promotion.target} already has an active promotion {row[0]} of {row[1]} ({row[2]}); "
                "abort it or wait for it to finish"
            )
        if self._conn.execute("SELECT 1 FROM promotions WHERE id = ?", (promotion.id,)).fetchone():
            return ConflictError(f"promotion {promotion.id} already exists")
        return StoreError(f"state store {self._path} refused promotion {promotion.id} for an unknown reason")

    # steps and verdicts

    def save_step(self, step: StepRecord) -> None:
        with self._write() as conn:
            try:
                conn.execute(_UPSERT_STEP, dataclasses.asdict(step))
            except sqlite3.IntegrityError as exc:
                raise _missing_promotion(exc, step.promotion_id, f"step {step.index}") from exc

    def list_steps(self, promotion_id: str) -> list[StepRecord]:
        rows = self._conn.execute(
            f"SELECT {_STEP_COLUMNS} FROM steps WHERE promotion_id = ? ORDER BY idx", (promotion_id,)
        )
        return [
            StepRecord(promotion_id=row[0], index=row[1], **dict(zip(_STEP_FIELDS, row[2:], strict=True)))
            for row in rows
        ]

    def add_verdicts(self, records: list[VerdictRecord]) -> None:
        with self._write() as conn:
            for record in records:
                try:
                    conn.execute(_UPSERT_VERDICT, _verdict_row(record))
                except sqlite3.IntegrityError as exc:
                    raise _missing_promotion(exc, record.promotion_id, "verdicts") from exc

    def list_verdicts(self, promotion_id: str) -> list[VerdictRecord]:
        rows = self._conn.execute(
            "SELECT promotion_id, step, run, at, gate, phase, reasons, measurements, errored"
            " FROM verdicts WHERE promotion_id = ? ORDER BY step, run, rowid",
            (promotion_id,),
        )
        return [self._decode_row(f"verdict of {promotion_id}", row, _verdict_record) for row in rows]

    # events and alerts

    def add_event(self, event: Event) -> Event:
        params = (
            event.kind,
            event.message,
            event.at,
            event.promotion_id,
            event.release_id,
            _dumps(dict(event.data), f"event {event.kind}"),
        )
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO events (kind, message, at, promotion_id, release_id, data) VALUES (?, ?, ?, ?, ?, ?)",
                params,
            )
        return dataclasses.replace(event, id=cursor.lastrowid)

    def list_events(self, *, filters: Mapping[str, str | None], after: int, limit: int) -> list[Event]:
        where, params = _where(filters, first=("id > ?", after))
        rows = self._conn.execute(
            f"SELECT kind, message, at, promotion_id, release_id, data, id FROM events{where} ORDER BY id LIMIT ?",
            [*params, limit],
        )
        return [self._decode_row(f"event {row[6]}", row, _event) for row in rows]

    def add_alert(self, alert: AlertRecord) -> AlertRecord:
        what = f"alert {alert.fingerprint}"
        params = (
            alert.received_at,
            alert.status,
            _dumps(dict(alert.labels), what),
            _dumps(dict(alert.annotations), what),
            alert.fingerprint,
            _dumps(list(alert.matched), what),
        )
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO alerts (received_at, status, labels, annotations, fingerprint, matched)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                params,
            )
        return dataclasses.replace(alert, id=cursor.lastrowid)

    def list_alerts(self, *, limit: int) -> list[AlertRecord]:
        rows = self._conn.execute(
            "SELECT received_at, status, labels, annotations, fingerprint, matched, id"
            " FROM alerts ORDER BY received_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [self._decode_row(f"alert {row[6]}", row, _alert) for row in rows]

    # break-glass overrides and chat threads

    def add_override(self, override: Override) -> Override:
        """Insert unless the id is kept already; either way answer what is kept (a re-read file resets nothing)."""
        with self._write() as conn:
            conn.execute(_INSERT_OVERRIDE, _override_row(override))
            kept = conn.execute("SELECT id, document FROM overrides WHERE id = ?", (override.id,)).fetchone()
        return self._decode("override", kept, Override.from_dict)

    def list_overrides(self, *, service: str | None, environment: str | None, used: bool | None) -> list[Override]:
        where, params = _where({"service": service, "environment": environment})
        if used is not None:
            where += f"{' AND' if where else ' WHERE'} used_at IS {'NOT NULL' if used else 'NULL'}"
        rows = self._conn.execute(f"SELECT id, document FROM overrides{where} ORDER BY created_at, id", params)
        return [self._decode("override", row, Override.from_dict) for row in rows]

    def consume_override(
        self, override_id: str, *, promotion_id: str, at: float, overridden: Mapping[str, Any]
    ) -> Override:
        """Mark it used with one conditional UPDATE: of any number of writers, one finds ``used_at`` NULL."""
        with self._write() as conn:
            row = conn.execute("SELECT id, document FROM overrides WHERE id = ?", (override_id,)).fetchone()
            if row is None:
                raise override_not_found(override_id)
            current = self._decode("override", row, Override.from_dict)
            used = consumed(current, promotion_id=promotion_id, at=at, overridden=overridden)
            document = _dumps(used.to_dict(), f"override {override_id}")
            if conn.execute(_CONSUME_OVERRIDE, (at, document, override_id)).rowcount == 0:
                raise already_used(current)
        return used

    def get_chat_thread(self, subject: str, notifier: str) -> ChatThread | None:
        row = self._conn.execute(
            "SELECT subject, document FROM chat_threads WHERE subject = ? AND notifier = ?", (subject, notifier)
        ).fetchone()
        if row is None:
            return None
        return self._decode_row(
            f"chat thread of {subject} ({notifier})", row, lambda r: chat_thread_from_dict(json.loads(r[1]))
        )

    def save_chat_thread(self, thread: ChatThread) -> None:
        document = _dumps(chat_thread_dict(thread), f"chat thread of {thread.subject}")
        with self._write() as conn:
            conn.execute(_UPSERT_CHAT_THREAD, (thread.subject, thread.notifier, document))

    # plumbing

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``IMMEDIATE`` takes the write lock up front so reads inside it are current."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _pragma(self, name: str) -> Any:
        return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    def _decode(self, kind: str, row: Any, factory: Callable[[dict[str, Any]], T]) -> T:
        """Rebuild a document row ``(id, document)``."""
        return self._decode_row(f"{kind} {row[0]}", row, lambda r: factory(json.loads(r[1])))

    def _decode_row(self, what: str, row: Any, decode: Callable[[Any], T]) -> T:
        """A row that no longer decodes is a damaged store, not a missing record."""
        try:
            return decode(row)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{what} in state store {self._path} is unreadable: {exc!r}") from exc


def _configure(conn: sqlite3.Connection, path: Path, *, busy_timeout: float) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"state store {path} cannot use write-ahead logging (journal mode stays {mode!r})")
    # FULL: a commit is on disk before it returns, so an intention is never lost after it was acted on.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


def _close_if_opened(future: Future[_Database]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise InputError(f"limit must be 0 or more, not {limit}")


def _where(filters: Mapping[str, object], *, first: tuple[str, object] | None = None) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause for the filters that are not ``None`` (column names are ours, values bound)."""
    clauses, params = ([first[0]], [first[1]]) if first else ([], [])
    for column, value in filters.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(int(value) if isinstance(value, bool) else value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _dumps(value: object, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {what}: its data is not JSON: {exc}") from exc


def _missing_promotion(exc: sqlite3.IntegrityError, promotion_id: str, what: str) -> VouchError:
    if exc.sqlite_errorname == "SQLITE_CONSTRAINT_FOREIGNKEY":
        return NotFoundError(f"promotion {promotion_id} not found; cannot record its {what}")
    return StoreError(f"cannot record {what} of promotion {promotion_id}: {exc}")


def _release_row(release: Release) -> dict[str, Any]:
    return {
        "id": release.id,
        "service": release.service,
        "version": release.version,
        "phase": release.phase.value,
        "active": int(not release.phase.terminal),
        "created_at": release.created_at,
        "updated_at": release.updated_at,
        "document": json.dumps(release.to_dict()),
    }


def _promotion_row(promotion: Promotion) -> dict[str, Any]:
    return {
        "id": promotion.id,
        "release_id": promotion.release_id,
        "service": promotion.service,
        "environment": promotion.environment,
        "version": promotion.version,
        "phase": promotion.phase.value,
        "active": int(not promotion.phase.terminal),
        "created_at": promotion.created_at,
        "updated_at": promotion.updated_at,
        "document": json.dumps(promotion.to_dict()),
    }


def _override_row(override: Override) -> dict[str, Any]:
    return {
        "id": override.id,
        "service": override.service,
        "environment": override.environment,
        "gate": override.gate,
        "used_at": override.used_at,
        "created_at": override.created_at,
        "document": _dumps(override.to_dict(), f"override {override.id}"),
    }


def _verdict_row(record: VerdictRecord) -> dict[str, Any]:
    verdict = record.verdict
    return {
        "promotion_id": record.promotion_id,
        "step": record.step,
        "run": record.run,
        "at": record.at,
        "gate": verdict.gate,
        "phase": verdict.phase.value,
        "reasons": json.dumps(list(verdict.reasons)),
        "measurements": json.dumps([m.to_dict() for m in verdict.measurements]),
        "errored": int(verdict.errored),
    }


def _verdict_record(row: Any) -> VerdictRecord:
    promotion_id, step, run, at, gate, phase, reasons, measurements, errored = row
    verdict = Verdict(
        gate=gate,
        phase=GatePhase(phase),
        reasons=tuple(json.loads(reasons)),
        measurements=tuple(Measurement(**m) for m in json.loads(measurements)),
        errored=bool(errored),
    )
    return VerdictRecord(promotion_id=promotion_id, step=step, run=run, at=at, verdict=verdict)


def _event(row: Any) -> Event:
    kind, message, at, promotion_id, release_id, data, event_id = row
    return Event(kind, message, at, promotion_id, release_id, json.loads(data), event_id)


def _alert(row: Any) -> AlertRecord:
    received_at, status, labels, annotations, fingerprint, matched, alert_id = row
    return AlertRecord(
        received_at=received_at,
        status=status,
        labels=json.loads(labels),
        annotations=json.loads(annotations),
        fingerprint=fingerprint,
        matched=tuple(json.loads(matched)),
        id=alert_id,
    )


_RELEASE_COLUMNS = ("service", "version", "phase", "active", "created_at", "updated_at", "document")
_INSERT_RELEASE = (
    f"INSERT INTO releases (id, {', '.join(_RELEASE_COLUMNS)})"
    f" VALUES (:id, {', '.join(':' + c for c in _RELEASE_COLUMNS)})"
)
_UPDATE_RELEASE = f"UPDATE releases SET {', '.join(f'{c} = :{c}' for c in _RELEASE_COLUMNS)} WHERE id = :id"

_PROMOTION_COLUMNS = ("release_id", "service", "environment", "version", *_RELEASE_COLUMNS[2:])
_INSERT_PROMOTION = (
    f"INSERT INTO promotions (id, {', '.join(_PROMOTION_COLUMNS)})"
    f" VALUES (:id, {', '.join(':' + c for c in _PROMOTION_COLUMNS)})"
)
_UPDATE_PROMOTION = f"UPDATE promotions SET {', '.join(f'{c} = :{c}' for c in _PROMOTION_COLUMNS)} WHERE id = :id"

_STEP_FIELDS = (
    "label",
    "canary_replicas",
    "stable_replicas",
    "started_at",
    "ready_at",
    "analysis_started_at",
    "completed_at",
    "outcome",
)
_STEP_COLUMNS = ", ".join(("promotion_id", "idx", *_STEP_FIELDS))
_UPSERT_STEP = (
    f"INSERT INTO steps ({_STEP_COLUMNS})"
    f" VALUES (:promotion_id, :index, {', '.join(':' + f for f in _STEP_FIELDS)})"
    f" ON CONFLICT (promotion_id, idx) DO UPDATE SET {', '.join(f'{f} = excluded.{f}' for f in _STEP_FIELDS)}"
)

_VERDICT_FIELDS = ("at", "phase", "reasons", "measurements", "errored")
_UPSERT_VERDICT = (
    "INSERT INTO verdicts (promotion_id, step, run, gate, at, phase, reasons, measurements, errored)"
    " VALUES (:promotion_id, :step, :run, :gate, :at, :phase, :reasons, :measurements, :errored)"
    f" ON CONFLICT (promotion_id, step, run, gate) DO UPDATE SET"
    f" {', '.join(f'{f} = excluded.{f}' for f in _VERDICT_FIELDS)}"
)

_OVERRIDE_COLUMNS = ("id", "service", "environment", "gate", "used_at", "created_at", "document")
_INSERT_OVERRIDE = (
    f"INSERT INTO overrides ({', '.join(_OVERRIDE_COLUMNS)})"
    f" VALUES ({', '.join(':' + c for c in _OVERRIDE_COLUMNS)}) ON CONFLICT (id) DO NOTHING"
)
_CONSUME_OVERRIDE = "UPDATE overrides SET used_at = ?, document = ? WHERE id = ? AND used_at IS NULL"
_UPSERT_CHAT_THREAD = (
    "INSERT INTO chat_threads (subject, notifier, document) VALUES (?, ?, ?)"
    " ON CONFLICT (subject, notifier) DO UPDATE SET document = excluded.document"
)
