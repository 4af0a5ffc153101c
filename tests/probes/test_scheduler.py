"""The probe scheduler on a fake clock: hours of schedule in milliseconds, no real waiting.

:class:`FakeTime` stands in for both the monotonic clock and ``sleep``:
sleepers wait until the test advances the clock past their wake-up time, and
between wake-ups the event loop is left to run everything that became ready.
Fake probes take fake time, block on events, fail on demand and count how
many of them run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable

import pytest

from vouch.core.errors import ConflictError, NotFoundError
from vouch.probes.base import Probe, ProbeResult, Reason
from vouch.probes.failing import FailingState
from vouch.probes.scheduler import ProbeRun, Scheduler, next_slot, public_target, start_phase
from vouch.probes.settings import FailingPolicy, ProbeSpec

T0 = 100_000.0


async def settle(rounds: int = 40) -> None:
    """Let every task that can make progress without the clock moving do so."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeTime:
    """A clock that moves only when told, and a ``sleep`` that follows it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(delay, 0.0), next(self._seq), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move the clock forward, waking each sleeper at its own time and letting the loop settle after each."""
        until = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= until:
            due, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue  # its sleeper was cancelled
            self.now = max(self.now, due)
            future.set_result(None)
            await settle()
        self.now = until
        await settle()


