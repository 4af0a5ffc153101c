"""Writes promotions and events to a SQLite store until killed, printing each id once its write returned.

Used by the crash-durability test: whatever this script printed must be in
the file after it is SIGKILLed, because the store promises that a write is
durable when its coroutine returns.

    python store_crash.py STATE_DB COUNT

prints ``promotion <id>`` and ``event <id>`` lines, then ``done``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from vouch.daemon.store.sqlite import SqliteStore
from vouch.rollout.state import AnalysisLimits, Event, Phase, PlannedStep, Promotion


def promotion(number: int) -> Promotion:
    return Promotion(
        id=f"p-crash-{number:06d}",
        release_id=f"r-crash-{number:06d}",
        service=f"svc-{number}",
        environment="staging",
        version="2.4.1",
        stable_version="2.4.0",
        replicas=5,
        plan=(PlannedStep(label="1", canary_replicas=1, stable_replicas=3, pause=0.0),),
        limits=AnalysisLimits(
            interval=1.0,
            runs=1,
            failure_limit=0,
            inconclusive_limit=1,
            consecutive_errors=3,
            progress_deadline=60.0,
        ),
        gates=("slo",),
        phase=Phase.PROGRESSING,
        created_at=float(number),
        updated_at=float(number),
    )


async def main(path: Path, count: int) -> None:
    store = await SqliteStore.open(path)
    try:
        for number in range(count):
            created = promotion(number)
            await store.create_promotion(created)
            print(f"promotion {created.id}", flush=True)
            event = await store.add_event(
                Event(kind="created", message=f"#{number}", at=float(number), promotion_id=created.id)
            )
            print(f"event {event.id}", flush=True)
    finally:
        await store.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
