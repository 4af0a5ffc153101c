"""Leader election: the pure decisions, the elector on a fake clock, then two electors on kmock's emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration, CoordinationV1Api
from pydantic import ValidationError
from support.kubeapi import VersionedKubernetes, serve_kubernetes

from vouch.daemon.leader import (
    LeaderElectionSpec,
    LeaderElector,
    LeaseConflict,
    LeaseRecord,
    LeaseUnavailable,
    Move,
    Observed,
    decide,
    expires_at,
    leader_until,
    next_record,
    observe,
    released,
)

NAMESPACE = "vouch"


# --------------------------------------------------------------------------- pure decisions


def test_a_missing_lease_is_created_and_ones_own_is_renewed() -> None:
    assert decide(Observed(None, None, 0.0), identity="a", now=0.0, lease_duration=15.0) is Move.CREATE
    mine = Observed(LeaseRecord("a", 15.0), "3", since=0.0)
    assert decide(mine, identity="a", now=1000.0, lease_duration=15.0) is Move.RENEW


def test_another_holders_lease_is_followed_until_it_has_not_changed_for_a_lease_duration() -> None:
    theirs = Observed(LeaseRecord("b", 15.0), "3", since=100.0)
    assert decide(theirs, identity="a", now=100.0, lease_duration=15.0) is Move.FOLLOW
    assert decide(theirs, identity="a", now=114.999, lease_duration=15.0) is Move.FOLLOW
    assert decide(theirs, identity="a", now=115.0, lease_duration=15.0) is Move.ACQUIRE


def test_the_longer_of_the_two_durations_counts() -> None:
    """A holder that announced a longer lease than ours configures is given all of it."""
    theirs = Observed(LeaseRecord("b", 60.0), "3", since=100.0)
    assert expires_at(theirs, lease_duration=15.0) == 160.0
    assert decide(theirs, identity="a", now=130.0, lease_duration=15.0) is Move.FOLLOW


def test_a_released_lease_is_taken_at_once() -> None:
    free = Observed(released(LeaseRecord("b", 15.0, transitions=2), stamp="t"), "9", since=100.0)
    assert free.record is not None
    assert free.record.holder == ""
    assert decide(free, identity="a", now=100.0, lease_duration=15.0) is Move.ACQUIRE


def test_observing_keeps_since_while_nothing_changes() -> None:
    record = LeaseRecord("b", 15.0, renewed="t1")
    first = observe(None, record, "1", now=10.0)
    assert observe(first, record, "1", now=20.0).since == 10.0
    assert observe(first, LeaseRecord("b", 15.0, renewed="t2"), "2", now=20.0).since == 20.0
    # Only the version moved (someone wrote the same record): the holder is alive, start again.
    assert observe(first, record, "2", now=20.0).since == 20.0


def test_next_record_renews_or_takes_over() -> None:
    mine = LeaseRecord("a", 15.0, acquired="t0", renewed="t0", transitions=3)
    renewed = next_record(mine, identity="a", duration=15.0, stamp="t1")
    assert renewed == LeaseRecord("a", 15.0, acquired="t0", renewed="t1", transitions=3)
    taken = next_record(LeaseRecord("b", 15.0, transitions=3), identity="a", duration=1.5, stamp="t2")
    assert taken == LeaseRecord("a", 2.0, acquired="t2", renewed="t2", transitions=4)
    assert next_record(None, identity="a", duration=15.0, stamp="t3").transitions == 0


def test_a_leader_stops_before_its_lease_can_expire_anywhere() -> None:
    """Fencing by arithmetic: the leader's deadline counts from when it sent the renewal; a follower's
    expiry counts from when it saw it, which is later; renew_deadline < lease_duration."""
    sent, seen = 100.0, 100.3
    assert leader_until(sent, renew_deadline=10.0) < expires_at(
        Observed(LeaseRecord("a", 15.0), "5", since=seen), lease_duration=15.0
    )


def test_settings_must_leave_the_leader_time_to_stop() -> None:
    LeaderElectionSpec(lease_duration="15s", renew_deadline="10s", retry_period="2s")
    for bad in ({"renew_deadline": 15.0}, {"renew_deadline": 20.0}, {"retry_period": 10.0}, {"retry_period": 0}):
        with pytest.raises(ValidationError, match="retry_period < renew_deadline < lease_duration"):
            LeaderElectionSpec(**bad)


def test_identity_defaults_to_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "vouch-7d9-abcde")
    assert LeaderElectionSpec().resolved_identity() == "vouch-7d9-abcde"
    assert LeaderElectionSpec(identity="given").resolved_identity() == "given"


# --------------------------------------------------------------------------- the elector on a fake clock


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class MemoryLease:
    """One Lease in memory with resourceVersions; ``down`` cuts one elector off it."""

    record: LeaseRecord | None = None
    version: int = 0


@dataclass
class View:
    """What one elector reaches of the shared lease; ``down`` makes every call fail (a partition)."""

    lease: MemoryLease
    down: bool = False
    writes: list[LeaseRecord] = field(default_factory=list)

    async def read(self) -> tuple[LeaseRecord | None, str | None]:
        self._check()
        return self.lease.record, str(self.lease.version) if self.lease.record else None

    async def create(self, record: LeaseRecord) -> str | None:
        self._check()
        if self.lease.record is not None:
            raise LeaseConflict("exists")
        return self._write(record)

    async def update(self, record: LeaseRecord, version: str | None) -> str | None:
        self._check()
        if self.lease.record is None or version != str(self.lease.version):
            raise LeaseConflict("changed")
        return self._write(record)

    def _check(self) -> None:
        if self.down:
            raise LeaseUnavailable("partitioned")

    def _write(self, record: LeaseRecord) -> str:
        self.lease.record = record
        self.lease.version += 1
        self.writes.append(record)
        return str(self.lease.version)


def elector(name: str, view: View, clock: FakeClock, log: list[str] | None = None) -> LeaderElector:
    return LeaderElector(
        None,
        identity=name,
        lease_name="vouch-leader",
        namespace=NAMESPACE,
        lease_duration=15.0,
        renew_deadline=10.0,
        retry_period=2.0,
        clock=clock,
        leases=view,
        on_started_leading=(lambda: log.append(f"{name} starts")) if log is not None else None,
        on_stopped_leading=(lambda: log.append(f"{name} stops")) if log is not None else None,
    )


async def test_one_leads_and_the_other_follows_while_it_renews() -> None:
    clock, lease, log = FakeClock(), MemoryLease(), []
    a, b = elector("a", View(lease), clock, log), elector("b", View(lease), clock, log)
    await a.tick()
    await b.tick()
    for _ in range(30):
        clock.now += 2.0
        await a.tick()
        await b.tick()
        assert a.is_leader
        assert not b.is_leader
    assert log == ["a starts"]
    assert lease.record is not None
    assert lease.record.holder == "a"


async def test_a_partitioned_leader_stops_before_the_follower_takes_over() -> None:
    clock, lease, log = FakeClock(), MemoryLease(), []
    view_a = View(lease)
    a, b = elector("a", view_a, clock, log), elector("b", View(lease), clock, log)
    await a.tick()
    await b.tick()
    clock.now += 2.0
    await a.tick()
    last_renewal_sent = clock.now
    await b.tick()
    view_a.down = True  # a can no longer reach the API server, and does not know why
    stopped_at = taken_at = None
    while taken_at is None:
        clock.now += 0.5
        await a.tick()
        await b.tick()
        assert not (a.is_leader and b.is_leader)
        if stopped_at is None and not a.is_leader:
            stopped_at = clock.now
        if b.is_leader:
            taken_at = clock.now
    assert stopped_at is not None
    assert stopped_at <= last_renewal_sent + 10.0  # the renew deadline
    assert taken_at >= last_renewal_sent + 15.0  # not before the lease could expire
    assert taken_at <= last_renewal_sent + 15.0 + 2.0  # and at the first look after that
    assert log == ["a starts", "a stops", "b starts"]
    assert lease.record is not None
    assert lease.record.transitions == 1

    # Back on the network, the deposed leader sees the new holder and stays a follower.
    view_a.down = False
    clock.now += 2.0
    await a.tick()
    assert not a.is_leader


async def test_is_leader_turns_false_at_the_deadline_even_before_the_elector_runs_again() -> None:
    clock, lease = FakeClock(), MemoryLease()
    a = elector("a", View(lease), clock)
    await a.tick()
    clock.now += 9.999
    assert a.is_leader
    clock.now += 0.001
    assert not a.is_leader


async def test_a_stolen_lease_deposes_the_leader_at_its_next_look() -> None:
    clock, lease, log = FakeClock(), MemoryLease(), []
    a = elector("a", View(lease), clock, log)
    await a.tick()
    lease.record = LeaseRecord("intruder", 15.0, renewed="later")
    lease.version += 1
    clock.now += 2.0
    await a.tick()
    assert not a.is_leader
    assert log == ["a starts", "a stops"]


async def test_two_electors_racing_for_a_free_lease_one_wins() -> None:
    clock, lease = FakeClock(), MemoryLease(record=LeaseRecord("", 1.0), version=4)
    a, b = elector("a", View(lease), clock), elector("b", View(lease), clock)
    await asyncio.gather(a.tick(), b.tick())
    assert [a.is_leader, b.is_leader].count(True) == 1


async def test_work_runs_only_while_leading() -> None:
    clock, lease = FakeClock(), MemoryLease()
    view = View(lease)
    a = elector("a", view, clock)
    started, stopped = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def work() -> None:
        runs.append("start")
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            runs.append("cancelled")
            stopped.set()

    supervisor = asyncio.create_task(a.while_leading(work))
    try:
        await asyncio.sleep(0)
        assert runs == []
        await a.tick()
        await asyncio.wait_for(started.wait(), 5)
        view.down = True
        clock.now += 10.0
        await a.tick()
        await asyncio.wait_for(stopped.wait(), 5)
        assert runs == ["start", "cancelled"]
        started.clear()
        view.down = False
        await a.tick()  # the lease is still its own: it leads again, and the work starts again
        await asyncio.wait_for(started.wait(), 5)
        assert runs == ["start", "cancelled", "start"]
    finally:
        supervisor.cancel()
        with pytest.raises(asyncio.CancelledError):
            await supervisor


async def test_a_leader_that_stops_releases_the_lease_for_an_immediate_takeover() -> None:
    clock, lease, log = FakeClock(), MemoryLease(), []
    a, b = elector("a", View(lease), clock, log), elector("b", View(lease), clock, log)
    running = asyncio.create_task(a.run())
    await asyncio.wait_for(a.wait_elected(), 5)
    await b.tick()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert lease.record is not None
    assert lease.record.holder == ""
    await b.tick()  # no waiting for the lease duration
    assert b.is_leader
    assert log == ["a starts", "a stops", "b starts"]


# --------------------------------------------------------------------------- two electors on the emulator


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[VersionedKubernetes, str]]:
    async with serve_kubernetes() as served:
        yield served


@dataclass
class Replica:
    """One daemon: its client, its elector and its election task."""

    api: ApiClient
    elector: LeaderElector
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(), name=f"election:{self.elector.identity}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


@pytest.fixture
async def replicas(cluster: tuple[VersionedKubernetes, str]) -> AsyncIterator[Callable[..., Replica]]:
    _, url = cluster
    made: list[Replica] = []
    overlaps: list[str] = []

    def make(name: str, **kwargs: object) -> Replica:
        api = ApiClient(Configuration(host=url))

        def started() -> None:
            others = [r.elector.identity for r in made if r.elector.identity != name and r.elector.is_leader]
            if others:  # recorded, not raised: the elector logs and swallows callback errors
                overlaps.append(f"{name} started leading while {others} still led")

        settings: dict[str, object] = {"lease_duration": 2.0, "renew_deadline": 1.0, "retry_period": 0.1, **kwargs}
        replica = Replica(
            api,
            LeaderElector(
                api,
                identity=name,
                lease_name="vouch-leader",
                namespace=NAMESPACE,
                on_started_leading=started,
                **settings,
            ),
        )
        made.append(replica)
        return replica

    try:
        yield make
    finally:
        for replica in made:
            await replica.stop()
            await replica.api.close()
    assert overlaps == []


async def eventually(predicate: Callable[[], bool], *, timeout: float = 20.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"still not true after {timeout}s")
        await asyncio.sleep(0.05)


async def leader_among(*replicas: Replica) -> Replica:
    """The one replica that leads, once one does."""
    async with asyncio.timeout(20):
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(r.elector.wait_elected()) for r in replicas], return_when=asyncio.FIRST_COMPLETED
        )
    for future in done:
        future.result()
    leading = [r for r in replicas if r.elector.is_leader]
    assert len(leading) == 1
    return leading[0]


async def test_only_one_of_two_replicas_leads(
    cluster: tuple[VersionedKubernetes, str], replicas: Callable[..., Replica]
) -> None:
    emulator, _ = cluster
    one, two = replicas("one"), replicas("two")
    one.start()
    two.start()
    leader = await leader_among(one, two)
    follower = two if leader is one else one

    # Several renewals later it is still the same one, and the other never led.
    def version() -> int:
        lease = emulator.object("leases", NAMESPACE, "vouch-leader")
        assert lease is not None
        return int(lease["metadata"]["resourceVersion"])

    first_version = version()
    await eventually(lambda: version() >= first_version + 5)
    assert leader.elector.is_leader
    assert not follower.elector.is_leader
    spec = (emulator.object("leases", NAMESPACE, "vouch-leader") or {})["spec"]
    assert spec["holderIdentity"] == leader.elector.identity
    assert spec["leaseDurationSeconds"] == 2


async def test_failover_when_the_leader_stops(replicas: Callable[..., Replica]) -> None:
    one, two = replicas("one"), replicas("two")
    one.start()
    two.start()
    leader = await leader_among(one, two)
    follower = two if leader is one else one
    await leader.stop()
    assert not leader.elector.is_leader
    assert await leader_among(follower) is follower


async def test_failover_when_the_leader_dies_without_releasing(replicas: Callable[..., Replica]) -> None:
    one = replicas("one", release_on_stop=False)
    one.start()
    await leader_among(one)
    two = replicas("two")
    two.start()
    await one.stop()  # a crash: the lease still names it, so two must wait for it to expire
    assert await leader_among(two) is two


async def test_a_leader_that_cannot_renew_steps_down_before_the_other_takes_over(
    replicas: Callable[..., Replica],
) -> None:
    one = replicas("one")
    one.start()
    await leader_among(one)
    two = replicas("two")
    two.start()
    one.api.configuration.host = "http://127.0.0.1:9"  # cut off: every call of one's fails from now on
    async with asyncio.timeout(20):
        await one.elector.wait_deposed()
    assert not one.elector.is_leader
    assert await leader_among(two) is two  # the fixture checks that one had stopped when two started


async def test_a_leader_whose_renewals_are_refused_steps_down(
    cluster: tuple[VersionedKubernetes, str], replicas: Callable[..., Replica]
) -> None:
    emulator, _ = cluster
    one = replicas("one")
    one.start()
    await leader_among(one)
    emulator.fail("PATCH", "leases", status=500, count=10_000)
    async with asyncio.timeout(20):
        await one.elector.wait_deposed()
    assert not one.elector.is_leader
    emulator.faults.clear()
    await leader_among(one)  # its lease was never taken: once the API answers again, it leads again


async def test_a_deposed_leader_whose_lease_was_taken_stops_acting(
    cluster: tuple[VersionedKubernetes, str], replicas: Callable[..., Replica]
) -> None:
    _, url = cluster
    one = replicas("one", lease_duration=30.0, renew_deadline=20.0)
    one.start()
    await leader_among(one)
    async with ApiClient(Configuration(host=url)) as api:
        await CoordinationV1Api(api).patch_namespaced_lease(
            "vouch-leader",
            NAMESPACE,
            {"spec": {"holderIdentity": "intruder", "renewTime": "2030-01-01T00:00:00.000000Z"}},
        )
    async with asyncio.timeout(20):
        await one.elector.wait_deposed()
    assert not one.elector.is_leader
