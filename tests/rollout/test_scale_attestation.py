"""Scale attestations: signed, stored, found again for the stable version, verified with vouch's public key."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from vouch.daemon.store.sqlite import SqliteStore
from vouch.loadtests.scale import ScalePoint, ScaleResult, compare_knee, scale_slo
from vouch.loadtests.settings import LoadThresholds
from vouch.rollout.attestations.dsse import sign_statement
from vouch.rollout.attestations.keys import generate_keypair, load_public_key, load_signer
from vouch.rollout.attestations.model import RawAttestation, Statement
from vouch.rollout.attestations.predicates import TEST_RESULT_V01, predicate_type_for, validate_predicate
from vouch.rollout.attestations.scale import (
    SCALE_EXTENSION,
    previous_knee,
    read_scale,
    scale_statement,
    store_scale,
)
from vouch.rollout.attestations.sources import DirectorySource
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec
from vouch.rollout.policy.projection import named_commits
from vouch.rollout.state import Release

STABLE = "sha256:" + "a1" * 32
CANARY = "sha256:" + "b2" * 32
SLO = scale_slo(LoadThresholds(max_latency_ms={"p95": 150}))
CURVE = (
    ScalePoint(30.0, 30.0, 51.0, 53.0, 60.0, 0.0, True, 90, 9),
    ScalePoint(60.0, 60.0, 51.0, 56.0, 70.0, 0.0, True, 180, 18),
    ScalePoint(120.0, 79.0, 400.0, 450.0, 460.0, 0.0, False, 240, 36, ("p95 latency 450 ms is above",), True),
    ScalePoint(84.85, 80.0, 150.0, 210.0, 230.0, 0.0, False, 250, 26, ("p95 latency 210 ms is above",)),
)


def result(knee: float | None = 60.0) -> ScaleResult:
    return ScaleResult("http://127.0.0.1:8080", knee, CURVE, SLO, 14.2, "bracketed", 84.85, 0.1)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[CryptoSigner, Path]:
    pair = generate_keypair(tmp_path / "vouch.key")
    return load_signer(pair.private_path), pair.public_path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "vouch.db")
    try:
        yield opened
    finally:
        await opened.close()


def release(id: str, version: str, digest: str | None, created: float) -> Release:
    artifact = {"name": "shop", "digest": digest} if digest else None
    return Release(id, "shop", version, ("staging",), created_at=created, artifact=artifact)


async def test_a_scale_result_round_trips_signed_stored_read_and_verified(
    tmp_path: Path, keys: tuple[CryptoSigner, Path]
) -> None:
    signer, public = keys
    found = result()
    comparison = compare_knee(found, 58.0, margin=0.1)
    statement = scale_statement(found, subject_name="shop", digest=CANARY, version="2.0.0", service="shop",
                                environment="staging", comparison=comparison, measured_at=1_700_000_000)  # fmt: skip
    predicate = statement.predicate
    assert statement.predicate_type == TEST_RESULT_V01 == predicate_type_for("tests")
    assert (predicate["result"], predicate["passedTests"], predicate["failedTests"]) == ("PASSED", ["scale-test"], [])
    assert validate_predicate(TEST_RESULT_V01, predicate) == []  # the extension field is allowed
    assert named_commits("tests", predicate) == []  # never the pipeline's own tests step
    extension = predicate[SCALE_EXTENSION]
    assert (extension["knee_rps"], extension["measured_at"], extension["environment"]) == (
        60.0,
        "2023-11-14T22:13:20Z",
        "staging",
    )
    assert extension["comparison"]["baseline_rps"] == 58.0
    assert [p["offered"] for p in extension["curve"]] == [30.0, 60.0, 120.0, 84.85]

    source = DirectorySource(tmp_path / "attestations")
    where = await store_scale(statement, signer=signer, source=source, digest=CANARY, name="scale-staging-p-1")
    assert where.endswith("sha256-" + "b2" * 32 + "/scale-staging-p-1.json")
    [raw] = await source.find(CANARY)
    record = read_scale(raw, digest=CANARY, keys=[load_public_key(public)])
    assert record is not None
    assert record.result == found
    assert (record.service, record.version, record.environment, record.passed) == ("shop", "2.0.0", "staging", True)
    assert (record.baseline_rps, record.source) == (58.0, where)
    attestation = AttestationVerifier(TrustSpec(keys=[KeySpec(path=str(public))])).verify(raw, subject_digest=CANARY)
    assert getattr(attestation, "step", None) == "tests", attestation


def test_no_knee_or_a_regression_is_a_failed_test_result_that_lists_its_failure() -> None:
    for found, baseline in ((result(None), None), (result(40.0), 80.0)):
        statement = scale_statement(found, subject_name="shop", digest=CANARY, version="2", service="shop",
                                    comparison=compare_knee(found, baseline, margin=0.1))  # fmt: skip
        assert statement.predicate["result"] == "FAILED"
        assert statement.predicate["failedTests"] == ["scale-test"]
        assert validate_predicate(TEST_RESULT_V01, statement.predicate) == []


def test_only_scale_attestations_signed_by_the_key_and_about_the_digest_are_read(
    tmp_path: Path, keys: tuple[CryptoSigner, Path]
) -> None:
    signer, public = keys
    trusted = [load_public_key(public)]
    statement = scale_statement(result(), subject_name="shop", digest=CANARY, version="2", service="shop")
    envelope = json.dumps(sign_statement(statement, [signer])).encode()
    assert read_scale(RawAttestation("ok", envelope), digest=CANARY, keys=trusted) is not None
    assert read_scale(RawAttestation("ok", envelope), digest=None, keys=trusted) is not None
    assert read_scale(RawAttestation("other digest", envelope), digest=STABLE, keys=trusted) is None
    stranger = load_signer(generate_keypair(tmp_path / "other.key").private_path)
    forged = json.dumps(sign_statement(statement, [stranger])).encode()
    assert read_scale(RawAttestation("forged", forged), digest=CANARY, keys=trusted) is None
    coverage = Statement(statement.subjects, predicate_type_for("coverage"), {"percent": 91})
    other = json.dumps(sign_statement(coverage, [signer])).encode()
    assert read_scale(RawAttestation("coverage", other), digest=CANARY, keys=trusted) is None
    plain = Statement(statement.subjects, TEST_RESULT_V01, {"result": "PASSED", "configuration": []})
    tests = json.dumps(sign_statement(plain, [signer])).encode()
    assert read_scale(RawAttestation("ci tests", tests), digest=CANARY, keys=trusted) is None
    assert read_scale(RawAttestation("junk", b"not json"), digest=CANARY, keys=trusted) is None


async def test_the_previous_knee_is_the_newest_signed_for_the_stable_versions_artifact_here(
    tmp_path: Path, keys: tuple[CryptoSigner, Path], store: SqliteStore
) -> None:
    signer, public = keys
    source = DirectorySource(tmp_path / "attestations")
    lookup = {"store": store, "source": source, "keys": [load_public_key(public)], "service": "shop"}
    none = await previous_knee(**lookup, environment="staging", version="1.0.0")  # type: ignore[arg-type]
    assert (none.knee_rps, none.note) == (
        None,
        "no release of shop 1.0.0 names an artifact: no previous knee to compare with",
    )
    await store.create_release(release("r-0", "1.0.0", "sha256:" + "0f" * 32, 1.0))  # an older build of 1.0.0
    await store.create_release(release("r-1", "1.0.0", STABLE, 2.0))
    await store.create_release(release("r-2", "1.0.0", None, 3.0))  # promoted again without --digest
    await store.create_release(release("r-3", "2.0.0", CANARY, 4.0))
    missing = await previous_knee(**lookup, environment="staging", version="1.0.0")  # type: ignore[arg-type]
    assert missing.knee_rps is None
    assert missing.note == "no scale attestation of shop 1.0.0 in staging signed by vouch: nothing to compare with"

    async def attest(knee: float, environment: str, at: float, name: str) -> None:
        statement = scale_statement(result(knee), subject_name="shop", digest=STABLE, version="1.0.0", service="shop",
                                    environment=environment, measured_at=at)  # fmt: skip
        await store_scale(statement, signer=signer, source=source, digest=STABLE, name=name)

    await attest(70.0, "staging", 1_700_000_000, "scale-a")
    await attest(81.0, "staging", 1_700_000_500, "scale-b")
    await attest(300.0, "production", 1_700_000_900, "scale-c")  # another environment's hardware
    await attest(55.0, "staging", 1_699_000_000, "scale-d")  # older, though read last
    found = await previous_knee(**lookup, environment="staging", version="1.0.0")  # type: ignore[arg-type]
    assert found.knee_rps == 81.0
    assert found.note == "shop 1.0.0 held 81 rps per replica in staging (2023-11-14T22:21:40Z)"
    assert found.record is not None
    assert found.record.source.endswith("scale-b.json")
    assert (await previous_knee(**lookup, environment="staging", version=None)).knee_rps is None  # type: ignore[arg-type]
