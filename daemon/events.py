"""Events raised outside the engine (probes failing, probe series going stale), written to the store in order.

Callbacks that notice such things are synchronous and must not block; they
hand events to an :class:`EventSink`, whose single task writes them to the
store one by one. A store failure is logged and the event dropped: these
events inform people, they never decide anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from vouch.core.errors import StoreError
from vouch.rollout.state import Event, Store

log = logging.getLogger(__name__)


class EventSink:
    """A queue of events and the task that stores them."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[Event], None] = lambda event: None,
    ) -> None:
        """``on_event`` hears of each event once it is stored (the audit log, the notifiers)."""
        self._store = store
        self._clock = clock
        self._on_event = on_event
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, kind: str, message: str, data: Mapping[str, Any] | None = None) -> None:
        """Queue an event; never blocks, never raises."""
        self._queue.put_nowait(Event(kind, message, self._clock(), data=dict(data or {})))

    async def run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                event = await self._store.add_event(event)
            except StoreError as exc:
                log.error("could not record event %s (%s): %s", event.kind, event.message, exc)
            self._on_event(event)
