"""A local stand-in for Slack's Web API, spoken to by the real ``slack_sdk`` client.

Implements ``auth.test``, ``chat.postMessage`` and ``chat.update`` the way
Slack answers them (HTTP 200 with ``ok``; channel names resolved to ids;
``chat.update`` wanting the id), records every call, and can misbehave on
demand: answer 429 with ``Retry-After`` for the next N calls, refuse
connections, or hang.

    async with running_fake_slack() as slack:
        client = AsyncWebClient(token=slack.token, base_url=slack.url)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

TOKEN = "xoxb-fake-0123456789"


@dataclass(frozen=True)
class SlackCall:
    """One request as the server saw it; ``status`` is what it answered (0: it hung and never did)."""

    method: str
    params: Mapping[str, Any]
    at: float
    status: int
    ok: bool = False


@dataclass
class SlackMessage:
    channel: str
    ts: str
    text: str
    blocks: list[Any]
    thread_ts: str | None
    updates: int = 0
    history: list[str] = field(default_factory=list)


class FakeSlack:
    """The server's state and switches; start it with :func:`running_fake_slack`."""

    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[SlackCall] = []
        self.messages: dict[tuple[str, str], SlackMessage] = {}
        self.channels: dict[str, str] = {}
        self._seq = 0
        self._limited = 0
        self._retry_after = 1
        self._down: Literal["refuse", "hang"] | None = None
        self._up = asyncio.Event()
        self._up.set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    # -- switches -------------------------------------------------------------------------------

    def rate_limit(self, calls: int, *, retry_after: int = 1) -> None:
        """Answer the next ``calls`` calls with 429 and ``Retry-After: retry_after``."""
        self._limited, self._retry_after = calls, retry_after

    async def go_down(self, mode: Literal["refuse", "hang"]) -> None:
        """``refuse``: close the port (and drop kept-alive connections); ``hang``: accept and never answer."""
        self._down = mode
        if mode == "refuse":
            assert self._site is not None
            await self._site.stop()
            self._site = None
        else:
            self._up.clear()

    async def come_up(self) -> None:
        """Serve normally again, on the same port."""
        if self._down == "refuse":
            assert self._runner is not None
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await self._site.start()
        self._down = None
        self._up.set()

    # -- queries --------------------------------------------------------------------------------

    def calls_to(self, method: str, *, ok: bool | None = True) -> list[SlackCall]:
        return [c for c in self.calls if c.method == method and (ok is None or c.ok == ok)]

    def parents(self, channel: str | None = None) -> list[SlackMessage]:
        return [m for m in self.messages.values() if m.thread_ts is None and channel in (None, m.channel)]

    def replies(self, ts: str) -> list[SlackMessage]:
        return [m for m in self.messages.values() if m.thread_ts == ts]

    def channel_id(self, name: str) -> str:
        return self.channels[name.lstrip("#")]

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float = 15.0) -> None:
        """Returns once ``condition()`` holds, checked after every call; fails the test at the deadline."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(condition)

    # -- the API --------------------------------------------------------------------------------

    async def _record(self, call: SlackCall) -> None:
        self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await _params(request)
        now = time.monotonic()
        if self._down == "refuse":  # a connection kept alive from before the port closed
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if self._down == "hang":
            await self._record(SlackCall(method, params, now, 0))
            await self._up.wait()
            raise web.HTTPServiceUnavailable()  # the client gave up long ago: change nothing
        if self._limited > 0:
            self._limited -= 1
            await self._record(SlackCall(method, params, now, 429))
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(self._retry_after)}
            )
        body = self._answer(method, params, request.headers.get("Authorization", ""))
        await self._record(SlackCall(method, params, now, 200, bool(body.get("ok"))))
        return web.json_response(body)

    def _answer(self, method: str, params: Mapping[str, Any], authorization: str) -> dict[str, Any]:
        if not authorization.startswith("Bearer "):
            return {"ok": False, "error": "not_authed"}
        if authorization.removeprefix("Bearer ") != self.token:
            return {"ok": False, "error": "invalid_auth"}
        if method == "auth.test":
            return {"ok": True, "url": "https://fake.slack/", "team": "fake", "user": "vouch", "user_id": "U0VOUCH"}
        if method == "chat.postMessage":
            return self._post(params)
        if method == "chat.update":
            return self._update(params)
        return {"ok": False, "error": "unknown_method"}

    def _resolve(self, channel: str) -> str:
        if channel in self.channels.values():
            return channel
        return self.channels.setdefault(channel.lstrip("#"), f"C{len(self.channels) + 1:08d}")

    def _post(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        channel = self._resolve(str(params["channel"]))
        thread_ts = params.get("thread_ts")
        if thread_ts is not None and (channel, thread_ts) not in self.messages:
            return {"ok": False, "error": "thread_not_found"}
        self._seq += 1
        ts = f"{1_700_000_000 + self._seq}.{self._seq:06d}"
        text = str(params.get("text") or "")
        self.messages[(channel, ts)] = SlackMessage(channel, ts, text, list(params.get("blocks") or []), thread_ts)
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": text, "ts": ts}}

    def _update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if channel not in self.channels.values():
            return {"ok": False, "error": "channel_not_found"}  # chat.update wants the id postMessage returned
        message = self.messages.get((channel, str(params.get("ts"))))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message.history.append(message.text)
        message.text = str(params.get("text") or "")
        message.blocks = list(params.get("blocks") or [])
        message.updates += 1
        return {"ok": True, "channel": channel, "ts": message.ts, "text": message.text}


async def _params(request: web.Request) -> dict[str, Any]:
    """The call's arguments however slack_sdk sent them: query string, JSON body or form."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        params.update(await request.json())
    elif request.can_read_body:
        params.update(await request.post())
    blocks = params.get("blocks")
    if isinstance(blocks, str):
        params["blocks"] = json.loads(blocks)
    return params


@asynccontextmanager
async def running_fake_slack(*, token: str = TOKEN) -> AsyncIterator[FakeSlack]:
    """Starts the fake on 127.0.0.1 on a free port; stops it (and releases hung calls) on exit."""
    slack = FakeSlack(token=token)
    app = web.Application()
    app.router.add_post("/api/{method}", slack.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    slack._runner = runner
    try:
        slack._site = web.TCPSite(runner, "127.0.0.1", 0)
        await slack._site.start()
        slack.port = runner.addresses[0][1]
        yield slack
    finally:
        slack._up.set()
        await runner.cleanup()
