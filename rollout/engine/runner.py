"""The engine: takes release requests, runs one driver per active promotion, walks releases on.

A release walks its service's environment chain with no human step: when a
promotion succeeds, the next environment's promotion is created; when one
rolls back, the release fails there. Every step of that is written to the
store first, and :meth:`Engine.run` picks up whatever was in flight when the
daemon last stopped, however it stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from vouch.core.errors import ConflictError, InputError, NotFoundError, PlatformUnavailable
from vouch.rollout.config import EnvironmentSpec, ServiceSpec
from vouch.rollout.engine.breakglass import OverrideShell
from vouch.rollout.engine.decide import can_abort
from vouch.rollout.engine.driver import Driver, DriverSettings, EngineHooks, GateFactory, NoHooks, Verifier
from vouch.rollout.engine.plan import resolve_limits, resolve_plan
from vouch.rollout.model import Target
from vouch.rollout.platforms.base import Platform
from vouch.rollout.state import Abort, Event, Phase, Promotion, Release, ReleasePhase, Store

log = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    """A short unique id such as ``p-3f9c2a1b7d4e``."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Engine:
    """Runs every promotion of the daemon; the single owner of their progress."""

    def __init__(
        self,
        *,
        store: Store,
        platform: Platform,
        services: Mapping[str, ServiceSpec],
        environments: Mapping[str, EnvironmentSpec],
        gates: GateFactory,
        hooks: EngineHooks | None = None,
        clock: Callable[[], float] = time.time,
        settings: DriverSettings | None = None,
        verifier: Verifier | None = None,
        after_success: Callable[[Promotion, Release], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._platform = platform
        self._services = services
        self._environments = environments
        self._gates = gates
        self._hooks = hooks or NoHooks()
        self._clock = clock
        self._settings = settings or DriverSettings()
        self._verifier = verifier
        self._after_success = after_success
        self.overrides = OverrideShell(store, on_event=self._hooks.on_event, clock=clock)
        """Break-glass overrides, used by every promotion's driver and by whoever acts on alarms."""
        self._drivers: dict[str, Driver] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._submit_lock = asyncio.Lock()
        self.started = asyncio.Event()

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Resume everything in flight, then serve until cancelled."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            for promotion in await self._store.list_promotions(active=True, limit=100_000):
                self._start(promotion)
            for release in await self._store.list_releases(active=True, limit=100_000):
                await self._resume_release(release)
            self.started.set()
            try:
                await asyncio.Event().wait()
            finally:
                self._group = None
                self.started.clear()  # a deposed leader's engine may run again later: it must resume first

    def active(self) -> list[Promotion]:
        """The promotions being driven right now, as last persisted."""
        return [driver.promotion for driver in self._drivers.values()]

    # ----------------------------------------------------------------- requests

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
        """Start a release of ``version``: through the whole chain, or only ``environment``.

        ``artifact`` (``name``, ``digest``) and ``commit`` (``sha``, ``merge``, ``pr_head``) are what
        the attestations gate checks; a release without them can only pass environments that do not.
        """
        spec = self._service(service)
        chain = tuple(env.name for env in spec.environments)
        if environment is not None and environment not in chain:
            raise NotFoundError(
                f"service {service!r} is not deployed to environment {environment!r}; its chain is {list(chain)}"
            )
        environments = (environment,) if environment is not None else chain
        async with self._submit_lock:
            first = Target(service, environments[0])
            await self._refuse_duplicate(first)
            stable = (await self._platform.observe(first)).stable_version
            if stable == version:
                raise InputError(f"{version} is already the stable version of {first}")
            now = self._clock()
            release = Release(
                new_id("r"),
                service,
                version,
                environments,
                actor=actor,
                created_at=now,
                updated_at=now,
                artifact=dict(artifact) if artifact else None,
                commit=dict(commit) if commit else None,
            )
            await self._store.create_release(release)
            promotion = self._new_promotion(release, environments[0], stable, now)
            try:
                await self._store.create_promotion(promotion)
            except ConflictError:
                await self._finish_release(release, ReleasePhase.FAILED, "refused: another promotion is active")
                raise
            release = dataclasses.replace(release, promotion_ids=(promotion.id,))
            await self._store.save_release(release)
        await self._emit_release(
            release, "release.started", f"release of {service} {version} through {' → '.join(environments)}"
        )
        self._hooks.on_transition(None, promotion)
        self._start(promotion)
        return release

    async def abort(
        self, promotion_id: str, *, actor: str, reason: str, cause: str = "user", at: float | None = None
    ) -> Promotion:
        """Roll ``promotion_id`` back now. Returns once the rollback is persisted (it then runs at once)."""
        abort = Abort(cause, reason, self._clock() if at is None else at, actor)
        driver = self._drivers.get(promotion_id)
        if driver is None:
            promotion = await self._store.get_promotion(promotion_id)
            raise ConflictError(
                f"promotion {promotion_id} of {promotion.target} is {promotion.phase.value}; nothing to abort"
            )
        current = driver.promotion
        if not can_abort(current):
            raise ConflictError(
                f"promotion {promotion_id} of {current.target} is {current.phase.value}; too late to abort"
            )
        return await driver.request_abort(abort)

    # ----------------------------------------------------------------- internals

    def _service(self, name: str) -> ServiceSpec:
        try:
            return self._services[name]
        except KeyError:
            raise NotFoundError(f"unknown service {name!r}; known: {sorted(self._services)}") from None

    async def _refuse_duplicate(self, target: Target) -> None:
        for other in await self._store.list_promotions(
            service=target.service, environment=target.environment, active=True
        ):
            raise ConflictError(
                f"{target} already has an active promotion {other.id} of {other.version} ({other.phase.value}); "
                f"abort it with `vouch abort {target.service} --env {target.environment}` or wait for it to finish"
            )

    def _new_promotion(self, release: Release, environment: str, stable: str | None, now: float) -> Promotion:
        service = self._services[release.service]
        env = self._environments[environment]
        replicas = service.replicas_in(environment)
        return Promotion(
            id=new_id("p"),
            release_id=release.id,
            service=release.service,
            environment=environment,
            version=release.version,
            stable_version=stable,
            replicas=replicas,
            plan=resolve_plan(env.plan, replicas=replicas) if stable is not None else (),
            limits=resolve_limits(env),
            gates=tuple(env.gates),
            actor=release.actor,
            created_at=now,
            updated_at=now,
            phase_since=now,
            message=f"pending: {release.version} to {environment}",
        )

    def _start(self, promotion: Promotion) -> None:
        if promotion.id in self._drivers or self._group is None:
            return
        driver = Driver(
            promotion,
            store=self._store,
            platform=self._platform,
            gates=self._gates,
            hooks=self._hooks,
            clock=self._clock,
            settings=self._settings,
            verifier=self._verifier,
            overrides=self.overrides,
        )
        self._drivers[promotion.id] = driver
        self._group.create_task(self._supervise(driver), name=f"promotion:{promotion.id}")

    async def _supervise(self, driver: Driver) -> None:
        """Drive to the end; an unexpected error is logged and the drive resumes from the store."""
        delay = 1.0
        try:
            while True:
                try:
                    final = await driver.drive()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("promotion %s failed unexpectedly; resuming in %.0fs", driver.promotion.id, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    driver.promotion = await self._store.get_promotion(driver.promotion.id)
        finally:
            self._drivers.pop(driver.promotion.id, None)
        await self._promotion_finished(final)

    async def _promotion_finished(self, promotion: Promotion) -> None:
        release = await self._store.get_release(promotion.release_id)
        if release.phase.terminal:
            return
        if promotion.phase in (Phase.ROLLED_BACK, Phase.DENIED):
            why = promotion.abort.reason if promotion.abort else promotion.message
            await self._finish_release(release, ReleasePhase.FAILED, f"stopped at {promotion.environment}: {why}")
            return
        if self._after_success is not None:
            await self._after_success(promotion, release)
        index = release.environments.index(promotion.environment)
        if index + 1 >= len(release.environments):
            await self._finish_release(
                release, ReleasePhase.SUCCEEDED, f"{release.version} holds in {promotion.environment}"
            )
            return
        await self._next_environment(release, release.environments[index + 1])

    async def _next_environment(self, release: Release, environment: str) -> None:
        """Create the next environment's promotion, once; waits while another promotion holds it."""
        existing = await self._store.list_promotions(release_id=release.id, environment=environment)
        if existing:
            promotion = existing[0]
        else:
            target = Target(release.service, environment)
            while True:
                try:
                    stable = (await self._platform.observe(target)).stable_version
                except PlatformUnavailable as exc:
                    log.warning("release %s cannot see %s yet, retrying: %s", release.id, target, exc)
                    await asyncio.sleep(min(2.0, self._settings.retry_max))
                    continue
                promotion = self._new_promotion(release, environment, stable, self._clock())
                try:
                    await self._store.create_promotion(promotion)
                    break
                except ConflictError as exc:
                    log.info("release %s waits for %s: %s", release.id, target, exc)
                    await asyncio.sleep(2.0)
            self._hooks.on_transition(None, promotion)
        index = release.environments.index(environment)
        ids = release.promotion_ids if promotion.id in release.promotion_ids else (*release.promotion_ids, promotion.id)
        release = dataclasses.replace(release, index=index, promotion_ids=ids, updated_at=self._clock())
        await self._store.save_release(release)
        await self._emit_release(
            release, "release.next", f"{release.service} {release.version} moves on to {environment}"
        )
        if not promotion.phase.terminal:
            self._start(promotion)
        else:
            await self._promotion_finished(promotion)

    async def _resume_release(self, release: Release) -> None:
        """After a restart: advance a release whose current promotion ended while the daemon was down."""
        if not release.promotion_ids:
            await self._next_environment(release, release.environments[0])
            return
        current = await self._store.get_promotion(release.promotion_ids[-1])
        if current.phase.terminal and current.id not in self._drivers:
            await self._promotion_finished(current)

    async def _finish_release(self, release: Release, phase: ReleasePhase, message: str) -> None:
        now = self._clock()
        release = dataclasses.replace(release, phase=phase, updated_at=now, finished_at=now)
        await self._store.save_release(release)
        await self._emit_release(release, f"release.{phase.value.lower()}", message)

    async def _emit_release(self, release: Release, kind: str, message: str) -> None:
        data = {"service": release.service, "version": release.version, "phase": release.phase.value}
        data["actor"] = release.actor
        event = await self._store.add_event(Event(kind, message, self._clock(), release_id=release.id, data=data))
        self._hooks.on_event(event)
