"""Audit log throughput: appending promotion events (chained, signed, fsynced per batch), then verifying the log.

Appending: N records (10,000 by default), each a real promotion event as the
daemon records it. Events shaped like the engine's (``promotion.*``,
``step.*``, ``analysis``; message, service, environment, version, phase,
step, actor) go through :class:`~vouch.daemon.eventflow.EventFlow` into
:class:`~vouch.daemon.audit.log.AuditLog`, whose ``run`` task chains each
record to the one before, signs it, appends the batch, fsyncs the log, and
replaces the head checkpoint (written, fsynced, renamed, folder fsynced).
The clock runs from the first ``record`` to the ``flush`` of the last batch:
the caller's cost of making each record is counted, opening the log is not.
It runs once unsigned and once signed with a fresh ed25519 key
(``records_per_s`` is the signed one: the daemon's setting whenever it has a
key). Verifying: :func:`~vouch.daemon.audit.verify.verify_log` reads each log
back, the signed one with its public key (``verify_records_per_s``: every
hash, link and signature, and the signed head) and without
(``verify_chain_only_records_per_s``), the unsigned one without.

Batch sizes. The daemon appends through one task: ``record`` only queues, and
each time the task wakes it writes everything queued, up to
``BATCH_LIMIT`` (1000) records, as one batch with one fsync of the log and
one head checkpoint. A quiet daemon therefore writes batches of 1 (an
engine event seconds after the one before); under load, records pile up
while a batch is being written and batches grow towards 1000, which is
where the throughput ceiling lies. So the main measurement records
``--batch`` records (1000 by default) and flushes, ``records / batch``
times: every batch exactly that size. The ``batch_1`` figures repeat it
signed with batches of 1, on ``--batch-1-records`` records: the cost of a
lone event, which pays per record three fsyncs (log, head, folder), two
signatures (record and head) and a hop to the worker thread.

Peer ("plain jsonl append + fsync"): the same records written as JSON lines
(serialised per record, byte-identical to the signed log) to a file opened
for append, with one fsync per batch of the same size and nothing else: no
chain, no hashing, no signing, no head checkpoint, no worker thread.
``ratio`` is ``records_per_s / peer_records_per_s``. Each figure is the
median of ``--repeats`` runs, the three writers interleaved in every run.

Targets: appending at least 1,000 signed records/s (ten times what a hundred
promotions each recording an event every second would need), verifying at least 5,000 records/s
with signatures (a million-record log checked in under four minutes; the ed25519 check itself
costs about 75 µs per record on one core, so this is near what one core can do).

Progress goes to stderr; the last line of stdout is one JSON object::

    python benchmarks/audit_append.py [--records 10000] [--batch 1000] [--batch-1-records 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from securesystemslib.signer import Key, Signer  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.daemon.audit.log import BATCH_LIMIT, AuditLog
from vouch.daemon.audit.verify import verify_log
from vouch.daemon.eventflow import EventFlow
from vouch.rollout.attestations.keys import generate_keypair, load_public_key, load_signer
from vouch.rollout.state import Event, Phase, StepPhase

PEER = "plain jsonl append + fsync"
TARGET_RECORDS_PER_S = 1_000.0
TARGET_VERIFY_RECORDS_PER_S = 5_000.0
WARMUP = 200
START = 1_750_000_000.0
PLAN = (("10%", 1, 9), ("25%", 3, 7), ("50%", 5, 5), ("100%", 10, 0))
SERVICES = ("checkout", "search", "payments", "catalog", "accounts")
ANALYSIS = "slo: p99 latency 212 ms <= 300 ms; error-rate: 0.12% <= 1.00%; alarms: none firing"

Transition = tuple[str, str, Phase, StepPhase | None, int]


# --------------------------------------------------------------------------- the records


def lifecycle(version: str) -> Iterator[Transition]:
    """(kind, message, phase, step phase, step) of one promotion through a 4-step plan: 19 events."""
    yield "promotion.verifying", f"verifying {version}: 20 attestations, default policy", Phase.VERIFYING, None, 0
    for index, (label, canary, stable) in enumerate(PLAN):
        name = f"{index + 1}/{len(PLAN)} ({label})"
        scaling = f"step {name}: {canary} canary + {stable} stable"
        yield "step.scaling", scaling, Phase.PROGRESSING, StepPhase.SCALING, index
        yield (
            "step.analysing",
            f"step {name} ready; first analysis in 1m",
            Phase.PROGRESSING,
            StepPhase.ANALYSING,
            index,
        )
        for run in (1, 2):
            message = f"run {run} passed ({run}/3): {ANALYSIS}"
            yield "analysis", message, Phase.PROGRESSING, StepPhase.ANALYSING, index
    promoting = f"step {len(PLAN)}/{len(PLAN)} (100%) passed ({ANALYSIS}); all {len(PLAN)} steps held, promoting"
    yield "promotion.promoting", f"{promoting} {version}", Phase.PROMOTING, None, len(PLAN)
    yield "promotion.succeeded", f"succeeded: {version} serves all traffic", Phase.SUCCEEDED, None, len(PLAN)


def promotion_events(count: int) -> list[Event]:
    """``count`` events as the store hands them to the event flow: promotions of several services, in turn."""
    events: list[Event] = []
    promotion = 0
    while len(events) < count:
        service = SERVICES[promotion % len(SERVICES)]
        version = f"2.{promotion // 100}.{promotion % 100}"
        environment = ("staging", "production")[promotion % 2]
        ids = f"p-{promotion:012x}", f"r-{promotion // 2:012x}"
        for kind, message, phase, step_phase, step in lifecycle(version):
            data = {
                "service": service,
                "environment": environment,
                "version": version,
                "phase": phase.value,
                "step": step,
                "steps": len(PLAN),
                "step_phase": step_phase.value if step_phase else None,
                "rollback_cause": None,
                "actor": "api:release-bot",
            }
            at = START + len(events)
            events.append(Event(kind, message, at, ids[0], ids[1], data, id=len(events) + 1))
        promotion += 1
    return events[:count]


# --------------------------------------------------------------------------- the measurements


async def _append(path: Path, events: list[Event], *, signer: Signer | None, batch: int) -> float:
    """Seconds to record ``events`` through the event flow and make them durable, ``batch`` per flush."""
    audit = AuditLog(path, signer=signer, registry=CollectorRegistry())
    flow = EventFlow(audit=audit)
    await audit.open()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(audit.run(), name="audit-log")
        start = time.perf_counter()
        for first in range(0, len(events), batch):
            for event in events[first : first + batch]:
                flow(event)
            await audit.flush()  # the writer takes all `batch` queued records as one batch: nothing else yields
        elapsed = time.perf_counter() - start
        await audit.close()
    if audit.written != len(events):
        raise SystemExit(f"{path}: {audit.written} of {len(events)} records written")
    return elapsed


def append(path: Path, events: list[Event], *, signer: Signer | None, batch: int) -> float:
    return asyncio.run(_append(path, events, signer=signer, batch=batch))


def peer_append(path: Path, records: list[dict[str, Any]], *, batch: int) -> float:
    """Seconds to serialise ``records`` as JSON lines and append them with one fsync per ``batch``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        start = time.perf_counter()
        for first in range(0, len(records), batch):
            lines = [_line(record) for record in records[first : first + batch]]
            view = memoryview(b"".join(lines))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def _line(record: dict[str, Any]) -> bytes:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8") + b"\n"


