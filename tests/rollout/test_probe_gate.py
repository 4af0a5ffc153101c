"""The probes gate: canary replicas probed, stable probed for comparison."""

from __future__ import annotations

from dataclasses import dataclass, field

from vouch.probes.base import ProbeResult, Reason
from vouch.rollout.gates.probes import AimedProbe, ProbeGate, aim
from vouch.rollout.model import Endpoint, GateContext, GatePhase, Observed, Target

CANARY = (Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002))
STABLE = (Endpoint("127.0.0.1", 9101),)


@dataclass
class ScriptedProbe:
    """Fails on the ports it is told to; records every target it was aimed at."""

    name: str = "health"
    kind: str = "http"
    failing_ports: set[int] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)

    async def run(self, target: str) -> ProbeResult:
        self.seen.append(target)
        port = int(target.split(":")[2].split("/")[0])
        ok = port not in self.failing_ports
        reason = None if ok else Reason.HTTP_STATUS
        return ProbeResult(self.name, self.kind, target, ok, 0.0, 0.01, reason, "" if ok else "status 500")

    async def close(self) -> None:
        pass


def context(*, canary=CANARY, stable=STABLE) -> GateContext:
    observed = Observed("v1", "v2", len(stable), len(stable), len(canary), len(canary), stable, canary)
    return GateContext("p-1", Target("shop", "staging"), "v2", "v1", 0, 0.0, 10.0, observed)


def gate(probe: ScriptedProbe, targets=("http://{address}/healthz",)) -> ProbeGate:
    return ProbeGate([AimedProbe(probe, tuple(targets))])


async def test_every_canary_and_stable_replica_is_probed_and_healthy_passes():
    probe = ScriptedProbe()
    verdict = await gate(probe).evaluate(context())
    assert verdict.phase is GatePhase.PASS
    assert sorted(probe.seen) == sorted(aim("http://{address}/healthz", e) for e in CANARY + STABLE)
    assert verdict.measurements[0].value == 1.0


async def test_a_canary_replica_failing_alone_fails_the_step():
    verdict = await gate(ScriptedProbe(failing_ports={9002})).evaluate(context())
    assert verdict.phase is GatePhase.FAIL
    assert "http_status" in verdict.reasons[0]
    assert "127.0.0.1:9002" in verdict.reasons[0]
    assert verdict.measurements[0].value == 0.5


async def test_when_stable_fails_too_the_environment_is_at_fault_and_nothing_passes():
    verdict = await gate(ScriptedProbe(failing_ports={9001, 9002, 9101})).evaluate(context())
    assert verdict.phase is GatePhase.INCONCLUSIVE
    assert "environment" in verdict.reasons[0]


async def test_no_ready_canary_or_no_aimed_probe_is_inconclusive():
    assert (await gate(ScriptedProbe()).evaluate(context(canary=()))).phase is GatePhase.INCONCLUSIVE
    fixed = gate(ScriptedProbe(), targets=("https://example.test/healthz",))
    assert (await fixed.evaluate(context())).phase is GatePhase.INCONCLUSIVE
