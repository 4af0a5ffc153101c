"""Keyed entries in ConfigMaps (events, alerts, steps, verdicts) and the store's sequence counter.

A bucket is one ConfigMap whose data keys are entries: an event is key
``e000000000042``, a step ``s000003``. Adding or replacing entries is one
merge patch of just those keys, which the API server applies atomically to
whatever is current — so two writers appending to the same bucket never lose
each other's entries and need no read-modify-write.

A ConfigMap holds at most 1 MiB. Each bucket therefore keeps at most
``max_entries`` entries and ``max_bytes`` bytes of data: the same patch that
adds new entries removes the oldest ones (keys sort by age) beyond either cap.
What a bucket holds is learnt from one read the first time this process writes
to it, then kept up to date from its own writes (a bounded cache); entries another
writer added meanwhile are counted at the next read, so the byte cap keeps a margin
below the hard limit.

The sequence counter is a ConfigMap holding the next number; taking numbers is a
patch naming the resourceVersion read (optimistic concurrency), retried on conflict.
Event and alert ids and the creation order of records come from it, so they grow
across every writer.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping

from vouch.core.errors import StoreError
from vouch.daemon.store.kube_objects import ConfigMaps, KubeObject, ObjectChanged, ObjectExists, ObjectMissing

log = logging.getLogger(__name__)

_CACHED_BUCKETS = 256
_SEQUENCE_KEY = "next"
_TAKEN_BY = "taken-by"
_SEQUENCE_ATTEMPTS = 50


class Buckets:
    """Upserts and reads keyed entries; trims the oldest beyond the caps."""

    def __init__(self, objects: ConfigMaps, *, max_bytes: int) -> None:
        self._objects = objects
        self._max_bytes = max_bytes
        self._sizes: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._absent: set[str] = set()
        """Cached buckets that did not exist when last read: the first write creates them straight away."""

    async def upsert(
        self,
        name: str,
        entries: Mapping[str, str],
        *,
        labels: Mapping[str, str],
        max_entries: int | None = None,
        before_create: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Write ``entries`` into bucket ``name``, creating it (with ``labels``) if needed.

        ``before_create`` runs before the bucket is created and may refuse (raise),
        e.g. when the promotion the bucket belongs to does not exist.
        """
        sizes = await self._known(name)
        patch: dict[str, str | None] = dict(entries)
        for key in self._overflow(name, sizes, entries, max_entries):
            patch[key] = None
        try:
            if name in self._absent:
                raise ObjectMissing(name)
            await self._objects.patch(name, data=patch)
        except ObjectMissing:
            if before_create is not None:
                await before_create()
            try:
                await self._objects.create(name, labels=labels, data=entries)
            except ObjectExists:
                await self._objects.patch(name, data=patch)
        self._absent.discard(name)
        for key, value in patch.items():
            if value is None:
                sizes.pop(key, None)
            else:
                sizes[key] = _size(key, value)

    async def read(self, name: str) -> Mapping[str, str]:
        """The entries of bucket ``name`` (empty when it does not exist)."""
        found = await self._objects.get(name)
        self._remember(name, found)
        return found.data if found is not None else {}

    async def read_all(self, labels: Mapping[str, str]) -> list[KubeObject]:
        """Every bucket carrying ``labels``."""
        return await self._objects.list(labels)

    async def _known(self, name: str) -> dict[str, int]:
        sizes = self._sizes.get(name)
        if sizes is None:
            await self.read(name)
            sizes = self._sizes[name]
        self._sizes.move_to_end(name)
        return sizes

    def _remember(self, name: str, found: KubeObject | None) -> None:
        data = found.data if found is not None else {}
        self._sizes[name] = {key: _size(key, value) for key, value in data.items()}
        self._sizes.move_to_end(name)
        if found is None:
            self._absent.add(name)
        else:
            self._absent.discard(name)
        while len(self._sizes) > _CACHED_BUCKETS:
            forgotten, _ = self._sizes.popitem(last=False)
            self._absent.discard(forgotten)

    def _overflow(
        self, name: str, sizes: Mapping[str, int], entries: Mapping[str, str], max_entries: int | None
    ) -> list[str]:
        """The oldest keys to remove so that the bucket stays within both caps after adding ``entries``."""
        after = {**sizes, **{key: _size(key, value) for key, value in entries.items()}}
        total = sum(after.values())
        count = len(after)
        dropped: list[str] = []
        for key in sorted(after):
            over_count = max_entries is not None and count > max_entries
            if not over_count and total <= self._max_bytes:
                break
            if key in entries:
                continue
            dropped.append(key)
            total -= after[key]
            count -= 1
        if total > self._max_bytes:
            raise StoreError(
                f"cannot write {sorted(entries)} to {name}: {total} bytes would exceed the"
                f" {self._max_bytes}-byte budget of one ConfigMap even after trimming older entries"
            )
        if dropped:
            log.info("bucket %s is full: dropping its %d oldest entries", name, len(dropped))
        return dropped


class Sequence:
    """Hands out increasing numbers shared by every writer, from one counter ConfigMap."""

    def __init__(self, objects: ConfigMaps, *, name: str, labels: Mapping[str, str], where: str) -> None:
        self._objects = objects
        self._name = name
        self._labels = dict(labels)
        self._where = where
        self._last: KubeObject | None = None

    async def take(self, count: int = 1) -> int:
        """Reserve ``count`` numbers and return the first; numbers start at 1 and are never handed out twice."""
        for _ in range(_SEQUENCE_ATTEMPTS):
            current = self._last or await self._objects.get(self._name)
            # A unique mark: a retried write whose answer was lost can tell its own success from another's.
            mark = uuid.uuid4().hex
            if current is None:
                try:
                    self._last = await self._objects.create(
                        self._name, labels=self._labels, data={_SEQUENCE_KEY: str(count + 1), _TAKEN_BY: mark}
                    )
                except ObjectExists:
                    continue
                return 1
            first = _number(current, self._where)
            try:
                self._last = await self._objects.patch(
                    self._name, data={_SEQUENCE_KEY: str(first + count), _TAKEN_BY: mark}, version=current.version
                )
            except (ObjectChanged, ObjectMissing):
                self._last = None
                continue
            return first
        raise StoreError(f"state store {self._where}: too much contention on {self._name}; try again")


def _number(counter: KubeObject, where: str) -> int:
    try:
        value = int(counter.data[_SEQUENCE_KEY])
    except (KeyError, ValueError) as exc:
        raise StoreError(f"the sequence counter {counter.name} in state store {where} is unreadable") from exc
    if value < 1:
        raise StoreError(f"the sequence counter {counter.name} in state store {where} is unreadable")
    return value


def _size(key: str, value: str) -> int:
    return len(key) + len(value.encode())
