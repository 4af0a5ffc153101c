"""The promotion engine driving the kubernetes platform: kmock's API server, the test controller, SQLite state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.demo import eventually
from support.kmockserver import KubeServer, kube_server, write_kubeconfig
from support.kubecontroller import KubeController, run_controller

from vouch.daemon.store.sqlite import SqliteStore
from vouch.rollout.config import AnalysisSpec, EnvironmentSpec, PlanSpec, ServiceEnvironment, ServiceSpec
from vouch.rollout.engine.driver import DriverSettings
from vouch.rollout.engine.runner import Engine
from vouch.rollout.model import GateContext, GatePhase, Verdict
from vouch.rollout.platforms.kube.settings import KubernetesPlatformSpec
from vouch.rollout.platforms.kubernetes import KubernetesPlatform
from vouch.rollout.state import Phase, Release

SERVICES = {
    "shop": ServiceSpec(
        image="registry.test/shop:{version}", replicas=3, environments=[ServiceEnvironment(name="staging")]
    )
}
ENVIRONMENTS = {
    "staging": EnvironmentSpec(
        plan=PlanSpec(steps=[1, "50%"]), analysis=AnalysisSpec(interval=0.02), gates=["slo"], progress_deadline=20
    )
}


@dataclass
class FixedGate:
    phase: GatePhase
    name: str = "slo"

    async def evaluate(self, ctx: GateContext) -> Verdict:
        return Verdict(self.name, self.phase, (f"canary weight {ctx.observed.canary_weight:.2f}",))


@dataclass
class Cluster:
    server: KubeServer
    controller: KubeController
    platform: KubernetesPlatform
    store: SqliteStore

    def replicas(self, name: str) -> int:
        found = self.server.get("apps/v1/deployments", "staging", name)
        assert found is not None
        return int(found["spec"]["replicas"])

    def image(self) -> str:
        found = self.server.get("apps/v1/deployments", "staging", "shop")
        assert found is not None
        return str(found["spec"]["template"]["spec"]["containers"][0]["image"])

    async def release(self, version: str, gate: FixedGate) -> Release:
        engine = Engine(
            store=self.store,
            platform=self.platform,
            services=SERVICES,
            environments=ENVIRONMENTS,
            gates=lambda p: [gate],
            settings=DriverSettings(poll_interval=0.01, retry_max=0.05, gate_timeout_min=0.5),
        )
        task = asyncio.create_task(engine.run(), name="engine")
        try:
            await asyncio.wait_for(engine.started.wait(), 10)
            release = await engine.submit(service="shop", version=version, environment=None, actor="ci")

            async def ended() -> bool:
                if task.done():
                    task.result()  # the engine crashed: surface why
                return (await self.store.get_release(release.id)).phase.value in ("Succeeded", "Failed")

            await eventually(ended, timeout=30, what=f"the release of {version} to end")
            return await self.store.get_release(release.id)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with kube_server() as server, run_controller(server.emulator) as controller:
        server.put(
            "apps/v1/deployments",
            "staging",
            {
                "metadata": {"name": "shop"},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "shop"}},
                    "template": {
                        "metadata": {"labels": {"app": "shop"}},
                        "spec": {"containers": [{"name": "shop", "image": "registry.test/shop:1.0.0"}]},
                    },
                },
            },
        )
        server.put("v1/services", "staging", {"metadata": {"name": "shop"}, "spec": {"selector": {"app": "shop"}}})
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"test": server.url})
        spec = KubernetesPlatformSpec(
            kubeconfig=str(kubeconfig), context="test", poll_interval=0.01, retry_initial=0.01
        )
        platform = KubernetesPlatform(spec, SERVICES)
        store = await SqliteStore.open(tmp_path / "vouch.db")
        try:
            await platform.start()
            yield Cluster(server, controller, platform, store)
        finally:
            await platform.stop()
            await store.close()


async def test_a_promotion_steps_the_canary_by_pods_and_promotes(cluster: Cluster) -> None:
    release = await asyncio.wait_for(cluster.release("2.0.0", FixedGate(GatePhase.PASS)), 30)

    assert release.phase.value == "Succeeded"
    (promotion,) = await cluster.store.list_promotions(release_id=release.id)
    assert promotion.phase is Phase.SUCCEEDED
    assert cluster.image() == "registry.test/shop:2.0.0"
    assert (cluster.replicas("shop"), cluster.replicas("shop-canary")) == (3, 0)
    canary_scales = [
        r.data["spec"]["replicas"]
        for r in cluster.server.requests("PATCH", "deployments")
        if r.name == "shop-canary" and "replicas" in r.data["spec"]
    ]
    assert canary_scales == [2, 0]  # created with 1 pod, then 50% of 3 rounded up, then removed


async def test_a_failing_canary_is_rolled_back_to_the_stable_version(cluster: Cluster) -> None:
    release = await asyncio.wait_for(cluster.release("2.0.0", FixedGate(GatePhase.FAIL)), 30)

    assert release.phase.value == "Failed"
    (promotion,) = await cluster.store.list_promotions(release_id=release.id)
    assert promotion.phase is Phase.ROLLED_BACK
    assert cluster.image() == "registry.test/shop:1.0.0"
    assert (cluster.replicas("shop"), cluster.replicas("shop-canary")) == (3, 0)
    observed = await cluster.platform.observe(promotion.target)
    assert (observed.stable_version, observed.canary_ready) == ("1.0.0", 0)
