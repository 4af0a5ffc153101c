"""The local router over real HTTP: round-robin shares, forwarding, and the errors it answers itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from support.demo import free_port
from yarl import URL

from vouch.core.errors import PlatformError
from vouch.rollout.model import Endpoint, Target
from vouch.rollout.platforms.router import Backend, Router, upstream_session
from vouch.rollout.platforms.traffic import TrafficRecorder

TARGET = Target("shop", "staging")


NAME = web.AppKey("name", str)


async def echo(request: web.Request) -> web.Response:
    """Tells what it received, and which backend it is."""
    body = await request.read()
    if request.path == "/slow":
        await asyncio.sleep(5)
    if request.path == "/fail":
        return web.json_response({"name": request.app[NAME]}, status=500)
    answer = {
        "name": request.app[NAME],
        "method": request.method,
        "raw_path": request.raw_path,
        "body": body.decode(),
        "headers": {key.lower(): value for key, value in request.headers.items()},
    }
    response = web.json_response(answer)
    response.headers.add("Set-Cookie", "a=1")
    response.headers.add("Set-Cookie", "b=2")
    response.headers["Keep-Alive"] = "timeout=5"
    return response


@pytest.fixture
async def backend() -> AsyncIterator[Callable[[str], Awaitable[Endpoint]]]:
    runners: list[web.AppRunner] = []

    async def start(name: str) -> Endpoint:
        app = web.Application()
        app[NAME] = name
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return Endpoint("127.0.0.1", site.port)

    yield start
    for runner in runners:
        await runner.cleanup()


class Harness:
    def __init__(self, *, upstream_timeout: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        self.traffic = TrafficRecorder(self.registry)
        self.unavailable = Counter(
            "vouch_router_unavailable", "doc", ("service", "environment"), registry=self.registry
        )
        self.session = upstream_session()
        self.client = aiohttp.ClientSession()
        self.router = Router(
            TARGET,
            host="127.0.0.1",
            port=0,
            session=self.session,
            traffic=self.traffic,
            unavailable=self.unavailable.labels("shop", "staging"),
            upstream_timeout=upstream_timeout,
        )

    async def request(self, path: str = "/", **kwargs: object) -> tuple[int, dict]:
        async with self.client.request(kwargs.pop("method", "GET"), self.router.endpoint.url + path, **kwargs) as r:
            return r.status, await r.json(content_type=None)

    async def close(self) -> None:
        await self.router.stop()
        await self.session.close()
        await self.client.close()

    def unavailable_count(self) -> float:
        return self.registry.get_sample_value(
            "vouch_router_unavailable_total", {"service": "shop", "environment": "staging"}
        )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    made = Harness()
    await made.router.start()
    yield made
    await made.close()


async def test_round_robin_gives_each_backend_an_equal_share(harness, backend) -> None:
    stable = [Backend(await backend(f"s{i}"), "1.0", "stable") for i in range(3)]
    canary = Backend(await backend("c0"), "2.0", "canary")
    harness.router.set_backends([*stable, canary])

    names = [(await harness.request(f"/n/{i}"))[1]["name"] for i in range(400)]

    assert names.count("c0") == 100
    assert {names.count(f"s{i}") for i in range(3)} == {100}
    assert harness.traffic.window(TARGET, "2.0", 60).requests == 100
    assert harness.traffic.window(TARGET, "1.0", 60).requests == 300
    sample = harness.registry.get_sample_value(
        "vouch_router_requests_total",
        {"service": "shop", "environment": "staging", "version": "2.0", "track": "canary", "code": "200"},
    )
    assert sample == 100


async def test_a_removed_backend_gets_not_one_more_request(harness, backend) -> None:
    first = Backend(await backend("a"), "1.0", "stable")
    second = Backend(await backend("b"), "2.0", "canary")
    harness.router.set_backends([first, second])
    await harness.request()
    harness.router.set_backends([first])
    names = {(await harness.request())[1]["name"] for _ in range(10)}
    assert names == {"a"}


async def test_forwards_method_path_query_body_and_end_to_end_headers(harness, backend) -> None:
    harness.router.set_backends([Backend(await backend("a"), "1.0", "stable")])
    async with harness.client.post(
        URL(harness.router.endpoint.url + "/orders/7?x=1&y=%2F", encoded=True),
        data=b"payload",
        headers={"X-Custom": "kept", "Connection": "keep-alive, X-Private", "X-Private": "dropped"},
    ) as response:
        seen = await response.json()
        assert response.status == 200
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert "Keep-Alive" not in response.headers
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/orders/7?x=1&y=%2F"
    assert seen["body"] == "payload"
    assert seen["headers"]["x-custom"] == "kept"
    assert "x-private" not in seen["headers"]
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-host"] == harness.router.endpoint.url.removeprefix("http://")


async def test_upstream_errors_are_passed_through_and_counted_against_the_version(harness, backend) -> None:
    harness.router.set_backends([Backend(await backend("a"), "2.0", "canary")])
    assert (await harness.request("/fail"))[0] == 500
    window = harness.traffic.window(TARGET, "2.0", 60)
    assert (window.requests, window.errors) == (1, 1)


async def test_a_refused_connection_is_a_502_for_that_version(harness) -> None:
    harness.router.set_backends([Backend(Endpoint("127.0.0.1", free_port()), "2.0", "canary")])
    status, body = await harness.request()
    assert status == 502
    assert "2.0" in body["error"]
    assert harness.traffic.window(TARGET, "2.0", 60).errors == 1


async def test_a_slow_replica_is_a_504_after_the_upstream_timeout(backend) -> None:
    made = Harness(upstream_timeout=0.2)
    await made.router.start()
    try:
        made.router.set_backends([Backend(await backend("a"), "2.0", "canary")])
        assert (await made.request("/slow"))[0] == 504
        assert made.traffic.window(TARGET, "2.0", 60).errors == 1
    finally:
        await made.close()


async def test_no_ready_backend_is_a_503_counted_apart(harness) -> None:
    status, body = await harness.request("/anything")
    assert status == 503
    assert "shop/staging" in body["error"]
    assert harness.unavailable_count() == 1
    assert harness.traffic.window(TARGET, "none", 60).requests == 0
    assert harness.registry.get_sample_value("vouch_router_requests_total", {"version": "none"}) is None


async def test_a_busy_port_is_a_platform_error(harness) -> None:
    taken = harness.router.endpoint.port
    clash = Router(
        TARGET,
        host="127.0.0.1",
        port=taken,
        session=harness.session,
        traffic=harness.traffic,
        unavailable=harness.unavailable.labels("shop", "staging"),
        upstream_timeout=1.0,
    )
    with pytest.raises(PlatformError, match=f"cannot listen on 127.0.0.1:{taken}"):
        await clash.start()


async def test_the_router_listens_where_it_says(harness) -> None:
    endpoint = harness.router.endpoint
    assert endpoint.host == "127.0.0.1"
    assert endpoint.port > 0
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.0 503")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


async def test_a_request_racing_a_replica_being_removed_is_served_by_another(harness, backend) -> None:
    good = Backend(await backend("1.0"), "1.0", "stable")

    async def taken_out_meanwhile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        harness.router.set_backends([good])  # the platform removes this replica while the request is on its way
        writer.close()

    server = await asyncio.start_server(taken_out_meanwhile, "127.0.0.1", 0)
    leaving = Backend(Endpoint("127.0.0.1", server.sockets[0].getsockname()[1]), "2.0", "canary")
    try:
        harness.router.set_backends([leaving, good])
        status, body = await harness.request("/order")
    finally:
        server.close()
        await server.wait_closed()
    assert status == 200
    assert body["name"] == "1.0"
    assert harness.traffic.window(TARGET, "2.0", 60).requests == 0, "the leaving replica is not blamed"
