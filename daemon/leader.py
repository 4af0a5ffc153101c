"""Leader election on a coordination.k8s.io/v1 Lease: only the leader acts, and it stops before anyone may start.

Several daemon replicas run; one holds the Lease and drives promotions, the
others follow. The rules, with the defaults (15 s lease, 10 s renew deadline,
2 s retry period):

* A follower judges a Lease by its *own* clock: when it first sees a record
  (holder, renew time, resourceVersion) it notes the time; if that record is
  still unchanged ``lease_duration`` later, the holder stopped renewing and the
  follower may take the Lease. No two machines' clocks are ever compared.
* Every write is a merge patch naming the resourceVersion read, so of two
  followers taking an expired Lease at once, the API server lets exactly one win.
* The leader renews every ``retry_period``. It counts itself leader only until
  ``renew_deadline`` after it *sent* its last successful renewal. A follower
  cannot take over before ``lease_duration`` after it *saw* that renewal, which
  is later still; with ``renew_deadline < lease_duration`` a leader that cannot
  renew (API down, partitioned, stalled) has stopped acting before its Lease can
  expire anywhere: two daemons never act at once. The margin between the two
  durations absorbs clock-rate drift and scheduling delays.
* A leader that stops cleanly clears the Lease, so a follower takes over at its
  next look (within ``retry_period``) instead of after ``lease_duration``.

The decisions (:func:`observe`, :func:`decide`, :func:`next_record`) are pure
functions of the Lease record, this daemon's identity and the clock; the
:class:`LeaderElector` around them does the I/O and keeps time.

    elector = LeaderElector.from_spec(api, LeaderElectionSpec(), identity="vouch-0")
    async with asyncio.TaskGroup() as group:
        group.create_task(elector.run(), name="leader-election")
        group.create_task(elector.while_leading(engine.run), name="engine")

Kubernetes calls used (see ``vouch.rollout.platforms.kube.rbac``): leases get, create, patch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from pydantic import Field, model_validator

from vouch.core.durations import Duration
from vouch.core.settings import Model
from vouch.daemon.store.kube_objects import default_namespace

if TYPE_CHECKING:
    # kubernetes_asyncio loads every API model on import (a fifth of a second): only Kubernetes work imports it.
    from kubernetes_asyncio.client import ApiClient, V1Lease
    from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class LeaderElectionSpec(Model):
    """Run several daemons; one leads (drives promotions) while the others wait to take over."""

    enabled: bool = False
    """Elect a leader on a Lease; off, this daemon acts alone (one replica only!)."""
    lease_name: str = Field(default="vouch-leader", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    """Name of the coordination.k8s.io/v1 Lease the replicas share."""
    namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    """Namespace of the Lease; default ``$POD_NAMESPACE``, else the pod's own namespace, else ``default``."""
    identity: str | None = None
    """This replica's name in the Lease; default ``$POD_NAME``, else the host name. Unique per replica."""
    lease_duration: Duration = 15.0
    """How long followers wait, after last seeing the Lease change, before taking it over."""
    renew_deadline: Duration = 10.0
    """How long a leader keeps acting without a successful renewal; must be below ``lease_duration``."""
    retry_period: Duration = 2.0
    """Time between two looks at the Lease (renewals, by the leader); must be below ``renew_deadline``."""

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElectionSpec:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry_period < renew_deadline < lease_duration, so that a leader"
                " that cannot renew stops acting before its lease can expire"
            )
        return self

    def resolved_identity(self) -> str:
        return self.identity or os.environ.get("POD_NAME") or socket.gethostname()


# --------------------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says: its holder (``""`` when released) and the times it was taken and renewed."""

    holder: str
    duration: float
    acquired: str | None = None
    renewed: str | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Observed:
    """The Lease as last read, and since when (this daemon's clock) it has looked exactly so."""

    record: LeaseRecord | None
    version: str | None
    since: float


class Move(StrEnum):
    CREATE = "create"
    """No Lease exists: create it, holding it."""
    ACQUIRE = "acquire"
    """The Lease is free (released, or expired by this daemon's clock): take it."""
    RENEW = "renew"
    """The Lease is this daemon's: renew it."""
    FOLLOW = "follow"
    """Another daemon holds a live Lease: do not act."""


