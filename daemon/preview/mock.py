"""A mocked backend: an HTTP server answering one :class:`MockSpec`'s routes and recording every request.

A preview points its service at mocks instead of the real backends, so network tests are fast,
repeatable, and can assert on exactly what the service sent. Each request is matched on method and
path (first route wins, ``{NAME}`` segments match one path segment), answered with the route's
status, headers and ``json`` or templated ``body`` (see :mod:`vouch.daemon.preview.mockroutes`),
after the route's faults (or the mock's): added latency, a share answered ``error_status``, a share
whose connection is closed with no answer. Fault draws come from a seeded ``random.Random`` so a
test can repeat a run exactly. Every request, matched or not, is recorded in arrival order; one no
route matches is answered 404 naming the routes there are.

The mock's own API, never recorded nor faulted::

    GET    /__vouch/calls[?method=POST&path=/charge]   the recorded calls, oldest first
    DELETE /__vouch/calls                              forget them
    GET    /__vouch/health                             {"status": "ok", "mock": NAME, "calls": N}
    GET    /__vouch/spec                               the spec it serves

Run as a process (prints ``ready on http://HOST:PORT`` once listening, exits 0 on SIGTERM)::

    python -m vouch.daemon.preview.mock --spec payments.json --port 0 --seed 7

or in a running event loop (``run_mock`` until cancelled, or ``async with MockServer(spec) as mock``),
and assert on it from a network test::

    payments = MockClient(os.environ["PAYMENTS_URL"])
    assert [c["json"] for c in payments.calls(method="POST", path="/charge")] == [{"amount": 5, "order": "o-1"}]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pydantic
from aiohttp import web

from vouch.core.errors import ConfigError, PlatformError, PlatformUnavailable, Problem, VouchError
from vouch.daemon.preview.mockroutes import CONTROL_PREFIX, RequestView, RouteTable, draw, render, render_json
from vouch.rollout.preview import MockRoute, MockSpec

MAX_BODY = 16 * 1024 * 1024
"""Largest request body a mock accepts."""


@dataclass(frozen=True)
class Call:
    """One request a mock received, as ``GET /__vouch/calls`` reports it."""

    at: float
    """Arrival, seconds since the epoch."""
    method: str
    path: str
    query: Mapping[str, str]
    """First value of each name."""
    headers: Mapping[str, str]
    """Lower-cased names; repeated headers joined with ``, ``."""
    body: str
    """The body as text, or base64 when it is not UTF-8 (see ``body_encoding``)."""
    body_encoding: str
    """``text`` or ``base64``."""
    json: Any
    """The body parsed as JSON; None when it is not JSON."""
    status: int | None
    """The status answered; None when the connection was dropped."""
    route: int | None
    """Index of the route that matched; None when none did."""
    fault: str | None
    """``drop``, ``error``, ``latency`` or None."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["query"] = dict(self.query)
        out["headers"] = dict(self.headers)
        return out


