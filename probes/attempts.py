"""One run of a probe: attempts until one succeeds, retries run out or the run's timeout strikes.

Every kind runs its attempts here, so every kind follows the same rules:

- a failure another attempt cannot cure (``config_error``, ``internal_error``)
  is not retried;
- a retry starts only if its delay still fits before the deadline, so a run
  that keeps failing fast reports its own reason rather than ``timeout``;
- the timeout is a ``timeout`` failure naming the phase it interrupted (and
  what the attempt was waiting for, and how the attempt before it failed),
  with the phases measured so far;
- an unexpected exception is a defect: logged with its traceback and reported
  as ``internal_error``, never raised and never a pass.

Each attempt fills in a fresh record (:class:`Timings`, or a kind's subclass
of it) as it goes, so what it measured survives a timeout that cancels it.

Example (what the ``http`` probe does)::

    run = await attempt_within(                          # a fresh Timings per attempt
        lambda timings: attempt(target, timings),        # returns (value, failure) or raises ProbeFailure
        timeout=spec.timeout,
        retries=spec.retries,
        retry_delay=spec.retry_delay,
        label=f"http probe {spec.name} against {target}",
    )
    run.value, run.failure, run.attempts, run.phases, run.elapsed()

A kind with a record of its own passes its factory: ``run_within(attempt, fresh=Attempt, ...)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from vouch.core.durations import format_duration
from vouch.core.errors import ConfigError
from vouch.probes.base import PHASES, ProbeFailure, Reason

__all__ = ["AttemptFn", "Attempted", "Timings", "attempt_within", "defect", "run_within"]

_log = logging.getLogger(__name__)

_NOT_RETRIED = frozenset({Reason.CONFIG, Reason.INTERNAL})
"""Failures another attempt cannot cure."""


class Timings:
    """Seconds per phase of one attempt, owned by the runner so a timeout still reports what was measured.

    ``phases`` starts with the names given (all of :data:`~vouch.probes.base.PHASES`
    by default, zero until measured); a phase that repeats, as across
    redirects, adds up. ``current`` names the phase in progress (or the one
    that failed) and ``waiting_for`` what the attempt awaits, both for a
    timeout's message.
    """

    __slots__ = ("current", "phases", "waiting_for")

    def __init__(self, *, phases: Iterable[str] = PHASES) -> None:
        self.phases: dict[str, float] = dict.fromkeys(phases, 0.0)
        self.current: str | None = None
        self.waiting_for = ""

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name``; ``current`` keeps naming it when the block fails or is cancelled."""
        start, self.current = time.perf_counter(), name
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)
        self.current = None


T = TypeVar("T")
R = TypeVar("R", bound=Timings)

AttemptFn = Callable[[R], Awaitable[tuple[T | None, ProbeFailure | None]]]
"""One attempt: fills in the record it is given and returns ``(value, failure)`` (``failure`` is ``None``
on success; a value may come with a failure, such as an answer with the wrong status) or raises
:class:`ProbeFailure`."""


@dataclass(frozen=True)
class Attempted(Generic[T, R]):
    """How a run ended: the last attempt's value (if it got that far), the failure, the count and its record."""

    value: T | None
    failure: ProbeFailure | None
    attempts: int
    record: R
    """What the last attempt measured (the one a timeout interrupted, if it struck)."""
    started_at: float
    """Wall-clock time (epoch seconds) the run started."""
    began: float
    """``time.perf_counter()`` when the run started."""

    @property
    def phases(self) -> dict[str, float]:
        """The last attempt's phases, with those its failure carries."""
        if self.failure is None or not self.failure.phases:
            return dict(self.record.phases)
        return {**self.record.phases, **self.failure.phases}

    def elapsed(self) -> float:
        """Seconds since the run started: a result's ``duration`` when called as the result is made."""
        return time.perf_counter() - self.began


async def run_within(
    attempt: AttemptFn[R, T],
    *,
    fresh: Callable[[], R],
    timeout: float,
    retries: int,
    retry_delay: float,
    label: str = "probe",
) -> Attempted[T, R]:
    """Run ``attempt`` on a ``fresh()`` record until it succeeds or ``retries`` extra attempts failed,
    all within ``timeout`` seconds; never raises (see the module docstring). ``label`` names the run in
    the log line of a defect, e.g. ``"tcp probe smtp against mail.example:25"``."""
    loop = asyncio.get_running_loop()
    started_at, began = time.time(), time.perf_counter()
    deadline = loop.time() + timeout
    run: _Run[T, R] = _Run(fresh())
    scope = asyncio.timeout_at(deadline)
    try:
        async with scope:
            await run.loop(attempt, fresh, retries=retries, retry_delay=retry_delay, deadline=deadline)
    except TimeoutError as exc:
        if scope.expired():
            run.end(None, _timed_out(timeout, run.record, previous=run.failure))
        else:  # a library's own, shorter timeout
            run.end(None, ProbeFailure(Reason.TIMEOUT, f"timed out: {exc or 'no answer in time'}"))
    except ConfigError as exc:
        run.end(None, ProbeFailure(Reason.CONFIG, str(exc)))
    except Exception as exc:
        run.end(None, defect(exc, label))
    return Attempted(run.value, run.failure, max(run.attempts, 1), run.record, started_at, began)


async def attempt_within(
    attempt: AttemptFn[Timings, T], *, timeout: float, retries: int, retry_delay: float, label: str = "probe"
) -> Attempted[T, Timings]:
    """:func:`run_within` with a plain :class:`Timings` record per attempt."""
    return await run_within(
        attempt, fresh=Timings, timeout=timeout, retries=retries, retry_delay=retry_delay, label=label
    )


def defect(exc: Exception, label: str) -> ProbeFailure:
    """Log ``exc`` as a defect of the run ``label`` names, and the ``internal_error`` failure reporting it."""
    _log.error("%s failed unexpectedly: %s", label, type(exc).__name__, exc_info=exc)
    return ProbeFailure(Reason.INTERNAL, f"internal error in the probe ({type(exc).__name__}); see the daemon log")


class _Run(Generic[T, R]):
    """The run so far, kept outside the attempt loop so a timeout or a defect still reports it."""

    def __init__(self, record: R) -> None:
        self.record = record
        self.attempts = 0
        self.value: T | None = None
        self.failure: ProbeFailure | None = None

    def end(self, value: T | None, failure: ProbeFailure | None) -> None:
        self.value, self.failure = value, failure

    async def loop(
        self, attempt: AttemptFn[R, T], fresh: Callable[[], R], *, retries: int, retry_delay: float, deadline: float
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.attempts += 1
            self.record = fresh()
            try:
                self.end(*await attempt(self.record))
            except ProbeFailure as failure:
                self.end(None, failure)
            if self.failure is None or self.failure.reason in _NOT_RETRIED or self.attempts > retries:
                return
            if loop.time() + retry_delay >= deadline:
                return
            await asyncio.sleep(retry_delay)


def _timed_out(timeout: float, record: Timings, *, previous: ProbeFailure | None) -> ProbeFailure:
    where = f" during {record.current}" if record.current else ""
    waiting = f" ({record.waiting_for})" if record.waiting_for else ""
    earlier = f"; the attempt before failed: {previous.reason.value}: {previous.message}" if previous else ""
    return ProbeFailure(Reason.TIMEOUT, f"no result within {format_duration(timeout)}{where}{waiting}{earlier}")
