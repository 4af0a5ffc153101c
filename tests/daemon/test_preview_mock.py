"""Mocked backends: served for real on loopback, in this event loop or as the process a preview runs."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.demo import demo_processes, is_alive

from vouch.core.errors import InputError, PlatformUnavailable
from vouch.daemon.preview.mock import MockClient, MockServer, run_mock
from vouch.daemon.preview.mockroutes import RouteTable
from vouch.rollout.preview import MockRoute, MockSpec

MOCK_MODULE = "vouch.daemon.preview.mock"


def spec(*routes: dict[str, Any], name: str = "payments", faults: dict[str, Any] | None = None) -> MockSpec:
    return MockSpec.model_validate({"name": name, "routes": list(routes), "faults": faults})


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


# ---------------------------------------------------------------------------------------------- answers


async def test_routes_answer_their_status_headers_and_body(http: httpx.AsyncClient) -> None:
    routes = (
        {"method": "POST", "path": "/charge", "status": 201, "headers": {"X-Mock": "yes"}, "json": {"ok": True}},
        {"method": "GET", "path": "/text", "body": "plain", "headers": {"Content-Type": "text/csv"}},
        {"method": "DELETE", "path": "/empty", "status": 204},
    )
    async with MockServer(spec(*routes)) as mock:
        charged = await http.post(f"{mock.url}/charge", json={"amount": 5})
        assert (charged.status_code, charged.json()) == (201, {"ok": True})
        assert charged.headers["x-mock"] == "yes"
        assert charged.headers["content-type"] == "application/json"

        text = await http.get(f"{mock.url}/text")
        assert (text.status_code, text.text, text.headers["content-type"]) == (200, "plain", "text/csv")

        empty = await http.delete(f"{mock.url}/empty")
        assert (empty.status_code, empty.content) == (204, b"")

        wrong_method = await http.get(f"{mock.url}/charge")
        assert wrong_method.status_code == 404
        assert [call.route for call in mock.calls] == [0, 1, 2, None]


async def test_templates_read_path_query_header_json_and_method_and_never_evaluate(http: httpx.AsyncClient) -> None:
    body = (
        "{{method}} order={{path.order}} line={{ path.line }} q={{query.q}} trace={{header.X-Trace}} "
        "who={{json.customer.name}} first={{json.items.0}} all={{json.items}} "
        "missing=[{{json.nope}}|{{query.nope}}|{{header.nope}}|{{path.nope}}|{{json.customer.name.x}}] "
        "unknown=[{{env.HOME}}|{{json.__class__}}] literal={{ 1+1 }}"
    )
    routes = (
        {"method": "POST", "path": "/orders/{order}/lines/{line}", "body": body},
        {
            "method": "PUT",
            "path": "/echo/{id}",
            "json": {"id": "{{path.id}}", "amount": "{{json.amount}}", "note": "for {{json.who}}", "gone": "{{x.y}}"},
        },
    )
    async with MockServer(spec(*routes)) as mock:
        answer = await http.post(
            f"{mock.url}/orders/o-7/lines/2",
            params={"q": "fast"},
            headers={"X-Trace": "t-1"},
            json={"customer": {"name": "Ada"}, "items": [3, 4]},
        )
        assert answer.status_code == 200
        assert answer.text == (
            "POST order=o-7 line=2 q=fast trace=t-1 who=Ada first=3 all=[3,4] "
            "missing=[||||] unknown=[|] literal={{ 1+1 }}"
        )
        assert answer.headers["content-type"].startswith("text/plain")

        echoed = await http.put(f"{mock.url}/echo/9", json={"amount": 12.5, "who": "Bo"})
        assert echoed.json() == {"id": "9", "amount": 12.5, "note": "for Bo", "gone": ""}

        no_json = await http.put(f"{mock.url}/echo/9", content=b"not json")
        assert no_json.json() == {"id": "9", "amount": "", "note": "for ", "gone": ""}


async def test_a_path_segment_matches_one_segment_only(http: httpx.AsyncClient) -> None:
    async with MockServer(spec({"method": "POST", "path": "/reserve/{sku}", "body": "{{path.sku}}"})) as mock:
        assert (await http.post(f"{mock.url}/reserve/tea%20green")).text == "tea green"
        assert (await http.post(f"{mock.url}/reserve/a/b")).status_code == 404
        assert (await http.post(f"{mock.url}/reserve/")).status_code == 404


async def test_an_unmatched_request_is_answered_404_naming_the_routes_and_recorded(http: httpx.AsyncClient) -> None:
    routes = ({"method": "POST", "path": "/charge"}, {"method": "GET", "path": "/refunds/{id}"})
    async with MockServer(spec(*routes)) as mock:
        answer = await http.patch(f"{mock.url}/nowhere", params={"a": "1"}, json={"x": 1})
        assert answer.status_code == 404
        assert answer.json() == {
            "error": "no route for PATCH /nowhere",
            "routes": ["POST /charge", "GET /refunds/{id}"],
        }
        (call,) = mock.calls
        assert (call.method, call.path, call.query, call.json, call.status, call.route, call.fault) == (
            "PATCH",
            "/nowhere",
            {"a": "1"},
            {"x": 1},
            404,
            None,
            None,
        )


def test_a_route_under_the_control_prefix_is_refused() -> None:
    with pytest.raises(InputError, match="__vouch"):
        RouteTable([MockRoute(path="/__vouch/calls")])
    with pytest.raises(InputError, match=re.escape("/a/{x}/{x}")):
        RouteTable([MockRoute(path="/a/{x}/{x}")])


# ---------------------------------------------------------------------------------------------- faults


async def test_latency_is_waited_before_answering(http: httpx.AsyncClient) -> None:
    routes = ({"path": "/slow", "faults": {"latency": "300ms"}}, {"path": "/fast"})
    async with MockServer(spec(*routes)) as mock:
        started = time.monotonic()
        assert (await http.get(f"{mock.url}/slow")).status_code == 200
        assert time.monotonic() - started >= 0.29
        assert (await http.get(f"{mock.url}/fast")).status_code == 200
        assert [call.fault for call in mock.calls] == ["latency", None]


async def test_error_ratio_with_a_seed_repeats_exactly(http: httpx.AsyncClient) -> None:
    route = {"method": "POST", "path": "/charge", "json": {"ok": True}}
    faulty = spec(route, faults={"error_ratio": 0.5, "error_status": 500})
    draws = random.Random(7)
    expected = [500 if draws.random() < 0.5 else 200 for _ in range(40)]
    assert {200, 500} <= set(expected)
    for _ in range(2):  # a second mock with the same seed answers the very same sequence
        async with MockServer(faulty, seed=7) as mock:
            statuses = [(await http.post(f"{mock.url}/charge")).status_code for _ in range(40)]
            assert statuses == expected
            assert [call.status for call in mock.calls] == expected
            assert [call.fault for call in mock.calls] == ["error" if s == 500 else None for s in expected]
            errored = await http.post(f"{mock.url}/charge")
            if errored.status_code == 500:
                assert errored.json() == {"error": "injected fault", "mock": "payments"}


async def test_drop_closes_the_connection_without_an_answer(http: httpx.AsyncClient) -> None:
    routes = ({"path": "/dropped"}, {"path": "/spared", "faults": {}})  # a route's own faults win over the mock's
    async with MockServer(spec(*routes, faults={"drop_ratio": 1.0, "error_ratio": 1.0})) as mock:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{mock.url}/dropped")
        assert (await http.get(f"{mock.url}/spared")).status_code == 200
        assert [(call.path, call.status, call.fault) for call in mock.calls] == [
            ("/dropped", None, "drop"),
            ("/spared", 200, None),
        ]


# ---------------------------------------------------------------------------------------------- control API


async def test_control_api_lists_filters_resets_and_describes(http: httpx.AsyncClient) -> None:
    routes = ({"method": "POST", "path": "/charge"}, {"method": "POST", "path": "/reserve/{sku}"})
    async with MockServer(spec(*routes)) as mock:
        await http.post(f"{mock.url}/charge", json={"amount": 1}, headers={"X-Trace": "a"})
        await http.post(f"{mock.url}/reserve/tea", content=b"\xff\x00binary")
        await http.get(f"{mock.url}/charge?x=1&x=2")

        calls = (await http.get(f"{mock.url}/__vouch/calls")).json()
        assert [(c["method"], c["path"], c["status"], c["route"]) for c in calls] == [
            ("POST", "/charge", 200, 0),
            ("POST", "/reserve/tea", 200, 1),
            ("GET", "/charge", 404, None),
        ]
        first, binary, repeated = calls
        assert first["json"] == {"amount": 1}
        assert (first["body"], first["body_encoding"]) == ('{"amount":1}', "text")
        assert first["headers"]["x-trace"] == "a"
        assert all(name == name.lower() for name in first["headers"])
        assert first["at"] <= binary["at"] <= repeated["at"]
        assert (base64.b64decode(binary["body"]), binary["body_encoding"], binary["json"]) == (
            b"\xff\x00binary",
            "base64",
            None,
        )
        assert repeated["query"] == {"x": "1"}

        posts = (await http.get(f"{mock.url}/__vouch/calls", params={"method": "post", "path": "/charge"})).json()
        assert [c["path"] for c in posts] == ["/charge"]
        assert (await http.get(f"{mock.url}/__vouch/health")).json() == {"status": "ok", "mock": "payments", "calls": 3}
        described = (await http.get(f"{mock.url}/__vouch/spec")).json()
        assert MockSpec.model_validate(described) == mock.spec

        assert (await http.post(f"{mock.url}/__vouch/nothing")).status_code == 404  # the mock's own: not recorded
        assert (await http.delete(f"{mock.url}/__vouch/calls")).json() == {"cleared": 3}
        assert (await http.get(f"{mock.url}/__vouch/calls")).json() == []


async def test_run_mock_serves_in_the_running_loop_until_cancelled(http: httpx.AsyncClient) -> None:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_mock(spec({"path": "/ping", "body": "pong"}), ready=ready.set_result), name="mock")
    try:
        url = await asyncio.wait_for(ready, 20)
        assert (await http.get(f"{url}/ping")).text == "pong"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(httpx.ConnectError):
        await http.get(f"{url}/ping")


# ---------------------------------------------------------------------------------------------- as a process


@dataclass
class RunningMock:
    process: subprocess.Popen[bytes]
    url: str


@pytest.fixture
def start_mock(tmp_path: Path) -> Iterator[Callable[..., RunningMock]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(document: dict[str, Any], *extra: str) -> RunningMock:
        path = tmp_path / f"{document['name']}.json"
        path.write_text(json.dumps(document))
        argv = [sys.executable, "-m", MOCK_MODULE, "--spec", str(path), "--port", "0", *extra]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().decode()  # the mock prints once it listens, or exits
        assert line.startswith("ready on http://127.0.0.1:"), (line, process.communicate(timeout=10))
        return RunningMock(process, line.removeprefix("ready on ").strip())

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_the_process_prints_its_real_port_and_stops_cleanly_on_sigterm(start_mock) -> None:
    mock = start_mock({"name": "inventory", "routes": [{"method": "POST", "path": "/reserve/{sku}"}]})
    assert not mock.url.endswith(":0")
    with MockClient(mock.url) as client:
        assert client.health() == {"status": "ok", "mock": "inventory", "calls": 0}
        assert client.spec()["name"] == "inventory"
        with httpx.Client(trust_env=False) as http:
            assert http.post(f"{mock.url}/reserve/tea").status_code == 200
        assert [call["path"] for call in client.calls(method="POST")] == ["/reserve/tea"]
        assert client.calls(path="/other") == []
        client.reset()
        assert client.calls() == []
    mock.process.send_signal(signal.SIGTERM)
    _, stderr = mock.process.communicate(timeout=10)
    assert mock.process.returncode == 0, stderr
    assert stderr == b""
    assert not is_alive(mock.process.pid)
    with pytest.raises(PlatformUnavailable), MockClient(mock.url, timeout=2) as gone:
        gone.health()


def test_the_process_takes_a_seed(start_mock) -> None:
    document = {"name": "payments", "routes": [{"path": "/charge"}], "faults": {"error_ratio": 0.5}}
    mock = start_mock(document, "--seed", "3")
    draws = random.Random(3)
    with httpx.Client(trust_env=False) as http:
        statuses = [http.get(f"{mock.url}/charge").status_code for _ in range(20)]
    assert statuses == [503 if draws.random() < 0.5 else 200 for _ in range(20)]


def test_a_wrong_spec_file_exits_2_naming_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "payments", "routes": [{"path": "no-slash"}]}))
    argv = [sys.executable, "-m", MOCK_MODULE, "--spec", str(path), "--port", "0"]
    done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert str(path) in done.stderr.decode()
    assert "routes.0.path" in done.stderr.decode()


# ---------------------------------------------------------------------------------------------- the demo's checkout


@pytest.fixture
def start_checkout() -> Iterator[Callable[..., str]]:
    """Start the demo service with its backends pointed at the given URLs; return its base URL."""
    with demo_processes() as start:

        def checkout(*, payments: str, inventory: str) -> str:
            return start(env={"PATH": "/usr/bin:/bin", "PAYMENTS_URL": payments, "INVENTORY_URL": inventory})

        yield checkout


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


PAYMENTS = {"name": "payments", "routes": [{"method": "POST", "path": "/charge", "json": {"charged": True}}]}
INVENTORY = {"name": "inventory", "routes": [{"method": "POST", "path": "/reserve/{sku}", "status": 201}]}
ORDER = json.dumps({"order": "o-42", "amount": 1250, "sku": "green tea"}).encode()


def test_checkout_calls_both_mocks_exactly_once_with_the_right_json(start_mock, start_checkout) -> None:
    payments, inventory = start_mock(PAYMENTS), start_mock(INVENTORY)
    demo = start_checkout(payments=payments.url, inventory=inventory.url + "/")
    assert post(f"{demo}/checkout", ORDER) == (200, {"order": "o-42", "charged": True})
    with MockClient(payments.url) as charges, MockClient(inventory.url) as reservations:
        (charge,) = charges.calls()
        assert (charge["method"], charge["path"], charge["json"], charge["route"]) == (
            "POST",
            "/charge",
            {"amount": 1250, "order": "o-42"},
            0,
        )
        assert charge["headers"]["content-type"] == "application/json"
        (reservation,) = reservations.calls()
        assert (reservation["method"], reservation["path"], reservation["json"], reservation["status"]) == (
            "POST",
            "/reserve/green tea",
            {"order": "o-42"},
            201,
        )


def test_checkout_names_the_failing_backend_and_stops_there(start_mock, start_checkout) -> None:
    payments = start_mock({**PAYMENTS, "faults": {"error_ratio": 1.0}})
    inventory = start_mock(INVENTORY)
    demo = start_checkout(payments=payments.url, inventory=inventory.url)
    status, answer = post(f"{demo}/checkout", ORDER)
    assert (status, answer["backend"], answer["order"]) == (502, "payments", "o-42")
    assert "payments" in answer["error"]
    assert "503" in answer["error"]
    with MockClient(payments.url) as charges, MockClient(inventory.url) as reservations:
        assert [(c["status"], c["fault"]) for c in charges.calls()] == [(503, "error")]
        assert reservations.calls() == []


def test_checkout_reports_a_dropped_connection_and_a_bad_body(start_mock, start_checkout) -> None:
    payments = start_mock(PAYMENTS)
    inventory = start_mock({**INVENTORY, "faults": {"drop_ratio": 1.0}})
    demo = start_checkout(payments=payments.url, inventory=inventory.url)
    status, answer = post(f"{demo}/checkout", ORDER)
    assert (status, answer["backend"]) == (502, "inventory")

    status, answer = post(f"{demo}/checkout", b"{not json")
    assert status == 400
    assert "not JSON" in answer["error"]
    with MockClient(payments.url) as charges:
        assert len(charges.calls()) == 1  # the bad body called no backend