class Tracker:
    """How many fake probe runs are in flight, at most and now."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.cancelled = 0


class FakeProbe:
    """A probe that takes ``duration`` of fake time, may wait for ``gate``, and fails on demand."""

    kind = "fake"

    def __init__(
        self,
        name: str = "fake",
        *,
        time_: FakeTime | None = None,
        duration: float = 0.0,
        outcomes: Iterable[bool] = (),
        gate: asyncio.Event | None = None,
        tracker: Tracker | None = None,
        error: Exception | None = None,
    ) -> None:
        self.name = name
        self.calls: list[str] = []
        self._time = time_
        self._duration = duration
        self._outcomes = deque(outcomes)
        self._gate = gate
        self._error = error
        self.tracker = tracker or Tracker()

    async def run(self, target: str) -> ProbeResult:
        self.calls.append(target)
        tracker = self.tracker
        tracker.active += 1
        tracker.peak = max(tracker.peak, tracker.active)
        try:
            if self._gate is not None:
                await self._gate.wait()
            if self._duration and self._time is not None:
                await self._time.sleep(self._duration)
            if self._error is not None:
                raise self._error
            success = self._outcomes.popleft() if self._outcomes else True
            reason = None if success else Reason.HTTP_STATUS
            return ProbeResult(self.name, self.kind, target, success, 0.0, self._duration, reason=reason)
        except asyncio.CancelledError:
            tracker.cancelled += 1
            raise
        finally:
            tracker.active -= 1

    async def close(self) -> None:
        return None


def spec(name: str = "fake", **changes: object) -> ProbeSpec:
    settings: dict[str, object] = {"name": name, "targets": ["t"], "interval": 60.0, "timeout": 5.0}
    settings.update(changes)
    return ProbeSpec.model_validate(settings)


def no_runs() -> list[ProbeRun]:
    return []


def make(time_: FakeTime, runs: list[ProbeRun], **options: object) -> Scheduler:
    return Scheduler(clock=time_.clock, sleep=time_.sleep, on_result=runs.append, **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(scheduler.run(), name="test-scheduler")
    await settle()
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def on_grid(when: float, phase: float, interval: float) -> bool:
    off = (when - phase * interval) % interval
    return min(off, interval - off) < 1e-6


# --------------------------------------------------------------------------- schedule


def test_phase_is_the_same_in_every_process() -> None:
    # A golden value: Python's hash() would change per process and move every probe on restart.
    assert start_phase("web|https://shop.example/") == pytest.approx(0.42663653682713837, abs=1e-15)


def test_next_slot_is_on_the_grid_and_strictly_later() -> None:
    for after in (0.0, 14.999, 15.0, 15.001, 1e6 + 0.5):
        slot = next_slot(phase=0.25, interval=60, after=after)
        assert after < slot <= after + 60
        assert (slot - 15) % 60 == pytest.approx(0, abs=1e-6)


async def test_a_thousand_probes_spread_over_the_interval_and_keep_their_phase() -> None:
    time_, runs = FakeTime(), no_runs()
    scheduler = make(time_, runs, concurrency=2000)
    keys = [f"probe-{i}|http://10.0.{i // 250}.{i % 250}/" for i in range(1000)]
    for key in keys:
        scheduler.add(key, FakeProbe(), spec=spec(), target="t")
    async with running(scheduler):
        await time_.advance(60)
    assert sorted(r.key for r in runs) == sorted(keys), "each probe ran exactly once in one interval"
    per_second = Counter(math.floor(r.started_at - T0) for r in runs)
    mean = len(runs) / 60
    assert max(per_second.values()) <= 3 * mean, per_second.most_common(3)
    assert all(r.lateness == 0 for r in runs)

    # A restart at another time: every key keeps its place in the interval.
    later, again = FakeTime(T0 + 12_345.6), no_runs()
    restarted = make(later, again)
    for key in keys[:50]:
        restarted.add(key, FakeProbe(), spec=spec(), target="t")
    before = {r.key: r.scheduled_at % 60 for r in runs}
    for key in keys[:50]:
        due = restarted.next_run(key)
        assert due is not None
        assert on_grid(due - before[key], 0.0, 60)


async def test_no_drift_over_many_runs() -> None:
    time_, runs = FakeTime(), no_runs()
    scheduler = make(time_, runs)
    scheduler.add("slow", FakeProbe(time_=time_, duration=0.7), spec=spec(interval=10.0), target="t")
    async with running(scheduler):
        await time_.advance(1000)
    assert len(runs) >= 99
    first = runs[0].scheduled_at
    for k, run in enumerate(runs):
        assert run.scheduled_at == pytest.approx(first + 10 * k, abs=1e-6)
        assert run.started_at == run.scheduled_at
        assert run.lateness == 0


async def test_an_overrun_skips_the_missed_slots_instead_of_bunching() -> None:
    time_, runs = FakeTime(), no_runs()
    scheduler = make(time_, runs)
    probe = FakeProbe(time_=time_, duration=25.0)  # ignores its timeout: 2.5 intervals per run
    scheduler.add("overrun", probe, spec=spec(interval=10.0, timeout=9.0), target="t")
    async with running(scheduler):
        await time_.advance(200)
    gaps = [b.scheduled_at - a.scheduled_at for a, b in itertools.pairwise(runs)]
    assert len(gaps) >= 5
    assert gaps == pytest.approx([30.0] * len(gaps))
    assert all(r.lateness == 0 for r in runs)
    assert probe.tracker.peak == 1


async def test_the_failing_interval_kicks_in_and_out() -> None:
    time_, runs = FakeTime(), no_runs()
    scheduler = make(time_, runs)
    outcomes = [False, False, False, False, True, True, True]
    failing = spec(interval=60.0, failing_interval=10.0, failing=FailingPolicy(consecutive=2))
    scheduler.add("flaky", FakeProbe(outcomes=outcomes), spec=failing, target="t")
    async with running(scheduler):
        await time_.advance(400)
    assert [r.state.failing for r in runs[:7]] == [False, True, True, True, False, False, False]
    assert [r.interval for r in runs[:7]] == [60, 10, 10, 10, 60, 60, 60]
    gaps = [b.scheduled_at - a.scheduled_at for a, b in itertools.pairwise(runs[:7])]
    assert gaps[0] == pytest.approx(60)
    assert 0 < gaps[1] <= 10  # onto the 10 s grid at its next slot
    assert gaps[2:4] == pytest.approx([10, 10])
    assert 0 < gaps[4] <= 60  # back to the 60 s grid at its next slot
    assert gaps[5] == pytest.approx(60)
    phase = start_phase("flaky")
    assert all(on_grid(r.scheduled_at, phase, 10) for r in runs[2:5])  # scheduled while failing
    assert all(on_grid(r.scheduled_at, phase, 60) for r in [*runs[:2], *runs[5:7]])
    assert scheduler.state("flaky") == runs[-1].state


async def test_concurrency_is_bounded_and_waiting_shows_as_lateness() -> None:
    time_, runs, gate, tracker = FakeTime(), no_runs(), asyncio.Event(), Tracker()
    scheduler = make(time_, runs, concurrency=3)
    for i in range(10):
        scheduler.add(f"p{i}", FakeProbe(gate=gate, tracker=tracker), spec=spec(interval=10.0, timeout=5.0), target="t")
    async with running(scheduler):
        await time_.advance(10)  # every probe is due once
        assert tracker.active == 3
        await time_.advance(2)
        gate.set()
        await settle()
        assert len(runs) == 10
    assert tracker.peak == 3
    late = [r for r in runs if r.lateness > 0]
    assert len(late) == 7
    assert all(r.started_at == T0 + 12 for r in late)


# --------------------------------------------------------------------------- guards


async def wait_for_runs(runs: list[ProbeRun], count: int, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(runs) < count:
        assert time.monotonic() < deadline, f"only {len(runs)} of {count} runs arrived"
        await asyncio.sleep(0.005)


async def test_a_probe_that_overstays_its_timeout_is_ended_as_a_timeout() -> None:
    time_, runs = FakeTime(), no_runs()
    scheduler = make(time_, runs, timeout_margin=0.05)
    probe = FakeProbe("stuck", gate=asyncio.Event())  # never set: ignores its own timeout
    scheduler.add("stuck", probe, spec=spec("stuck", timeout=0.05), target="http://u:pw@stuck.test/")
    async with running(scheduler):
        await time_.advance(60)
        await wait_for_runs(runs, 1)  # the guard is real time: about 0.1 s
    (run,) = runs
    assert not run.result.success
    assert run.result.reason is Reason.TIMEOUT
    assert run.result.target == "http://stuck.test/"
    assert "pw" not in run.result.message
    assert probe.tracker.cancelled == 1


async def test_a_probe_that_raises_is_an_internal_error_never_a_pass() -> None:
    time_, runs = FakeTime(), no_runs()
    scheduler = make(time_, runs)
    probe = FakeProbe("broken", error=RuntimeError("token=hunter2"))
    scheduler.add("broken", probe, spec=spec("broken", failing=FailingPolicy(consecutive=1)), target="t")
    async with running(scheduler):
        await time_.advance(60)
    (run,) = runs
    assert run.result.reason is Reason.INTERNAL
    assert "hunter2" not in run.result.message
    assert run.state.failing


async def test_a_failing_result_handler_does_not_stop_the_schedule() -> None:
    time_, seen = FakeTime(), no_runs()

    def handler(run: ProbeRun) -> None:
        seen.append(run)
        raise ValueError("handler bug")

    scheduler = Scheduler(clock=time_.clock, sleep=time_.sleep, on_result=handler)
    scheduler.add("p", FakeProbe(), spec=spec(interval=10.0), target="t")
    async with running(scheduler):
        await time_.advance(35)
    assert len(seen) == 3


# --------------------------------------------------------------------------- definitions


async def test_labels_name_the_probe_and_its_target_without_credentials() -> None:
    time_, runs = FakeTime(), no_runs()
    scheduler = make(time_, runs)
    labelled = spec("web", labels={"service": "shop", "environment": "prod", "probe": "spoofed"})
    scheduler.add("web", FakeProbe("web"), spec=labelled, target="https://bot:s3cret@shop.test/", labels={"role": "x"})
    async with running(scheduler):
        await time_.advance(60)
    (run,) = runs
    assert dict(run.labels) == {
        "service": "shop",
        "environment": "prod",
        "role": "x",
        "probe": "web",
        "kind": "fake",
        "target": "https://shop.test/",
    }
    assert run.target == "https://shop.test/"


def test_public_target_drops_only_the_credentials() -> None:
    assert public_target("https://a:b@host:8443/p?q=1") == "https://host:8443/p?q=1"
    assert public_target("https://host/p") == "https://host/p"
    assert public_target("host:53") == "host:53"


async def test_adding_an_earlier_probe_wakes_the_sleeping_timer() -> None:
    time_, runs = FakeTime(0.0), no_runs()
    scheduler = make(time_, runs)
    keys = [f"k{i}" for i in range(200)]
    late_key = next(k for k in keys if start_phase(k) > 0.9)
    early_key = next(k for k in keys if start_phase(k) < 0.1)
    scheduler.add(late_key, FakeProbe(), spec=spec(), target="t")
    async with running(scheduler):
        await time_.advance(1)  # the timer now sleeps until late_key's slot, some 54 s away
        scheduler.add(early_key, FakeProbe(), spec=spec(), target="t")
        due = scheduler.next_run(early_key)
        assert due is not None
        assert due < (scheduler.next_run(late_key) or 0)
        await time_.advance(due - time_.now)
        assert [r.key for r in runs] == [early_key]
        assert runs[0].scheduled_at == due


async def test_remove_stops_a_probe_and_cancels_its_run() -> None:
    time_, runs, gate = FakeTime(), no_runs(), asyncio.Event()
    scheduler = make(time_, runs)
    blocked = FakeProbe("blocked", gate=gate)
    kept = FakeProbe("kept")
    scheduler.add("blocked", blocked, spec=spec(interval=10.0), target="t")
    scheduler.add("kept", kept, spec=spec(interval=10.0), target="t")
    async with running(scheduler):
        await time_.advance(10)
        assert blocked.tracker.active == 1
        scheduler.remove("blocked")
        await settle()
        gate.set()
        await time_.advance(100)
    assert blocked.tracker.cancelled == 1
    assert len(blocked.calls) == 1
    assert {r.key for r in runs} == {"kept"}
    assert len(runs) == 11
    assert "blocked" not in scheduler
    with pytest.raises(NotFoundError):
        scheduler.state("blocked")
    with pytest.raises(NotFoundError):
        scheduler.remove("blocked")


def test_churn_does_not_grow_the_heap() -> None:
    scheduler = Scheduler()
    for round_ in range(50):
        for i in range(100):
            scheduler.add(f"canary-{round_}-{i}", FakeProbe(), spec=spec(), target="t")
        for i in range(100):
            scheduler.remove(f"canary-{round_}-{i}")
    assert len(scheduler) == 0
    assert len(scheduler._heap) <= 200


def test_a_key_is_scheduled_once() -> None:
    scheduler = Scheduler()
    scheduler.add("p", FakeProbe(), spec=spec(), target="t")
    with pytest.raises(ConflictError):
        scheduler.add("p", FakeProbe(), spec=spec(), target="t")
    assert scheduler.state("p") == FailingState()
    assert len(scheduler) == 1
    assert list(scheduler.keys()) == ["p"]


async def test_cancelling_run_stops_everything_cleanly() -> None:
    time_, runs, gate, tracker = FakeTime(), no_runs(), asyncio.Event(), Tracker()
    scheduler = make(time_, runs)
    for i in range(20):
        scheduler.add(f"p{i}", FakeProbe(gate=gate, tracker=tracker), spec=spec(interval=10.0), target="t")
    task = asyncio.create_task(scheduler.run())
    await time_.advance(10)
    assert tracker.active == 20
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert tracker.active == 0
    assert tracker.cancelled == 20
    assert runs == []
    assert asyncio.all_tasks() == {asyncio.current_task()}
    # ... and it can run again afterwards, picking up where the schedule stands.
    gate.set()
    async with running(scheduler):
        await time_.advance(10)
    assert len(runs) == 20


async def test_slots_missed_before_run_starts_are_skipped_not_bunched() -> None:
    time_, runs = FakeTime(), no_runs()
    scheduler = make(time_, runs)
    for i in range(100):
        scheduler.add(f"p{i}", FakeProbe(), spec=spec(interval=10.0), target="t")
    await time_.advance(35)  # a slow start: every first slot has passed
    start = time_.now
    async with running(scheduler):
        await settle()
        assert runs == []
        await time_.advance(10)
    assert len(runs) == 100
    assert all(r.lateness == 0 and start < r.scheduled_at <= start + 10 for r in runs)


async def test_a_second_concurrent_run_is_refused() -> None:
    scheduler = Scheduler()
    async with running(scheduler):
        with pytest.raises(ConflictError):
            await scheduler.run()


async def test_smoke_real_clock_and_real_sleep() -> None:
    """The only test on real time: a probe due 50 ms from now runs, on a clock shifted to put it there."""
    runs: list[ProbeRun] = []
    key, interval = "smoke", 10.0
    shift = start_phase(key) * interval - 0.05 - time.monotonic()
    scheduler = Scheduler(clock=lambda: time.monotonic() + shift, on_result=runs.append)
    probe: Probe = FakeProbe("smoke")
    scheduler.add(key, probe, spec=spec("smoke", interval=interval), target="t")
    async with running(scheduler):
        await wait_for_runs(runs, 1)
    assert runs[0].result.success
    assert runs[0].lateness >= 0