def verify(path: Path, *, count: int, keys: list[Key] | None = None) -> float:
    """Seconds to verify the log at ``path``; exits if it does not verify whole."""
    start = time.perf_counter()
    report = verify_log(path, public_keys=keys)
    elapsed = time.perf_counter() - start
    if not report.ok or report.records != count or report.signatures_checked is not (keys is not None):
        raise SystemExit(f"{path} did not verify: {report.problem} ({report.records} of {count} records)")
    return elapsed


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Keys:
    signer: Signer
    public: list[Key]


def one_run(folder: Path, events: list[Event], keys: Keys, *, batch: int, single: int) -> dict[str, float]:
    """Seconds for each measurement of one run, in fresh files under ``folder``."""
    folder.mkdir()
    plain, signed, peer = folder / "plain.jsonl", folder / "signed.jsonl", folder / "peer.jsonl"
    seconds = {
        "append_unsigned": append(plain, events, signer=None, batch=batch),
        "append_signed": append(signed, events, signer=keys.signer, batch=batch),
    }
    records = read_lines(signed)
    seconds["peer"] = peer_append(peer, records, batch=batch)
    if peer.read_bytes() != signed.read_bytes():
        raise SystemExit("the peer's file differs from the signed log: it did not write the same lines")
    seconds["verify_signed"] = verify(signed, count=len(events), keys=keys.public)
    seconds["verify_chain_only"] = verify(signed, count=len(events))
    seconds["verify_unsigned"] = verify(plain, count=len(events))
    seconds["bytes_signed"], seconds["bytes_unsigned"] = signed.stat().st_size, plain.stat().st_size
    if single:
        seconds["single_signed"] = append(folder / "single.jsonl", events[:single], signer=keys.signer, batch=1)
        seconds["single_peer"] = peer_append(folder / "single-peer.jsonl", records[:single], batch=1)
    return seconds


