"""Runs thousands of (probe, target) pairs on time, each at its own interval, from one timer loop.

Why one loop over a heap rather than one sleeping task per probe: the loop
knows when every run was *due*, so it can measure how late each one starts,
and waking once per due time is cheaper than ten thousand timers.

Each pair runs on a fixed grid of slots ``phase·interval + k·interval`` of the
scheduler's clock. The phase is a stable hash of the pair's key, so runs are
spread evenly over the interval instead of firing together, and a restarted
daemon keeps every probe's phase: with the default ``time.monotonic`` (time
since boot on Linux) within one boot; pass ``time.time`` to keep it across
reboots too. The next slot is computed from the grid after each run, never by
sleeping an interval, so nothing drifts; a run that overran its slot skips the
slots it missed instead of bunching them up. While a probe is failing and has a
``failing_interval``, it runs on that (usually faster) grid to notice the
recovery sooner.

A run waits for one of ``concurrency`` slots; its lateness (start minus due
time) includes that wait, so a saturated scheduler shows as lateness, not as
silence. Probes enforce their own timeout; the scheduler guards it again with
``timeout + timeout_margin`` and reports a ``timeout`` failure when a probe
overstays, and an ``internal_error`` failure when a probe breaks its contract
by raising.

Example::

    scheduler = Scheduler(on_result=metrics.observe)
    scheduler.add("web|https://shop.example/", probe, spec=spec, target="https://shop.example/")
    async with asyncio.TaskGroup() as group:
        group.create_task(scheduler.run(), name="probe-scheduler")
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vouch.core.errors import ConflictError, NotFoundError
from vouch.probes.base import Probe, ProbeResult, Reason
from vouch.probes.failing import FailingState
from vouch.probes.settings import ProbeSpec

log = logging.getLogger(__name__)

TIMEOUT_MARGIN = 1.0
"""Seconds a probe may overstay its own timeout before the scheduler ends the run as a timeout."""


@dataclass(frozen=True)
class ProbeRun:
    """One finished run: the probe's result, when it was due and started, and the state it left.

    ``scheduled_at``, ``started_at`` and ``lateness`` are on the scheduler's
    clock (monotonic by default); ``completed_at`` is wall-clock epoch seconds,
    for ``probe_last_run_timestamp_seconds``. ``interval`` is the interval in
    effect for the next run (the failing interval while failing). ``labels``
    hold ``probe``, ``kind`` and ``target`` (the configured target, without
    credentials) and the probe's own labels such as ``service`` and ``environment``.
    """

    key: str
    result: ProbeResult
    scheduled_at: float
    started_at: float
    lateness: float
    state: FailingState
    labels: Mapping[str, str]
    interval: float
    completed_at: float

    @property
    def target(self) -> str:
        """The configured target, as exported."""
        return self.labels["target"]


def start_phase(key: str) -> float:
    """Where in its interval a key's runs fall, as a fraction in [0, 1): the same in every process.

    A keyed BLAKE2 digest, not ``hash()``, which changes with every interpreter start.

    >>> start_phase("web|https://shop.example/") == start_phase("web|https://shop.example/")
    True
    >>> 0 <= start_phase("anything") < 1
    True
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"vouch-probe").digest()
    return int.from_bytes(digest, "big") / 2**64


def next_slot(*, phase: float, interval: float, after: float) -> float:
    """The first slot ``phase·interval + k·interval`` strictly later than ``after``.

    >>> next_slot(phase=0.25, interval=60, after=1000)
    1035.0
    >>> next_slot(phase=0.25, interval=60, after=1035)
    1095.0
    """
    offset = phase * interval
    slot = offset + (math.floor((after - offset) / interval) + 1) * interval
    return slot if slot > after else slot + interval  # float rounding at an exact boundary


def public_target(target: str) -> str:
    """``target`` without credentials in a URL's user-info: the only form that is logged or exported.

    >>> public_target("https://user:secret@shop.example/health")
    'https://shop.example/health'
    >>> public_target("db.internal:5432")
    'db.internal:5432'
    """
    if "://" not in target:
        return target
    try:
        parts = urlsplit(target)
    except ValueError:
        return target.split("://", 1)[0] + "://<unparsable>"
    if "@" not in parts.netloc:
        return target
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class _Entry:
    """One scheduled (probe, target): its definition and its mutable bookkeeping."""

    __slots__ = ("due", "key", "labels", "phase", "probe", "spec", "state", "target", "task", "token")

    def __init__(self, key: str, probe: Probe, spec: ProbeSpec, target: str, labels: Mapping[str, str]) -> None:
        self.key = key
        self.probe = probe
        self.spec = spec
        self.target = target
        self.labels = labels
        self.phase = start_phase(key)
        self.state = FailingState()
        self.task: asyncio.Task[None] | None = None
        self.token: int | None = None
        """The sequence number of this entry's one valid heap item; older items are skipped."""
        self.due = math.inf

    def interval(self) -> float:
        if self.state.failing and self.spec.failing_interval is not None:
            return float(self.spec.failing_interval)
        return float(self.spec.interval)


