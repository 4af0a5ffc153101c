"""Turning an environment's settings into the snapshot a promotion runs on."""

from __future__ import annotations

from vouch.rollout.config import EnvironmentSpec, PlanSpec
from vouch.rollout.state import AnalysisLimits, PlannedStep


def resolve_plan(plan: PlanSpec, *, replicas: int) -> tuple[PlannedStep, ...]:
    """Resolve ``plan`` for a service of ``replicas`` into canary and stable sizes per step.

    Percentages round up (never below one pod) and are capped at the service's
    size; with ``keep_capacity`` stable shrinks as the canary grows, so the
    canary's share of ready pods, and so of traffic, is what the step says.

    >>> [s.canary_replicas for s in resolve_plan(PlanSpec(steps=[1, "50%", "100%"]), replicas=10)]
    [1, 5, 10]
    >>> [s.stable_replicas for s in resolve_plan(PlanSpec(steps=[1, "50%", "100%"]), replicas=10)]
    [9, 5, 0]
    """
    steps = []
    for step in plan.steps:
        canary = min(step.canary_replicas(replicas), replicas) if step.percent else step.canary_replicas(replicas)
        stable = max(replicas - canary, 0) if plan.keep_capacity else replicas
        pause = plan.pause if step.pause is None else step.pause
        steps.append(PlannedStep(label=step.label, canary_replicas=canary, stable_replicas=stable, pause=pause))
    return tuple(steps)


def resolve_limits(env: EnvironmentSpec) -> AnalysisLimits:
    """Snapshot the analysis settings and deadline of ``env``."""
    a = env.analysis
    return AnalysisLimits(
        interval=a.interval,
        runs=a.runs,
        failure_limit=a.failure_limit,
        inconclusive_limit=a.inconclusive_limit,
        consecutive_errors=a.consecutive_errors,
        progress_deadline=env.progress_deadline,
    )
