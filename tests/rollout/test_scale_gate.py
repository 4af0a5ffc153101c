"""The loadtest gate's scale test: real Locust against capped demo replicas, knees compared through attestations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.loadtarget import demo_targets, locust_children

from vouch.daemon.store.sqlite import SqliteStore
from vouch.loadtests.scale import ScaleResult, scale_slo
from vouch.loadtests.settings import LoadThresholds
from vouch.rollout.attestations.keys import generate_keypair, load_public_key, load_signer
from vouch.rollout.attestations.scale import read_scale, scale_statement, store_scale
from vouch.rollout.attestations.sources import DirectorySource
from vouch.rollout.config import ServiceSpec
from vouch.rollout.gates.loadtest import LoadTests
from vouch.rollout.gates.scale import ScaleTests
from vouch.rollout.model import Endpoint, GateContext, GatePhase, Observed, Target, Verdict
from vouch.rollout.state import AnalysisLimits, PlannedStep, Promotion, Release

STABLE, EQUAL, SLOWER = ("sha256:" + hex * 32 for hex in ("a1", "b2", "c3"))
PREVIOUS_KNEE = 80.0


def service(**scale: Any) -> ServiceSpec:
    """Load at 20 rps for 2 s, then the scale test: a coarse, short search (the knees compared are 80 and 40)."""
    settings = {"start": 30, "factor": 1.5, "resolution": 0.15, "step_duration": 3, "retries": 1, "margin": 0.2}
    return ServiceSpec.model_validate(
        {
            "command": ["demo", "{port}"],
            "environments": [{"name": "staging"}],
            "performance_critical": True,
            "loadtest": {
                "paths": ["/work"],
                "users": 4,
                "spawn_rate": 100,
                "rate": 20,
                "duration": "2s",
                "thresholds": {"max_latency_ms": {"p95": 150}, "min_rate_ratio": 0.7},
                "scale": {**settings, **scale},
            },
        }
    )


def promotion(id: str, release: str, version: str) -> Promotion:
    limits = AnalysisLimits(120.0, 1, 0, 1, 3, 600.0)
    plan = (PlannedStep("1", 1, 1, 0.0), PlannedStep("100%", 2, 0, 0.0))
    return Promotion(id, release, "shop", "staging", version, "1.0.0", 2, plan, limits, ("loadtest",))


def context(promotion: Promotion, canary: Endpoint) -> GateContext:
    observed = Observed("1.0.0", promotion.version, 1, 1, 1, 1, (), (canary,))
    return GateContext(promotion.id, Target("shop", "staging"), promotion.version, "1.0.0", 0, 0.0, 10.0, observed)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "vouch.db")
    try:
        for id, version, digest in (("r-1", "1.0.0", STABLE), ("r-2", "2.0.0", EQUAL), ("r-3", "3.0.0", SLOWER)):
            artifact = {"name": "shop", "digest": digest}
            await opened.create_release(Release(id, "shop", version, ("staging",), created_at=1.0, artifact=artifact))
        yield opened
    finally:
        await opened.close()


def measured(verdict: Verdict, name: str) -> float | None:
    return next(m.value for m in verdict.measurements if m.name == name)


async def test_a_knee_that_dropped_beyond_the_margin_fails_while_an_equal_one_passes(
    tmp_path: Path, store: SqliteStore
) -> None:
    pair = generate_keypair(tmp_path / "vouch.key")
    source = DirectorySource(tmp_path / "attestations")
    stable = ScaleResult("http://stable", PREVIOUS_KNEE, (), scale_slo(LoadThresholds()), 20.0, "bracketed", 84.0)
    statement = scale_statement(stable, subject_name="shop", digest=STABLE, version="1.0.0", service="shop",
                                environment="staging")  # fmt: skip
    await store_scale(statement, signer=load_signer(pair.private_path), source=source, digest=STABLE, name="scale-1")
    registry = CollectorRegistry()
    scale = ScaleTests(store=store, source=source, signing_key=pair.private_path, registry=registry)
    tests = LoadTests(registry=registry, scale=scale)
    async with demo_targets() as start:
        equal = await start("2.0.0", latency_ms=50, max_in_flight=4)  # 80 rps, as stable
        slower = await start("3.0.0", latency_ms=50, max_in_flight=2)  # 40 rps
        held = promotion("p-equal", "r-2", "2.0.0")
        dropped = promotion("p-slower", "r-3", "3.0.0")
        # Two promotions at once, as the daemon runs them: each search drives its own replica.
        passed, failed = await asyncio.gather(
            tests.gate(service(), held).evaluate(context(held, equal)),
            tests.gate(service(), dropped).evaluate(context(dropped, slower)),
        )
    assert passed.phase is GatePhase.PASS, passed.reasons
    assert failed.phase is GatePhase.FAIL, failed.reasons
    assert not locust_children()

    knee = measured(passed, "scale knee (rps)")
    assert knee is not None
    assert knee >= PREVIOUS_KNEE * 0.8, passed.reasons
    assert measured(passed, "scale previous knee (rps)") == PREVIOUS_KNEE
    scaled = [r for r in passed.reasons if r.startswith("scale: ")]
    assert "the previous knee 80 rps, within the 20% margin" in scaled[0]
    assert scaled[1].startswith("scale: shop 1.0.0 held 80 rps per replica in staging (")
    assert scaled[2].startswith("scale: signed and stored as ")
    assert passed.reasons[0].startswith("error ratio 0 is within")  # the load run's reasons come first
    labels = {"service": "shop", "environment": "staging", "version": "2.0.0"}
    assert registry.get_sample_value("vouch_loadtest_knee_rps", labels) == knee

    slower_knee = measured(failed, "scale knee (rps)")
    assert slower_knee is not None
    assert slower_knee < PREVIOUS_KNEE * 0.8
    assert "below the previous knee 80 rps, more than the 20% margin" in failed.reasons[-3]
    assert not failed.errored

    keys = [load_public_key(pair.public_path)]
    for digest, knee_found, passed_test in ((EQUAL, knee, True), (SLOWER, slower_knee, False)):
        [raw] = await source.find(digest)
        record = read_scale(raw, digest=digest, keys=keys)
        assert record is not None
        assert (record.result.knee_rps, record.passed, record.baseline_rps) == (knee_found, passed_test, 80.0)
        assert (record.environment, record.result.target) == ("staging", (equal if passed_test else slower).url)


async def test_without_a_previous_attestation_or_a_key_the_knee_is_judged_against_the_slo_alone(
    tmp_path: Path, store: SqliteStore
) -> None:
    pair = generate_keypair(tmp_path / "vouch.key")
    source = DirectorySource(tmp_path / "attestations")
    held = promotion("p-1", "r-2", "2.0.0")
    ctx = context(held, Endpoint("127.0.0.1", 9))
    signed = await ScaleTests(store=store, source=source, signing_key=pair.private_path).baseline(ctx)
    assert (signed.knee_rps, signed.note) == (
        None,
        "no scale attestation of shop 1.0.0 in staging signed by vouch: nothing to compare with",
    )
    unsigned = await ScaleTests(store=store, source=source).baseline(ctx)
    assert unsigned.note == "vouch has no signing key (attestations.signing_key): judged against the SLO only"
    nowhere = await ScaleTests(signing_key=pair.private_path).baseline(ctx)
    assert nowhere.note == "no attestation source: judged against the SLO only"
