"""Previews on Kubernetes against the emulator: a namespace per preview, made, listed, removed by down and the reaper.

The emulator (support/kubenamespaces.py) serves namespaces as the API server does, refuses objects in
a namespace that does not exist or is terminating, and injects faults; its controller makes
Deployments available and removes a terminating namespace's contents, as a cluster would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration
from support.kmockserver import write_kubeconfig
from support.kubenamespaces import ClusterController, NamespacedKubernetes, run_cluster, serve_namespaced

from vouch.core.errors import ConflictError, InputError, NotFoundError, PlatformError
from vouch.daemon.app import _preview_reapers
from vouch.daemon.config import parse_config
from vouch.daemon.preview.kube import KubePreviews
from vouch.daemon.preview.kubeobjects import KubePreviewsSpec
from vouch.daemon.preview.local import LocalPreviews
from vouch.daemon.preview.state import PreviewReaper
from vouch.daemon.previewcmd import _previews
from vouch.rollout.config import ServiceSpec
from vouch.rollout.platforms.kube.client import KubeApi, RetryPolicy
from vouch.rollout.platforms.kube.rbac import RULES

NOW = 1_700_000_000.0
NAMESPACE = "preview-checkout-pr-42"
TTL_LABELS = {"vouch.dev/preview", "vouch.dev/expires-at", "app.kubernetes.io/managed-by"}
OWNER = {"pr": "42", "repo": "shop/checkout", "actor": "ana", "commit": "0a1b2c3", "digest": "sha256:" + "ab" * 32}
SETTINGS = KubePreviewsSpec(
    image="registry.example.com/vouch:1.4.0", ready_timeout=10.0, delete_timeout=10.0, poll_interval=0.01
)
RETRY = RetryPolicy(request_timeout=2.0, initial=0.01, maximum=0.05, deadline=5.0)
EVERYTHING = [
    ("configmaps", "mock-inventory"),
    ("configmaps", "mock-payments"),
    ("deployments", "checkout"),
    ("deployments", "mock-inventory"),
    ("deployments", "mock-payments"),
    ("services", "checkout"),
    ("services", "mock-inventory"),
    ("services", "mock-payments"),
]

CHECKOUT = ServiceSpec.model_validate(
    {
        "image": "registry.example.com/checkout:{version}",
        "env": {"LOG_LEVEL": "debug"},
        "environments": [{"name": "staging"}],
        "preview": {
            "env": {"PAYMENTS_URL": "{mock:payments}", "INVENTORY_URL": "{mock:inventory}"},
            "mocks": [
                {"name": "payments", "routes": [{"method": "POST", "path": "/charge", "json": {"ok": True}}]},
                {"name": "inventory", "routes": [{"path": "/items/{id}", "body": "{{path.id}}"}]},
            ],
        },
    }
)


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[NamespacedKubernetes, str]]:
    async with serve_namespaced() as served:
        yield served


@pytest.fixture
def emulator(cluster: tuple[NamespacedKubernetes, str]) -> NamespacedKubernetes:
    return cluster[0]


@pytest.fixture
async def controller(emulator: NamespacedKubernetes) -> AsyncIterator[ClusterController]:
    async with run_cluster(emulator) as running:
        yield running


@pytest.fixture
async def api(cluster: tuple[NamespacedKubernetes, str]) -> AsyncIterator[KubeApi]:
    client = ApiClient(Configuration(host=cluster[1]))
    try:
        yield KubeApi(client, RETRY)
    finally:
        await client.close()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def previews(api: KubeApi, clock: Clock) -> KubePreviews:
    return KubePreviews(SETTINGS, api=api, clock=clock)


async def until(check: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Poll ``check`` until true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"not true within {timeout}s: {check.__doc__ or check}")
        await asyncio.sleep(0.01)


def deletes(emulator: NamespacedKubernetes) -> list[tuple[str | None, dict[str, str]]]:
    return [(name, query) for method, name, query in emulator.namespace_requests if method == "DELETE"]


async def up(previews: KubePreviews, name: str = "checkout-pr-42", **options: Any) -> Any:
    options = {"ttl": 3600.0, "owner": OWNER, **options}
    return await previews.up("checkout", CHECKOUT, "2.4.1", name=name, **options)


# --------------------------------------------------------------------------- up


async def test_up_makes_the_namespace_deployments_services_and_configmaps_with_ttl_labels(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews
) -> None:
    preview = await up(previews)

    namespace = emulator.namespaces[NAMESPACE]
    assert namespace["metadata"]["labels"] == {
        "vouch.dev/preview": "checkout-pr-42",
        "vouch.dev/expires-at": str(int(NOW) + 3600),
        "app.kubernetes.io/managed-by": "vouch",
    }
    notes = namespace["metadata"]["annotations"]
    assert {key: notes[f"vouch.dev/{key}"] for key in OWNER} == OWNER
    assert (notes["vouch.dev/service"], notes["vouch.dev/version"]) == ("checkout", "2.4.1")
    assert notes["vouch.dev/created-at"] == "2023-11-14T22:13:20Z"
    assert emulator.contents(NAMESPACE) == EVERYTHING
    for plural, name in EVERYTHING:
        group = "apps/v1" if plural == "deployments" else "v1"
        stored = emulator.objects[f"{group}/{plural}", NAMESPACE, name].raw
        assert set(stored["metadata"]["labels"]) >= TTL_LABELS, f"{plural}/{name}"
        assert stored["metadata"]["labels"]["vouch.dev/preview"] == "checkout-pr-42"

    service = emulator.objects["apps/v1/deployments", NAMESPACE, "checkout"].raw
    (container,) = service["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/checkout:2.4.1"
    assert {e["name"]: e["value"] for e in container["env"]} == {
        "LOG_LEVEL": "debug",
        "PAYMENTS_URL": f"http://mock-payments.{NAMESPACE}.svc:8080",
        "INVENTORY_URL": f"http://mock-inventory.{NAMESPACE}.svc:8080",
    }
    mock = emulator.objects["apps/v1/deployments", NAMESPACE, "mock-payments"].raw
    (mock_container,) = mock["spec"]["template"]["spec"]["containers"]
    assert mock_container["image"] == "registry.example.com/vouch:1.4.0"
    assert mock_container["command"][:3] == ["python", "-m", "vouch.daemon.preview.mock"]
    spec = emulator.objects["v1/configmaps", NAMESPACE, "mock-payments"].raw["data"]["spec.json"]
    assert '"/charge"' in spec

    assert preview.platform == "kubernetes"
    assert preview.address == f"checkout.{NAMESPACE}.svc:8080"
    assert dict(preview.mocks) == {
        "payments": f"http://mock-payments.{NAMESPACE}.svc:8080",
        "inventory": f"http://mock-inventory.{NAMESPACE}.svc:8080",
    }
    assert (preview.created_at, preview.expires_at) == (NOW, NOW + 3600)
    assert dict(preview.owner) == OWNER
    assert preview.data["namespace"] == NAMESPACE
    assert preview.data["status"] == "up"


async def test_up_waits_until_every_deployment_is_available(
    emulator: NamespacedKubernetes, previews: KubePreviews
) -> None:
    async with run_cluster(emulator, paused=True) as controller:
        task = asyncio.create_task(up(previews), name="preview-up")
        try:

            def made() -> bool:
                """every object is created"""
                return emulator.contents(NAMESPACE) == EVERYTHING

            await until(made)
            polls = len(list(emulator))
            await until(lambda: len(list(emulator)) > polls + 3)  # it keeps looking at the Deployments
            assert not task.done(), "up returned before its Deployments were available"
            controller.paused = False
            preview = await asyncio.wait_for(task, 10)
        finally:
            task.cancel()
    assert preview.data["status"] == "up"


async def test_a_preview_that_does_not_come_up_is_removed(
    emulator: NamespacedKubernetes, controller: ClusterController, api: KubeApi, clock: Clock
) -> None:
    controller.fail_version("2.4.1")
    previews = KubePreviews(SETTINGS.model_copy(update={"ready_timeout": 1.0}), api=api, clock=clock)
    with pytest.raises(PlatformError, match=r"Deployment\(s\) checkout not available within 1s") as failed:
        await up(previews)
    assert "mock-" not in str(failed.value), "the mocks came up; only the service did not"
    await until(lambda: NAMESPACE not in emulator.namespaces)
    assert emulator.contents(NAMESPACE) == []


async def test_up_refuses_a_name_in_use_and_touches_nothing(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews
) -> None:
    await up(previews)
    with pytest.raises(ConflictError, match="exists already"):
        await up(previews)
    emulator.add_namespace("preview-checkout-pr-7")  # someone else's, of the same name
    with pytest.raises(ConflictError, match="not a vouch preview"):
        await up(previews, "checkout-pr-7")
    assert deletes(emulator) == []
    assert emulator.contents(NAMESPACE) == EVERYTHING


async def test_what_cannot_be_previewed_is_refused_before_any_call(
    emulator: NamespacedKubernetes, api: KubeApi
) -> None:
    no_image = KubePreviews(SETTINGS.model_copy(update={"image": None}), api=api, environ={})
    with pytest.raises(InputError, match=r"set previews.image or \$VOUCH_IMAGE"):
        await up(no_image)
    with pytest.raises(InputError, match="needs an `image`"):
        await no_image.up("checkout", CHECKOUT.model_copy(update={"image": None}), "1", name="checkout-pr-1")
    with pytest.raises(InputError, match="cannot name a preview"):
        await up(no_image, "Checkout_PR")
    assert emulator.namespace_requests == []
    assert list(emulator) == []


async def test_the_mocks_image_defaults_to_the_daemons_own(
    emulator: NamespacedKubernetes, controller: ClusterController, api: KubeApi
) -> None:
    previews = KubePreviews(
        SETTINGS.model_copy(update={"image": None}), api=api, environ={"VOUCH_IMAGE": "ghcr.io/vouch-dev/vouch:9.9"}
    )
    await up(previews)
    mock = emulator.objects["apps/v1/deployments", NAMESPACE, "mock-inventory"].raw
    assert mock["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/vouch-dev/vouch:9.9"


# --------------------------------------------------------------------------- down and list


async def test_down_removes_the_namespace_and_everything_in_it(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews
) -> None:
    made = await up(previews)
    await up(previews, "checkout-pr-43")

    removed = await previews.down("checkout-pr-42")

    assert removed is not None
    assert (removed.name, removed.version, dict(removed.owner)) == ("checkout-pr-42", "2.4.1", OWNER)
    assert (removed.created_at, removed.expires_at, dict(removed.mocks)) == (
        made.created_at,
        made.expires_at,
        dict(made.mocks),
    )
    assert deletes(emulator) == [(NAMESPACE, {"propagationPolicy": "Background"})]
    await until(lambda: NAMESPACE not in emulator.namespaces)
    assert emulator.contents(NAMESPACE) == []
    assert emulator.contents("preview-checkout-pr-43") == EVERYTHING
    with pytest.raises(NotFoundError, match="no preview named 'checkout-pr-42'"):
        await previews.down("checkout-pr-42")


async def test_down_returns_once_the_namespace_is_terminating(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews, clock: Clock
) -> None:
    await up(previews)
    controller.paused = True  # the namespace controller lags: the namespace stays terminating

    assert await previews.down("checkout-pr-42") is not None

    assert emulator.namespaces[NAMESPACE]["status"]["phase"] == "Terminating"
    assert await previews.list(clock.now) == [], "a preview being removed is not listed"
    assert await previews.reap(clock.now + 10**6) == []
    assert await previews.down("checkout-pr-42") is not None, "down again is done already"
    assert len(deletes(emulator)) == 1, "a terminating namespace is not deleted again"


async def test_list_shows_age_time_left_and_whether_it_all_runs(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews, clock: Clock
) -> None:
    await up(previews)
    clock.now += 600
    await up(previews, "checkout-pr-43", ttl=60.0)
    emulator.add_namespace("kube-system")
    emulator.add_namespace("preview-other", labels={"vouch.dev/preview": "other"})  # not managed by vouch

    listed = await previews.list(clock.now + 30)

    assert [(i.preview.name, i.age, i.expires_in, i.running) for i in listed] == [
        ("checkout-pr-42", 630.0, 2970.0, True),
        ("checkout-pr-43", 30.0, 30.0, True),
    ]
    assert listed[0].preview.mocks["payments"] == f"http://mock-payments.{NAMESPACE}.svc:8080"
    assert ("GET", None, {"labelSelector": "app.kubernetes.io/managed-by=vouch,vouch.dev/preview"}) in (
        emulator.namespace_requests
    )
    controller.paused = True
    emulator.objects["apps/v1/deployments", NAMESPACE, "checkout"].patch({"status": {"availableReplicas": 0}})
    listed = await previews.list(clock.now)
    assert [i.running for i in listed] == [False, True]


# --------------------------------------------------------------------------- the reaper


async def test_the_reaper_removes_only_the_expired_preview(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews, clock: Clock
) -> None:
    await up(previews, "checkout-pr-1", ttl=60.0)
    await up(previews, "checkout-pr-2", ttl=3600.0)
    emulator.add_namespace("kube-system")
    emulator.add_namespace("preview-stray", labels={"vouch.dev/preview": "stray", "vouch.dev/expires-at": "1"})
    emulator.add_namespace(
        "preview-odd",
        labels={"vouch.dev/preview": "odd", "vouch.dev/expires-at": "soon", "app.kubernetes.io/managed-by": "vouch"},
    )

    reaper = PreviewReaper([previews], clock=lambda: NOW + 60)
    assert await reaper.once() == ["checkout-pr-1"]

    await until(lambda: "preview-checkout-pr-1" not in emulator.namespaces)
    assert emulator.contents("preview-checkout-pr-1") == []
    assert emulator.contents("preview-checkout-pr-2") == EVERYTHING
    assert {"kube-system", "preview-stray", "preview-odd", "preview-checkout-pr-2"} == set(emulator.namespaces)
    assert [i.preview.name for i in await previews.list(NOW + 60)] == ["checkout-pr-2"]
    assert await previews.reap(NOW + 3599) == []
    assert await previews.reap(NOW + 3600) == ["checkout-pr-2"]


async def test_a_cluster_that_forbids_listing_namespaces_has_nothing_to_reap(
    emulator: NamespacedKubernetes, previews: KubePreviews, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.fail("GET", "namespaces", status=403, count=2)
    with caplog.at_level(logging.WARNING, logger="vouch.daemon.preview.kube"):
        assert await previews.reap(NOW) == []
        assert await previews.reap(NOW) == []
    told = [r for r in caplog.records if "not reaped" in r.getMessage()]
    assert len(told) == 1, "said once, not every minute"
    emulator.fail("GET", "namespaces", status=403)
    with pytest.raises(PlatformError, match=r"previews\.enabled"):
        await previews.list(NOW)


# --------------------------------------------------------------------------- faults


async def test_api_faults_are_retried_and_a_lost_answer_is_recognised(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews
) -> None:
    faults = [
        emulator.fail("POST", "namespaces", status=500),
        emulator.fail("POST", "namespaces", status=409),  # refused as existing, yet not there: created again
        emulator.fail("POST", "namespaces", status=409, after=True),  # made, but the answer is lost: it is ours
        emulator.fail("POST", "deployments", status=500, count=2),
        emulator.fail("GET", "deployments", status=503),
        emulator.fail("DELETE", "namespaces", status=409),  # a passing conflict: deleted again after a look
        emulator.fail("DELETE", "namespaces", status=500),
    ]

    preview = await up(previews)
    assert preview.data["status"] == "up"
    assert emulator.contents(NAMESPACE) == EVERYTHING
    assert [m for m, name, _ in emulator.namespace_requests if name is None] == ["POST"] * 3
    await previews.down("checkout-pr-42")

    assert all(f.used.is_set() for f in faults)
    await until(lambda: NAMESPACE not in emulator.namespaces)


async def test_a_refused_create_inside_the_namespace_removes_the_preview(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews
) -> None:
    emulator.fail("POST", "services", status=403)
    with pytest.raises(PlatformError, match=r"cannot create Service mock-payments.*previews\.enabled"):
        await up(previews)
    await until(lambda: NAMESPACE not in emulator.namespaces)


# --------------------------------------------------------------------------- permissions


def verb(method: str, name: str | None) -> str:
    return {"POST": "create", "DELETE": "delete", "PATCH": "patch"}.get(method, "get" if name else "list")


async def test_the_calls_made_are_exactly_the_previews_rules(
    emulator: NamespacedKubernetes, controller: ClusterController, previews: KubePreviews
) -> None:
    await up(previews, ttl=60.0)
    await up(previews, "checkout-pr-43")
    await previews.list(NOW)
    await previews.reap(NOW + 60)
    await previews.down("checkout-pr-43")

    made = {("", "namespaces", verb(method, name)) for method, name, _ in emulator.namespace_requests}
    for request in emulator:
        assert request.resource is not None
        made.add((request.resource.group, request.resource.plural, verb(str(request.method.value), request.name)))
    rules = [rule for rule in RULES if rule.used_by == "previews"]
    assert {rule.scope for rule in rules} == {"cluster"}, "previews are namespaces made on the fly"
    assert made == {(rule.api_group, rule.resource, v) for rule in rules for v in rule.verbs}


# --------------------------------------------------------------------------- connecting


@pytest.fixture
def kubeconfig(cluster: tuple[NamespacedKubernetes, str], tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", {"ci": cluster[1]})


async def test_without_a_client_each_call_connects_through_the_kubeconfig(
    emulator: NamespacedKubernetes, controller: ClusterController, kubeconfig: Path
) -> None:
    previews = KubePreviews(SETTINGS.model_copy(update={"kubeconfig": str(kubeconfig), "context": "ci"}), retry=RETRY)
    preview = await up(previews)
    assert [i.preview.name for i in await previews.list(preview.created_at)] == ["checkout-pr-42"]
    await previews.down("checkout-pr-42")
    await until(lambda: NAMESPACE not in emulator.namespaces)
    assert all(r.headers.get("Authorization") == "Bearer token-ci" for r in emulator)


async def test_an_unreachable_cluster_is_a_platform_error(tmp_path: Path) -> None:
    previews = KubePreviews(KubePreviewsSpec(kubeconfig=str(tmp_path / "missing")), retry=RETRY)
    with pytest.raises(PlatformError, match="cannot reach the cluster for previews"):
        await previews.list(NOW)


CONFIG = """
platform: {kind: %s}
services:
  checkout:
    image: registry.example.com/checkout:{version}
    command: ["{python}", "-m", "http.server", "{port}"]
    environments: [{name: staging}]
    preview: {}
