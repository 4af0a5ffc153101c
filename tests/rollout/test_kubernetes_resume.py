"""A promotion outlives its daemon: state in the Kubernetes store, work handed over by restart or by election.

Everything runs against one emulated API server (kmock plus resourceVersions, support/kubeapi.py) with the
test controller playing the Deployment controller and kubelet: the store's ConfigMaps, the Lease and the
Deployments the platform scales all live there, as they would in one cluster.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration
from support.demo import eventually
from support.kmockserver import write_kubeconfig
from support.kubeapi import VersionedKubernetes, serve_kubernetes
from support.kubecontroller import run_controller

from vouch.daemon.leader import LeaderElector
from vouch.daemon.store.kubernetes import KubernetesStore, KubernetesStoreSpec
from vouch.rollout.config import AnalysisSpec, EnvironmentSpec, PlanSpec, ServiceEnvironment, ServiceSpec
from vouch.rollout.engine.driver import DriverSettings
from vouch.rollout.engine.runner import Engine
from vouch.rollout.model import GateContext, GatePhase, Verdict
from vouch.rollout.platforms.kube.settings import KubernetesPlatformSpec
from vouch.rollout.platforms.kubernetes import KubernetesPlatform
from vouch.rollout.state import Phase, Release, StepRecord

SERVICES = {
    "shop": ServiceSpec(
        image="registry.test/shop:{version}", replicas=4, environments=[ServiceEnvironment(name="staging")]
    )
}
ENVIRONMENTS = {
    "staging": EnvironmentSpec(
        plan=PlanSpec(steps=[1, "50%", "75%"]),
        analysis=AnalysisSpec(interval=0.05),
        gates=["slo"],
        progress_deadline=20,
    )
}
PLATFORM_RESOURCES = ("apps/v1/deployments", "v1/pods", "v1/services", "v1/events")


@dataclass
class ScriptedGate:
    """Passes every run; from step ``hold_at`` on it signals ``held`` and never answers (the daemon dies then)."""

    hold_at: int | None = None
    held: asyncio.Event = field(default_factory=asyncio.Event)
    steps: list[int] = field(default_factory=list)
    name: str = "slo"

    async def evaluate(self, ctx: GateContext) -> Verdict:
        self.steps.append(ctx.step_index)
        if self.hold_at is not None and ctx.step_index >= self.hold_at:
            self.held.set()
            await asyncio.Event().wait()
        return Verdict(self.name, GatePhase.PASS, (f"scripted pass at step {ctx.step_index}",))


@dataclass
class Cluster:
    emulator: VersionedKubernetes
    url: str
    kubeconfig: Path

    def deployment(self, name: str) -> dict[str, Any]:
        found = self.emulator.object("deployments", "staging", name)
        assert found is not None, f"no deployment {name}"
        return found


@dataclass
class Daemon:
    """One vouch daemon: its own API client, store, platform connection and engine."""

    store: KubernetesStore
    engine: Engine
    gate: ScriptedGate
    api: ApiClient


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with serve_kubernetes() as (emulator, url), run_controller(emulator):
        for resource in PLATFORM_RESOURCES:
            emulator.resources[resource] = {}
        labels = {"app": "shop"}
        container = {"name": "shop", "image": "registry.test/shop:1.0.0"}
        emulator.objects["apps/v1/deployments", "staging", "shop"] = {
            "metadata": {"name": "shop", "namespace": "staging"},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        }
        emulator.objects["v1/services", "staging", "shop"] = {
            "metadata": {"name": "shop", "namespace": "staging"},
            "spec": {"selector": labels},
        }
        yield Cluster(emulator, url, write_kubeconfig(tmp_path / "kubeconfig", {"test": url}))


@asynccontextmanager
async def daemon(cluster: Cluster, gate: ScriptedGate) -> AsyncIterator[Daemon]:
    api = ApiClient(Configuration(host=cluster.url))
    store = KubernetesStore(api, KubernetesStoreSpec(namespace="vouch", request_timeout=2.0, backoff=0.01))
    spec = KubernetesPlatformSpec(
        kubeconfig=str(cluster.kubeconfig), context="test", poll_interval=0.01, retry_initial=0.01
    )
    platform = KubernetesPlatform(spec, SERVICES)
    engine = Engine(
        store=store,
        platform=platform,
        services=SERVICES,
        environments=ENVIRONMENTS,
        gates=lambda p: [gate],
        settings=DriverSettings(poll_interval=0.01, retry_max=0.05),
    )
    await platform.start()
    try:
        yield Daemon(store, engine, gate, api)
    finally:
        await platform.stop()
        await api.close()


async def stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for(check: Any, *, alive: tuple[asyncio.Task[Any], ...], what: str) -> None:
    """``eventually(check)``, but a crashed daemon task fails the wait at once with its own error."""

    async def checked() -> bool:
        for task in alive:
            if task.done():
                task.result()
                raise AssertionError(f"{task.get_name()} ended while waiting for {what}")
        outcome = check()
        return bool(await outcome) if asyncio.iscoroutine(outcome) else bool(outcome)

    await eventually(checked, timeout=20, what=what)


async def finished(store: KubernetesStore, release: Release) -> bool:
    return (await store.get_release(release.id)).phase.value in ("Succeeded", "Failed")


def assert_each_step_once_in_order(steps: list[StepRecord]) -> None:
    assert [s.index for s in steps] == [0, 1, 2]
    assert [s.canary_replicas for s in steps] == [1, 2, 3]
    assert [s.outcome for s in steps] == ["passed"] * 3
    for earlier, later in itertools.pairwise(steps):
        assert earlier.completed_at is not None
        assert earlier.started_at <= earlier.completed_at <= later.started_at


def assert_promoted(cluster: Cluster) -> None:
    stable = cluster.deployment("shop")
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/shop:2.0.0"
    assert stable["spec"]["replicas"] == 4
    assert cluster.deployment("shop-canary")["spec"]["replicas"] == 0


async def assert_succeeded(store: KubernetesStore, release: Release) -> str:
    assert (await store.get_release(release.id)).phase.value == "Succeeded"
    (promotion,) = await store.list_promotions(release_id=release.id)
    assert promotion.phase is Phase.SUCCEEDED
    assert_each_step_once_in_order(await store.list_steps(promotion.id))
    return promotion.id


async def test_a_restarted_daemon_resumes_the_promotion_from_the_kubernetes_store(cluster: Cluster) -> None:
    async with daemon(cluster, ScriptedGate(hold_at=1)) as first:
        engine = asyncio.create_task(first.engine.run(), name="first-engine")
        try:
            await wait_for(first.engine.started.is_set, alive=(engine,), what="the first engine to start")
            release = await first.engine.submit(service="shop", version="2.0.0", environment=None, actor="ci")
            await wait_for(first.gate.held.is_set, alive=(engine,), what="the promotion to analyse step 1")
        finally:
            await stop(engine)  # the daemon dies: no clean shutdown of anything the driver was doing
        (interrupted,) = await first.store.list_promotions(release_id=release.id)
        assert (interrupted.phase, interrupted.step) == (Phase.PROGRESSING, 1)

    async with daemon(cluster, ScriptedGate()) as second:
        engine = asyncio.create_task(second.engine.run(), name="second-engine")
        try:
            await wait_for(lambda: finished(second.store, release), alive=(engine,), what="the release to end")
        finally:
            await stop(engine)
        await assert_succeeded(second.store, release)

    assert sorted(set(first.gate.steps)) == [0, 1]
    assert min(second.gate.steps) == 1  # resumed where it stood, step 0 was not run again
    assert_promoted(cluster)


async def test_only_the_leader_drives_and_a_follower_takes_over_when_it_stops(cluster: Cluster) -> None:
    def elector(d: Daemon, identity: str) -> LeaderElector:
        return LeaderElector(
            d.api,
            identity=identity,
            lease_name="vouch-leader",
            namespace="vouch",
            lease_duration=3.0,
            renew_deadline=2.0,
            retry_period=0.2,
        )

    async with daemon(cluster, ScriptedGate(hold_at=1)) as a, daemon(cluster, ScriptedGate()) as b:
        leader, follower = elector(a, "vouch-0"), elector(b, "vouch-1")
        a_tasks = (
            asyncio.create_task(leader.run(), name="vouch-0-election"),
            asyncio.create_task(leader.while_leading(a.engine.run), name="vouch-0-engine"),
        )
        b_tasks: tuple[asyncio.Task[Any], ...] = ()
        try:
            await wait_for(a.engine.started.is_set, alive=a_tasks, what="vouch-0 to lead and start its engine")
            b_tasks = (
                asyncio.create_task(follower.run(), name="vouch-1-election"),
                asyncio.create_task(follower.while_leading(b.engine.run), name="vouch-1-engine"),
            )
            release = await a.engine.submit(service="shop", version="2.0.0", environment=None, actor="ci")
            await wait_for(a.gate.held.is_set, alive=a_tasks + b_tasks, what="the promotion to analyse step 1")

            assert leader.is_leader
            assert not follower.is_leader
            assert [p.release_id for p in a.engine.active()] == [release.id]
            assert not b.engine.started.is_set()  # the follower's engine never ran: it drove nothing
            assert b.gate.steps == []

            await stop(*a_tasks)  # the leader stops: it steps down, its engine is cancelled, it frees the Lease
            await wait_for(lambda: finished(b.store, release), alive=b_tasks, what="the follower to finish it")
            assert follower.is_leader
        finally:
            await stop(*a_tasks, *b_tasks)
        await assert_succeeded(b.store, release)

    assert min(b.gate.steps) == 1
    lease = cluster.emulator.object("leases", "vouch", "vouch-leader", group_version="coordination.k8s.io/v1")
    assert lease is not None
    assert lease["spec"]["leaseTransitions"] == 1
    assert_promoted(cluster)