def _decode(body: bytes) -> tuple[str, str, Any]:
    """(text, encoding, parsed JSON or None) of a request body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64", None
    try:
        parsed = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = None
    return text, "text", parsed


def _headers(request: web.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


class MockServer:
    """One mocked backend, served on ``host:port`` (0 picks a free port) between ``start`` and ``stop``.

    Example::

        async with MockServer(spec, port=0, seed=7) as mock:
            ...  # call mock.url
            assert mock.calls[0].json == {"amount": 5}
    """

    def __init__(self, spec: MockSpec, *, host: str = "127.0.0.1", port: int = 0, seed: int | None = None) -> None:
        self.spec = spec
        self._table = RouteTable(spec.routes)
        self._random = random.Random(seed)
        self._host = host
        self._port = port
        self._calls: list[Call] = []
        self._runner: web.AppRunner | None = None

    @property
    def calls(self) -> tuple[Call, ...]:
        return tuple(self._calls)

    def reset(self) -> None:
        self._calls.clear()

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, with the bound port once started."""
        return f"http://{self._host}:{self._port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get(CONTROL_PREFIX + "calls", self._list_calls, allow_head=False)
        app.router.add_delete(CONTROL_PREFIX + "calls", self._reset_calls)
        app.router.add_get(CONTROL_PREFIX + "health", self._health, allow_head=False)
        app.router.add_get(CONTROL_PREFIX + "spec", self._spec, allow_head=False)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def start(self) -> str:
        """Listen; return the URL. Raises PlatformError when the address cannot be bound."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise PlatformError(f"mock {self.spec.name} cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._runner = runner
        self._port = site.port
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MockServer:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await asyncio.shield(self.stop())

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return web.json_response({"error": f"no mock endpoint {request.method} {request.path}"}, status=404)
        arrived = time.time()
        text, encoding, parsed = _decode(await request.read())
        headers = _headers(request)
        query = {name: request.query.getone(name) for name in request.query}
        match = self._table.match(request.method, request.path)
        route = match.route if match is not None else None
        status = route.status if route is not None else 404
        outcome = draw((route.faults or self.spec.faults) if route is not None else None, status, self._random)
        self._calls.append(
            Call(
                at=arrived,
                method=request.method,
                path=request.path,
                query=query,
                headers=headers,
                body=text,
                body_encoding=encoding,
                json=parsed,
                status=outcome.status,
                route=match.index if match is not None else None,
                fault=outcome.fault,
            )
        )
        if outcome.latency > 0:
            await asyncio.sleep(outcome.latency)
        if outcome.fault == "drop":
            if request.transport is not None:
                request.transport.close()
            request.protocol.force_close()
            return web.Response(status=499)  # never sent: the connection is gone
        if outcome.fault == "error" and outcome.status is not None:
            return web.json_response({"error": "injected fault", "mock": self.spec.name}, status=outcome.status)
        if match is None or route is None:
            return web.json_response(
                {"error": f"no route for {request.method} {request.path}", "routes": self._table.describe()},
                status=404,
            )
        view = RequestView(request.method, match.params, query, headers, parsed)
        return _respond(route, view)

    async def _list_calls(self, request: web.Request) -> web.Response:
        method = request.query.get("method", "").upper()
        path = request.query.get("path")
        chosen = [
            call.to_dict()
            for call in self._calls
            if (not method or call.method == method) and (path is None or call.path == path)
        ]
        return web.json_response(chosen)

    async def _reset_calls(self, request: web.Request) -> web.Response:
        cleared = len(self._calls)
        self.reset()
        return web.json_response({"cleared": cleared})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "mock": self.spec.name, "calls": len(self._calls)})

    async def _spec(self, request: web.Request) -> web.Response:
        return web.json_response(self.spec.model_dump(mode="json", by_alias=True))


def _respond(route: MockRoute, view: RequestView) -> web.Response:
    """A route's answer, rendered for this request; a header the route sets wins over the default type."""
    rendered = {name: render(value, view) for name, value in route.headers.items()}
    if route.json_body is not None:
        payload = json.dumps(render_json(route.json_body, view)).encode()
        default_type = "application/json"
    else:
        payload = render(route.body, view).encode() if route.body is not None else b""
        default_type = "text/plain; charset=utf-8"
    if payload and not any(name.lower() == "content-type" for name in rendered):
        rendered["Content-Type"] = default_type
    return web.Response(status=route.status, body=payload, headers=rendered)


async def run_mock(
    spec: MockSpec,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``spec`` in the running loop until cancelled; ``ready(url)`` is called once listening.

    Example::

        async with asyncio.TaskGroup() as group:
            group.create_task(run_mock(spec, port=0, ready=urls.append), name="mock payments")
    """
    server = MockServer(spec, host=host, port=port, seed=seed)
    url = await server.start()
    try:
        if ready is not None:
            ready(url)
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(server.stop())


class MockClient:
    """Reads and resets a running mock's recorded calls, for network tests (synchronous).

    Example::

        with MockClient("http://127.0.0.1:9001") as payments:
            assert payments.calls(method="POST", path="/charge")[0]["json"]["amount"] == 5
            payments.reset()
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + CONTROL_PREFIX, timeout=timeout, trust_env=False)

    def calls(self, *, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        """The recorded calls, oldest first; only those of ``method`` and exactly ``path`` when given."""
        params = {key: value for key, value in (("method", method), ("path", path)) if value is not None}
        found: list[dict[str, Any]] = self._request("GET", "calls", params=params)
        return found

    def reset(self) -> None:
        self._request("DELETE", "calls")

    def health(self) -> dict[str, Any]:
        found: dict[str, Any] = self._request("GET", "health")
        return found

    def spec(self) -> dict[str, Any]:
        found: dict[str, Any] = self._request("GET", "spec")
        return found

    def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        try:
            response = self._http.request(method, path, params=params)
            response.raise_for_status()
            return response.json()
        except httpx.TransportError as exc:
            raise PlatformUnavailable(f"mock at {self.base_url} is unreachable: {exc}") from exc
        except (httpx.HTTPStatusError, ValueError) as exc:
            raise PlatformError(f"mock at {self.base_url} answered {method} {path} badly: {exc}") from exc

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MockClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def load_spec(path: Path) -> MockSpec:
    """A MockSpec from a JSON file; ConfigError naming the file and each wrong field."""
    try:
        return MockSpec.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    except pydantic.ValidationError as exc:
        problems = [
            Problem(str(path), None, ".".join(str(part) for part in error["loc"]), error["msg"])
            for error in exc.errors()
        ]
        raise ConfigError(problems) from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vouch.daemon.preview.mock", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, required=True, help="the mock's MockSpec as a JSON file")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0 picks one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--seed", type=int, help="seed of the fault draws, to repeat a run exactly")
    return parser.parse_args(argv)


async def _serve(server: MockServer) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"ready on {server.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Exit 0 after SIGTERM, 2 when the spec is wrong, 1 when the mock cannot listen."""
    args = parse_args(argv)
    try:
        server = MockServer(load_spec(args.spec), host=args.host, port=args.port, seed=args.seed)
    except VouchError as exc:
        print(f"mock: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(_serve(server))
    except VouchError as exc:
        print(f"mock: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
