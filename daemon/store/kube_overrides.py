"""Break-glass overrides in the Kubernetes store: one ConfigMap each, used at most once across every daemon.

An override is ``<prefix>-override-<id>``, labelled with its service,
environment, gate and whether it was used, its document under ``document``.
Granting one is a create: the API server lets one writer create a name, and a
grant repeated (the overrides folder is read again after a restart) finds it
taken and answers what is kept, its use included.

Consuming one is a compare-and-swap: read it, refuse if it is used, else patch
it as used naming the resourceVersion read. The API server applies that patch
only if nobody wrote the object since; a refused patch (409) reads it again and
decides on what the other writer left, which is a used override when that
writer consumed it. So of any number of daemons consuming the same override,
exactly one succeeds and the others are told who used it and when.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from vouch.core.errors import StoreError
from vouch.daemon.store import kube_records as rec
from vouch.daemon.store.documents import already_used, consumed, grant_order, matches, override_not_found
from vouch.daemon.store.kube_objects import (
    LABEL_PREFIX,
    ConfigMaps,
    KubeObject,
    ObjectChanged,
    ObjectExists,
    ObjectMissing,
)
from vouch.rollout.overrides import Override

RECORD = "override"
DOCUMENT = "document"
_ATTEMPTS = 20
"""Compare-and-swap rounds before giving up; each lost round means another writer changed the override."""


class Overrides:
    """Grants, lists and consumes overrides kept as ConfigMaps (see the module docstring)."""

    def __init__(
        self,
        objects: ConfigMaps,
        *,
        name: Callable[[str], str],
        labels: Callable[..., dict[str, str]],
        where: str,
    ) -> None:
        """``name(id)`` is an override's ConfigMap name; ``labels(record, **values)`` the store's labels."""
        self._objects = objects
        self._name = name
        self._labels = labels
        self._where = where

    async def add(self, override: Override) -> Override:
        """Create it; when its id is taken, answer the override kept under it, unchanged."""
        document = rec.dumps(override.to_dict(), f"override {override.id}")
        name = self._name(override.id)
        try:
            await self._objects.create(name, labels=self._labels_of(override), data={DOCUMENT: document})
        except ObjectExists:
            kept = await self._objects.get(name)
            if kept is None:
                raise StoreError(
                    f"state store {self._where}: override {override.id} was there and then was not; try again"
                ) from None
            return self._decode(override.id, kept)
        return self._read(override.id, document)

    async def list(self, *, service: str | None, environment: str | None, used: bool | None) -> list[Override]:
        """The overrides passing every filter given, the oldest grant first."""
        found = await self._objects.list(self._labels(RECORD, service=service, environment=environment, used=used))
        decoded = [self._decode(obj.name, obj) for obj in found]
        kept = [o for o in decoded if matches(o, service=service, environment=environment, used=used)]
        return sorted(kept, key=grant_order)

    async def consume(
        self, override_id: str, *, promotion_id: str, at: float, overridden: Mapping[str, Any]
    ) -> Override:
        """Mark it used by ``promotion_id``, or raise ``ConflictError`` naming whoever did first."""
        rec.dumps(dict(overridden), f"the verdict overridden by {override_id}")  # refuse non-JSON before writing
        name = self._name(override_id)
        for _ in range(_ATTEMPTS):
            found = await self._objects.get(name)
            if found is None or found.labels.get(f"{LABEL_PREFIX}record") != RECORD:
                raise override_not_found(override_id)
            current = self._decode(override_id, found)
            if current.used:
                raise already_used(current)
            if found.version is None:
                # Without a resourceVersion nothing stops a second consumer: refuse rather than risk it.
                raise StoreError(
                    f"state store {self._where}: override {override_id} has no resourceVersion;"
                    " cannot mark it used atomically"
                )
            used = consumed(current, promotion_id=promotion_id, at=at, overridden=overridden)
            data = {DOCUMENT: rec.dumps(used.to_dict(), f"override {override_id}")}
            try:
                await self._objects.patch(name, data=data, labels=self._labels_of(used), version=found.version)
            except ObjectChanged:
                continue  # another writer got there first: read again and judge what it left
            except ObjectMissing:
                raise override_not_found(override_id) from None
            return used
        raise StoreError(f"state store {self._where}: too much contention on override {override_id}; try again")

    def _labels_of(self, override: Override) -> dict[str, str]:
        return self._labels(
            RECORD,
            service=override.service,
            environment=override.environment,
            gate=override.gate,
            used=override.used,
        )

    def _decode(self, what: str, obj: KubeObject) -> Override:
        return self._read(what, obj.data.get(DOCUMENT, ""))

    def _read(self, what: str, document: str) -> Override:
        return rec.decode(f"override {what}", self._where, document, lambda text: Override.from_dict(json.loads(text)))
