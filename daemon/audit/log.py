"""Appending to the audit log: records queued without blocking, written in order by one task, fsynced per batch.

Whatever happens that someone may later have to account for (a promotion's transitions and decisions, a
break-glass override granted and used, a configuration loaded, an API mutation) is recorded with its actor.
:meth:`AuditLog.record` only queues: it never blocks and never raises, so auditing can neither stall nor
break a rollout. :meth:`AuditLog.run` is the one task that writes: it chains each record to the one before
(see :mod:`vouch.daemon.audit.verify` for the format), signs it when given a key, appends the batch,
fsyncs, and then replaces the head checkpoint. An existing log is continued only if its tail checks out;
a damaged one is refused with :class:`StoreError` (fail closed: continuing would fork the chain). The
file is locked while open, so a second process cannot interleave its own chain.

Example::

    audit = AuditLog(state_dir / "audit.jsonl", signer=load_signer(key_path), registry=registry)
    await audit.open()  # StoreError, naming the bad seq, if the existing log is damaged
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(audit.run(), name="audit-log")
        audit.record("override.granted", actor="api:alice", service="checkout", environment="staging",
                     data={"gate": "slo", "reason": "known flaky SLO", "expires_at": 1718003600.0})
        await audit.flush()  # the record is on disk
        await audit.close()  # write what is queued; run() returns
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from securesystemslib.signer import Signer  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.core.errors import StoreError
from vouch.daemon.audit.settings import AuditSpec
from vouch.daemon.audit.verify import (
    GENESIS,
    Head,
    canonical,
    head_path,
    parse_record,
    read_head,
    record_hash,
    record_payload,
    verify_log,
)
from vouch.rollout.attestations.keys import load_signer

log = logging.getLogger(__name__)

BATCH_LIMIT = 1000
"""Most records written (and fsynced) as one batch."""
RETRY_MIN, RETRY_MAX = 0.5, 30.0
"""Seconds between attempts while the disk refuses writes, doubling from the first to the second."""
_MAX_DEPTH = 32
_TAIL_BLOCK = 65536


class _Metrics:
    """What the log reports about itself, in the registry given."""

    def __init__(self, registry: CollectorRegistry, pending: Callable[[], int]) -> None:
        self.written = Counter(
            "vouch_audit_records_written", "Audit records appended and made durable.", registry=registry
        )
        self.failures = Counter(
            "vouch_audit_failures",
            "Audit log failures: a batch not written (append), a head checkpoint not replaced (head), "
            "a record refused (record).",
            ["what"],
            registry=registry,
        )
        self.pending = Gauge("vouch_audit_pending_records", "Audit records queued, not yet written.", registry=registry)
        self.pending.set_function(pending)


@dataclass(frozen=True)
class _Tail:
    seq: int
    hash: str
    size: int


class _Writer:
    """The disk side: one locked log file and its head; used by one thread at a time."""

    def __init__(self, path: Path, *, signer: Signer | None, clock: Callable[[], float]) -> None:
        self.path = path
        self.signer = signer
        self.clock = clock
        self.metrics: _Metrics | None = None
        self.tail = _Tail(-1, GENESIS, 0)
        self.written = 0
        self.broken: str | None = None
        self.fd: int | None = None

    def open(self) -> None:
        """Lock the log (creating it and its head if new) and find where its chain continues."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise StoreError(f"cannot open the audit log {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{self.path}: another process is appending to this audit log") from exc
        try:
            self.tail = self._resume(os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def _resume(self, size: int) -> _Tail:
        head = read_head(self.path)
        if size == 0 and head is None:
            self._write_head(-1, GENESIS)
            return _Tail(-1, GENESIS, 0)
        if head is not None and _tail_matches(self.path, size=size, head=head):
            return _Tail(head.seq, head.hash, size)
        report = verify_log(self.path)  # not the quick case (a crash between append and head): check it all
        if not report.ok:
            raise StoreError(
                f"{self.path}: the audit log is damaged at seq {report.first_bad_seq} (line {report.line}): "
                f"{report.problem}. Refusing to append, which would fork the chain: check it with "
                f"`vouch audit verify --path {self.path}`, then move the log and its .head aside to start anew"
            )
        self._write_head(report.last_seq, report.last_hash)
        return _Tail(report.last_seq, report.last_hash, size)

    def append(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Chain, sign, append and fsync ``entries``, then move the head; on :class:`StoreError` nothing changed."""
        if self.fd is None or self.broken is not None:
            raise StoreError(self.broken or f"the audit log {self.path} is not open")
        seq, digest = self.tail.seq, self.tail.hash
        lines = []
        for entry in entries:
            seq += 1
            record = {**entry, "seq": seq, "prev": digest}
            record["hash"] = digest = record_hash(record)
            record.update(self._signature(record_payload(digest)))
            lines.append(canonical(record) + b"\n")
        data = b"".join(lines)
        try:
            _write_all(self.fd, data)
            os.fsync(self.fd)
        except OSError as exc:
            self._undo(self.fd)
            raise StoreError(f"cannot append to the audit log {self.path}: {exc.strerror or exc}") from exc
        self.tail = _Tail(seq, digest, self.tail.size + len(data))
        self.written += len(entries)
        if self.metrics is not None:
            self.metrics.written.inc(len(entries))
        try:
            self._write_head(seq, digest)
        except StoreError as exc:  # the records are safe; verify accepts a head that lags, and the next batch retries
            log.warning("%s", exc)
            if self.metrics is not None:
                self.metrics.failures.labels("head").inc()

    def _signature(self, payload: bytes) -> dict[str, str]:
        if self.signer is None:
            return {}
        try:
            signature = self.signer.sign(payload)
        except Exception as exc:  # a signer is third-party code (a key file today, a KMS tomorrow)
            raise StoreError(f"cannot sign audit records for {self.path}: {exc}") from exc
        return {"keyid": signature.keyid, "sig": signature.signature}

    def _undo(self, fd: int) -> None:
        """Cut a torn batch off again; if even that fails, refuse every later append (fail closed)."""
        try:
            os.ftruncate(fd, self.tail.size)
            os.fsync(fd)
        except OSError as exc:
            self.broken = (
                f"the audit log {self.path} may end in a torn write that could not be cut off "
                f"({exc.strerror or exc}); refusing to append until it is checked"
            )

    def _write_head(self, seq: int, digest: str) -> None:
        """Replace the head atomically: a reader sees the old checkpoint or the new one, never half of one."""
        head = Head(seq=seq, hash=digest, at=self.clock())
        if self.signer is not None:
            signature = self._signature(head.payload())
            head = Head(seq=seq, hash=digest, at=head.at, keyid=signature["keyid"], sig=signature["sig"])
        target = head_path(self.path)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                _write_all(fd, head.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, target)
            _sync_folder(target.parent)
        except OSError as exc:
            raise StoreError(f"cannot write the audit head {target}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Release the file (and its lock); idempotent."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _tail_matches(path: Path, *, size: int, head: Head) -> bool:
    """Whether the log's last line is a sound record that is exactly the one the head names (the quick resume)."""
    if size == 0:
        return head.seq == -1 and head.hash == GENESIS
    try:
        last = _last_line(path, size)
        record = parse_record(last[:-1]) if last.endswith(b"\n") else None
    except (OSError, ValueError):
        return False
    if record is None or record["hash"] != record_hash(record) or canonical(record) != last[:-1]:
        return False
    return bool(record["seq"] == head.seq and record["hash"] == head.hash)


def _last_line(path: Path, size: int) -> bytes:
    """The file's last line with its line end, read backwards in blocks (the log can be large)."""
    with path.open("rb") as handle:
        start, buffer = size, b""
        while start > 0:
            step = min(_TAIL_BLOCK, start)
            start -= step
            handle.seek(start)
            buffer = handle.read(step) + buffer
            cut = buffer.rfind(b"\n", 0, len(buffer) - 1)
            if cut >= 0:
                return buffer[cut + 1 :]
        return buffer


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data, copied: non-finite floats and unknown objects become strings.

    >>> json_safe({"ratio": float("nan"), "steps": (1, 2), 3: Path("/x")})
    {'ratio': 'nan', 'steps': [1, 2], '3': '/x'}
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return repr(value)[:200]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in value]
    return str(value)


def _entry(kind: str, *, actor: str, at: float, data: Any, subjects: Mapping[str, object]) -> dict[str, Any]:
    """A record before it is chained; ``ValueError``/``TypeError`` if even a stand-in cannot be encoded."""
    entry: dict[str, Any] = {"at": at, "kind": str(kind), "actor": str(actor)}
    entry.update({name: str(value) for name, value in subjects.items() if value is not None})
    entry["data"] = json_safe(data if isinstance(data, Mapping) else {"value": data})
    try:
        canonical(entry)
    except ValueError:  # text that is not valid Unicode (a lone surrogate): keep a faithful ASCII rendering
        entry["data"] = {"unencodable": ascii(data)[:2000]}
        canonical(entry)
    return entry


class AuditLog:
    """The daemon's audit log: :meth:`record` queues, :meth:`run` writes, :meth:`flush` and :meth:`close` wait.

    ``record`` is meant for the event loop's thread, like everything else here.
    """

    def __init__(
        self,
        path: Path,
        *,
        signer: Signer | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        batch_limit: int = BATCH_LIMIT,
    ) -> None:
        self.path = path
        self._writer = _Writer(path, signer=signer, clock=clock)
        self._clock = clock
        self._batch_limit = max(1, batch_limit)
        self._pending: deque[dict[str, Any]] = deque()
        self._accepted = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._close_asked = asyncio.Event()
        self._finished = asyncio.Event()
        self._started = False
        self._inflight: tuple[asyncio.Task[None], list[dict[str, Any]]] | None = None
        self._metrics = _Metrics(registry, lambda: len(self._pending)) if registry is not None else None
        self._writer.metrics = self._metrics

    @classmethod
    def from_spec(
        cls, spec: AuditSpec, *, state_dir: Path, signing_key: Path | None, registry: CollectorRegistry | None = None
    ) -> AuditLog:
        """The log the settings describe; signed with ``signing_key`` (vouch's own) when ``spec.sign`` and it is set."""
        signer = load_signer(signing_key) if spec.sign and signing_key is not None else None
        return cls(spec.resolve_path(state_dir), signer=signer, registry=registry)

    @property
    def written(self) -> int:
        """Records this instance made durable."""
        return self._writer.written

    @property
    def last_seq(self) -> int:
        """The seq of the last durable record; -1 for an empty log."""
        return self._writer.tail.seq

    async def open(self) -> None:
        """Lock the log and check where it continues; :class:`StoreError` (naming the bad seq) if it is damaged.

        :meth:`run` opens the log itself if this was not called; calling it first fails a start early.
        """
        if self._writer.fd is None:
            await asyncio.to_thread(self._writer.open)

    def record(
        self,
        kind: str,
        *,
        actor: str,
        data: Mapping[str, Any] | None = None,
        service: str | None = None,
        environment: str | None = None,
        version: str | None = None,
        promotion_id: str | None = None,
        release_id: str | None = None,
    ) -> None:
        """Queue one record, made now; never blocks, never raises (a refused record is logged and counted).

        ``data`` is copied as plain JSON (non-finite numbers and unknown objects become text).
        """
        subjects = {
            "service": service,
            "environment": environment,
            "version": version,
            "promotion_id": promotion_id,
            "release_id": release_id,
        }
        try:
            if self._finished.is_set():
                raise StoreError(f"the audit log {self.path} is closed")
            entry = _entry(kind, actor=actor, at=self._clock(), data=data or {}, subjects=subjects)
        except Exception:  # a record must never break the caller: the loss is logged and counted instead
            log.exception("audit record %r by %r refused", kind, actor)
            self._count_failure("record")
            return
        self._pending.append(entry)
        self._accepted += 1
        self._wake.set()

    async def run(self) -> None:
        """Write queued records in order until :meth:`close`; on cancellation, write what is queued first."""
        if self._started:
            return
        self._started = True
        try:
            await self.open()
            await self._loop()
        finally:
            await asyncio.shield(self._finish())

    async def flush(self) -> None:
        """Wait until every record queued so far is on disk (needs :meth:`run` running).

        :class:`StoreError` if writing them failed; they stay queued and :meth:`run` tries again.
        """
        target = self._accepted
        if self._writer.written >= target:
            return
        if self._finished.is_set():
            raise StoreError(f"the audit log {self.path} is closed with {len(self._pending)} record(s) unwritten")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future

    async def close(self) -> None:
        """Write what is queued, stop :meth:`run` and release the file; :class:`StoreError` if records were lost."""
        self._close_asked.set()
        self._wake.set()
        if not self._started:  # run() never ran: do its last part here
            self._started = True
            try:
                await self.open()
            finally:
                await asyncio.shield(self._finish())
        await self._finished.wait()
        if self._pending:
            raise StoreError(f"{len(self._pending)} audit record(s) could not be written to {self.path}")

    # ----------------------------------------------------------------------- the writing task

    async def _loop(self) -> None:
        pause = RETRY_MIN
        while True:
            if not self._pending:
                if self._close_asked.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if await self._write_batch():
                pause = RETRY_MIN
                continue
            if self._close_asked.is_set():
                return  # one attempt after close was asked; close() reports what is left
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._close_asked.wait()
            pause = min(pause * 2, RETRY_MAX)

    async def _write_batch(self) -> bool:
        """Write the next batch in a worker thread; waited for, not awaited, so a cancelled caller never tears it."""
        batch = [self._pending.popleft() for _ in range(min(self._batch_limit, len(self._pending)))]
        task = asyncio.create_task(asyncio.to_thread(self._writer.append, batch), name="audit-log-append")
        self._inflight = (task, batch)
        await asyncio.wait([task])  # cancelling this wait leaves the task running; _finish settles it
        return self._settle()

    def _settle(self) -> bool:
        """Account for the finished batch: wake the flushes it satisfied, or queue it again and fail them."""
        assert self._inflight is not None
        task, batch = self._inflight
        self._inflight = None
        error = None if not task.cancelled() and task.exception() is None else _as_store_error(task)
        if error is None:
            done = self._writer.written
            for _, future in [w for w in self._waiters if w[0] <= done]:
                if not future.done():
                    future.set_result(None)
            self._waiters = [w for w in self._waiters if w[0] > done]
            return True
        self._pending.extendleft(reversed(batch))
        log.error("%s (%d record(s) kept queued)", error, len(self._pending))
        self._count_failure("append")
        self._fail_waiters(error)
        return False

    async def _finish(self) -> None:
        """Settle a batch still being written, write what is left once, release the file, wake every waiter."""
        try:
            if self._inflight is not None:
                await asyncio.wait([self._inflight[0]])
                self._settle()
            while self._pending and self._writer.fd is not None and await self._write_batch():
                pass
            if self._pending:
                log.error("%d audit record(s) were not written to %s", len(self._pending), self.path)
                self._fail_waiters(StoreError(f"{len(self._pending)} audit record(s) not written to {self.path}"))
        finally:
            await asyncio.to_thread(self._writer.close)
            self._finished.set()

    def _fail_waiters(self, error: StoreError) -> None:
        waiters, self._waiters = self._waiters, []
        for _, future in waiters:
            if not future.done():
                future.set_exception(error)

    def _count_failure(self, what: str) -> None:
        if self._metrics is not None:
            self._metrics.failures.labels(what).inc()


def _as_store_error(task: asyncio.Task[None]) -> StoreError:
    if task.cancelled():
        return StoreError("an audit append was cancelled")
    error = task.exception()
    return error if isinstance(error, StoreError) else StoreError(f"an audit append failed: {error!r}")
