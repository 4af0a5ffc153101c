"""One active promotion per service and environment, across every daemon writing to the cluster.

Each target (service, environment) has a lock ConfigMap naming the promotion
that holds it. An active promotion is only written after its lock names it:
the lock is created with ``create`` (the API server lets exactly one writer
create a name) or taken over with a patch naming the resourceVersion read (so
of two writers taking over the same free lock, one is refused). A promotion
that ends clears the lock the same way; the lock object stays, emptied.

A lock is free when it names nobody, a finished promotion, or a promotion that
does not exist. The last case is a writer that claimed the lock and then died
before writing its promotion — or one that is about to write it. To tell them
apart safely, the taker first writes a *tombstone* under that promotion's name:
if the tombstone is created, the late writer's create is refused for good and
the lock can be taken; if the promotion appears first, the lock is not free.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from vouch.core.errors import ConflictError, StoreError
from vouch.daemon.store.kube_objects import ConfigMaps, KubeObject, ObjectChanged, ObjectExists, ObjectMissing
from vouch.rollout.state import Promotion

_ATTEMPTS = 20
HOLDER = "promotion"


class Holder(Enum):
    """What the promotion a lock names has become."""

    ACTIVE = "active"
    FINISHED = "finished"
    MISSING = "missing"
    BURIED = "buried"
    """A tombstone stands in its place: it can never be written."""


@dataclass(frozen=True)
class HolderState:
    holder: Holder
    promotion: Promotion | None = None


class TargetLocks:
    """Claims and clears the per-target locks described above."""

    def __init__(
        self,
        objects: ConfigMaps,
        *,
        lock_name: Callable[[Promotion], str],
        labels: Callable[[Promotion], dict[str, str]],
        inspect: Callable[[str], Awaitable[HolderState]],
        bury: Callable[[str], Awaitable[None]],
        where: str,
    ) -> None:
        """``inspect(id)`` says what a holder has become; ``bury(id)`` creates its tombstone (``ObjectExists``
        when the promotion, or a tombstone, is there already)."""
        self._objects = objects
        self._lock_name = lock_name
        self._labels = labels
        self._inspect = inspect
        self._bury = bury
        self._where = where

    async def claim(self, promotion: Promotion) -> bool:
        """Make the lock of ``promotion``'s target name it; ``True`` if it did not already.

        Raises ``ConflictError`` naming the active promotion that holds it.
        """
        name = self._lock_name(promotion)
        for _ in range(_ATTEMPTS):
            lock = await self._objects.get(name)
            if lock is None:
                try:
                    await self._objects.create(name, labels=self._labels(promotion), data={HOLDER: promotion.id})
                except ObjectExists:
                    continue
                return True
            holder = lock.data.get(HOLDER, "")
            if holder == promotion.id:
                return False
            if holder and not await self._free(promotion, holder):
                continue
            if await self._take(lock, promotion.id):
                return True
        raise StoreError(f"state store {self._where}: too much contention on the lock of {promotion.target}")

    async def release(self, promotion: Promotion) -> None:
        """Clear the lock of ``promotion``'s target if it still names ``promotion``."""
        name = self._lock_name(promotion)
        for _ in range(_ATTEMPTS):
            lock = await self._objects.get(name)
            if lock is None or lock.data.get(HOLDER, "") != promotion.id:
                return
            if await self._take(lock, ""):
                return
        raise StoreError(f"state store {self._where}: too much contention on the lock of {promotion.target}")

    async def _free(self, promotion: Promotion, holder: str) -> bool:
        """Whether the lock held by ``holder`` may be taken; ``False`` means look again."""
        state = await self._inspect(holder)
        if state.holder is Holder.ACTIVE:
            other = state.promotion
            assert other is not None
            raise ConflictError(
                f"{promotion.target} already has an active promotion {other.id} of {other.version}"
                f" ({other.phase.value}); abort it or wait for it to finish"
            )
        if state.holder is Holder.MISSING:
            try:
                await self._bury(holder)
            except ObjectExists:
                return False  # it was written after all: look again
        return True

    async def _take(self, lock: KubeObject, holder: str) -> bool:
        try:
            await self._objects.patch(lock.name, data={HOLDER: holder}, version=lock.version)
        except (ObjectChanged, ObjectMissing):
            return False
        return True
