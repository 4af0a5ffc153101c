"""The attestations gate, and the attestation vouch signs when an environment held.

Before any replica of a release starts in an environment whose gates name
``attestations``, every document stored for the artifact's digest is
verified, and the environment's policy decides on the verified statements
(and the rejected ones, so a denial can say why a step is missing). The
decision is stored with the digests of its inputs and the input itself, so
it can be explained and re-run later. When a promotion succeeds, vouch signs
"deployed and held in ENVIRONMENT" for the digest: the next environment's
policy can require it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from vouch.rollout.attestations.dsse import sign_statement
from vouch.rollout.attestations.keys import load_signer
from vouch.rollout.attestations.model import Attestation, RawAttestation, Rejected, Statement, Subject
from vouch.rollout.attestations.predicates import DEPLOYED_V1
from vouch.rollout.attestations.sources import AttestationSource
from vouch.rollout.attestations.verify import AttestationVerifier
from vouch.rollout.engine.decide import Denied, Verified
from vouch.rollout.model import GatePhase, Measurement, Verdict
from vouch.rollout.policy.base import Decision, PolicyEngine
from vouch.rollout.policy.input import canonical_digest, policy_input
from vouch.rollout.state import Event, Promotion, Release, Store, VerdictRecord

log = logging.getLogger(__name__)

GATE = "attestations"

DECISION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
"""Seconds: a decision takes milliseconds; one stopped at the policy's timeout lands in the last buckets."""


class PolicyMetrics:
    """How the environments' policies decide: outcomes, and how long a decision takes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "vouch_policy_decisions",
            "Policy decisions of the attestations gate by outcome: allowed, denied (by the policy), failed "
            "(the policy could not decide: an error, no or a malformed answer, a timeout, a crash; a deny too).",
            ["environment", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "vouch_policy_decision_seconds",
            "Time one policy decision took, input handed over and answer read.",
            ["environment"],
            buckets=DECISION_BUCKETS,
            registry=registry,
        )

    def observe(self, environment: str, decision: Decision) -> None:
        outcome = "allowed" if decision.allow else "failed" if decision.failed else "denied"
        self.decisions.labels(environment, outcome).inc()
        self.seconds.labels(environment).observe(decision.elapsed)


class ReleaseVerification:
    """Verifies a release's attestations and asks the environment's policy; stores what it decided on."""

    def __init__(
        self,
        *,
        store: Store,
        source: AttestationSource,
        verifier: AttestationVerifier,
        policies: Mapping[str, PolicyEngine],
        settings: Mapping[str, Mapping[str, Any]],
        clock: Callable[[], float] = time.time,
        on_event: Callable[[Event], None] = lambda event: None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``on_event`` hears of each decision once it is stored (the audit log and the notifiers)."""
        self._on_event = on_event
        self._metrics = PolicyMetrics(registry) if registry is not None else None
        self._store = store
        self._source = source
        self._verifier = verifier
        self._policies = policies
        self._settings = settings
        self._clock = clock

    async def __call__(self, promotion: Promotion) -> Verified | Denied:
        if GATE not in promotion.gates:
            return Verified("no attestations required here")
        release = await self._store.get_release(promotion.release_id)
        missing = [
            why
            for why, absent in (
                ("the release names no artifact: promote it with --digest", not (release.artifact or {}).get("digest")),
                ("the release names no commit: promote it with --commit", not (release.commit or {}).get("sha")),
            )
            if absent
        ]
        if missing or release.artifact is None or release.commit is None:
            return await self._record(promotion, Denied(tuple(missing)))
        digest = release.artifact["digest"]
        raw = await self._source.find(digest)
        checked = await asyncio.to_thread(self._check_all, raw, digest)
        verified = [c for c in checked if isinstance(c, Attestation)]
        rejected = [c for c in checked if isinstance(c, Rejected)]
        policy = self._policies[promotion.environment]
        document = policy_input(
            environment=promotion.environment,
            service=promotion.service,
            version=promotion.version,
            artifact=release.artifact,
            commit=release.commit,
            attestations=verified,
            rejected=rejected,
            now=datetime.fromtimestamp(self._clock(), UTC),
            settings=self._settings.get(promotion.environment),
            full_statements=policy.full_statements,
        )
        decision = await policy.decide(document)
        if self._metrics is not None:
            self._metrics.observe(promotion.environment, decision)
        outcome: Verified | Denied
        if decision.allow:
            outcome = Verified(f"policy allowed {len(verified)} verified attestations")
        else:
            outcome = Denied(decision.denials or ("the policy denied without a reason",))
        return await self._record(promotion, outcome, decision=decision, document=document, checked=checked)

    def _check_all(self, raw: list[RawAttestation], digest: str) -> list[Attestation | Rejected]:
        return [self._verifier.verify(item, subject_digest=digest) for item in raw]

    async def _record(
        self,
        promotion: Promotion,
        outcome: Verified | Denied,
        *,
        decision: Decision | None = None,
        document: Mapping[str, Any] | None = None,
        checked: list[Attestation | Rejected] | None = None,
    ) -> Verified | Denied:
        """Store the verdict and an event holding everything needed to explain and re-run the decision."""
        now = self._clock()
        checked = checked or []
        allowed = isinstance(outcome, Verified)
        reasons = (outcome.note,) if isinstance(outcome, Verified) else outcome.reasons
        measurements = (
            Measurement("attestations verified", float(sum(isinstance(c, Attestation) for c in checked))),
            Measurement("attestations rejected", float(sum(isinstance(c, Rejected) for c in checked))),
        )
        verdict = Verdict(GATE, GatePhase.PASS if allowed else GatePhase.FAIL, tuple(reasons), measurements)
        await self._store.add_verdicts([VerdictRecord(promotion.id, promotion.step, 0, now, verdict)])
        data: dict[str, Any] = {
            "environment": promotion.environment,
            "service": promotion.service,
            "version": promotion.version,
            "allow": allowed,
            "reasons": list(reasons),
            "attestations": [_describe(c) for c in checked],
        }
        if decision is not None and document is not None:
            data |= {"decision": decision.to_dict(), "input": json.loads(json.dumps(document))}
            data["input_digest"] = decision.input_digest or canonical_digest(document)
        kind = "verification.allowed" if allowed else "verification.denied"
        message = "; ".join(reasons)
        event = await self._store.add_event(Event(kind, message, now, promotion.id, promotion.release_id, data))
        self._on_event(event)
        return outcome