environments:
  staging: {plan: {steps: [1]}, gates: [attestations]}
"""


@pytest.fixture
def configs(tmp_path: Path) -> dict[str, Any]:
    return {
        kind: parse_config((CONFIG % kind).replace("platform:", f"daemon: {{state_dir: '{tmp_path}'}}\nplatform:"))
        for kind in ("local", "kubernetes")
    }


def test_the_daemon_reaps_kubernetes_previews_when_its_platform_is_kubernetes(configs: dict[str, Any]) -> None:
    assert [type(r) for r in _preview_reapers(configs["local"])] == [LocalPreviews]
    assert [type(r) for r in _preview_reapers(configs["kubernetes"])] == [LocalPreviews, KubePreviews]


def test_the_cli_picks_previews_by_flag_or_by_the_platform_kind(configs: dict[str, Any], tmp_path: Path) -> None:
    assert isinstance(_previews(configs["local"], tmp_path), LocalPreviews)
    assert isinstance(_previews(configs["kubernetes"], tmp_path), KubePreviews)
    assert isinstance(_previews(configs["local"], tmp_path, "kubernetes"), KubePreviews)
    assert isinstance(_previews(configs["kubernetes"], tmp_path, "local"), LocalPreviews)
    assert isinstance(_previews(None, tmp_path, "kubernetes"), KubePreviews)
    with pytest.raises(InputError, match="known: kubernetes, local"):
        _previews(configs["local"], tmp_path, "nomad")
