"""Gates judge each analysis run (see ``base.Gate``); ``build_gates`` picks them by kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vouch.core.errors import ConfigError, Problem
from vouch.rollout.alarms import AlertBook
from vouch.rollout.config import AlarmSpec, SloSpec
from vouch.rollout.gates.alarms import AlarmGate
from vouch.rollout.gates.base import Gate
from vouch.rollout.gates.probes import AimedProbe, ProbeGate
from vouch.rollout.gates.slo import SloGate
from vouch.rollout.metrics.base import MetricProvider

GATE_KINDS: tuple[str, ...] = ("attestations", "slo", "alarms", "probes", "loadtest")
"""Gate kinds an environment may list under ``gates``."""


def build_gates(
    kinds: Sequence[str],
    *,
    slos: Sequence[SloSpec],
    providers: Mapping[str, MetricProvider],
    alerts: AlertBook,
    alarms: AlarmSpec,
    probes: Sequence[AimedProbe] = (),
    loadtest: Gate | None = None,
) -> list[Gate]:
    """The gates named by ``kinds``, in order. An unknown kind is an error naming the known ones.

    ``loadtest`` is the service's load-test gate (:meth:`~vouch.rollout.gates.loadtest.LoadTests.gate`);
    ``None`` means the service is not performance-critical, and the ``loadtest`` kind adds nothing.
    """
    gates: list[Gate] = []
    for kind in kinds:
        if kind == "attestations":
            continue  # judged once, before any replica starts (the Verifying phase), not at every step
        if kind == "slo":
            gates.append(SloGate(slos, providers))
        elif kind == "alarms":
            gates.append(AlarmGate(alerts, alarms))
        elif kind == "probes":
            gates.append(ProbeGate(probes))
        elif kind == "loadtest":
            if loadtest is not None:
                gates.append(loadtest)
        else:
            message = f"unknown gate kind {kind!r}; known kinds: {', '.join(GATE_KINDS)}"
            raise ConfigError([Problem(file="<config>", line=None, path="gates", message=message)])
    return gates