def summary(runs: list[dict[str, float]], *, records: int, single: int) -> dict[str, Any]:
    """Medians over the runs, as the JSON result's figures."""

    def rate(name: str, count: int = records) -> float:
        return statistics.median(count / run[name] for run in runs)

    result: dict[str, Any] = {
        "records_per_s": round(rate("append_signed")),
        "unsigned_records_per_s": round(rate("append_unsigned")),
        "verify_records_per_s": round(rate("verify_signed")),
        "verify_chain_only_records_per_s": round(rate("verify_chain_only")),
        "unsigned_verify_records_per_s": round(rate("verify_unsigned")),
        "file_bytes": int(runs[-1]["bytes_signed"]),
        "unsigned_file_bytes": int(runs[-1]["bytes_unsigned"]),
        "bytes_per_record": round(runs[-1]["bytes_signed"] / records),
        "peer": PEER,
        "peer_records_per_s": round(rate("peer")),
        "ratio": round(rate("append_signed") / rate("peer"), 4),
        "unsigned_ratio": round(rate("append_unsigned") / rate("peer"), 4),
    }
    if single:
        signed, peer = rate("single_signed", single), rate("single_peer", single)
        result["batch_1"] = {
            "records": single,
            "records_per_s": round(signed),
            "peer_records_per_s": round(peer),
            "ratio": round(signed / peer, 4),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="records per log (at least 10,000 for the record)")
    parser.add_argument("--batch", type=int, default=BATCH_LIMIT, help=f"records per batch, 1 to {BATCH_LIMIT}")
    parser.add_argument("--batch-1-records", type=int, default=2_000, help="records for the batch-of-1 run (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="runs; each figure is their median")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary folder goes (the disk measured)")
    args = parser.parse_args()
    if not 1 <= args.batch <= BATCH_LIMIT or args.records < 1 or args.repeats < 1:
        parser.error(f"--batch must be 1 to {BATCH_LIMIT}; --records and --repeats at least 1")
    single = max(0, min(args.batch_1_records, args.records))
    events = promotion_events(args.records)
    with tempfile.TemporaryDirectory(prefix="vouch-bench-audit-", dir=args.dir) as tmp:
        folder = Path(tmp)
        pair = generate_keypair(folder / "vouch.key")
        keys = Keys(load_signer(pair.private_path), [load_public_key(pair.public_path)])
        append(folder / "warmup.jsonl", events[:WARMUP], signer=keys.signer, batch=WARMUP)
        runs = []
        for repeat in range(args.repeats):
            run = one_run(folder / f"run-{repeat}", events, keys, batch=args.batch, single=single)
            runs.append(run)
            show(repeat, run, args.records)
    result = {
        "benchmark": "audit_append",
        "records": args.records,
        "batch": args.batch,
        "repeats": args.repeats,
        "key_type": "ed25519",
        **summary(runs, records=args.records, single=single),
        "target_records_per_s": TARGET_RECORDS_PER_S,
        "target_verify_records_per_s": TARGET_VERIFY_RECORDS_PER_S,
    }
    result["records_target_met"] = result["records_per_s"] >= TARGET_RECORDS_PER_S
    result["verify_target_met"] = result["verify_records_per_s"] >= TARGET_VERIFY_RECORDS_PER_S
    print(json.dumps(result))


def show(repeat: int, run: dict[str, float], records: int) -> None:
    """One run's figures, to stderr."""
    names = ("append_signed", "append_unsigned", "peer", "verify_signed", "verify_unsigned")
    figures = ", ".join(f"{name} {records / run[name]:,.0f}/s" for name in names)
    print(f"run {repeat + 1}: {records:,} records: {figures}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
