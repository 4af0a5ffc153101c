"""The kubernetes platform against kmock's API server (real HTTP, real client) and a test controller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.demo import eventually
from support.kmockserver import Fault, KubeServer, kube_server, write_kubeconfig
from support.kubecontroller import KubeController, run_controller

from vouch.core.errors import PlatformError, PlatformUnavailable
from vouch.rollout.config import ServiceEnvironment, ServiceSpec
from vouch.rollout.model import Endpoint, Observed, Target
from vouch.rollout.platforms.base import Platform
from vouch.rollout.platforms.kube.objects import PROMOTION_ANNOTATION, TRACK_LABEL, VERSION_LABEL
from vouch.rollout.platforms.kube.rbac import RULES
from vouch.rollout.platforms.kube.settings import KubeClusterSpec, KubernetesPlatformSpec
from vouch.rollout.platforms.kubernetes import KubernetesPlatform

T = Target("shop", "staging")
IMAGE = "registry.test/shop:{version}"
DEPLOYMENTS = "apps/v1/deployments"
FAST = {
    "request_timeout": 2.0,
    "retry_initial": 0.01,
    "retry_max": 0.05,
    "retry_deadline": 5.0,
    "rollout_timeout": 10.0,
    "poll_interval": 0.01,
}


def shop(replicas: int = 3, environments: tuple[str, ...] = ("staging",)) -> ServiceSpec:
    return ServiceSpec(
        image=IMAGE, replicas=replicas, environments=[ServiceEnvironment(name=name) for name in environments]
    )


def stable_deployment(image: str = "registry.test/shop:1.0.0", replicas: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "uid": "uid-shop", "labels": {"app": "shop"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "shop"}},
            "strategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"app": "shop", "tier": "web"}, "creationTimestamp": None},
                "spec": {
                    "containers": [
                        {"name": "proxy", "image": "registry.test/proxy:7", "ports": [{"containerPort": 9901}]},
                        {
                            "name": "shop",
                            "image": image,
                            "ports": [{"containerPort": 8080}],
                            "env": [{"name": "MODE", "value": "prod"}],
                        },
                    ]
                },
            },
        },
    }


def service_object(selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "shop"},
        "spec": {"selector": selector or {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def seed(server: KubeServer, namespace: str = "staging", **deployment: Any) -> None:
    server.put(DEPLOYMENTS, namespace, stable_deployment(**deployment))
    server.put("v1/services", namespace, service_object())


@dataclass
class Rig:
    server: KubeServer
    controller: KubeController
    platform: KubernetesPlatform
    kubeconfig: Path

    def deployment(self, name: str, namespace: str = "staging") -> dict[str, Any]:
        found = self.server.get(DEPLOYMENTS, namespace, name)
        assert found is not None, f"no Deployment {namespace}/{name}"
        return found

    def replicas(self, namespace: str = "staging") -> tuple[int, int | None]:
        canary = self.server.get(DEPLOYMENTS, namespace, "shop-canary")
        return self.deployment("shop", namespace)["spec"]["replicas"], canary["spec"]["replicas"] if canary else None

    def writes(self) -> int:
        return len(self.server.requests("PATCH")) + len(self.server.requests("POST", "deployments"))

    def events(self, name: str | None = None) -> list[tuple[str, str, str]]:
        found = []
        for (resource, _, _), obj in self.server.objects.items():
            if resource.plural == "events" and not obj.deleted:
                event = obj.raw
                if name is None or event["involvedObject"]["name"] == name:
                    found.append((event["involvedObject"]["name"], event["reason"], event["type"]))
        return found

    async def settled(self, check: Callable[[Observed], bool], what: str) -> Observed:
        seen: list[Observed] = []

        async def holds() -> bool:
            seen.append(await self.platform.observe(T))
            return check(seen[-1])

        await eventually(holds, timeout=20, what=what)
        return seen[-1]


Make = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Make]:
    """Build rigs: an API server, the controller over it, and a started platform (all stopped after)."""
    async with AsyncExitStack() as stack:

        async def make(*, service: ServiceSpec | None = None, seeded: bool = True, **spec: Any) -> Rig:
            server = await stack.enter_async_context(kube_server())
            controller = await stack.enter_async_context(run_controller(server.emulator))
            if seeded:
                seed(server)
            kubeconfig = write_kubeconfig(tmp_path / f"kubeconfig-{id(server)}", {"test": server.url})
            settings = KubernetesPlatformSpec(kubeconfig=str(kubeconfig), context="test", **{**FAST, **spec})
            platform = KubernetesPlatform(settings, {"shop": service or shop()})
            stack.push_async_callback(platform.stop)
            await platform.start()
            return Rig(server, controller, platform, kubeconfig)

        yield make


@pytest.fixture
async def rig(make_rig: Make) -> Rig:
    made = await make_rig()
    await made.settled(lambda o: o.stable_ready == 3, "the stable pods")
    return made


def scaled(stable: int, canary: int, version: str = "1.1.0") -> Callable[[Observed], bool]:
    def check(o: Observed) -> bool:
        return (o.stable_ready, o.canary_ready, o.canary_version) == (stable, canary, version)

    return check


# --------------------------------------------------------------------------- observing


async def test_observe_reports_the_stable_deployment_and_its_ready_pods(rig: Rig) -> None:
    observed = await rig.platform.observe(T)

    assert isinstance(rig.platform, Platform)
    assert (observed.stable_version, observed.stable_desired, observed.stable_ready) == ("1.0.0", 3, 3)
    assert (observed.canary_version, observed.canary_desired, observed.canary_ready) == (None, 0, 0)
    pod_ips = sorted(
        obj.raw["status"]["podIP"]
        for (r, _, _), obj in rig.server.objects.items()
        if r.plural == "pods" and not obj.deleted
    )
    assert sorted(e.host for e in observed.stable_endpoints) == pod_ips
    assert {e.port for e in observed.stable_endpoints} == {8080}  # the service's container, not the sidecar


async def test_address_is_the_services_cluster_name(rig: Rig) -> None:
    assert await rig.platform.address(T) == Endpoint("shop.staging.svc", 80)


# --------------------------------------------------------------------------- scaling


async def test_scale_makes_a_canary_from_the_stable_template(rig: Rig) -> None:
    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)

    canary = rig.deployment("shop-canary")
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["selector"] == {"matchLabels": {"app": "shop", TRACK_LABEL: "canary"}}
    assert canary["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert canary["metadata"]["ownerReferences"][0]["uid"] == "uid-shop"
    assert canary["metadata"]["annotations"][PROMOTION_ANNOTATION] == "shop/staging@1.1.0"
    template = canary["spec"]["template"]
    assert template["metadata"]["labels"] == {
        "app": "shop",
        "tier": "web",
        TRACK_LABEL: "canary",
        VERSION_LABEL: "1.1.0",
    }
    proxy, main = template["spec"]["containers"]
    assert proxy["image"] == "registry.test/proxy:7"
    assert main["image"] == "registry.test/shop:1.1.0"
    assert main["env"] == [{"name": "MODE", "value": "prod"}]
    stable = rig.deployment("shop")
    assert stable["spec"]["replicas"] == 2
    assert stable["spec"]["template"] == stable_deployment()["spec"]["template"]  # scale never touches stable's version

    observed = await rig.settled(scaled(2, 1), "2 stable and 1 canary pods ready")
    assert observed.canary_weight == pytest.approx(1 / 3)
    assert observed.stable_desired == 2
    assert observed.canary_desired == 1
    canary_pods = [
        obj.raw
        for (r, _, _), obj in rig.server.objects.items()
        if r.plural == "pods" and not obj.deleted and obj.raw["metadata"]["labels"].get(TRACK_LABEL) == "canary"
    ]
    assert [e.host for e in observed.canary_endpoints] == [p["status"]["podIP"] for p in canary_pods]
    assert sorted(rig.events()) == [("shop", "StableScaled", "Normal"), ("shop-canary", "CanaryCreated", "Normal")]


async def test_scale_again_writes_nothing_and_a_next_step_only_replicas(rig: Rig) -> None:
    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)
    writes = rig.writes()

    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)
    assert rig.writes() == writes
    assert len(rig.events()) == 2

    await rig.platform.scale(T, stable_replicas=1, canary_version="1.1.0", canary_replicas=2)
    patches = rig.server.requests("PATCH", "deployments")[-2:]
    assert [(p.name, p.data["spec"]) for p in patches] == [("shop-canary", {"replicas": 2}), ("shop", {"replicas": 1})]
    await rig.settled(scaled(1, 2), "1 stable and 2 canary pods ready")


async def test_a_new_canary_version_retemplates_the_canary(rig: Rig) -> None:
    await rig.platform.scale(T, stable_replicas=3, canary_version="1.1.0", canary_replicas=1)
    await rig.settled(scaled(3, 1), "the 1.1.0 canary")

    await rig.platform.scale(T, stable_replicas=3, canary_version="1.2.0", canary_replicas=1)

    template = rig.deployment("shop-canary")["spec"]["template"]
    assert template["spec"]["containers"][1]["image"] == "registry.test/shop:1.2.0"
    assert template["metadata"]["labels"][VERSION_LABEL] == "1.2.0"
    await rig.settled(scaled(3, 1, "1.2.0"), "the 1.2.0 canary")


async def test_scale_refuses_what_cannot_be_a_canary(rig: Rig) -> None:
    with pytest.raises(PlatformError, match="already the stable version"):
        await rig.platform.scale(T, stable_replicas=3, canary_version="1.0.0", canary_replicas=1)
    with pytest.raises(PlatformError, match="negative"):
        await rig.platform.scale(T, stable_replicas=-1, canary_version="1.1.0", canary_replicas=1)
    with pytest.raises(PlatformError, match="needs a version"):
        await rig.platform.scale(T, stable_replicas=3, canary_version="", canary_replicas=1)
    assert rig.writes() == 0


async def test_a_service_selecting_on_the_version_is_refused(rig: Rig) -> None:
    rig.server.put("v1/services", "staging", service_object({"app": "shop", VERSION_LABEL: "1.0.0"}))

    with pytest.raises(PlatformError, match="selects on") as caught:
        await rig.platform.scale(T, stable_replicas=3, canary_version="1.1.0", canary_replicas=1)

    assert not isinstance(caught.value, PlatformUnavailable)
    assert rig.server.get(DEPLOYMENTS, "staging", "shop-canary") is None


# --------------------------------------------------------------------------- promoting and rolling back


async def test_promote_rolls_stable_to_the_new_version_then_removes_the_canary(rig: Rig) -> None:
    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)
    await rig.settled(scaled(2, 1), "the canary step")

    await rig.platform.promote(T, "1.1.0")

    observed = await rig.platform.observe(T)  # promote returned only once stable's rollout was done
    assert (observed.stable_version, observed.stable_ready, observed.stable_desired) == ("1.1.0", 3, 3)
    assert (observed.canary_version, observed.canary_desired) == (None, 0)
    stable = rig.deployment("shop")
    assert stable["spec"]["template"]["spec"]["containers"][1]["image"] == "registry.test/shop:1.1.0"
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/proxy:7"
    assert stable["spec"]["template"]["metadata"]["labels"] == {"app": "shop", "tier": "web", VERSION_LABEL: "1.1.0"}
    assert stable["metadata"]["annotations"][PROMOTION_ANNOTATION] == "shop/staging@1.1.0"
    assert rig.replicas() == (3, 0)
    assert sorted(rig.events()) == [
        ("shop", "Promoted", "Normal"),
        ("shop", "Promoting", "Normal"),
        ("shop", "StableScaled", "Normal"),
        ("shop-canary", "CanaryCreated", "Normal"),
        ("shop-canary", "CanaryRemoved", "Normal"),
    ]
    await rig.settled(lambda o: o.canary_ready == 0 and o.stable_ready == 3, "the canary pods gone")

    writes = rig.writes()
    await rig.platform.promote(T, "1.1.0")
    assert rig.writes() == writes


async def test_first_deploy_sets_the_image_of_a_placeholder_deployment(make_rig: Make) -> None:
    rig = await make_rig(seeded=False)
    seed(rig.server, image="registry.test/placeholder:latest", replicas=0)
    observed = await rig.platform.observe(T)
    assert (observed.stable_version, observed.stable_desired) == (None, 0)

    await rig.platform.promote(T, "1.0.0")

    observed = await rig.platform.observe(T)
    assert (observed.stable_version, observed.stable_ready, observed.stable_desired) == ("1.0.0", 3, 3)


async def test_a_running_image_off_the_template_is_still_a_stable_version_to_canary_against(make_rig: Make) -> None:
    rig = await make_rig(seeded=False)
    seed(rig.server, image="registry.elsewhere/shop:old", replicas=3)
    observed = await rig.settled(lambda o: o.stable_ready == 3, "the stable pods")
    assert observed.stable_version == "registry.elsewhere/shop:old"  # never "nothing deployed": no canary-less deploy

    await rig.platform.scale(T, stable_replicas=0, canary_version="1.0.0", canary_replicas=3)  # a 100% step
    await rig.settled(scaled(0, 3, "1.0.0"), "the canary in place of the old image")
    assert (await rig.platform.observe(T)).stable_version == "registry.elsewhere/shop:old"
    await rig.platform.rollback(T)
    assert rig.replicas() == (3, 0)


async def test_rollback_stops_the_canary_first_then_restores_stable(rig: Rig) -> None:
    rig.controller.fail_version("1.1.0")
    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)
    await rig.settled(lambda o: o.stable_ready == 2 and o.canary_desired == 1, "the failing canary step")
    patches_before = len(rig.server.requests("PATCH"))

    await rig.platform.rollback(T)

    patches = rig.server.requests("PATCH", "deployments")[patches_before:]
    assert [(p.name, p.data["spec"]) for p in patches] == [("shop-canary", {"replicas": 0}), ("shop", {"replicas": 3})]
    assert rig.replicas() == (3, 0)
    assert ("shop-canary", "RolledBack", "Warning") in rig.events()
    assert ("shop", "StableRestored", "Normal") in rig.events()
    observed = await rig.settled(lambda o: o.stable_ready == 3 and o.canary_ready == 0, "stable restored")
    assert (observed.stable_version, observed.canary_version, observed.canary_desired) == ("1.0.0", None, 0)

    writes = rig.writes()
    await rig.platform.rollback(T)
    assert rig.writes() == writes


async def test_an_unfinished_stable_rollout_keeps_the_canary_and_a_second_promote_resumes(make_rig: Make) -> None:
    rig = await make_rig(rollout_timeout=1.0)
    await rig.settled(lambda o: o.stable_ready == 3, "the stable pods")
    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)
    await rig.settled(scaled(2, 1), "the canary step")
    rig.controller.fail_version("1.1.0")  # new pods of 1.1.0 never get ready: the stable rollout stalls

    with pytest.raises(PlatformUnavailable, match="not finished"):
        await rig.platform.promote(T, "1.1.0")

    assert rig.replicas() == (3, 1)  # the canary keeps serving
    assert (await rig.platform.observe(T)).canary_ready == 1
    rig.controller.heal_version("1.1.0")
    await rig.platform.promote(T, "1.1.0")
    assert rig.replicas() == (3, 0)


# --------------------------------------------------------------------------- API faults


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault("PATCH", "deployments", status=409, times=2), id="conflict"),
        pytest.param(Fault("PATCH", "deployments", status=429, times=2), id="throttled"),
        pytest.param(Fault("PATCH", "deployments", status=500, times=2), id="server-error"),
        pytest.param(Fault("PATCH", "deployments", status=503, after=True, times=2), id="answer-lost"),
        pytest.param(Fault("PATCH", "deployments", status=None, delay=1.5, times=1), id="timeout"),
        pytest.param(Fault("PATCH", "deployments", status=None, delay=1.5, after=True, times=1), id="timeout-landed"),
        pytest.param(Fault("POST", "deployments", status=500, after=True, times=1), id="create-answer-lost"),
        pytest.param(Fault("GET", "deployments", status=503, times=3), id="read-unavailable"),
    ],
)
async def test_api_faults_are_retried_to_exact_replica_counts(make_rig: Make, fault: Fault) -> None:
    rig = await make_rig(request_timeout=0.5)
    await rig.settled(lambda o: o.stable_ready == 3, "the stable pods")
    rig.server.fail(fault)

    await rig.platform.scale(T, stable_replicas=3, canary_version="1.1.0", canary_replicas=1)
    await rig.platform.scale(T, stable_replicas=1, canary_version="1.1.0", canary_replicas=2)
    await rig.platform.scale(T, stable_replicas=1, canary_version="1.1.0", canary_replicas=2)  # and again: no-op

    assert fault.hits == fault.times
    assert rig.replicas() == (1, 2)
    await rig.settled(scaled(1, 2), "1 stable and 2 canary pods ready")
    reasons = [reason for _, reason, _ in rig.events()]
    assert sorted(reasons) == ["CanaryCreated", "CanaryScaled", "StableScaled"]  # one event per transition


async def test_a_lost_create_answer_still_makes_one_canary(make_rig: Make) -> None:
    rig = await make_rig(request_timeout=0.5)
    fault = rig.server.fail(Fault("POST", "deployments", status=None, delay=1.5, after=True))

    await rig.platform.scale(T, stable_replicas=3, canary_version="1.1.0", canary_replicas=1)

    assert fault.hits == 1
    assert len(rig.server.requests("POST", "deployments")) == 2  # the retry found it made
    assert rig.replicas() == (3, 1)
    assert [reason for _, reason, _ in rig.events("shop-canary")] == ["CanaryCreated"]


async def test_lasting_trouble_is_unavailable_and_a_later_call_converges(make_rig: Make) -> None:
    rig = await make_rig(retry_deadline=0.3)
    await rig.settled(lambda o: o.stable_ready == 3, "the stable pods")
    rig.server.fail(Fault("PATCH", "deployments", name="shop", status=503, times=None))

    with pytest.raises(PlatformUnavailable, match="503"):
        await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)

    assert rig.replicas() == (3, 1)  # the canary grew first; stable kept its capacity
    rig.server.clear_faults()
    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)
    assert rig.replicas() == (2, 1)


@pytest.mark.parametrize("status", [403, 422])
async def test_refusals_are_not_retried(rig: Rig, status: int) -> None:
    rig.server.fail(Fault("PATCH", "deployments", status=status, times=None))

    with pytest.raises(PlatformError, match=str(status)) as caught:
        await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)

    assert not isinstance(caught.value, PlatformUnavailable)
    assert len(rig.server.requests("PATCH")) == 1


async def test_events_that_cannot_be_recorded_do_not_fail_the_change(rig: Rig) -> None:
    rig.server.fail(Fault("POST", "events", status=403, times=None))

    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)

    assert rig.replicas() == (2, 1)
    assert rig.events() == []


# --------------------------------------------------------------------------- targets and clusters


async def test_unknown_targets_and_missing_objects_are_refusals(make_rig: Make) -> None:
    rig = await make_rig(seeded=False, service=shop(environments=("staging", "production")))

    with pytest.raises(PlatformError, match="unknown service 'cart'"):
        await rig.platform.observe(Target("cart", "staging"))
    with pytest.raises(PlatformError, match="no environment 'qa'"):
        await rig.platform.scale(Target("shop", "qa"), stable_replicas=1, canary_version="2", canary_replicas=1)
    for call in (
        rig.platform.observe(T),
        rig.platform.promote(T, "1.0.0"),
        rig.platform.rollback(T),
        rig.platform.scale(T, stable_replicas=1, canary_version="2", canary_replicas=1),
    ):
        with pytest.raises(PlatformError, match="no Deployment 'shop' in namespace 'staging'") as caught:
            await call
        assert not isinstance(caught.value, PlatformUnavailable)
    with pytest.raises(PlatformError, match="no Service 'shop'"):
        await rig.platform.address(T)


async def test_environments_map_to_their_own_clusters_and_namespaces(tmp_path: Path) -> None:
    async with kube_server() as staging, kube_server() as production, AsyncExitStack() as stack:
        await stack.enter_async_context(run_controller(staging.emulator))
        await stack.enter_async_context(run_controller(production.emulator))
        seed(staging, "shop-staging")
        seed(production, "shop")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"stage": staging.url, "prod": production.url})
        spec = KubernetesPlatformSpec(
            kubeconfig=str(kubeconfig),
            context="stage",
            environments={
                "staging": KubeClusterSpec(namespace="shop-staging"),
                "production": KubeClusterSpec(context="prod"),
            },
            namespace="shop",
            **FAST,
        )
        platform = KubernetesPlatform(spec, {"shop": shop(environments=("staging", "production"))})
        stack.push_async_callback(platform.stop)
        await platform.start()

        await platform.scale(Target("shop", "production"), stable_replicas=2, canary_version="1.1.0", canary_replicas=1)

        assert production.get(DEPLOYMENTS, "shop", "shop-canary") is not None
        assert staging.requests("PATCH") == []
        assert staging.requests("POST") == []
        assert (await platform.observe(Target("shop", "staging"))).canary_desired == 0
        assert await platform.address(Target("shop", "staging")) == Endpoint("shop.shop-staging.svc", 80)


async def test_a_bad_kubeconfig_context_fails_start(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"test": "http://127.0.0.1:9"})
    platform = KubernetesPlatform(KubernetesPlatformSpec(kubeconfig=str(kubeconfig), context="nope"), {"shop": shop()})

    with pytest.raises(PlatformError, match="nope"):
        await platform.start()
    with pytest.raises(PlatformError, match="not running"):
        await platform.observe(T)


def test_services_need_an_image_template() -> None:
    with pytest.raises(PlatformError, match="version"):
        KubernetesPlatform(
            KubernetesPlatformSpec(), {"shop": ServiceSpec(image="shop:latest", environments=[{"name": "a"}])}
        )


def test_cluster_settings_for_an_unknown_environment_are_refused() -> None:
    spec = KubernetesPlatformSpec(environments={"prodution": KubeClusterSpec(context="prod")})
    with pytest.raises(PlatformError, match="prodution"):
        KubernetesPlatform(spec, {"shop": shop(environments=("staging", "production"))})


def test_environments_default_to_namespaces_of_their_name() -> None:
    spec = KubernetesPlatformSpec(
        context="main", environments={"production": KubeClusterSpec(context="prod", namespace="shop")}
    )
    assert spec.cluster("staging") == KubeClusterSpec(context="main", namespace="staging")
    assert spec.cluster("production") == KubeClusterSpec(context="prod", namespace="shop")
    inside = KubernetesPlatformSpec(context="main", environments={"dev": KubeClusterSpec(in_cluster=True)})
    assert inside.cluster("dev") == KubeClusterSpec(namespace="dev", in_cluster=True)


# --------------------------------------------------------------------------- RBAC


VERBS = {("GET", True): "get", ("GET", False): "list", ("POST", False): "create", ("PATCH", True): "patch"}


async def test_the_rbac_registry_grants_exactly_what_the_platform_calls(rig: Rig) -> None:
    await rig.platform.address(T)
    await rig.platform.scale(T, stable_replicas=2, canary_version="1.1.0", canary_replicas=1)
    await rig.settled(scaled(2, 1), "the canary step")
    await rig.platform.promote(T, "1.1.0")
    await rig.platform.scale(T, stable_replicas=2, canary_version="1.2.0", canary_replicas=1)
    await rig.platform.rollback(T)

    used = {
        (r.resource.group, r.resource.plural, VERBS[str(r.method.value).upper(), r.name is not None])
        for r in rig.server.requests()
        if r.resource is not None
    }
    granted = {
        (rule.api_group, rule.resource, verb) for rule in RULES if rule.used_by == "platform" for verb in rule.verbs
    }
    assert used == granted
    assert {rule.scope for rule in RULES if rule.used_by == "platform"} == {"namespace"}
