"""Leader and followers as the outside sees them: readiness, refusals, the client's retry and the pod label."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kubernetes_asyncio.client import ApiClient, Configuration
from prometheus_client import CollectorRegistry, generate_latest
from support.demo import eventually
from support.kubeapi import serve_kubernetes

from vouch.core.errors import NotLeaderError
from vouch.daemon.api import build_app
from vouch.daemon.client import DaemonUnreachable, VouchClient
from vouch.daemon.controller import DaemonController
from vouch.daemon.leaderlabel import LEADER_LABEL, LeaderLabel
from vouch.daemon.metrics import DaemonMetrics
from vouch.rollout.alarms import AlertBook
from vouch.rollout.engine.runner import Engine
from vouch.rollout.platforms.kube.client import KubeApi, RetryPolicy, path
from vouch.rollout.state import Store

TOKEN = "t" * 32
NAMESPACE = "vouch"


@dataclass
class Election:
    """A leadership whose state the test sets."""

    is_leader: bool = False
    in_touch: bool = True
    holder: str | None = "vouch-7d9c-abcde"
    elected: asyncio.Event = field(default_factory=asyncio.Event)
    deposed: asyncio.Event = field(default_factory=asyncio.Event)

    def lead(self, leading: bool) -> None:
        self.is_leader = leading
        (self.elected if leading else self.deposed).set()
        (self.deposed if leading else self.elected).clear()

    async def wait_elected(self) -> None:
        await self.elected.wait()

    async def wait_deposed(self) -> None:
        await self.deposed.wait()


@dataclass
class StartedEngine:
    """All the controller asks of the engine before it acts."""

    started: asyncio.Event = field(default_factory=asyncio.Event)


def controller(election: Election | None, *, started: bool = True) -> DaemonController:
    engine = StartedEngine()
    if started:
        engine.started.set()
    return DaemonController(
        engine=cast(Engine, engine),
        store=cast(Store, None),
        alerts=AlertBook(),
        environments={},
        metrics=DaemonMetrics(CollectorRegistry()),
        leadership=election,
    )


def test_a_follower_in_touch_with_the_lease_is_ready_but_does_not_act() -> None:
    follower = controller(Election())
    assert follower.ready()
    assert not follower.acting()


def test_a_follower_that_lost_the_api_server_is_not_ready() -> None:
    assert not controller(Election(in_touch=False)).ready()


def test_a_leader_is_ready_and_acts_once_its_engine_runs() -> None:
    assert not controller(Election(is_leader=True), started=False).ready()
    leader = controller(Election(is_leader=True))
    assert leader.ready()
    assert leader.acting()
    alone = controller(None)
    assert alone.ready()
    assert alone.acting()


async def test_a_follower_refuses_every_mutation_naming_the_leader() -> None:
    follower = controller(Election())
    calls = [
        follower.submit(service="shop", version="2", environment=None, actor="ana"),
        follower.abort("p-1", actor="ana", reason="no"),
        follower.receive_alerts({"version": "4", "alerts": []}, actor="alertmanager"),
    ]
    for call in calls:
        with pytest.raises(NotLeaderError, match=r"\(the leader is vouch-7d9c-abcde\); retry"):
            await call


@pytest.fixture
async def follower_api() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    registry = CollectorRegistry()
    app = build_app(controller(Election(holder=None)), token=TOKEN, registry=registry)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def test_the_api_of_a_follower_is_ready_and_answers_mutations_503_not_leader(
    follower_api: TestClient[web.Request, web.Application],
) -> None:
    assert (await follower_api.get("/readyz")).status == 200
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await follower_api.post("/api/v1/alerts", json={"version": "4", "alerts": []}, headers=headers)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    error = (await response.json())["error"]
    assert error["code"] == "not_leader"
    assert "no leader is elected right now" in error["message"]


def test_vouch_leader_follows_whether_the_replica_acts() -> None:
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    election = Election()
    follower = controller(election)
    metrics.follow_leadership(follower.acting)
    assert b"vouch_leader 0.0" in generate_latest(registry)
    election.lead(True)
    assert b"vouch_leader 1.0" in generate_latest(registry)


@pytest.fixture
async def failing_over() -> AsyncIterator[tuple[str, list[int]]]:
    """A daemon URL that answers "not the leader" twice (a failover), then serves; and the statuses it gave."""
    given: list[int] = []

    async def alerts(request: web.Request) -> web.Response:
        if len(given) < 2:
            given.append(503)
            error = {"code": "not_leader", "message": "this replica does not lead"}
            return web.json_response({"error": error}, status=503, headers={"Retry-After": "1"})
        given.append(200)
        return web.json_response({"received": 0, "matched": []})

    app = web.Application()
    app.router.add_post("/api/v1/alerts", alerts)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")), given


async def test_the_client_retries_through_a_failover(failing_over: tuple[str, list[int]]) -> None:
    url, given = failing_over
    pauses: list[float] = []

    def send() -> Any:
        with VouchClient(url, TOKEN, sleep=pauses.append) as client:
            return client.send_alerts({"version": "4", "alerts": []})

    assert await asyncio.to_thread(send) == {"received": 0, "matched": []}
    assert given == [503, 503, 200]
    assert pauses == [1.0, 1.0]


async def test_the_client_gives_up_after_its_leader_wait(failing_over: tuple[str, list[int]]) -> None:
    url, given = failing_over

    def send() -> Any:
        with VouchClient(url, TOKEN, leader_wait=0.0) as client:
            return client.send_alerts({"version": "4", "alerts": []})

    with pytest.raises(DaemonUnreachable, match="HTTP 503: this replica does not lead"):
        await asyncio.to_thread(send)
    assert given == [503]


# --------------------------------------------------------------------------- the pod label, on the emulator


@pytest.fixture
async def pod_api() -> AsyncIterator[tuple[Any, KubeApi]]:
    """The emulator, with this daemon's pod, and a client; the emulator's URL is ``emulator.url``."""
    async with serve_kubernetes() as (emulator, url):
        emulator.resources["v1/pods"] = {}
        api = KubeApi(ApiClient(Configuration(host=url)), RetryPolicy(request_timeout=2.0))
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vouch-0", "labels": {"app": "vouch"}}}
        await api.create(path("v1", "pods", NAMESPACE), pod)
        try:
            yield emulator, api
        finally:
            await api.close()


async def label_of(api: KubeApi) -> str | None:
    pod = await api.get(path("v1", "pods", NAMESPACE, "vouch-0"))
    assert pod is not None
    assert pod["metadata"]["labels"]["app"] == "vouch", "other labels are kept"
    value: str | None = pod["metadata"]["labels"].get(LEADER_LABEL)
    return value


async def until_label(api: KubeApi, wanted: str) -> None:
    async def labelled() -> bool:
        return await label_of(api) == wanted

    await eventually(labelled, what=f"{LEADER_LABEL}={wanted}")


async def test_the_leader_labels_its_pod_and_unlabels_it_when_deposed_or_stopping(
    pod_api: tuple[Any, KubeApi],
) -> None:
    _, api = pod_api
    election = Election()
    label = LeaderLabel(api, pod="vouch-0", namespace=NAMESPACE, retry=0.05)
    task = asyncio.create_task(label.run(election))
    try:
        await until_label(api, "false")
        election.lead(True)
        await until_label(api, "true")
        election.lead(False)
        await until_label(api, "false")
        election.lead(True)
        await until_label(api, "true")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await label_of(api) == "false", "a stopping leader leaves its pod out of the Service"


async def test_the_label_is_retried_through_api_faults(pod_api: tuple[Any, KubeApi]) -> None:
    emulator, api = pod_api
    election = Election()
    election.lead(True)
    emulator.fail("PATCH", "pods", status=500, count=6)
    client = ApiClient(Configuration(host=str(emulator.url).rstrip("/")))
    impatient = KubeApi(client, RetryPolicy(request_timeout=2.0, initial=0.01, maximum=0.02, deadline=0.03))
    label = LeaderLabel(impatient, pod="vouch-0", namespace=NAMESPACE, retry=0.05)
    task = asyncio.create_task(label.run(election))
    try:
        await until_label(api, "true")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await impatient.close()
