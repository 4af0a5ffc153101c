"""How each record of the Kubernetes store is written as ConfigMap data, and read back.

Entries are JSON strings under keys that sort by age (bucket trimming drops the
smallest keys first) and identify the entry (so writing it again replaces it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import TypeVar

from vouch.core.errors import StoreError
from vouch.rollout.model import GatePhase, Measurement, Verdict
from vouch.rollout.state import AlertRecord, Event, StepRecord, VerdictRecord

T = TypeVar("T")


def dumps(value: object, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"cannot store {what}: its data is not JSON: {exc}") from exc


# keys


def step_key(index: int) -> str:
    return f"s{index:06d}"


def verdict_key(step: int, run: int, gate: str) -> str:
    return f"v{step:06d}-{run:06d}-{hashlib.sha256(gate.encode()).hexdigest()[:16]}"


def event_key(event_id: int) -> str:
    return f"e{event_id:012d}"


def alert_key(alert_id: int) -> str:
    return f"a{alert_id:012d}"


# values


def step_value(step: StepRecord) -> str:
    return dumps(dataclasses.asdict(step), f"step {step.index} of {step.promotion_id}")


def step_record(value: str) -> StepRecord:
    return StepRecord(**json.loads(value))


def verdict_value(record: VerdictRecord, order: int) -> str:
    verdict = record.verdict
    document = {
        "promotion_id": record.promotion_id,
        "step": record.step,
        "run": record.run,
        "at": record.at,
        "order": order,
        "gate": verdict.gate,
        "phase": verdict.phase.value,
        "reasons": list(verdict.reasons),
        "measurements": [m.to_dict() for m in verdict.measurements],
        "errored": verdict.errored,
    }
    return dumps(document, f"verdict of {record.verdict.gate} for {record.promotion_id}")


def verdict_order(value: str) -> int:
    return int(json.loads(value)["order"])


def verdict_record(value: str) -> tuple[tuple[int, int, int], VerdictRecord]:
    """The record and its sort key: step, run, then the order it was first added in."""
    doc = json.loads(value)
    verdict = Verdict(
        gate=doc["gate"],
        phase=GatePhase(doc["phase"]),
        reasons=tuple(doc["reasons"]),
        measurements=tuple(Measurement(**m) for m in doc["measurements"]),
        errored=bool(doc["errored"]),
    )
    record = VerdictRecord(doc["promotion_id"], step=doc["step"], run=doc["run"], at=doc["at"], verdict=verdict)
    return (record.step, record.run, int(doc["order"])), record


def event_value(event: Event) -> str:
    document = event.to_dict()
    return dumps(document, f"event {event.kind}")


def event_record(value: str) -> Event:
    doc = json.loads(value)
    return Event(doc["kind"], doc["message"], doc["at"], doc["promotion_id"], doc["release_id"], doc["data"], doc["id"])


def alert_value(alert: AlertRecord) -> str:
    document = alert.to_dict()
    return dumps(document, f"alert {alert.fingerprint}")


def alert_record(value: str) -> AlertRecord:
    doc = json.loads(value)
    return AlertRecord(
        received_at=doc["received_at"],
        status=doc["status"],
        labels=doc["labels"],
        annotations=doc["annotations"],
        fingerprint=doc["fingerprint"],
        matched=tuple(doc["matched"]),
        id=doc["id"],
    )


def entries(data: Mapping[str, str], prefix: str) -> list[tuple[str, str]]:
    """The entries of a bucket whose keys start with ``prefix``, oldest first."""
    return sorted((key, value) for key, value in data.items() if key.startswith(prefix))


def decode(what: str, where: str, value: str, reader: Callable[[str], T]) -> T:
    """``reader(value)``, a damaged entry becoming ``StoreError`` naming it (never a missing record)."""
    try:
        return reader(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{what} in state store {where} is unreadable: {exc!r}") from exc
