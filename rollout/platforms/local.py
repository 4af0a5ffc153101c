"""The ``local`` platform, the embedded default: versions run as child processes behind a router.

Each (service, environment) gets a :class:`~vouch.rollout.platforms.router.Router`
on its configured port, and each version runs as replicas
(:class:`~vouch.rollout.platforms.processes.Replica`) started from the
service's ``command``. The router sends traffic round-robin over every ready
replica, so a canary's traffic share is its share of ready replicas.

Crash safety: the desired state of every target is written to
``<state_dir>/local-platform.json`` *before* the platform acts on it, together
with the pid and start time of every child (see
:mod:`~vouch.rollout.platforms.local_state`). A restarted platform kills what a
dead predecessor left running and relaunches the desired state. Only one
platform may use a state directory at a time.

Example::

    platform = LocalPlatform(LocalPlatformSpec(), {"shop": shop}, state_dir=Path("state"),
                             traffic=TrafficRecorder(registry), registry=registry)
    await platform.start()
    try:
        await platform.promote(Target("shop", "staging"), "1.0.0")
        await platform.scale(Target("shop", "staging"), stable_replicas=3,
                             canary_version="1.1.0", canary_replicas=1)
        print(await platform.observe(Target("shop", "staging")))
    finally:
        await platform.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from vouch.core.errors import PlatformError
from vouch.rollout.config import LocalPlatformSpec, ServiceSpec
from vouch.rollout.model import Endpoint, Observed, Target
from vouch.rollout.platforms.local_state import (
    STATE_FILE,
    ChildRecord,
    Desired,
    PlatformState,
    kill_leftovers,
    load_state,
    save_state,
)
from vouch.rollout.platforms.processes import Replica, ReplicaSpec
from vouch.rollout.platforms.router import Backend, Router, upstream_session
from vouch.rollout.platforms.traffic import TrafficRecorder

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0
"""How long stop() waits for supervisors to finish after every replica was told to stop."""


@dataclass(eq=False)
class _Run:
    """The live state of one target: its router, desired state and replicas by track and index."""

    target: Target
    spec: ServiceSpec
    router: Router
    desired: Desired
    stable: dict[int, Replica] = field(default_factory=dict)
    canary: dict[int, Replica] = field(default_factory=dict)
    retiring: list[Replica] = field(default_factory=list)
    """Replicas of the previous stable version, serving until the new stable is ready."""
    canary_routed: bool = True
    """False from the first instant of a rollback: the canary gets no more traffic."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    retire_task: asyncio.Task[None] | None = None
    """Stops the previous stable once the new one is ready (after a promote)."""
    restore_task: asyncio.Task[None] | None = None
    """Brings stable back to full size after a rollback, once the rollback itself has returned."""

    @property
    def full(self) -> int:
        return self.spec.replicas_in(self.target.environment)

    def replicas(self) -> list[Replica]:
        return [*self.stable.values(), *self.canary.values(), *self.retiring]

    def backends(self) -> list[Backend]:
        found = [Backend(r.endpoint, r.version, "stable") for _, r in sorted(self.stable.items()) if r.ready]
        found += [Backend(r.endpoint, r.version, "stable") for r in self.retiring if r.ready]
        if self.canary_routed:
            found += [Backend(r.endpoint, r.version, "canary") for _, r in sorted(self.canary.items()) if r.ready]
        return found

    def stable_ready(self) -> int:
        version = self.desired.stable_version
        return sum(1 for r in self.stable.values() if r.ready and r.version == version)


