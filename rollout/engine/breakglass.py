"""The shell around break-glass overrides: find one for a failure, consume it in the store, say so.

The decision which override applies is pure (:func:`vouch.rollout.overrides.match_override`);
this module does the I/O: it reads the unused overrides of the promotion's service and
environment, consumes the matching one atomically in the store and only then lets the failure
pass. If the store refuses (another daemon used it first, or the store is down) the failure
stands: fail closed.

    shell = OverrideShell(store, on_event=hooks.on_event, clock=time.time)
    verdicts = await shell.apply(promotion, verdicts)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vouch.core.errors import ConflictError, NotFoundError, StoreError
from vouch.rollout.model import GatePhase, Verdict
from vouch.rollout.overrides import Override, match_override, overridden_verdict
from vouch.rollout.state import Event, Promotion, Store

log = logging.getLogger(__name__)


class OverrideShell:
    """Uses break-glass overrides for one daemon; safe to share between promotions."""

    def __init__(
        self, store: Store, *, on_event: Callable[[Event], None], clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._on_event = on_event
        self._clock = clock

    async def use(self, promotion: Promotion, gate: str, overridden: Mapping[str, Any]) -> Override | None:
        """Consume the override that lets ``gate``'s failure pass once here; ``None`` when there is none.

        ``overridden`` (the failing verdict, or the alert) is stored with the override.
        """
        now = self._clock()
        try:
            found = await self._store.list_overrides(
                service=promotion.service, environment=promotion.environment, used=False
            )
        except StoreError as exc:
            log.error("%s: cannot read break-glass overrides, %s failure stands: %s", promotion.target, gate, exc)
            return None
        candidate = match_override(
            found,
            service=promotion.service,
            environment=promotion.environment,
            gate=gate,
            version=promotion.version,
            now=now,
        )
        if candidate is None:
            return None
        try:
            used = await self._store.consume_override(
                candidate.id, promotion_id=promotion.id, at=now, overridden=dict(overridden)
            )
        except (ConflictError, NotFoundError, StoreError) as exc:
            log.warning("%s: override %s not used, %s failure stands: %s", promotion.target, candidate.id, gate, exc)
            return None
        await self._announce(promotion, used, now)
        return used

    async def apply(self, promotion: Promotion, verdicts: Sequence[Verdict]) -> tuple[Verdict, ...]:
        """The verdicts as they count: each failure an override was consumed for becomes a pass, once."""
        out = []
        for verdict in verdicts:
            override = None
            if verdict.phase is GatePhase.FAIL:
                override = await self.use(promotion, verdict.gate, verdict.to_dict())
            out.append(overridden_verdict(verdict, override) if override is not None else verdict)
        return tuple(out)

    async def _announce(self, promotion: Promotion, override: Override, now: float) -> None:
        message = (
            f"break-glass: {override.actor or 'someone'} overrode gate {override.gate} of {promotion.service} "
            f"{promotion.version} in {promotion.environment} ({override.id}): {override.reason}"
        )
        data = {
            "override": override.to_dict(),
            "service": promotion.service,
            "environment": promotion.environment,
            "version": promotion.version,
            "gate": override.gate,
            "actor": override.actor,
        }
        event = Event("override.used", message, now, promotion.id, promotion.release_id, data)
        log.warning("%s", message)
        try:
            event = await self._store.add_event(event)
        except StoreError as exc:
            log.error("could not record %s: %s", event.kind, exc)
        self._on_event(event)