class Scheduler:
    """Runs added probes on their schedules until :meth:`run` is cancelled.

    ``clock`` must be monotonic (it times the schedule and lateness);
    ``wall_clock`` stamps results; ``sleep`` waits on ``clock``'s time scale. Both
    are injectable so tests run hours of schedule in milliseconds.
    ``on_result`` is called with every finished run; an exception from it is
    logged and the scheduler carries on.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        concurrency: int = 64,
        on_result: Callable[[ProbeRun], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        timeout_margin: float = TIMEOUT_MARGIN,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._on_result = on_result
        self._margin = timeout_margin
        self._slots = asyncio.Semaphore(concurrency)
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._stale = 0
        """Heap items left behind by remove() or a re-plan; skipped when popped, dropped when they pile up."""
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._wake_at = math.inf
        self._group: asyncio.TaskGroup | None = None

    # ----------------------------------------------------------------- definitions

    def add(
        self,
        key: str,
        probe: Probe,
        *,
        spec: ProbeSpec,
        target: str,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Schedule ``probe`` against ``target`` under ``key`` (stable across restarts: it sets the phase).

        ``labels`` add to (and override) ``spec.labels``; ``probe``, ``kind``
        and ``target`` are always the probe's own. The first run is at the
        key's next slot. A key already scheduled is a ConflictError: remove it first.
        """
        if key in self._entries:
            raise ConflictError(f"probe key {key!r} is already scheduled; remove it first")
        merged = {
            **spec.labels,
            **(labels or {}),
            "probe": probe.name,
            "kind": probe.kind,
            "target": public_target(target),
        }
        entry = _Entry(key, probe, spec, target, MappingProxyType(merged))
        self._entries[key] = entry
        self._push(entry, next_slot(phase=entry.phase, interval=entry.interval(), after=self._clock()))

    def remove(self, key: str) -> None:
        """Stop scheduling ``key``; a run in flight is cancelled and never reported."""
        entry = self._entries.pop(key, None)
        if entry is None:
            raise NotFoundError(f"no probe is scheduled under key {key!r}")
        if entry.token is not None:
            entry.token = None
            self._forget_item()
        if entry.task is not None:
            entry.task.cancel()

    def state(self, key: str) -> FailingState:
        """The failing state ``key``'s runs have left so far."""
        try:
            return self._entries[key].state
        except KeyError:
            raise NotFoundError(f"no probe is scheduled under key {key!r}") from None

    def next_run(self, key: str) -> float | None:
        """When ``key`` is next due on the scheduler's clock; ``None`` while it is running."""
        try:
            entry = self._entries[key]
        except KeyError:
            raise NotFoundError(f"no probe is scheduled under key {key!r}") from None
        return None if entry.token is None else entry.due

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> Iterator[str]:
        return iter(list(self._entries))

    # ----------------------------------------------------------------- the loop

    async def run(self) -> None:
        """Run every added probe on schedule until cancelled; runs in flight are cancelled with it."""
        if self._group is not None:
            raise ConflictError("the probe scheduler is already running")
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._skip_missed(self._clock())
                group.create_task(self._timer(), name="probe-scheduler:timer")
        finally:
            self._group = None

    def _skip_missed(self, now: float) -> None:
        """Slots that passed while the scheduler was not running are skipped, not all fired at once."""
        for entry in self._entries.values():
            if entry.token is not None and entry.due < now:
                self._push(entry, next_slot(phase=entry.phase, interval=entry.interval(), after=now))

    async def _timer(self) -> None:
        """Start everything due, then sleep until the earliest due time or until an earlier one is added."""
        while True:
            now = self._clock()
            self._start_due(now)
            delay = self._heap[0][0] - now if self._heap else None
            await self._pause(delay)

    def _start_due(self, now: float) -> None:
        assert self._group is not None
        while self._heap and self._heap[0][0] <= now:
            due, seq, entry = heapq.heappop(self._heap)
            if seq != entry.token:
                self._stale = max(0, self._stale - 1)
                continue  # removed, or superseded by a newer item
            entry.token = None
            entry.task = self._group.create_task(self._run_one(entry, due), name=f"probe:{entry.key}")

    async def _pause(self, delay: float | None) -> None:
        self._wake.clear()
        self._wake_at = math.inf if delay is None else self._clock() + delay
        waker = asyncio.create_task(self._wake.wait(), name="probe-scheduler:wake")
        waits: set[asyncio.Future[Any]] = {waker}
        if delay is not None:
            waits.add(asyncio.ensure_future(self._sleep(delay)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _push(self, entry: _Entry, due: float) -> None:
        if entry.token is not None:
            entry.token = None
            self._forget_item()
        seq = next(self._seq)
        entry.token = seq
        entry.due = due
        heapq.heappush(self._heap, (due, seq, entry))
        if due < self._wake_at:
            self._wake.set()

    def _forget_item(self) -> None:
        """Count one more stale heap item; rebuild the heap when they outnumber the live ones."""
        self._stale += 1
        if self._stale > 64 and self._stale * 2 > len(self._heap):
            self._heap = [item for item in self._heap if item[1] == item[2].token]
            heapq.heapify(self._heap)
            self._stale = 0

    # ----------------------------------------------------------------- one run

    async def _run_one(self, entry: _Entry, scheduled_at: float) -> None:
        try:
            async with self._slots:
                started = self._clock()
                result = await self._guarded(entry, started)
            finished = self._clock()
        except asyncio.CancelledError:
            if self._entries.get(entry.key) is entry:  # the scheduler stopped, not remove(): keep the slot
                self._push(entry, next_slot(phase=entry.phase, interval=entry.interval(), after=self._clock()))
            raise
        finally:
            entry.task = None
        if self._entries.get(entry.key) is not entry:
            return  # removed while finishing
        before = entry.state
        entry.state = before.update(result.success, entry.spec.failing)
        interval = entry.interval()
        self._push(entry, next_slot(phase=entry.phase, interval=interval, after=max(finished, scheduled_at)))
        if entry.state.failing != before.failing:
            self._log_transition(entry, result)
        self._report(
            ProbeRun(
                key=entry.key,
                result=result,
                scheduled_at=scheduled_at,
                started_at=started,
                lateness=started - scheduled_at,
                state=entry.state,
                labels=entry.labels,
                interval=interval,
                completed_at=self._wall_clock(),
            )
        )

    async def _guarded(self, entry: _Entry, started: float) -> ProbeResult:
        """The probe's own result; a timeout or internal-error result when it overstays or raises."""
        limit = float(entry.spec.timeout) + self._margin
        wall = self._wall_clock()
        try:
            async with asyncio.timeout(limit):
                return await entry.probe.run(entry.target)
        except TimeoutError:
            message = f"no result within {limit:g}s (timeout {float(entry.spec.timeout):g}s)"
            return self._failure(entry, Reason.TIMEOUT, message, wall=wall, started=started)
        except Exception as exc:  # a probe must never raise; report the defect, never a pass
            log.error("probe %s raised %s on %s", entry.key, type(exc).__name__, entry.labels["target"])
            log.debug("probe %s traceback", entry.key, exc_info=True)
            message = f"the probe raised {type(exc).__name__} (a defect in vouch)"
            return self._failure(entry, Reason.INTERNAL, message, wall=wall, started=started)

    def _failure(self, entry: _Entry, reason: Reason, message: str, *, wall: float, started: float) -> ProbeResult:
        return ProbeResult(
            probe=entry.probe.name,
            kind=entry.probe.kind,
            target=entry.labels["target"],
            success=False,
            started_at=wall,
            duration=self._clock() - started,
            reason=reason,
            message=message,
        )

    def _report(self, run: ProbeRun) -> None:
        if self._on_result is None:
            return
        try:
            self._on_result(run)
        except Exception:
            log.exception("the probe result handler failed for %s; carrying on", run.key)

    @staticmethod
    def _log_transition(entry: _Entry, result: ProbeResult) -> None:
        target = entry.labels["target"]
        if entry.state.failing:
            reason = result.reason.value if result.reason else "failed"
            log.warning("probe %s is failing on %s: %s", entry.probe.name, target, reason)
        else:
            log.info("probe %s recovered on %s", entry.probe.name, target)