def observe(previous: Observed | None, record: LeaseRecord | None, version: str | None, now: float) -> Observed:
    """Keep ``since`` while the Lease is unchanged; restart it when anything (even just its version) moved."""
    if previous is not None and previous.record == record and previous.version == version:
        return previous
    return Observed(record, version, now)


def expires_at(observed: Observed, *, lease_duration: float) -> float:
    """When, by this daemon's clock, the Lease as observed may be taken: the longer of the two durations counts."""
    duration = max(lease_duration, observed.record.duration if observed.record else 0.0)
    return observed.since + duration


def decide(observed: Observed, *, identity: str, now: float, lease_duration: float) -> Move:
    """What to do about the Lease, given what was observed and since when.

    >>> decide(Observed(LeaseRecord("b", 15.0), "7", since=100.0), identity="a", now=110.0, lease_duration=15.0)
    <Move.FOLLOW: 'follow'>
    >>> decide(Observed(LeaseRecord("b", 15.0), "7", since=100.0), identity="a", now=115.0, lease_duration=15.0)
    <Move.ACQUIRE: 'acquire'>
    """
    record = observed.record
    if record is None:
        return Move.CREATE
    if record.holder == identity:
        return Move.RENEW
    if not record.holder or now >= expires_at(observed, lease_duration=lease_duration):
        return Move.ACQUIRE
    return Move.FOLLOW


def next_record(current: LeaseRecord | None, *, identity: str, duration: float, stamp: str) -> LeaseRecord:
    """The record to write to acquire or renew: renewing keeps the acquire time; taking over counts a transition."""
    whole = float(math.ceil(duration))
    if current is not None and current.holder == identity:
        return replace(current, duration=whole, renewed=stamp)
    transitions = current.transitions + 1 if current is not None else 0
    return LeaseRecord(identity, whole, acquired=stamp, renewed=stamp, transitions=transitions)


def released(current: LeaseRecord, *, stamp: str) -> LeaseRecord:
    """The record a leader leaves when it stops: nobody holds it, so a follower takes it at its next look."""
    return replace(current, holder="", duration=1.0, renewed=stamp)


def leader_until(renew_sent_at: float, *, renew_deadline: float) -> float:
    """Until when a leader may act after a renewal it sent at ``renew_sent_at`` succeeded (its fencing)."""
    return renew_sent_at + renew_deadline


# --------------------------------------------------------------------------- the Lease over the API


class LeaseConflict(Exception):
    """The Lease changed (or appeared, or vanished) since it was read: read it again."""


class LeaseUnavailable(Exception):
    """The API server could not be asked: try again later."""


class LeaseStore(Protocol):
    """Reads and writes one Lease; writes are refused (``LeaseConflict``) unless it is still at ``version``."""

    async def read(self) -> tuple[LeaseRecord | None, str | None]: ...
    async def create(self, record: LeaseRecord) -> str | None: ...
    async def update(self, record: LeaseRecord, version: str | None) -> str | None: ...


