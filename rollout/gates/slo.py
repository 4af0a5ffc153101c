"""The ``slo`` gate: judges the canary on its service level objectives.

Each :class:`~vouch.rollout.config.SloSpec` becomes one measurement of the
canary (and, with ``compare``, the same measurement of stable), all taken
concurrently, then judged against the SLO's bounds. Measuring and judging are
separate steps: :class:`_Reading` is what a provider answered, :func:`_judge`
decides.

The gate fails closed. No value — no data, NaN, several series where one was
expected, a provider error, a missing provider, too few requests to mean
anything — is INCONCLUSIVE with the reason, never PASS; a provider error also
sets ``errored`` so the analysis can count consecutive errors. The verdict is
the worst of the SLOs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vouch.core.errors import MetricQueryError
from vouch.rollout.config import CompareSpec, SloSpec
from vouch.rollout.metrics.base import MetricProvider, Sample
from vouch.rollout.metrics.template import placeholders_in, promql_duration, render
from vouch.rollout.model import GateContext, GatePhase, Measurement, Verdict, worst

_BUILTIN_FUNCTIONS = {"error_ratio": "error_ratio", "request_rate": "request_rate"}


@dataclass(frozen=True)
class _Reading:
    """What one version measured: a value, or the reason there is none.

    ``requests`` is the request count taken alongside a builtin metric when
    the SLO sets ``min_requests``.
    """

    version: str
    query: str | None
    value: float | None = None
    problem: str | None = None
    errored: bool = False
    requests: float | None = None
    requests_query: str | None = None


@dataclass(frozen=True)
class _Outcome:
    """The judgement of one SLO."""

    phase: GatePhase
    reasons: tuple[str, ...]
    measurements: tuple[Measurement, ...]
    errored: bool = False


class SloGate:
    """Judges every SLO of a service against the canary (and stable, for comparisons).

    Example::

        gate = SloGate(
            [SloSpec(name="error-ratio", metric="error_ratio", window="1m", max=0.05, min_requests=20)],
            {"builtin": BuiltinProvider(traffic)},
        )
        verdict = await gate.evaluate(ctx)  # e.g. FAIL: "error-ratio is 0.21 on 2.4.1, above the maximum 0.05"
    """

    def __init__(self, slos: Sequence[SloSpec], providers: Mapping[str, MetricProvider], *, name: str = "slo") -> None:
        self.name = name
        self._slos = tuple(slos)
        self._providers = dict(providers)

    async def evaluate(self, ctx: GateContext) -> Verdict:
        """Measure every SLO concurrently; the verdict is the worst of them."""
        if not self._slos:
            reason = f"no SLOs configured for service {ctx.service}"
            return Verdict(self.name, GatePhase.INCONCLUSIVE, (reason,))
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._check(slo, ctx), name=f"{self.name}:{slo.name}") for slo in self._slos]
        outcomes = [task.result() for task in tasks]
        phase = worst(outcome.phase for outcome in outcomes)
        reasons = [
            reason
            for outcome in outcomes
            if phase is GatePhase.PASS or outcome.phase is not GatePhase.PASS
            for reason in outcome.reasons
        ]
        return Verdict(
            gate=self.name,
            phase=phase,
            reasons=tuple(reasons),
            measurements=tuple(m for outcome in outcomes for m in outcome.measurements),
            errored=any(outcome.errored for outcome in outcomes),
        )

    async def _check(self, slo: SloSpec, ctx: GateContext) -> _Outcome:
        """Judge one SLO; an unexpected failure is an errored INCONCLUSIVE, not a crash of the gate."""
        try:
            return await self._measure_and_judge(slo, ctx)
        except Exception as exc:  # fail closed: a bug in one SLO must not pass or sink the others
            reason = f"{slo.name} could not be evaluated: {type(exc).__name__}: {exc}"
            return _errored(slo, reason)

    async def _measure_and_judge(self, slo: SloSpec, ctx: GateContext) -> _Outcome:
        provider = self._providers.get(slo.provider)
        if provider is None:
            known = ", ".join(sorted(self._providers)) or "none"
            reason = f"{slo.name}: no metric provider named {slo.provider!r} (configured: {known})"
            return _errored(slo, reason)
        reads = [_read(slo, provider, ctx=ctx, version=ctx.canary_version)]
        if slo.compare is not None and ctx.stable_version is not None:
            reads.append(_read(slo, provider, ctx=ctx, version=ctx.stable_version))
        readings = await asyncio.gather(*reads)
        stable = readings[1] if len(readings) > 1 else None
        return _judge(slo, readings[0], stable=stable, ctx=ctx)


def _errored(slo: SloSpec, reason: str) -> _Outcome:
    return _Outcome(GatePhase.INCONCLUSIVE, (reason,), (Measurement(slo.name, None, error=reason),), errored=True)


# --------------------------------------------------------------------------- measuring


def expression(slo: SloSpec, ctx: GateContext, *, version: str, provider_kind: str = "builtin") -> str:
    """The query that measures ``slo`` for ``version``; ``ValueError`` when none can be built.

    ``metric`` shorthands become builtin expressions over ``window``; a
    ``query`` has its placeholders rendered, ``{version}`` being ``version``.
    """
    window = promql_duration(slo.window)
    if slo.metric is not None:
        if provider_kind != "builtin":
            raise ValueError(
                f"metric {slo.metric!r} is a builtin measurement but provider {slo.provider!r} is "
                f"{provider_kind!r}; write a 'query' in its language instead"
            )
        function = f"latency_quantile({slo.quantile:g})" if slo.metric == "latency" else _BUILTIN_FUNCTIONS[slo.metric]
        return _builtin(function, ctx, version, window)
    assert slo.query is not None
    values = {
        "service": ctx.service,
        "environment": ctx.environment,
        "version": version,
        "canary_version": ctx.canary_version,
        "window": window,
    }
    if ctx.stable_version is not None:
        values["stable_version"] = ctx.stable_version
    return render(slo.query, values)


def _builtin(function: str, ctx: GateContext, version: str, window: str) -> str:
    labels = {"service": ctx.service, "environment": ctx.environment, "version": version}
    matchers = ",".join(f'{k}="{_quote(v)}"' for k, v in labels.items())
    return f"{function}{{{matchers}}}[{window}]"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


async def _read(slo: SloSpec, provider: MetricProvider, *, ctx: GateContext, version: str) -> _Reading:
    """Measure ``slo`` for ``version``; every failure is returned as data."""
    if slo.query is not None and ctx.stable_version is None and "stable_version" in placeholders_in(slo.query):
        missing = "the query uses {stable_version} but there is no stable version yet (first deploy)"
        return _Reading(version, slo.query, problem=missing)
    try:
        expr = expression(slo, ctx, version=version, provider_kind=provider.kind)
    except ValueError as exc:
        return _Reading(version, slo.query, problem=str(exc), errored=True)
    counting = slo.metric is not None and slo.min_requests > 0
    count_expr = _builtin("requests", ctx, version, promql_duration(slo.window)) if counting else None
    try:
        if count_expr is None:
            samples, count_samples = await provider.query(expr, at=ctx.now), None
        else:
            samples, count_samples = await asyncio.gather(
                provider.query(expr, at=ctx.now), provider.query(count_expr, at=ctx.now)
            )
    except MetricQueryError as exc:
        return _Reading(version, expr, problem=str(exc), errored=True, requests_query=count_expr)
    requests = None
    if count_samples is not None:
        requests = count_samples[0].value if count_samples else 0.0
        if requests < slo.min_requests:
            return _Reading(
                version, expr, problem=_too_few(slo, requests), requests=requests, requests_query=count_expr
            )
    value, problem = _single(samples)
    return _Reading(version, expr, value, problem, requests=requests, requests_query=count_expr)


def _too_few(slo: SloSpec, requests: float) -> str:
    seen = f"{requests:g} request{'' if requests == 1 else 's'}"
    return f"only {seen} in the last {promql_duration(slo.window)}, fewer than the {slo.min_requests} needed to judge"


def _single(samples: list[Sample]) -> tuple[float | None, str | None]:
    """The one value an SLO query must produce, or why it did not."""
    if not samples:
        return None, "the query returned no data"
    if len(samples) > 1:
        return None, f"the query returned {len(samples)} series where one was expected (aggregate it, e.g. sum())"
    value = samples[0].value
    if math.isnan(value):
        return None, "the value is NaN (not a number), typically 0/0 when there was no traffic"
    return value, None


# --------------------------------------------------------------------------- judging


def _judge(slo: SloSpec, canary: _Reading, *, stable: _Reading | None, ctx: GateContext) -> _Outcome:
    """PASS only when the canary was measured and every bound held on measured values."""
    measurements = _measurements(slo, canary, stable=stable)
    errored = canary.errored or (stable is not None and stable.errored)
    if canary.value is None:
        reason = f"{slo.name} could not be measured on {canary.version}: {canary.problem}"
        return _Outcome(GatePhase.INCONCLUSIVE, (reason,), measurements, errored)
    value, failures, unknowns = canary.value, [], []
    subject = f"{slo.name} is {_num(value)} on {canary.version}"
    if slo.max is not None and value > slo.max:
        failures.append(f"{subject}, above the maximum {_num(slo.max)}")
    if slo.min is not None and value < slo.min:
        failures.append(f"{subject}, below the minimum {_num(slo.min)}")
    if slo.compare is not None:
        if ctx.stable_version is None or stable is None:
            unknowns.append(f"{slo.name} cannot be compared with stable: there is no stable version yet (first deploy)")
        elif stable.value is None:
            unknowns.append(f"{slo.name} could not be measured on stable {stable.version}: {stable.problem}")
        else:
            failures.extend(_compare(slo.compare, subject, value=value, version=stable.version, base=stable.value))
    if failures:
        return _Outcome(GatePhase.FAIL, tuple(failures + unknowns), measurements, errored)
    if unknowns:
        return _Outcome(GatePhase.INCONCLUSIVE, tuple(unknowns), measurements, errored)
    reason = f"{subject}, within {_threshold(slo)}"
    return _Outcome(GatePhase.PASS, (reason,), measurements, errored)


def _compare(compare: CompareSpec, subject: str, *, value: float, version: str, base: float) -> list[str]:
    failures = []
    max_increase, max_ratio = compare.max_increase, compare.max_ratio
    if max_increase is not None and value - base > max_increase:
        failures.append(
            f"{subject}, {_num(value - base)} above the {_num(base)} of stable {version}; "
            f"at most {_num(max_increase)} more is allowed"
        )
    if max_ratio is not None:
        if base == 0 and value > 0:
            failures.append(f"{subject} while stable {version} is 0; at most {_num(max_ratio)}× stable is allowed")
        elif base != 0 and value / base > max_ratio:
            failures.append(
                f"{subject}, {_num(value / base)}× the {_num(base)} of stable {version}; "
                f"at most {_num(max_ratio)}× is allowed"
            )
    return failures


def _measurements(slo: SloSpec, canary: _Reading, *, stable: _Reading | None) -> tuple[Measurement, ...]:
    found = [Measurement(slo.name, canary.value, threshold=_threshold(slo), query=canary.query, error=canary.problem)]
    if canary.requests_query is not None and canary.requests is not None:
        found.append(_count(f"{slo.name} (requests)", slo, canary))
    if stable is not None:
        found.append(Measurement(f"{slo.name} (stable)", stable.value, query=stable.query, error=stable.problem))
        if stable.requests_query is not None and stable.requests is not None:
            found.append(_count(f"{slo.name} (stable requests)", slo, stable))
    return tuple(found)


def _count(name: str, slo: SloSpec, reading: _Reading) -> Measurement:
    return Measurement(name, reading.requests, threshold=f">= {slo.min_requests}", query=reading.requests_query)


def _threshold(slo: SloSpec) -> str:
    """The bounds of ``slo`` as people read them, e.g. ``<= 0.05 and <= stable + 0.01``."""
    parts = []
    if slo.min is not None:
        parts.append(f">= {_num(slo.min)}")
    if slo.max is not None:
        parts.append(f"<= {_num(slo.max)}")
    if slo.compare is not None:
        if slo.compare.max_increase is not None:
            parts.append(f"<= stable + {_num(slo.compare.max_increase)}")
        if slo.compare.max_ratio is not None:
            parts.append(f"<= stable × {_num(slo.compare.max_ratio)}")
    return " and ".join(parts)


def _num(value: float) -> str:
    return f"{value:.4g}"