class LocalPlatform:
    """Runs services as local child processes behind weighted routers; see the module docstring."""

    def __init__(
        self,
        spec: LocalPlatformSpec,
        services: Mapping[str, ServiceSpec],
        *,
        state_dir: Path,
        traffic: TrafficRecorder,
        registry: CollectorRegistry | None = None,
    ) -> None:
        for name, service in services.items():
            if not service.command:
                raise PlatformError(
                    f"service {name!r} has no `command`: the local platform needs `command`, "
                    "the argv of one replica with a '{port}' placeholder"
                )
        self._spec = spec
        self._services = dict(services)
        self._state_dir = Path(state_dir)
        self._state_path = self._state_dir / STATE_FILE
        self._traffic = traffic
        self._unavailable = Counter(
            "vouch_router_unavailable",
            "Requests the local router answered 503 because no replica of the target was ready.",
            ("service", "environment"),
            registry=registry,
        )
        self._restarts = Counter(
            "vouch_local_replica_restarts",
            "Restarts of local replicas that exited on their own.",
            ("service", "environment", "version"),
            registry=registry,
        )
        self._runs: dict[Target, _Run] = {}
        self._phase = "new"
        self._failure: BaseException | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._holder: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._stopper: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._upstream: aiohttp.ClientSession | None = None
        self._probes: aiohttp.ClientSession | None = None
        self._saved_children: tuple[ChildRecord, ...] | None = None
        self._owns_state = False
        self._other_desired: dict[Target, Desired] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Kill what a dead predecessor left, start every router, relaunch the desired state."""
        if self._phase == "running":
            return
        if self._phase != "new":
            raise PlatformError(f"the local platform is {self._phase}; make a new one to start again")
        self._phase = "starting"
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self._phase = "running"

    async def _start(self) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_state_dir()
        state = load_state(self._state_path)
        await kill_leftovers(state.children)
        self._upstream = upstream_session()
        self._probes = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), cookie_jar=aiohttp.DummyCookieJar()
        )
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._holder = asyncio.create_task(self._hold_tasks(ready), name="local-platform")
        self._holder.add_done_callback(self._on_holder_done)
        await ready
        for name, service in self._services.items():
            for env in service.environments:
                target = Target(name, env.name)
                router = Router(
                    target,
                    host=self._spec.host,
                    port=env.port,
                    session=self._upstream,
                    traffic=self._traffic,
                    unavailable=self._unavailable.labels(name, env.name),
                    upstream_timeout=self._spec.upstream_timeout,
                )
                self._runs[target] = _Run(target, service, router, state.desired.get(target, Desired()))
                await router.start()
        # Targets no longer configured keep their record, in case they come back.
        self._other_desired = {t: d for t, d in state.desired.items() if t not in self._runs}
        self._owns_state = True
        self._save()
        for run in self._runs.values():
            async with run.lock:
                try:
                    await self._converge(run)
                except PlatformError as exc:  # one service that cannot start must not keep the others down
                    log.error("cannot restore %s: %s", run.target, exc)

    async def _hold_tasks(self, ready: asyncio.Future[None]) -> None:
        """Own the task group every supervisor and retirement runs in, until the platform closes."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            ready.set_result(None)
            await self._closing.wait()

    def _on_holder_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._failure = task.exception()
        log.error("the local platform's supervisors failed; every replica is killed", exc_info=self._failure)
        for run in self._runs.values():
            for replica in run.replicas():
                replica.kill()

    async def stop(self) -> None:
        """Stop routers, replicas (SIGTERM, grace, SIGKILL), tasks and sessions. Idempotent.

        The work runs in its own task, so a caller cancelled while waiting does
        not interrupt it halfway.
        """
        if self._stopper is None:
            self._stopper = asyncio.create_task(self._shutdown(), name="local-platform stop")
        await asyncio.shield(self._stopper)

    async def _shutdown(self) -> None:
        self._phase = "stopping"
        runs = list(self._runs.values())
        try:
            for run in runs:
                for task in (run.retire_task, run.restore_task):
                    if task is not None:
                        task.cancel()
            routers = await asyncio.gather(*(run.router.stop() for run in runs), return_exceptions=True)
            for outcome in routers:
                if isinstance(outcome, Exception):
                    log.error("a router failed to stop cleanly", exc_info=outcome)
            await self._stop_replicas([r for run in runs for r in run.replicas()])
        finally:
            for run in runs:
                for replica in run.replicas():
                    replica.kill()  # only reaches a process that survived the orderly stop above
            await self._close()

    async def _close(self) -> None:
        self._closing.set()
        if self._holder is not None:
            done, _ = await asyncio.wait({self._holder}, timeout=SHUTDOWN_TIMEOUT)
            if not done:
                log.error("supervisors did not finish within %.0fs; cancelling them", SHUTDOWN_TIMEOUT)
                self._holder.cancel()
                await asyncio.gather(self._holder, return_exceptions=True)
        for session in (self._upstream, self._probes):
            if session is not None:
                await session.close()
        for run in self._runs.values():
            run.stable, run.canary, run.retiring = {}, {}, []
        if self._owns_state:  # never overwrite a state file that was not read and acted on in full
            with contextlib.suppress(PlatformError):
                self._save()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._phase = "stopped"

    def _lock_state_dir(self) -> None:
        path = self._state_dir / "local-platform.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise PlatformError(f"{self._state_dir} is in use by another local platform ({path})") from exc
        self._lock_fd = fd

    # ------------------------------------------------------------------ the Platform contract

    async def observe(self, target: Target) -> Observed:
        run = self._run(target)
        desired = run.desired
        stable = [r for _, r in sorted(run.stable.items()) if r.ready and r.version == desired.stable_version]
        canary = [r for _, r in sorted(run.canary.items()) if r.ready and r.version == desired.canary_version]
        if not run.canary_routed:
            canary = []
        return Observed(
            stable_version=desired.stable_version,
            canary_version=desired.canary_version,
            stable_desired=desired.stable_replicas if desired.stable_version else 0,
            stable_ready=len(stable),
            canary_desired=desired.canary_replicas if desired.canary_version else 0,
            canary_ready=len(canary),
            stable_endpoints=tuple(r.endpoint for r in stable),
            canary_endpoints=tuple(r.endpoint for r in canary),
        )

    async def scale(self, target: Target, *, stable_replicas: int, canary_version: str, canary_replicas: int) -> None:
        run = self._run(target)
        if stable_replicas < 0 or canary_replicas < 0:
            raise PlatformError(f"{target}: replica counts cannot be negative")
        if canary_replicas and not canary_version:
            raise PlatformError(f"{target}: a canary needs a version")
        async with run.lock:
            stable_version = run.desired.stable_version
            if canary_replicas and canary_version == stable_version:
                raise PlatformError(f"{target}: {canary_version} is already the stable version")
            self._set_desired(run, Desired(stable_version, stable_replicas, canary_version, canary_replicas))
            run.canary_routed = True
            self._refresh(run)
            await self._converge(run)

    async def promote(self, target: Target, version: str) -> None:
        run = self._run(target)
        if not version:
            raise PlatformError(f"{target}: promote needs a version")
        async with run.lock:
            self._set_desired(run, Desired(version, run.full, None, 0))
            if any(r.version != version for r in run.stable.values()):
                run.retiring.extend(run.stable.values())
                run.stable = {}
            if not run.stable and run.canary and all(r.version == version for r in run.canary.values()):
                run.stable, run.canary = run.canary, {}
            run.canary_routed = True
            self._refresh(run)
            await self._converge(run)
            if run.retiring and (run.retire_task is None or run.retire_task.done()):
                run.retire_task = self._task_group().create_task(self._retire(run), name=f"retire {target}")

    async def rollback(self, target: Target) -> None:
        run = self._run(target)
        run.canary_routed = False
        self._refresh(run)  # out of traffic first, before even waiting for the lock
        async with run.lock:
            stable_version = run.desired.stable_version
            self._set_desired(run, Desired(stable_version, run.full if stable_version else 0, None, 0))
            doomed = self._trim(run.canary, None, 0)
            await self._stop_replicas(doomed)
            if run.restore_task is None or run.restore_task.done():
                # Starting the missing stable replicas takes a fork each; the caller need not wait for that.
                run.restore_task = self._task_group().create_task(self._restore(run), name=f"restore {target}")

    # ------------------------------------------------------------------ for tests and crash checks

    def router_endpoint(self, target: Target) -> Endpoint:
        """Where the target's router listens."""
        return self._run(target).router.endpoint

    async def address(self, target: Target) -> Endpoint:
        """The router: clients of the service reach stable and canary through it."""
        return self.router_endpoint(target)

    def replica_pids(self, target: Target) -> dict[str, list[int]]:
        """Pids of the target's running children by track: ``stable``, ``canary`` and ``retiring``."""
        run = self._run(target)
        tracks = {
            "stable": [r for _, r in sorted(run.stable.items())],
            "canary": [r for _, r in sorted(run.canary.items())],
            "retiring": run.retiring,
        }
        return {track: [r.pid for r in replicas if r.pid is not None] for track, replicas in tracks.items()}

    # ------------------------------------------------------------------ converging

    def _run(self, target: Target) -> _Run:
        service = self._services.get(target.service)
        if service is None:
            raise PlatformError(f"unknown service {target.service!r}; the local platform runs {sorted(self._services)}")
        if service.environment(target.environment) is None:
            known = [env.name for env in service.environments]
            raise PlatformError(f"service {target.service!r} has no environment {target.environment!r}; it has {known}")
        if self._failure is not None:
            raise PlatformError(f"the local platform failed: {self._failure!r}")
        if self._phase != "running":
            raise PlatformError(f"the local platform is not running (it is {self._phase})")
        return self._runs[target]

    def _task_group(self) -> asyncio.TaskGroup:
        if self._tasks is None or self._phase not in ("starting", "running"):
            raise PlatformError("the local platform is shutting down")
        return self._tasks

    async def _converge(self, run: _Run) -> None:
        """Start and stop replicas until they match ``run.desired``; stops are awaited, readiness is not."""
        desired = run.desired
        doomed = self._trim(run.canary, desired.canary_version, desired.canary_replicas)
        doomed += self._trim(run.stable, desired.stable_version, desired.stable_replicas)
        if doomed:
            self._refresh(run)
        for replicas, version, count in (
            (run.stable, desired.stable_version, desired.stable_replicas),
            (run.canary, desired.canary_version, desired.canary_replicas),
        ):
            for index in range(count if version else 0):
                if index not in replicas:
                    assert version is not None
                    await self._launch(run, replicas, version, index)
        await self._stop_replicas(doomed)

    @staticmethod
    def _trim(replicas: dict[int, Replica], version: str | None, count: int) -> list[Replica]:
        """Take out of ``replicas`` those of another version or past ``count``, highest index first."""
        return [
            replicas.pop(index)
            for index in sorted(replicas, reverse=True)
            if version is None or replicas[index].version != version or index >= count
        ]

    async def _launch(self, run: _Run, replicas: dict[int, Replica], version: str, index: int) -> None:
        service, environment = run.target.service, run.target.environment
        assert run.spec.command is not None
        assert self._probes is not None
        spec = ReplicaSpec(
            service=service,
            environment=environment,
            version=version,
            index=index,
            command=tuple(run.spec.command),
            env=dict(run.spec.env),
            host=self._spec.host,
            readiness=run.spec.readiness,
            stop_grace=self._spec.stop_grace,
            log_dir=self._state_dir / "logs",
        )
        replica = Replica(
            spec,
            http=self._probes,
            on_change=functools.partial(self._on_change, run),
            restarts_metric=self._restarts.labels(service, environment, version),
        )
        replicas[index] = replica
        try:
            await replica.launch(self._task_group())
        except BaseException:
            replica.kill()
            if replicas.get(index) is replica:
                del replicas[index]
            raise

    async def _stop_replicas(self, replicas: list[Replica]) -> None:
        outcomes = await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
        for replica, outcome in zip(replicas, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("replica %s failed to stop cleanly", replica.spec.name, exc_info=outcome)

    async def _restore(self, run: _Run) -> None:
        """Converge after a rollback: whatever is desired by the time the lock is free."""
        try:
            async with run.lock:
                await self._converge(run)
        except PlatformError as exc:
            log.error("cannot restore %s after its rollback: %s", run.target, exc)

    async def _retire(self, run: _Run) -> None:
        """Stop the previous stable once the new one has all its replicas ready (or the readiness timeout)."""
        loop = asyncio.get_running_loop()
        try:
            while run.retiring:
                deadline = loop.time() + run.spec.readiness.timeout
                while run.stable_ready() < run.desired.stable_replicas and (left := deadline - loop.time()) > 0:
                    run.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(run.changed.wait(), left)
                old = list(run.retiring)
                await self._stop_replicas(old)  # each leaves traffic the moment its stop begins
                run.retiring = [r for r in run.retiring if r not in old]
        except Exception:
            log.exception("retiring the previous stable replicas of %s failed", run.target)

    # ------------------------------------------------------------------ bookkeeping

    def _refresh(self, run: _Run) -> None:
        run.router.set_backends(run.backends())
        run.changed.set()

    def _on_change(self, run: _Run, replica: Replica) -> None:
        """A replica became (un)ready or its process started or exited: route and record at once."""
        self._refresh(run)
        if self._children() != self._saved_children:
            try:
                self._save(durable=False)
            except PlatformError as exc:
                log.error("%s", exc)

    def _set_desired(self, run: _Run, desired: Desired) -> None:
        """Persist the new desired state before anything acts on it."""
        previous, run.desired = run.desired, desired
        try:
            self._save()
        except BaseException:
            run.desired = previous
            raise

    def _children(self) -> tuple[ChildRecord, ...]:
        records = []
        for run in self._runs.values():
            for replica in run.replicas():
                child = replica.child
                if child is not None:
                    spec = replica.spec
                    records.append(
                        ChildRecord(
                            child.pid, child.start_time, spec.service, spec.environment, spec.version, spec.index
                        )
                    )
        return tuple(sorted(records, key=lambda record: record.pid))

    def _save(self, *, durable: bool = True) -> None:
        children = self._children()
        desired = {**self._other_desired, **{target: run.desired for target, run in self._runs.items()}}
        save_state(self._state_path, PlatformState(desired=desired, children=children), durable=durable)
        self._saved_children = children
