"""Fakes for the notification tests: the part of the Store notifiers use, a scriptable notifier, a receiver.

``NotifyStore`` keeps releases, promotions and chat threads in dicts; one
instance shared by two notifiers plays "the same store after a restart".
``ScriptedNotifier`` records what it is sent and fails or blocks on demand,
for the dispatcher's own tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiohttp import web

from vouch.core.errors import NotFoundError, StoreError
from vouch.daemon.notify.base import Notice, NotifyError, NotifyRejected, Severity, severity_of
from vouch.daemon.notify.dispatcher import Dispatcher
from vouch.rollout.state import (
    Abort,
    AnalysisLimits,
    ChatThread,
    Phase,
    PlannedStep,
    Promotion,
    Release,
    ReleasePhase,
    StepPhase,
)

NOW = 1_700_000_000.0


class NotifyStore:
    """Only the Store methods the notifiers call, over dicts."""

    def __init__(self) -> None:
        self.releases: dict[str, Release] = {}
        self.promotions: dict[str, Promotion] = {}
        self.threads: dict[tuple[str, str], ChatThread] = {}
        self.thread_saves: list[ChatThread] = []
        self.failing: bool = False

    def _check(self) -> None:
        if self.failing:
            raise StoreError("the fake store is failing")

    async def get_release(self, release_id: str) -> Release:
        self._check()
        try:
            return self.releases[release_id]
        except KeyError:
            raise NotFoundError(f"no release {release_id!r}") from None

    async def list_promotions(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        active: bool | None = None,
        release_id: str | None = None,
        limit: int = 100,
    ) -> list[Promotion]:
        self._check()
        found = [
            p
            for p in self.promotions.values()
            if (service is None or p.service == service)
            and (environment is None or p.environment == environment)
            and (active is None or active != p.phase.terminal)
            and (release_id is None or p.release_id == release_id)
        ]
        return sorted(found, key=lambda p: p.created_at, reverse=True)[:limit]

    async def get_chat_thread(self, subject: str, notifier: str) -> ChatThread | None:
        self._check()
        return self.threads.get((subject, notifier))

    async def save_chat_thread(self, thread: ChatThread) -> None:
        self._check()
        self.threads[(thread.subject, thread.notifier)] = thread
        self.thread_saves.append(thread)

    # -- set-up helpers -------------------------------------------------------------------------

    def put_release(self, release: Release) -> Release:
        self.releases[release.id] = release
        return release

    def put_promotion(self, promotion: Promotion) -> Promotion:
        self.promotions[promotion.id] = promotion
        return promotion


def release(
    release_id: str = "r-1",
    *,
    service: str = "checkout",
    version: str = "2.4.1",
    environments: Iterable[str] = ("staging", "production"),
    phase: ReleasePhase = ReleasePhase.PROGRESSING,
) -> Release:
    return Release(release_id, service, version, tuple(environments), phase=phase, created_at=NOW, updated_at=NOW)


def promotion(
    rel: Release,
    environment: str,
    *,
    phase: Phase = Phase.PROGRESSING,
    step: int = 0,
    steps: int = 5,
    step_phase: StepPhase | None = StepPhase.ANALYSING,
    abort_cause: str | None = None,
    created_at: float = NOW,
) -> Promotion:
    """A promotion of ``rel`` in ``environment`` with a plan of ``steps`` steps."""
    plan = tuple(PlannedStep(f"{i + 1}", i + 1, 5, 0.0) for i in range(steps))
    limits = AnalysisLimits(
        interval=1.0, runs=1, failure_limit=0, inconclusive_limit=0, consecutive_errors=1, progress_deadline=60.0
    )
    abort = Abort(abort_cause, "failed", NOW) if abort_cause else None
    return Promotion(
        f"{rel.id}-{environment}",
        rel.id,
        rel.service,
        environment,
        rel.version,
        "2.4.0",
        5,
        plan,
        limits,
        ("slo",),
        phase=phase,
        step=step,
        step_phase=step_phase,
        abort=abort,
        created_at=created_at,
        updated_at=created_at,
    )


def advanced(p: Promotion, **changes: Any) -> Promotion:
    return dataclasses.replace(p, **changes)


def notice(
    kind: str = "step.analysing",
    *,
    subject: str | None = "r-1",
    severity: Severity | None = None,
    environment: str | None = "staging",
    service: str | None = "checkout",
    message: str = "",
    at: float = NOW,
) -> Notice:
    return Notice(
        kind,
        severity or severity_of(kind),
        message or kind,
        at,
        subject=subject,
        service=service,
        environment=environment,
        version="2.4.1",
    )


class ScriptedNotifier:
    """Records notices; ``fail_next(n)`` fails the next n sends; ``hold()`` blocks sends until ``release()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Notice] = []
        self.attempts = 0
        self.closed = False
        self._failures: list[Exception] = []
        self._open = asyncio.Event()
        self._open.set()
        self.delivered = asyncio.Event()
        self.entered = asyncio.Event()

    def fail_next(self, count: int, error: type[Exception] = NotifyError) -> None:
        self._failures.extend(error(f"scripted failure {i + 1}") for i in range(count))

    def reject_next(self) -> None:
        self._failures.append(NotifyRejected("scripted rejection"))

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def send(self, notice: Notice) -> None:
        self.attempts += 1
        self.entered.set()
        await self._open.wait()
        if self._failures:
            raise self._failures.pop(0)
        self.sent.append(notice)
        self.delivered.set()

    async def close(self) -> None:
        self.closed = True


@contextlib.asynccontextmanager
async def running_dispatcher(dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    """Runs ``dispatcher`` in a task for the block; cancels it (closing its notifiers) after."""
    task = asyncio.create_task(dispatcher.run(), name="notify-test")
    try:
        yield dispatcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle(dispatcher: Dispatcher, timeout: float = 10.0) -> None:
    """Waits (with a deadline) until every queue of ``dispatcher`` is empty and idle."""
    async with asyncio.timeout(timeout):
        await dispatcher.wait_idle()


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One POST the receiver got, and whether its signature checked out (``None``: unsigned)."""

    body: dict[str, Any]
    headers: dict[str, str]
    signature_ok: bool | None


class Receiver:
    """A webhook receiver checking ``X-Vouch-Signature`` itself, the way a receiver in the field would."""

    def __init__(self, secret: str | None, *, status: int = 200) -> None:
        self.secret = secret
        self.status = status
        self.deliveries: list[Delivery] = []
        self.attempts = 0
        self.url = ""
        self._changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.attempts += 1
        if self.status < 300:
            ok = None
            if self.secret is not None:
                timestamp = request.headers.get("X-Vouch-Timestamp", "")
                mac = hmac.new(self.secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(f"sha256={mac}", request.headers.get("X-Vouch-Signature", ""))
            self.deliveries.append(Delivery(json.loads(raw), dict(request.headers), ok))
        async with self._changed:
            self._changed.notify_all()
        return web.Response(status=self.status)

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(condition)


@contextlib.asynccontextmanager
async def running_receiver(secret: str | None = None) -> AsyncIterator[Receiver]:
    """Starts a :class:`Receiver` on 127.0.0.1 on a free port, at ``/hook``; stops it after."""
    receiver = Receiver(secret)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        yield receiver
    finally:
        await runner.cleanup()
