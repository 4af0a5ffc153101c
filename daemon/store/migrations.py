"""The SQLite store's schema, as an ordered list of migrations.

``PRAGMA user_version`` records how many migrations a database file has had.
Each migration runs in one transaction together with the version bump, so a
file is always at exactly one known version, even if the daemon is killed
while upgrading it. A file written by a newer vouch (a version this code does
not know) is refused rather than guessed at: the older code could silently
drop what the newer one relies on.

To change the schema, append a :class:`Migration` with the next version;
never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from vouch.core.errors import StoreError


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``statements`` take a file from ``version - 1`` to ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


_INITIAL = (
    """CREATE TABLE releases (
        id          TEXT PRIMARY KEY,
        service     TEXT NOT NULL,
        version     TEXT NOT NULL,
        phase       TEXT NOT NULL,
        active      INTEGER NOT NULL CHECK (active IN (0, 1)),
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        document    TEXT NOT NULL
    )""",
    "CREATE INDEX releases_by_created ON releases (created_at DESC)",
    "CREATE INDEX releases_by_service ON releases (service, created_at DESC)",
    """CREATE TABLE promotions (
        id           TEXT PRIMARY KEY,
        release_id   TEXT NOT NULL,
        service      TEXT NOT NULL,
        environment  TEXT NOT NULL,
        version      TEXT NOT NULL,
        phase        TEXT NOT NULL,
        active       INTEGER NOT NULL CHECK (active IN (0, 1)),
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL,
        document     TEXT NOT NULL
    )""",
    # The invariant "one active promotion per service and environment" lives in
    # the database, so it holds whoever writes, from however many connections.
    "CREATE UNIQUE INDEX promotions_one_active ON promotions (service, environment) WHERE active = 1",
    "CREATE INDEX promotions_by_created ON promotions (created_at DESC)",
    "CREATE INDEX promotions_by_target ON promotions (service, environment, created_at DESC)",
    "CREATE INDEX promotions_by_release ON promotions (release_id)",
    """CREATE TABLE steps (
        promotion_id         TEXT NOT NULL REFERENCES promotions (id) ON DELETE CASCADE,
        idx                  INTEGER NOT NULL,
        label                TEXT NOT NULL,
        canary_replicas      INTEGER NOT NULL,
        stable_replicas      INTEGER NOT NULL,
        started_at           REAL NOT NULL,
        ready_at             REAL,
        analysis_started_at  REAL,
        completed_at         REAL,
        outcome              TEXT,
        PRIMARY KEY (promotion_id, idx)
    )""",
    # One verdict per gate per analysis run: a run repeated after a restart
    # replaces its verdicts instead of counting twice.
    """CREATE TABLE verdicts (
        promotion_id  TEXT NOT NULL REFERENCES promotions (id) ON DELETE CASCADE,
        step          INTEGER NOT NULL,
        run           INTEGER NOT NULL,
        at            REAL NOT NULL,
        gate          TEXT NOT NULL,
        phase         TEXT NOT NULL,
        reasons       TEXT NOT NULL,
        measurements  TEXT NOT NULL,
        errored       INTEGER NOT NULL CHECK (errored IN (0, 1)),
        PRIMARY KEY (promotion_id, step, run, gate)
    )""",
    """CREATE TABLE events (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        kind          TEXT NOT NULL,
        message       TEXT NOT NULL,
        at            REAL NOT NULL,
        promotion_id  TEXT,
        release_id    TEXT,
        data          TEXT NOT NULL
    )""",
    "CREATE INDEX events_by_promotion ON events (promotion_id, id)",
    "CREATE INDEX events_by_release ON events (release_id, id)",
    """CREATE TABLE alerts (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at  REAL NOT NULL,
        status       TEXT NOT NULL,
        labels       TEXT NOT NULL,
        annotations  TEXT NOT NULL,
        fingerprint  TEXT NOT NULL,
        matched      TEXT NOT NULL
    )""",
    "CREATE INDEX alerts_by_received ON alerts (received_at DESC)",
)

_OVERRIDES_AND_CHAT_THREADS = (
    # Break-glass overrides. ``used_at`` is a column so that consuming one is a
    # single conditional UPDATE: of two writers, exactly one finds it NULL.
    """CREATE TABLE overrides (
        id           TEXT PRIMARY KEY,
        service      TEXT NOT NULL,
        environment  TEXT NOT NULL,
        gate         TEXT NOT NULL,
        used_at      REAL,
        created_at   REAL NOT NULL,
        document     TEXT NOT NULL
    )""",
    "CREATE INDEX overrides_by_target ON overrides (service, environment, created_at)",
    # Where each notifier's message of a release (or pull request) lives, so a restart keeps updating it.
    """CREATE TABLE chat_threads (
        subject   TEXT NOT NULL,
        notifier  TEXT NOT NULL,
        document  TEXT NOT NULL,
        PRIMARY KEY (subject, notifier)
    )""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _INITIAL),
    Migration(2, "break-glass overrides and chat threads", _OVERRIDES_AND_CHAT_THREADS),
)
"""Every migration, in order; ``MIGRATIONS[i].version == i + 1``."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The number of migrations the open database has had (``PRAGMA user_version``)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, *, name: str, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to the newest of ``migrations``; return the version it is at.

    ``conn`` must be in autocommit mode (``isolation_level=None``). ``name``
    (the file's path) goes into error messages. Each pending migration runs
    under ``BEGIN IMMEDIATE`` and re-reads the version inside the transaction,
    so two processes opening the same new file do not both apply it.

    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> migrate(conn, name=":memory:")
    2
    """
    _check_sequence(migrations)
    newest = migrations[-1].version if migrations else 0
    current = schema_version(conn)
    _check_current(current, newest, name=name)
    for migration in migrations[current:]:
        _apply(conn, migration, name=name)
    return schema_version(conn)


def _apply(conn: sqlite3.Connection, migration: Migration, *, name: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current < migration.version:
            for statement in migration.statements:
                conn.execute(statement)
            # An int from our own table, never user input: safe to format.
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(
                f"{name}: migration {migration.version} ({migration.description}) failed and was rolled back: {exc}"
            ) from exc
        raise


def _check_current(current: int, newest: int, *, name: str) -> None:
    if current < 0:
        raise StoreError(f"{name} has schema version {current}, which no vouch ever wrote; it is not a vouch store")
    if current > newest:
        raise StoreError(
            f"{name} has schema version {current}, but this vouch only knows versions up to {newest}; "
            "it was written by a newer vouch: run that version, or point this one at another state file"
        )


def _check_sequence(migrations: Sequence[Migration]) -> None:
    for position, migration in enumerate(migrations, start=1):
        if migration.version != position:
            raise StoreError(
                f"migration {migration.description!r} has version {migration.version}, expected {position}: "
                "migrations must be numbered 1, 2, 3, ... in order"
            )
