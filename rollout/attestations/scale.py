"""vouch's scale-test attestation: an in-toto test-result v0.1 statement that carries the knee and the curve.

The standard predicate says whether the test passed (``result``: ``PASSED`` or ``FAILED``, with
``passedTests``/``failedTests`` naming ``scale-test``) and which configuration it ran with (a digest of
the SLO). The knee, the curve and what it was compared with travel in one extension field named by a
TypeURI, :data:`SCALE_EXTENSION` (in-toto's rule for extension fields: a property named by a TypeURI,
which consumers that do not know it ignore). vouch's check of test-result predicates is structural, so
the field is allowed; its content is :meth:`vouch.loadtests.scale.ScaleResult.to_dict` plus::

    {"service": "shop", "version": "2.0.0", "environment": "staging", "measured_at": "2025-01-02T03:04:05Z",
     "comparison": {"baseline_rps": 80.0, "margin": 0.1, "passed": true, "reason": "knee 81 rps is ..."}}

The statement names no commit (no ``gitCommit`` in ``configuration``), so a policy never counts it as
the pipeline's own ``tests`` step, which must name the released commit. Only documents signed by
vouch's own key are read back as a previous version's knee.

Example::

    statement = scale_statement(result, subject_name="shop", digest="sha256:ab12...", version="2.0.0",
                                service="shop", environment="staging")
    where = await store_scale(statement, signer=signer, source=source, digest="sha256:ab12...", name="scale-1")
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from securesystemslib.signer import Key, Signer  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.core.errors import VouchError
from vouch.loadtests.scale import KneeComparison, ScaleResult, slo_dict
from vouch.rollout.attestations.dsse import check_subject, is_envelope, parse_digest, parse_statement, verify_envelope
from vouch.rollout.attestations.loadresult import measured_stamp, result_predicate, store_statement
from vouch.rollout.attestations.model import PAYLOAD_TYPE, RawAttestation, Statement, Subject
from vouch.rollout.attestations.predicates import TEST_RESULT_V01, VOUCH_PREFIX
from vouch.rollout.attestations.sources import AttestationSource
from vouch.rollout.state import Store

SCALE_EXTENSION = VOUCH_PREFIX + "scale/v1"
"""The extension field of the test-result predicate that holds the scale test's knee and curve."""

TEST_NAME = "scale-test"
"""The name in ``passedTests`` or ``failedTests``."""


@dataclass(frozen=True)
class ScaleRecord:
    """What a scale attestation says: the result, and about which service, version and environment."""

    result: ScaleResult
    service: str
    version: str
    environment: str | None
    measured_at: datetime
    passed: bool
    baseline_rps: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Baseline:
    """The previous version's knee to compare with (``None`` when there is none), and where it came from."""

    knee_rps: float | None
    note: str
    record: ScaleRecord | None = None


def scale_statement(
    result: ScaleResult,
    *,
    subject_name: str,
    digest: str,
    version: str,
    service: str,
    environment: str | None = None,
    comparison: KneeComparison | None = None,
    measured_at: float | None = None,
) -> Statement:
    """The statement for ``result`` about the artifact ``digest`` (``sha256:HEX``) of ``service`` ``version``.

    PASSED when a knee was found and, when ``comparison`` is given, it held against the previous knee.
    """
    passed = result.knee_rps is not None and (comparison is None or comparison.passed)
    extension: dict[str, Any] = {
        "service": service,
        "version": version,
        **({"environment": environment} if environment is not None else {}),
        "measured_at": measured_stamp(measured_at),
        **result.to_dict(),
    }
    if comparison is not None:
        extension["comparison"] = {
            "baseline_rps": comparison.baseline_rps,
            "margin": comparison.margin,
            "passed": comparison.passed,
            "reason": comparison.reason,
        }
    predicate = result_predicate(
        passed=passed,
        test_name=TEST_NAME,
        configuration={"slo.json": slo_dict(result.slo)},
        extension_type=SCALE_EXTENSION,
        extension=extension,
    )
    subject = Subject(subject_name, {"sha256": parse_digest(digest)})
    return Statement(subjects=(subject,), predicate_type=TEST_RESULT_V01, predicate=predicate)