def _describe(item: Attestation | Rejected) -> dict[str, Any]:
    if isinstance(item, Attestation):
        return {"verified": True, "step": item.step, "digest": item.digest, "source": item.source}
    return {"verified": False, "digest": item.digest, "source": item.source, "reason": item.reason}


class DeployedAttester:
    """Signs "deployed and held in ENVIRONMENT" for a release's artifact and stores it beside the others."""

    def __init__(self, *, key: Path, source: AttestationSource, clock: Callable[[], float] = time.time) -> None:
        self._signer = load_signer(key)
        self._source = source
        self._clock = clock

    async def __call__(self, promotion: Promotion, release: Release) -> None:
        if not release.artifact or not release.artifact.get("digest"):
            return
        digest = release.artifact["digest"]
        statement = Statement(
            subjects=(Subject(release.artifact.get("name", release.service), {"sha256": digest.split(":", 1)[1]}),),
            predicate_type=DEPLOYED_V1,
            predicate=_deployed(promotion, release, self._clock()),
        )
        name = f"deployed-{promotion.environment}-{promotion.id}"
        if any(name in raw.source for raw in await self._source.find(digest)):
            # Signed before (the daemon restarted between signing and moving on): an ECDSA signature
            # would differ the second time, and a source that never replaces a document would refuse it.
            log.info("already signed: %s %s held in %s", release.service, release.version, promotion.environment)
            return
        envelope = sign_statement(statement, [self._signer])
        where = await self._source.put(digest, name, json.dumps(envelope).encode())
        log.info("signed: %s %s held in %s (%s)", release.service, release.version, promotion.environment, where)


def _deployed(promotion: Promotion, release: Release, now: float) -> dict[str, Any]:
    finished = promotion.finished_at or now
    predicate: dict[str, Any] = {
        "environment": promotion.environment,
        "service": promotion.service,
        "version": promotion.version,
        "promotion_id": promotion.id,
        "release_id": release.id,
        "held": True,
        "steps": [
            {"label": s.label, "canary_replicas": s.canary_replicas, "stable_replicas": s.stable_replicas}
            for s in promotion.plan
        ]
        or [{"label": "first deploy"}],
        "finished_at": datetime.fromtimestamp(finished, UTC).isoformat().replace("+00:00", "Z"),
    }
    if release.commit and release.commit.get("sha"):
        predicate["commit"] = release.commit["sha"]
    return predicate
