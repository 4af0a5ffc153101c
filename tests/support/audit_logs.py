"""Audit logs for tests: real logs written by ``AuditLog``, and the ways someone could tamper with one.

A log is handled as its list of lines (each with its line end) plus its head file, so a tamper is a
plain list operation and :func:`install` writes the result where ``verify_log`` will look.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer  # type: ignore[attr-defined]

from vouch.daemon.audit.log import AuditLog
from vouch.daemon.audit.verify import canonical, head_path, record_hash

RECORDS = 10_000
"""The size of the logs tampering is shown on."""
KINDS = ("promotion.started", "promotion.succeeded", "override.granted", "override.used", "config.loaded")
START = 1_700_000_000.0


@dataclass(frozen=True)
class Written:
    """A log as written: its lines and its head file's bytes."""

    lines: list[bytes]
    head: bytes


def fake_clock(start: float = START, *, step: float = 1.0) -> Callable[[], float]:
    """A clock that moves ``step`` seconds per reading: records get distinct, predictable times."""
    ticks = itertools.count()
    return lambda: start + step * next(ticks)


async def fill(audit: AuditLog, count: int) -> None:
    """Record ``count`` varied records (kinds, services, environments and actors in turn) and wait for them."""
    for i in range(count):
        audit.record(
            KINDS[i % len(KINDS)],
            actor="api:alice" if i % 7 == 0 else "vouch",
            service=("checkout", "search")[i % 2],
            environment=("staging", "production")[i % 3 == 0],
            version=f"1.{i // 100}.{i % 100}",
            data={"i": i, "note": "ünïcode"},
        )
    await audit.flush()


async def make_log(
    path: Path, *, records: int = RECORDS, signer: Signer | None = None, clock: Callable[[], float] | None = None
) -> None:
    """Write a real log of ``records`` records at ``path`` with ``AuditLog``."""
    audit = AuditLog(path, signer=signer, clock=clock or fake_clock())
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(audit.run(), name="audit-log")
        await fill(audit, records)
        await audit.close()


def snapshot(path: Path) -> Written:
    """The log at ``path`` and its head as they are now."""
    return Written(path.read_bytes().splitlines(keepends=True), head_path(path).read_bytes())


def write_log(
    path: Path, *, records: int = RECORDS, signer: Signer | None = None, clock: Callable[[], float] | None = None
) -> Written:
    """:func:`make_log` for code outside an event loop (module fixtures), returning what it wrote."""
    asyncio.run(make_log(path, records=records, signer=signer, clock=clock))
    return snapshot(path)


def install(path: Path, lines: list[bytes], head: bytes | None) -> Path:
    """Write ``lines`` as the log at ``path`` and ``head`` as its head (no head file when ``None``)."""
    path.write_bytes(b"".join(lines))
    if head is not None:
        head_path(path).write_bytes(head)
    return path


def record_at(lines: list[bytes], index: int) -> dict[str, Any]:
    """The record on line ``index + 1``."""
    record: dict[str, Any] = json.loads(lines[index])
    return record


def encoded(record: dict[str, Any]) -> bytes:
    """A record as a log line."""
    return canonical(record) + b"\n"


# --------------------------------------------------------------------------- tampering


def edit(lines: list[bytes], seq: int, *, rehash: bool = False) -> list[bytes]:
    """Change one field of record ``seq``; with ``rehash`` its hash is recomputed to match (no key needed)."""
    record = record_at(lines, seq)
    record["actor"] = "api:mallory"
    if rehash:
        record["hash"] = record_hash(record)
    return [*lines[:seq], encoded(record), *lines[seq + 1 :]]


def delete(lines: list[bytes], seq: int) -> list[bytes]:
    """Remove record ``seq``."""
    return [*lines[:seq], *lines[seq + 1 :]]


def forged(lines: list[bytes], seq: int) -> bytes:
    """A record that fits exactly where record ``seq`` is: right seq, right prev, a hash that matches."""
    previous = record_at(lines, seq - 1)
    record = {
        "seq": seq,
        "at": previous["at"],
        "kind": "override.granted",
        "actor": "api:mallory",
        "service": "checkout",
        "environment": "production",
        "data": {"gate": "alarms", "reason": "trust me"},
        "prev": previous["hash"],
    }
    record["hash"] = record_hash(record)
    return encoded(record)


def insert(lines: list[bytes], seq: int) -> list[bytes]:
    """Insert a forged record before record ``seq``, leaving the records after it as they were."""
    return [*lines[:seq], forged(lines, seq), *lines[seq:]]


def insert_and_rewrite(lines: list[bytes], seq: int) -> list[bytes]:
    """Insert a forged record and rewrite every later one (seq, prev, hash) so the chain is consistent again."""
    out = [*lines[:seq], forged(lines, seq)]
    prev = record_at(out, seq)["hash"]
    for line in lines[seq:]:
        record = {k: v for k, v in json.loads(line).items() if k not in ("sig", "keyid")}
        record["seq"] += 1
        record["prev"] = prev
        record["hash"] = prev = record_hash(record)
        out.append(encoded(record))
    return out


def swap(lines: list[bytes], seq: int) -> list[bytes]:
    """Exchange records ``seq`` and ``seq + 1``."""
    return [*lines[:seq], lines[seq + 1], lines[seq], *lines[seq + 2 :]]


def truncate(lines: list[bytes], count: int) -> list[bytes]:
    """Cut the last ``count`` records off."""
    return lines[:-count]


def cut_mid_line(lines: list[bytes]) -> list[bytes]:
    """Cut the file in the middle of its last line, as a torn write or a careless cut would."""
    return [*lines[:-1], lines[-1][: len(lines[-1]) // 2]]
