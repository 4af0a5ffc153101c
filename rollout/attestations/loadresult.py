"""vouch's load-test attestation: an in-toto test-result v0.1 statement that carries one run's figures.

A load run (``vouch loadtest run``) or a traffic replay (``vouch loadtest replay``) is judged against
its thresholds; this module turns the result and the judgement into a statement about the artifact
tested. The standard predicate says whether it passed (``result``: ``PASSED`` or ``FAILED``, with
``passedTests``/``failedTests`` naming ``load-test`` or ``replay-test``) and which bounds it was judged
by (the digest of ``thresholds.json``, in ``configuration``). The figures travel in one extension field
named by a TypeURI, :data:`LOAD_EXTENSION`, as scale tests carry theirs in
:data:`~vouch.rollout.attestations.scale.SCALE_EXTENSION`; consumers that do not know it ignore it::

    {"test": "load-test", "service": "shop", "version": "2.0.0", "environment": "staging",
     "measured_at": "2025-01-02T03:04:05Z", "target": "http://10.0.0.7:8080", "users": 10, "duration": 28.0,
     "requests": 2800, "failures": 3, "error_ratio": 0.00107, "rps": 100.0, "target_rps": 100.0,
     "latency_ms": {"p50": 4.0, "p90": 8.0, "p95": 9.0, "p99": 20.0, "max": 40.0},
     "thresholds": {"max_error_ratio": 0.01, "max_latency_ms": {"p95": 250.0}, "min_rate_ratio": 0.9},
     "judgement": {"passed": true, "conclusive": true, "reasons": [...], "measurements": [...]},
     "endpoints": [{"name": "GET /cart", "method": "GET", "requests": 2800, ...}],
     "details": {...}}          # what else the test reports (a replay: its summary and timing)

Like the scale attestation, it names no commit (no ``gitCommit`` in ``configuration``), so a policy never
counts it as the pipeline's own ``tests`` step, which must name the released commit: it records what a
version did under load, not that the commit's test suite passed.

The helpers shared with the scale attestation live here too: the test-result predicate around an
extension (:func:`result_predicate`), the UTC stamp (:func:`measured_stamp`) and signing and
storing (:func:`store_statement`).

Example::

    judgement = judge(result, thresholds, target_rate=100, stable=None)
    statement = load_statement(result, judgement, thresholds=thresholds, subject_name="shop",
                               digest="sha256:ab12...", version="2.0.0", service="shop", target_rps=100)
    where = await store_statement(statement, signer=signer, source=DirectorySource(folder),
                                  digest="sha256:ab12...", name=attestation_name("load", statement))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from securesystemslib.signer import Signer  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.loadtests.judge import Judgement
from vouch.loadtests.model import LoadResult
from vouch.loadtests.scale import slo_dict
from vouch.loadtests.settings import LoadThresholds
from vouch.rollout.attestations.dsse import parse_digest, sign_statement, statement_bytes
from vouch.rollout.attestations.model import Statement, Subject
from vouch.rollout.attestations.predicates import TEST_RESULT_V01, VOUCH_PREFIX
from vouch.rollout.attestations.sources import AttestationSource

LOAD_EXTENSION = VOUCH_PREFIX + "load/v1"
"""The extension field of the test-result predicate that holds a load run's or a replay's figures."""

TestName = Literal["load-test", "replay-test"]
"""The name in ``passedTests`` or ``failedTests``: a load run or a traffic replay."""


def load_statement(
    result: LoadResult,
    judgement: Judgement,
    *,
    thresholds: LoadThresholds,
    subject_name: str,
    digest: str,
    version: str,
    service: str,
    environment: str | None = None,
    test_name: TestName = "load-test",
    target_rps: float | None = None,
    details: Mapping[str, Any] | None = None,
    measured_at: float | None = None,
) -> Statement:
    """The statement for ``result`` as ``judgement`` judged it, about the artifact ``digest`` (``sha256:HEX``).

    PASSED only when the judgement passed: a run with nothing to judge (no request) is FAILED, never a pass.
    ``target_rps`` is the offered rate (``--rate``), ``details`` whatever else the test reports (JSON).
    """
    extension: dict[str, Any] = {
        "test": test_name,
        "service": service,
        "version": version,
        **({"environment": environment} if environment is not None else {}),
        "measured_at": measured_stamp(measured_at),
        "target": result.target,
        "runner": result.runner,
        "users": result.users,
        "duration": result.duration,
        "requests": result.requests,
        "failures": result.failures,
        "error_ratio": result.error_ratio,
        "rps": result.rps,
        "target_rps": target_rps,
        "latency_ms": dataclasses.asdict(result.latency),
        "thresholds": slo_dict(thresholds),
        "judgement": judgement.to_dict(),
        "endpoints": [dataclasses.asdict(endpoint) for endpoint in result.endpoints],
    }
    if details is not None:
        extension["details"] = dict(details)
    predicate = result_predicate(
        passed=judgement.passed,
        test_name=test_name,
        configuration={"thresholds.json": slo_dict(thresholds)},
        extension_type=LOAD_EXTENSION,
        extension=_finite(extension),
    )
    subject = Subject(subject_name, {"sha256": parse_digest(digest)})
    return Statement(subjects=(subject,), predicate_type=TEST_RESULT_V01, predicate=predicate)


def result_predicate(
    *,
    passed: bool,
    test_name: str,
    configuration: Mapping[str, Mapping[str, Any]],
    extension_type: str,
    extension: Mapping[str, Any],
) -> dict[str, Any]:
    """An in-toto test-result v0.1 predicate for one test of vouch's, its figures in the field ``extension_type``.

    ``configuration`` maps a file name to the JSON it stands for; each becomes a resource descriptor with the
    SHA-256 of its canonical JSON. None names a commit (``gitCommit``): see the module's docstring for why.
    """
    descriptors = [
        {"name": name, "digest": {"sha256": hashlib.sha256(_canonical(content)).hexdigest()}}
        for name, content in configuration.items()
    ]
    return {
        "result": "PASSED" if passed else "FAILED",
        "configuration": descriptors,
        "passedTests": [test_name] if passed else [],
        "failedTests": [] if passed else [test_name],
        extension_type: dict(extension),
    }


def measured_stamp(measured_at: float | None = None) -> str:
    """``2025-01-02T03:04:05Z``: the UTC second ``measured_at`` (epoch seconds; now when ``None``)."""
    stamp = datetime.fromtimestamp(measured_at, UTC) if measured_at is not None else datetime.now(UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def attestation_name(prefix: str, statement: Statement, *, stamp: str | None = None) -> str:
    """A file name for ``statement``: ``PREFIX-20250102T030405Z-1a2b3c4d``, the stamp (default: the load figures'
    ``measured_at``, else now) and the start of the statement's digest, so two results stored in the same second
    never overwrite each other."""
    figures = statement.predicate.get(LOAD_EXTENSION)
    measured = figures.get("measured_at") if isinstance(figures, Mapping) else None
    when = (stamp or (measured if isinstance(measured, str) else None) or measured_stamp()).replace(":", "")
    return f"{prefix}-{when.replace('-', '')}-{hashlib.sha256(statement_bytes(statement)).hexdigest()[:8]}"


async def store_statement(
    statement: Statement, *, signer: Signer, source: AttestationSource, digest: str, name: str
) -> str:
    """Sign ``statement`` with ``signer`` and store the envelope for ``digest`` as ``name``; returns where it went."""
    envelope = sign_statement(statement, [signer])
    return await source.put(digest, name, json.dumps(envelope).encode())


def _canonical(content: Any) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as ``None``: JSON has no infinity, and a signed payload must parse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
