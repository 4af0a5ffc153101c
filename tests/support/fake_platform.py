"""An in-memory Platform for engine tests: instant (or counted) readiness, scripted failures, held calls.

It keeps one record per target (stable and canary versions, desired and ready
replicas) and follows the Platform contract's effects exactly, so the engine's
readiness checks see what a real platform would report. Every call is recorded
in order before anything else happens, so tests can assert what was asked and
when. Failures are scripted per method; a method can be *held* on an
:class:`asyncio.Event` so a test can act (abort, cancel) while the call is in flight.

    platform = FakePlatform()
    platform.deploy(Target("shop", "staging"), "v1", replicas=4)
    platform.fail("scale", PlatformUnavailable("api down"), times=2)
    release = platform.hold("scale")   # scale() now waits until release.set()
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from vouch.core.errors import PlatformError
from vouch.rollout.model import Endpoint, Observed, Target


@dataclass(frozen=True)
class PlatformCall:
    """One call as the engine made it."""

    method: str
    target: Target
    args: tuple[Any, ...] = ()
    at: float = 0.0
    """The event loop's clock when the call was made."""


@dataclass
class _State:
    replicas: int
    stable_version: str | None
    stable_desired: int
    canary_version: str | None = None
    canary_desired: int = 0
    stable_ready: int = 0
    canary_ready: int = 0
    unready_observes: int = 0
    """Observe calls left before the desired replicas count as ready."""


@dataclass
class _Failure:
    error: PlatformError
    times: int | None
    """Calls left to fail; ``None`` fails every call."""


@dataclass
class FakePlatform:
    """Implements the Platform protocol in memory; see the module docstring."""

    ready_after: int = 0
    """Observe calls (per target) that still report the old readiness after each change."""
    calls: list[PlatformCall] = field(default_factory=list)
    cancelled: list[PlatformCall] = field(default_factory=list)
    """Held calls that ended because their caller was cancelled."""
    _targets: dict[Target, _State] = field(default_factory=dict)
    _failures: dict[tuple[str, Target | None], deque[_Failure]] = field(default_factory=lambda: defaultdict(deque))
    _holds: dict[str, asyncio.Event] = field(default_factory=dict)
    _entered: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))

    # ----------------------------------------------------------------- test controls

    def deploy(self, target: Target, version: str | None, *, replicas: int) -> None:
        """Make ``version`` the ready stable version of ``target`` (``None``: nothing deployed yet)."""
        stable = replicas if version is not None else 0
        self._targets[target] = _State(replicas, version, stable, stable_ready=stable)

    def fail(self, method: str, error: PlatformError, *, times: int | None = 1, target: Target | None = None) -> None:
        """The next ``times`` calls (``None``: every call) of ``method`` on ``target`` (or any) raise ``error``.

        Failing calls are recorded like any other. Scripted failures apply in the order given.
        """
        self._failures[method, target].append(_Failure(error, times))

    def hold(self, method: str) -> asyncio.Event:
        """Calls of ``method`` wait until the returned event is set."""
        self._holds[method] = asyncio.Event()
        return self._holds[method]

    def entered(self, method: str) -> asyncio.Event:
        """Set once a call of ``method`` has started."""
        return self._entered[method]

    def calls_of(self, method: str, target: Target | None = None) -> list[PlatformCall]:
        return [c for c in self.calls if c.method == method and (target is None or c.target == target)]

    def methods(self, target: Target | None = None, *, observe: bool = False) -> list[str]:
        """The methods called in order, without ``observe`` unless asked."""
        return [
            c.method
            for c in self.calls
            if (observe or c.method != "observe") and (target is None or c.target == target)
        ]

    def state(self, target: Target) -> Observed:
        """What ``observe`` would report now, without counting as a call."""
        s = self._targets[target]
        return Observed(
            s.stable_version, s.canary_version, s.stable_desired, s.stable_ready, s.canary_desired, s.canary_ready
        )

    # ----------------------------------------------------------------- the Platform protocol

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def address(self, target: Target) -> Endpoint:
        return Endpoint("127.0.0.1", 8000 + sum(map(ord, str(target))) % 1000)

    async def observe(self, target: Target) -> Observed:
        s = await self._enter(PlatformCall("observe", target))
        if s.unready_observes > 0:
            s.unready_observes -= 1
        else:
            s.stable_ready, s.canary_ready = s.stable_desired, s.canary_desired
        return self.state(target)

    async def scale(self, target: Target, *, stable_replicas: int, canary_version: str, canary_replicas: int) -> None:
        s = await self._enter(PlatformCall("scale", target, (stable_replicas, canary_version, canary_replicas)))
        if s.canary_version != canary_version:
            s.canary_ready = 0
        s.stable_desired, s.canary_version, s.canary_desired = stable_replicas, canary_version, canary_replicas
        self._changed(s)

    async def promote(self, target: Target, version: str) -> None:
        s = await self._enter(PlatformCall("promote", target, (version,)))
        s.stable_version, s.stable_desired, s.canary_version, s.canary_desired = version, s.replicas, None, 0
        s.canary_ready = 0
        self._changed(s)

    async def rollback(self, target: Target) -> None:
        s = await self._enter(PlatformCall("rollback", target))
        s.canary_version, s.canary_desired, s.canary_ready = None, 0, 0
        s.stable_desired = s.replicas if s.stable_version is not None else 0
        self._changed(s)

    # ----------------------------------------------------------------- internals

    async def _enter(self, call: PlatformCall) -> _State:
        """Record ``call``, wait while it is held, raise a scripted failure, return the target's state.

        Every call yields to the event loop once, as any real platform's I/O would.
        """
        call = dataclasses.replace(call, at=asyncio.get_running_loop().time())
        self.calls.append(call)
        self._entered[call.method].set()
        hold = self._holds.get(call.method)
        if hold is not None:
            try:
                await hold.wait()
            except asyncio.CancelledError:
                self.cancelled.append(call)
                raise
        await asyncio.sleep(0)
        for key in ((call.method, call.target), (call.method, None)):
            if self._failures[key]:
                failure = self._failures[key][0]
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures[key].popleft()
                raise failure.error
        try:
            return self._targets[call.target]
        except KeyError:
            raise PlatformError(f"unknown target {call.target}; known: {sorted(map(str, self._targets))}") from None

    def _changed(self, s: _State) -> None:
        s.unready_observes = self.ready_after
        if self.ready_after == 0:
            s.stable_ready, s.canary_ready = s.stable_desired, s.canary_desired