class KubeLease:
    """:class:`LeaseStore` on a coordination.k8s.io/v1 Lease."""

    def __init__(self, api: ApiClient, *, name: str, namespace: str) -> None:
        from kubernetes_asyncio.client import CoordinationV1Api

        self._api = CoordinationV1Api(api)
        self._name = name
        self._namespace = namespace

    async def read(self) -> tuple[LeaseRecord | None, str | None]:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            lease = await self._api.read_namespaced_lease(self._name, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise _translate(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LeaseUnavailable(str(exc) or type(exc).__name__) from exc
        spec = lease.spec
        record = LeaseRecord(
            holder=(spec.holder_identity if spec else None) or "",
            duration=float((spec.lease_duration_seconds if spec else None) or 0),
            acquired=_stamp_of(spec.acquire_time if spec else None),
            renewed=_stamp_of(spec.renew_time if spec else None),
            transitions=(spec.lease_transitions if spec else None) or 0,
        )
        return record, lease.metadata.resource_version if lease.metadata else None

    async def create(self, record: LeaseRecord) -> str | None:
        body: Any = {"metadata": {"name": self._name}, "spec": _spec(record)}
        return await self._write(self._api.create_namespaced_lease(self._namespace, body))

    async def update(self, record: LeaseRecord, version: str | None) -> str | None:
        body = {"metadata": {"resourceVersion": version}, "spec": _spec(record)}
        return await self._write(self._api.patch_namespaced_lease(self._name, self._namespace, body))

    async def _write(self, call: Awaitable[V1Lease]) -> str | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            lease = await call
        except ApiException as exc:
            raise _translate(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LeaseUnavailable(str(exc) or type(exc).__name__) from exc
        return lease.metadata.resource_version if lease.metadata else None


def _translate(exc: ApiException) -> Exception:
    if exc.status in (404, 409):
        return LeaseConflict(f"HTTP {exc.status} {exc.reason}")
    return LeaseUnavailable(f"HTTP {exc.status} {exc.reason}")


def _spec(record: LeaseRecord) -> dict[str, Any]:
    return {
        "holderIdentity": record.holder or None,
        "leaseDurationSeconds": int(record.duration),
        "acquireTime": record.acquired,
        "renewTime": record.renewed,
        "leaseTransitions": record.transitions,
    }


def _stamp_of(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value)


def _now_stamp() -> str:
    """A MicroTime for the record (informational: nobody's decision reads another machine's clock)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- the elector


@dataclass
class _Leadership:
    leading: bool = False
    until: float = 0.0
    """Leader until then (see :func:`leader_until`)."""


class LeaderElector:
    """Takes part in the election; :attr:`is_leader` says, at any instant, whether this daemon may act."""

    def __init__(
        self,
        api: ApiClient | None,
        *,
        identity: str,
        lease_name: str,
        namespace: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Clock = time.monotonic,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        release_on_stop: bool = True,
        leases: LeaseStore | None = None,
    ) -> None:
        """``leases`` replaces the Kubernetes Lease (then ``api`` may be None), for tests; ``clock`` is monotonic."""
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs 0 < retry_period < renew_deadline < lease_duration")
        if leases is None:
            if api is None:
                raise ValueError("LeaderElector needs an ApiClient or a LeaseStore")
            leases = KubeLease(api, name=lease_name, namespace=namespace)
        self.identity = identity
        self.lease_name = lease_name
        self._leases = leases
        self._lease_duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry_period = retry_period
        self._clock = clock
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._release_on_stop = release_on_stop
        self._observed: Observed | None = None
        self._last_read: float | None = None
        self._observed_once = asyncio.Event()
        self._state = _Leadership()
        self._elected = asyncio.Event()
        self._deposed = asyncio.Event()
        self._deposed.set()

    @classmethod
    def from_spec(
        cls, api: ApiClient, spec: LeaderElectionSpec, *, identity: str | None = None, **kwargs: Any
    ) -> LeaderElector:
        return cls(
            api,
            identity=identity or spec.resolved_identity(),
            lease_name=spec.lease_name,
            namespace=spec.namespace or default_namespace(),
            lease_duration=spec.lease_duration,
            renew_deadline=spec.renew_deadline,
            retry_period=spec.retry_period,
            **kwargs,
        )

    @property
    def is_leader(self) -> bool:
        """Whether this daemon may act *now*: computed from the clock, so it turns false at the renew deadline
        even if the election task has not run since."""
        return self._state.leading and self._clock() < self._state.until

    @property
    def holder(self) -> str | None:
        """Who holds the Lease as last read (``None`` when nobody does or it was never read)."""
        record = self._observed.record if self._observed is not None else None
        return record.holder or None if record is not None else None

    @property
    def in_touch(self) -> bool:
        """Whether the Lease was read within the last lease duration: a follower that is in touch is a
        healthy standby (ready to serve reads and to take over), one that is not has lost the API server."""
        return self._last_read is not None and self._clock() - self._last_read < self._lease_duration

    async def wait_observed(self) -> None:
        """Until the Lease was read once: from then on this daemon knows whether it leads or follows."""
        await self._observed_once.wait()

    async def wait_elected(self) -> None:
        await self._elected.wait()

    async def wait_deposed(self) -> None:
        await self._deposed.wait()

    async def run(self) -> None:
        """Take part until cancelled; on the way out stop leading and (if held) release the Lease."""
        try:
            while True:
                wake = await self.tick()
                await asyncio.sleep(max(0.0, wake - self._clock()))
        finally:
            self._step_down("stopping")
            if self._release_on_stop:
                await asyncio.shield(self._release())

    async def tick(self) -> float:
        """One look at the Lease (and a write if due); returns when, by the clock, to look again."""
        now = self._clock()
        self._check_deadline(now)
        budget = self._state.until - now if self._state.leading else self._renew_deadline
        try:
            async with asyncio.timeout(max(budget, 0.001)):
                await self._try()
        except (LeaseConflict, LeaseUnavailable, TimeoutError) as exc:
            log.info("leader election (%s): %s", self.identity, type(exc).__name__ + (f": {exc}" if str(exc) else ""))
        now = self._clock()
        self._check_deadline(now)
        wake = now + self._retry_period
        return min(wake, self._state.until) if self._state.leading else wake

    async def while_leading(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` whenever this daemon leads; cancel it the moment it stops leading, start it again when
        it leads again. Returns when ``work`` returns; raises what it raises."""
        while True:
            await self._elected.wait()
            task = asyncio.ensure_future(work())
            deposed = asyncio.ensure_future(self._deposed.wait())
            try:
                await asyncio.wait({task, deposed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pending in (task, deposed):
                    pending.cancel()
                await asyncio.gather(task, deposed, return_exceptions=True)
            if not task.cancelled():
                task.result()
                return

    async def _try(self) -> None:
        record, version = await self._leases.read()
        self._last_read = self._clock()
        self._observed_once.set()
        self._observed = observe(self._observed, record, version, self._clock())
        move = decide(self._observed, identity=self.identity, now=self._clock(), lease_duration=self._lease_duration)
        if move is Move.FOLLOW:
            if self._state.leading:
                self._step_down(f"the lease is held by {record.holder if record else 'nobody'}")
            return
        wanted = next_record(record, identity=self.identity, duration=self._lease_duration, stamp=_now_stamp())
        sent = self._clock()
        if move is Move.CREATE:
            new_version = await self._leases.create(wanted)
        else:
            new_version = await self._leases.update(wanted, version)
        self._observed = Observed(wanted, new_version, sent)
        self._state.until = leader_until(sent, renew_deadline=self._renew_deadline)
        if not self._state.leading:
            self._step_up(move)

    def _check_deadline(self, now: float) -> None:
        if self._state.leading and now >= self._state.until:
            self._step_down(f"no successful renewal for {self._renew_deadline:g}s")

    def _step_up(self, move: Move) -> None:
        self._state.leading = True
        log.warning("%s is now the leader (%s lease %s)", self.identity, move.value, self.lease_name)
        self._deposed.clear()
        self._elected.set()
        self._call(self._on_started)

    def _step_down(self, why: str) -> None:
        if not self._state.leading:
            return
        self._state.leading = False
        log.warning("%s stops leading: %s", self.identity, why)
        self._elected.clear()
        self._deposed.set()
        self._call(self._on_stopped)

    def _call(self, callback: Callable[[], None] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("leader election callback failed")

    async def _release(self) -> None:
        """Clear the Lease if this daemon holds it, so a follower need not wait for it to expire."""
        observed = self._observed
        if observed is None or observed.record is None or observed.record.holder != self.identity:
            return
        try:
            async with asyncio.timeout(self._retry_period):
                await self._leases.update(released(observed.record, stamp=_now_stamp()), observed.version)
        except (LeaseConflict, LeaseUnavailable, TimeoutError) as exc:
            log.info("%s could not release lease %s (it expires by itself): %r", self.identity, self.lease_name, exc)
        else:
            log.info("%s released lease %s", self.identity, self.lease_name)
