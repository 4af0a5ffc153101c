"""The scale part of the ``loadtest`` gate: find one canary replica's knee, compare it with stable's, attest it.

When a service's ``loadtest`` settings have ``scale``, the load-test gate runs the scale test after the
load run at the same step (when the load held: a canary that failed its load is not searched further),
against ONE canary replica (:func:`vouch.loadtests.scale.run_scale`). The previous knee is the stable
version's: the artifact of its latest release that names one, and the newest scale attestation signed
by vouch's own key for that artifact in this environment. A knee more than ``scale.margin`` below it
fails the step; no previous attestation means the knee is judged against the SLO alone, and the verdict
says so. Either way this version's result is signed (when the daemon has ``attestations.signing_key``)
and stored beside its other attestations, for the next version to compare with. A failure to store it
is INCONCLUSIVE, never a pass: the next version would have nothing to compare with.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from vouch.core.errors import VouchError
from vouch.loadtests.locustfiles import Request
from vouch.loadtests.model import LoadRunner
from vouch.loadtests.scale import KneeComparison, ScaleMetrics, ScaleResult, compare_knee, run_scale, scale_locustfile
from vouch.loadtests.settings import LoadTestSpec
from vouch.rollout.attestations.keys import load_signer
from vouch.rollout.attestations.scale import Baseline, previous_knee, scale_statement, store_scale
from vouch.rollout.attestations.sources import AttestationSource
from vouch.rollout.model import GateContext, GatePhase, Measurement, Verdict
from vouch.rollout.state import Store

log = logging.getLogger(__name__)


class ScaleTests:
    """What the scale test needs beyond Locust: the store (releases), the attestation source, vouch's key.

    Without a store and source, or without a key, knees are judged against the SLO only and nothing is
    signed; each verdict says which. ``registry`` exports ``vouch_loadtest_knee_rps``.

    Example::

        scale = ScaleTests(store=store, source=source, signing_key=Path("vouch.key"), registry=registry)
        loads = LoadTests(registry=registry, scale=scale)
    """

    def __init__(
        self,
        *,
        store: Store | None = None,
        source: AttestationSource | None = None,
        signing_key: Path | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._source = source
        self._signer = load_signer(signing_key) if signing_key is not None else None
        self._clock = clock
        self.metrics = ScaleMetrics(registry) if registry is not None else None

    async def verdict(
        self,
        spec: LoadTestSpec,
        ctx: GateContext,
        *,
        runner: LoadRunner,
        locustfile: Path | None,
        requests: Sequence[Request],
        release_id: str | None,
        name: str = "loadtest",
    ) -> Verdict:
        """Search the knee of the first canary replica and judge it; a Locust that cannot run raises
        :class:`~vouch.loadtests.errors.LoadTestError` (the gate reports it as INCONCLUSIVE)."""
        scale = spec.scale
        if scale is None or not ctx.observed.canary_endpoints:
            return Verdict(name, GatePhase.INCONCLUSIVE, ("no scale settings or no canary replica",), errored=True)
        try:
            baseline = await self.baseline(ctx)
        except VouchError as exc:
            reason = f"cannot read the previous version's scale attestation: {exc}"
            return Verdict(name, GatePhase.INCONCLUSIVE, (reason,), errored=True)
        target = ctx.observed.canary_endpoints[0].url
        with _locustfile(locustfile, requests) as path:
            result = await run_scale(target, scale, spec.thresholds, runner=runner, locustfile=path)
        comparison = compare_knee(result, baseline.knee_rps, margin=scale.margin)
        if self.metrics is not None:
            self.metrics.export(result, service=ctx.service, environment=ctx.environment, version=ctx.canary_version)
        reasons = [f"scale: {comparison.reason}", f"scale: {baseline.note}"]
        measurements = _measurements(result, comparison)
        try:
            reasons.append(f"scale: {await self._attest(result, comparison, ctx, release_id)}")
        except VouchError as exc:
            reasons.append(f"scale: the result could not be signed and stored: {exc}")
            if comparison.passed:
                return Verdict(name, GatePhase.INCONCLUSIVE, tuple(reasons), measurements, errored=True)
        return Verdict(name, GatePhase.PASS if comparison.passed else GatePhase.FAIL, tuple(reasons), measurements)

    async def baseline(self, ctx: GateContext) -> Baseline:
        """The stable version's knee in this environment, or a :class:`Baseline` without one saying why."""
        if self._signer is None:
            return Baseline(None, "vouch has no signing key (attestations.signing_key): judged against the SLO only")
        if self._store is None or self._source is None:
            return Baseline(None, "no attestation source: judged against the SLO only")
        return await previous_knee(
            store=self._store,
            source=self._source,
            keys=[self._signer.public_key],
            service=ctx.service,
            environment=ctx.environment,
            version=ctx.stable_version,
        )

    async def _attest(
        self, result: ScaleResult, comparison: KneeComparison, ctx: GateContext, release_id: str | None
    ) -> str:
        """Sign and store the result for this version's artifact; returns what was done, for the verdict."""
        if self._signer is None or self._store is None or self._source is None or release_id is None:
            return "not attested: vouch has no signing key or attestation source"
        release = await self._store.get_release(release_id)
        digest = (release.artifact or {}).get("digest")
        if not release.artifact or not digest:
            return "not attested: the release names no artifact (promote it with --digest)"
        now = self._clock()
        statement = scale_statement(
            result,
            subject_name=release.artifact.get("name", ctx.service),
            digest=digest,
            version=ctx.canary_version,
            service=ctx.service,
            environment=ctx.environment,
            comparison=comparison,
            measured_at=now,
        )
        name = f"scale-{ctx.environment}-{ctx.promotion_id}-{int(now)}"
        where = await store_scale(statement, signer=self._signer, source=self._source, digest=digest, name=name)
        log.info("signed: %s %s scale test in %s (%s)", ctx.service, ctx.canary_version, ctx.environment, where)
        return f"signed and stored as {where}"


@contextlib.contextmanager
def _locustfile(own: Path | None, requests: Sequence[Request]) -> Iterator[Path]:
    if own is not None:
        yield own
        return
    with scale_locustfile(requests) as path:
        yield path


def _measurements(result: ScaleResult, comparison: KneeComparison) -> tuple[Measurement, ...]:
    baseline = comparison.baseline_rps
    floor = f">= {baseline * (1 - comparison.margin):.4g}" if baseline is not None else "> 0"
    return (
        Measurement("scale knee (rps)", result.knee_rps, threshold=floor),
        Measurement("scale previous knee (rps)", baseline),
        Measurement("scale ceiling (rps)", result.ceiling_rps),
        Measurement("scale steps", float(len(result.curve))),
    )
