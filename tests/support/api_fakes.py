"""A dict-backed Store and Controller for testing the HTTP API and its client, and a server to run them.

The Controller is the API's own seam: the fake keeps just enough behaviour
(chains, one active promotion per environment, aborts, alert matching) to
exercise every answer the API can give.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry

from vouch.core.errors import ConflictError, InputError, NotFoundError
from vouch.daemon.api import build_app
from vouch.rollout.overrides import Override
from vouch.rollout.state import (
    Abort,
    AlertRecord,
    AnalysisLimits,
    ChatThread,
    Event,
    Phase,
    PlannedStep,
    Promotion,
    Release,
    StepRecord,
    VerdictRecord,
)

T = TypeVar("T")
TOKEN = "test-token-0123456789"
NOW = 1_700_000_000.0


class FakeStore:
    """The Store contract over dicts, in memory."""

    def __init__(self) -> None:
        self.releases: dict[str, Release] = {}
        self.promotions: dict[str, Promotion] = {}
        self.steps: dict[tuple[str, int], StepRecord] = {}
        self.verdicts: list[VerdictRecord] = []
        self.events: list[Event] = []
        self.alerts: list[AlertRecord] = []
        self.overrides: dict[str, Override] = {}
        self.chat_threads: dict[tuple[str, str], ChatThread] = {}

    async def create_release(self, release: Release) -> None:
        self.releases[release.id] = release

    async def save_release(self, release: Release) -> None:
        self.releases[release.id] = release

    async def get_release(self, release_id: str) -> Release:
        try:
            return self.releases[release_id]
        except KeyError:
            raise NotFoundError(f"no release {release_id!r}") from None

    async def list_releases(
        self, *, service: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Release]:
        found = [
            r
            for r in self.releases.values()
            if (service is None or r.service == service) and (active is None or active != r.phase.terminal)
        ]
        return found[:limit]

    async def create_promotion(self, promotion: Promotion) -> None:
        for other in self.promotions.values():
            if (
                other.service == promotion.service
                and other.environment == promotion.environment
                and not other.phase.terminal
            ):
                raise ConflictError(f"{other.id} is active in {promotion.service}/{promotion.environment}")
        self.promotions[promotion.id] = promotion

    async def save_promotion(self, promotion: Promotion) -> None:
        self.promotions[promotion.id] = promotion

    async def get_promotion(self, promotion_id: str) -> Promotion:
        try:
            return self.promotions[promotion_id]
        except KeyError:
            raise NotFoundError(f"no promotion {promotion_id!r}") from None

    async def list_promotions(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        active: bool | None = None,
        release_id: str | None = None,
        limit: int = 100,
    ) -> list[Promotion]:
        found = [
            p
            for p in self.promotions.values()
            if (service is None or p.service == service)
            and (environment is None or p.environment == environment)
            and (active is None or active != p.phase.terminal)
            and (release_id is None or p.release_id == release_id)
        ]
        return found[:limit]

    async def save_step(self, step: StepRecord) -> None:
        self.steps[(step.promotion_id, step.index)] = step

    async def list_steps(self, promotion_id: str) -> list[StepRecord]:
        return [s for (pid, _), s in sorted(self.steps.items()) if pid == promotion_id]

    async def add_verdicts(self, records: list[VerdictRecord]) -> None:
        self.verdicts.extend(records)

    async def list_verdicts(self, promotion_id: str) -> list[VerdictRecord]:
        return [v for v in self.verdicts if v.promotion_id == promotion_id]

    async def add_event(self, event: Event) -> Event:
        stored = dataclasses.replace(event, id=len(self.events) + 1)
        self.events.append(stored)
        return stored

    async def list_events(
        self,
        *,
        promotion_id: str | None = None,
        release_id: str | None = None,
        after: int = 0,
        limit: int = 500,
    ) -> list[Event]:
        found = [
            e
            for e in self.events
            if (e.id or 0) > after
            and (promotion_id is None or e.promotion_id == promotion_id)
            and (release_id is None or e.release_id == release_id)
        ]
        return found[:limit]

    async def add_alert(self, alert: AlertRecord) -> AlertRecord:
        stored = dataclasses.replace(alert, id=len(self.alerts) + 1)
        self.alerts.append(stored)
        return stored

    async def list_alerts(self, *, limit: int = 100) -> list[AlertRecord]:
        return list(reversed(self.alerts))[:limit]

    async def add_override(self, override: Override) -> Override:
        return self.overrides.setdefault(override.id, override)

    async def list_overrides(
        self, *, service: str | None = None, environment: str | None = None, used: bool | None = None
    ) -> list[Override]:
        found = [
            o
            for o in self.overrides.values()
            if (service is None or o.service == service)
            and (environment is None or o.environment == environment)
            and (used is None or o.used == used)
        ]
        return sorted(found, key=lambda o: (o.created_at, o.id))

    async def consume_override(
        self, override_id: str, *, promotion_id: str, at: float, overridden: Mapping[str, Any]
    ) -> Override:
        current = self.overrides.get(override_id)
        if current is None:
            raise NotFoundError(f"override {override_id} not found")
        if current.used:
            raise ConflictError(f"override {override_id} was already used by promotion {current.promotion_id}")
        used = dataclasses.replace(current, used_at=at, promotion_id=promotion_id, overridden=dict(overridden))
        self.overrides[override_id] = used
        return used

    async def get_chat_thread(self, subject: str, notifier: str) -> ChatThread | None:
        return self.chat_threads.get((subject, notifier))

    async def save_chat_thread(self, thread: ChatThread) -> None:
        self.chat_threads[(thread.subject, thread.notifier)] = thread

    async def close(self) -> None:
        return None


def make_promotion(promotion_id: str, *, release_id: str, service: str, environment: str, version: str) -> Promotion:
    return Promotion(
        id=promotion_id,
        release_id=release_id,
        service=service,
        environment=environment,
        version=version,
        stable_version="1.0.0",
        replicas=4,
        plan=(PlannedStep("1", 1, 3, 0.0), PlannedStep("100%", 4, 0, 0.0)),
        limits=AnalysisLimits(
            interval=10.0,
            runs=3,
            failure_limit=0,
            inconclusive_limit=1,
            consecutive_errors=2,
            progress_deadline=600.0,
        ),
        gates=("slo",),
        created_at=NOW,
        updated_at=NOW,
    )


class FakeController:
    """Services and their chains in a dict; remembers who asked for what."""

    def __init__(self, chains: dict[str, tuple[str, ...]] | None = None) -> None:
        self.store = FakeStore()
        self.chains = chains or {"checkout": ("staging", "production"), "search": ("staging",)}
        self.is_ready = True
        self.actors: list[str] = []
        self._ids = itertools.count(1)

    def ready(self) -> bool:
        return self.is_ready

    async def submit(
        self,
        *,
        service: str,
        version: str,
        environment: str | None,
        actor: str,
        artifact: Mapping[str, str] | None = None,
        commit: Mapping[str, str | None] | None = None,
    ) -> Release:
        self.actors.append(actor)
        if service == "boom":
            raise RuntimeError("secret internal detail")
        chain = self.chains.get(service)
        if chain is None:
            raise NotFoundError(f"unknown service {service!r}")
        if environment is not None and environment not in chain:
            raise NotFoundError(f"service {service!r} has no environment {environment!r}")
        if version.startswith("-"):
            raise InputError(f"version {version!r} must not start with '-'")
        environments = (environment,) if environment else chain
        number = next(self._ids)
        release = Release(
            id=f"rel-{number}",
            service=service,
            version=version,
            environments=environments,
            promotion_ids=(f"pro-{number}",),
            actor=actor,
            created_at=NOW,
        )
        promotion = make_promotion(
            f"pro-{number}",
            release_id=release.id,
            service=service,
            environment=environments[0],
            version=version,
        )
        await self.store.create_promotion(promotion)
        await self.store.create_release(release)
        return release

    async def abort(self, promotion_id: str, *, actor: str, reason: str) -> Promotion:
        self.actors.append(actor)
        promotion = await self.store.get_promotion(promotion_id)
        if promotion.phase.terminal or promotion.abort is not None:
            raise ConflictError(f"promotion {promotion_id} is already {promotion.phase.value}")
        aborted = dataclasses.replace(
            promotion,
            phase=Phase.ABORTING,
            abort=Abort(cause="user", reason=reason, requested_at=NOW + 1, actor=actor),
        )
        await self.store.save_promotion(aborted)
        return aborted

    async def receive_alerts(self, payload: object, *, actor: str) -> list[AlertRecord]:
        self.actors.append(actor)
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise InputError("alerts: expected a list of alerts")
        records = []
        for i, alert in enumerate(payload["alerts"]):
            if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
                raise InputError(f"alerts[{i}].labels: expected an object")
            labels = alert["labels"]
            matched = tuple(
                p.id
                for p in self.store.promotions.values()
                if alert.get("status") == "firing"
                and not p.phase.terminal
                and labels.get("service") == p.service
                and labels.get("environment") == p.environment
            )
            record = AlertRecord(
                received_at=NOW,
                status=str(alert.get("status")),
                labels=labels,
                annotations=alert.get("annotations", {}),
                fingerprint=str(alert.get("fingerprint", "")),
                matched=matched,
            )
            records.append(await self.store.add_alert(record))
        return records


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Runs ``app`` on 127.0.0.1 on a free port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class ServerThread:
    """The API served from its own event loop in a thread, for the synchronous client."""

    def __init__(self, controller: FakeController, registry: CollectorRegistry, max_body_bytes: int) -> None:
        self.controller = controller
        self._app = build_app(controller, token=TOKEN, registry=registry, max_body_bytes=max_body_bytes)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.base_url = ""
        self._thread = threading.Thread(target=self._run, name="api-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serving(self._app) as url:
            self.base_url = url
            self._started.set()
            await self._stop.wait()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the server's loop (the fakes are not thread-safe)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(timeout=10) or self._error is not None:
            raise RuntimeError(f"the API server did not start: {self._error!r}")

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


@contextmanager
def server_thread(
    controller: FakeController, *, registry: CollectorRegistry | None = None, max_body_bytes: int = 4096
) -> Iterator[ServerThread]:
    server = ServerThread(controller, registry or CollectorRegistry(), max_body_bytes)
    server.start()
    try:
        yield server
    finally:
        server.stop()