def scale_record(statement: Statement, *, source: str = "") -> ScaleRecord | None:
    """The scale result ``statement`` carries, or ``None`` when it is not a (well-formed) scale attestation."""
    if statement.predicate_type != TEST_RESULT_V01:
        return None
    extension = statement.predicate.get(SCALE_EXTENSION)
    if not isinstance(extension, Mapping):
        return None
    try:
        result = ScaleResult.from_dict(extension)
        measured = datetime.fromisoformat(str(extension["measured_at"]).replace("Z", "+00:00"))
        compared = extension.get("comparison")
        baseline = compared.get("baseline_rps") if isinstance(compared, Mapping) else None
        return ScaleRecord(
            result=result,
            service=str(extension["service"]),
            version=str(extension["version"]),
            environment=None if extension.get("environment") is None else str(extension["environment"]),
            measured_at=measured if measured.tzinfo else measured.replace(tzinfo=UTC),
            passed=statement.predicate.get("result") == "PASSED",
            baseline_rps=None if baseline is None else float(baseline),
            source=source,
        )
    except (KeyError, TypeError, ValueError, ValidationError):
        return None


def read_scale(raw: RawAttestation, *, digest: str | None, keys: Sequence[Key]) -> ScaleRecord | None:
    """The scale record in ``raw`` if it is a DSSE envelope signed by one of ``keys``, about ``digest`` (any
    subject when ``None``), and a scale attestation; ``None`` for any other document (another step's, another
    signer's). Never raises for what a document contains."""
    try:
        document = json.loads(raw.data)
        if not is_envelope(document):
            return None
        checked = verify_envelope(document, keys, threshold=1)
        if checked.payload_type != PAYLOAD_TYPE:
            return None
        statement = parse_statement(checked.payload)
        if digest is not None:
            check_subject(statement, digest)
    except (ValueError, UnicodeDecodeError, VouchError):
        return None
    return scale_record(statement, source=raw.source)


async def previous_knee(
    *,
    store: Store,
    source: AttestationSource,
    keys: Sequence[Key],
    service: str,
    environment: str,
    version: str | None,
) -> Baseline:
    """The knee vouch signed for ``service`` ``version`` (the stable one) in ``environment``, the newest if several.

    The version's artifact is that of its latest release naming one. No release, no artifact or no scale
    attestation signed by ``keys`` is a :class:`Baseline` without a knee that says which; a source that
    cannot answer raises :class:`~vouch.core.errors.GateError`.
    """
    if version is None:
        return Baseline(None, "no stable version: no previous knee to compare with")
    digest = await _artifact(store, service, version)
    if digest is None:
        return Baseline(None, f"no release of {service} {version} names an artifact: no previous knee to compare with")
    records = [
        record
        for raw in await source.find(digest)
        if (record := read_scale(raw, digest=digest, keys=keys)) is not None
        and record.service == service
        and record.environment == environment
        and record.result.knee_rps is not None
    ]
    if not records:
        note = f"no scale attestation of {service} {version} in {environment} signed by vouch: nothing to compare with"
        return Baseline(None, note)
    newest = max(records, key=lambda record: record.measured_at)
    knee = newest.result.knee_rps
    stamp = newest.measured_at.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Baseline(knee, f"{service} {version} held {knee:.4g} rps per replica in {environment} ({stamp})", newest)


async def store_scale(
    statement: Statement, *, signer: Signer, source: AttestationSource, digest: str, name: str
) -> str:
    """Sign ``statement`` with ``signer`` and store the envelope for ``digest`` as ``name``; returns where it went."""
    return await store_statement(statement, signer=signer, source=source, digest=digest, name=name)


async def _artifact(store: Store, service: str, version: str) -> str | None:
    """The artifact digest of the latest release of ``service`` ``version`` that names one."""
    for release in await store.list_releases(service=service, limit=1000):
        if release.version == version and release.artifact and release.artifact.get("digest"):
            return release.artifact["digest"]
    return None
