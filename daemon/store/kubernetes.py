"""The in-cluster state store: every promotion kept in ConfigMaps, so a new pod or a new leader continues it.

Layout, in one namespace, every object labelled ``app.kubernetes.io/managed-by: vouch``,
``vouch.dev/store: <prefix>`` and ``vouch.dev/record: <what>``:

================================  =========================================================
``<prefix>-promotion-<id>``       the promotion document; labels service, environment,
                                  release, active (for listing); resourceVersion-checked writes
``<prefix>-release-<id>``         the release document, the same way
``<prefix>-steps-<id>``           the promotion's steps, one key per step index
``<prefix>-verdicts-<id>``        its gate verdicts, one key per (step, run, gate)
``<prefix>-events-<hash>``        events of one (promotion, release) pair, one key per event id,
                                  at most ``max_events`` (the oldest are dropped beyond that)
``<prefix>-alerts``               received alerts, at most ``max_alerts``
``<prefix>-override-<id>``        a break-glass override; labels service, environment, gate,
                                  used; consumed by compare-and-swap (see ``kube_overrides``)
``<prefix>-chat-<hash>``          where a subject's chat message lives for one notifier
``<prefix>-lock-<svc>-<env>-<h>`` which promotion is the active one of a target (see ``kube_locks``)
``<prefix>-sequence``             the counter event ids, alert ids and creation order come from
================================  =========================================================

Saving a promotion or release names the resourceVersion this store last read or
wrote of it: if another writer changed it since, the API server refuses and the
save raises ``StoreError`` — the engine then reloads the promotion and carries on
from what is stored. Entries (steps, verdicts, events, alerts) are merge patches of
their own keys, which never overwrite another writer's. The API server answers a
write once it is committed to etcd, so every write is durable when its call returns.

Writes of one store run one at a time in the order they were called, like the
SQLite store's; reads run freely.

    store = await KubernetesStore.open(KubernetesStoreSpec(namespace="vouch"))
    try:
        await store.create_promotion(promotion)
    finally:
        await store.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field

from vouch.core.durations import Duration
from vouch.core.errors import ConflictError, InputError, NotFoundError, StoreError
from vouch.core.settings import Model
from vouch.daemon.store import kube_records as rec
from vouch.daemon.store.documents import chat_thread_dict, chat_thread_from_dict
from vouch.daemon.store.kube_buckets import Buckets, Sequence
from vouch.daemon.store.kube_locks import Holder, HolderState, TargetLocks
from vouch.daemon.store.kube_objects import (
    LABEL_PREFIX,
    MANAGED_BY,
    ApiSettings,
    ConfigMaps,
    KubeObject,
    ObjectChanged,
    ObjectExists,
    ObjectMissing,
    default_namespace,
    label_value,
    name_part,
)
from vouch.daemon.store.kube_overrides import Overrides
from vouch.rollout.overrides import Override
from vouch.rollout.platforms.kube.client import KubeApiError, connect
from vouch.rollout.state import AlertRecord, ChatThread, Event, Promotion, Release, StepRecord, VerdictRecord

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

T = TypeVar("T")

DOCUMENT = "document"
SEQ = "seq"
CHAT_THREAD = "chat-thread"


class KubernetesStoreSpec(Model):
    """Keeps the state in ConfigMaps of one namespace of the cluster vouch runs in (or a kubeconfig context)."""

    kind: Literal["kubernetes"] = "kubernetes"
    namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    """Namespace of the state; default ``$POD_NAMESPACE``, else the pod's own namespace, else ``default``."""
    context: str | None = None
    """A kubeconfig context; none means in-cluster inside a pod, else the current context."""
    kubeconfig: str | None = None
    """A kubeconfig file; default ``$KUBECONFIG`` or ``~/.kube/config`` (unused in-cluster)."""
    prefix: str = Field(default="vouch", pattern=r"^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$")
    """Start of every object's name, and the ``vouch.dev/store`` label: two daemons sharing it share state."""
    max_events: int = Field(default=1000, ge=10)
    """Events kept per promotion (and per release, and for events of neither); the oldest go first."""
    max_alerts: int = Field(default=1000, ge=10)
    """Received alerts kept; the oldest go first."""
    max_bytes: int = Field(default=800_000, ge=10_000, le=1_000_000)
    """Data budget of one ConfigMap, below the API server's 1 MiB limit with room for metadata."""
    request_timeout: Duration = 10.0
    """Longest one API request may take."""
    attempts: int = Field(default=4, ge=1)
    """Tries of a request that fails transiently (429, 5xx, timeout, lost connection)."""
    backoff: Duration = 0.2
    """Wait before the second try; doubles for each further one."""

    def resolved_namespace(self) -> str:
        return self.namespace or default_namespace()


class KubernetesStore:
    """The Kubernetes implementation of :class:`vouch.rollout.state.Store`.

    Build it with :meth:`open` (its own client) or directly with an ``ApiClient`` the caller owns.
    """

    def __init__(self, api: ApiClient, spec: KubernetesStoreSpec, *, owns_client: bool = False) -> None:
        self._api = api
        self._spec = spec
        self._owns_client = owns_client
        self._namespace = spec.resolved_namespace()
        self._where = f"kubernetes:{self._namespace}/{spec.prefix}"
        settings = ApiSettings(timeout=spec.request_timeout, attempts=spec.attempts, backoff=spec.backoff)
        self._objects = ConfigMaps(api, namespace=self._namespace, settings=settings, where=self._where)
        self._buckets = Buckets(self._objects, max_bytes=spec.max_bytes)
        self._sequence = Sequence(
            self._objects, name=f"{spec.prefix}-sequence", labels=self._labels("sequence"), where=self._where
        )
        self._locks = TargetLocks(
            self._objects,
            lock_name=lambda p: self._name("lock", f"{p.service}/{p.environment}"),
            labels=lambda p: self._labels("lock", service=p.service, environment=p.environment),
            inspect=self._inspect,
            bury=self._bury,
            where=self._where,
        )
        self._overrides = Overrides(
            self._objects, name=lambda key: self._name("override", key), labels=self._labels, where=self._where
        )
        self._versions: dict[str, str | None] = {}
        self._writes = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, spec: KubernetesStoreSpec) -> KubernetesStore:
        """Connect as ``spec`` says; raises ``StoreError`` when the Kubernetes configuration cannot be loaded."""
        try:
            api = await connect(context=spec.context, kubeconfig=spec.kubeconfig)
        except KubeApiError as exc:
            raise StoreError(f"cannot open the Kubernetes state store: {exc.message}") from exc
        return cls(api, spec, owns_client=True)

    @property
    def where(self) -> str:
        """``kubernetes:<namespace>/<prefix>``, as error messages name the store."""
        return self._where

    # releases

    async def create_release(self, release: Release) -> None:
        async with self._writing(f"create release {release.id}"):
            seq = await self._sequence.take()
            name = self._name("release", release.id)
            try:
                made = await self._objects.create(name, labels=self._release_labels(release), data=_doc(release, seq))
            except ObjectExists:
                raise ConflictError(f"release {release.id} already exists") from None
            self._versions[name] = made.version

    async def save_release(self, release: Release) -> None:
        async with self._writing(f"save release {release.id}"):
            name = self._name("release", release.id)
            try:
                await self._save(name, self._release_labels(release), release.to_dict())
            except ObjectMissing:
                raise NotFoundError(f"release {release.id} not found; create it before saving it") from None
            except ObjectChanged:
                raise self._changed(f"release {release.id}") from None

    async def get_release(self, release_id: str) -> Release:
        self._check_open(f"read release {release_id}")
        found = await self._get_document(self._name("release", release_id), "release")
        if found is None:
            raise NotFoundError(f"release {release_id} not found")
        return self._decode(f"release {release_id}", found, Release.from_dict)

    async def list_releases(
        self, *, service: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[Release]:
        self._check_open("list releases")
        _check_limit(limit)
        labels = self._labels("release", service=service, active=active)
        found = await self._list_documents(labels, Release.from_dict, "release")
        kept = [r for r in found if _matches(r, service=service, active=active)]
        return kept[:limit]

    # promotions

    async def create_promotion(self, promotion: Promotion) -> None:
        async with self._writing(f"create promotion {promotion.id}"):
            seq = await self._sequence.take()
            claimed = await self._locks.claim(promotion) if _active(promotion) else False
            name = self._name("promotion", promotion.id)
            try:
                made = await self._objects.create(
                    name, labels=self._promotion_labels(promotion), data=_doc(promotion, seq)
                )
            except ObjectExists:
                if claimed:
                    await self._locks.release(promotion)
                raise await self._exists(promotion) from None
            self._versions[name] = made.version

    async def save_promotion(self, promotion: Promotion) -> None:
        async with self._writing(f"save promotion {promotion.id}"):
            claimed = await self._locks.claim(promotion) if _active(promotion) else False
            name = self._name("promotion", promotion.id)
            try:
                await self._save(name, self._promotion_labels(promotion), promotion.to_dict())
            except (ObjectMissing, ObjectChanged) as exc:
                if claimed:
                    await self._locks.release(promotion)
                if isinstance(exc, ObjectChanged):
                    raise self._changed(f"promotion {promotion.id}") from None
                raise NotFoundError(f"promotion {promotion.id} not found; create it before saving it") from None
            if not _active(promotion):
                await self._locks.release(promotion)

    async def get_promotion(self, promotion_id: str) -> Promotion:
        self._check_open(f"read promotion {promotion_id}")
        found = await self._get_document(self._name("promotion", promotion_id), "promotion")
        if found is None:
            raise NotFoundError(f"promotion {promotion_id} not found")
        return self._decode(f"promotion {promotion_id}", found, Promotion.from_dict)

    async def list_promotions(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        active: bool | None = None,
        release_id: str | None = None,
        limit: int = 100,
    ) -> list[Promotion]:
        self._check_open("list promotions")
        _check_limit(limit)
        filters = {"service": service, "environment": environment, "active": active, "release_id": release_id}
        labels = self._labels("promotion", service=service, environment=environment, active=active, release=release_id)
        found = await self._list_documents(labels, Promotion.from_dict, "promotion")
        return [p for p in found if _matches(p, **filters)][:limit]

    # steps and verdicts

    async def save_step(self, step: StepRecord) -> None:
        async with self._writing(f"save step {step.index} of {step.promotion_id}"):
            await self._buckets.upsert(
                self._name("steps", step.promotion_id),
                {rec.step_key(step.index): rec.step_value(step)},
                labels=self._labels("steps", promotion=step.promotion_id),
                before_create=self._requires(step.promotion_id, f"step {step.index}"),
            )

    async def list_steps(self, promotion_id: str) -> list[StepRecord]:
        self._check_open(f"list steps of {promotion_id}")
        data = await self._buckets.read(self._name("steps", promotion_id))
        return [
            rec.decode(f"step {key} of {promotion_id}", self._where, value, rec.step_record)
            for key, value in rec.entries(data, "s")
        ]

    async def add_verdicts(self, records: list[VerdictRecord]) -> None:
        async with self._writing("add verdicts"):
            by_promotion: dict[str, list[VerdictRecord]] = {}
            for record in records:
                by_promotion.setdefault(record.promotion_id, []).append(record)
            for promotion_id, mine in by_promotion.items():
                await self._add_verdicts(promotion_id, mine)

    async def _add_verdicts(self, promotion_id: str, records: list[VerdictRecord]) -> None:
        name = self._name("verdicts", promotion_id)
        existing = await self._buckets.read(name)
        orders = {key: rec.decode("verdict", self._where, v, rec.verdict_order) for key, v in existing.items()}
        entries: dict[str, str] = {}
        for record in records:
            key = rec.verdict_key(record.step, record.run, record.verdict.gate)
            if key not in orders:
                orders[key] = max(orders.values(), default=0) + 1
            entries[key] = rec.verdict_value(record, orders[key])
        await self._buckets.upsert(
            name,
            entries,
            labels=self._labels("verdicts", promotion=promotion_id),
            before_create=self._requires(promotion_id, "verdicts"),
        )

    async def list_verdicts(self, promotion_id: str) -> list[VerdictRecord]:
        self._check_open(f"list verdicts of {promotion_id}")
        data = await self._buckets.read(self._name("verdicts", promotion_id))
        what = f"verdict of {promotion_id}"
        decoded = [rec.decode(what, self._where, value, rec.verdict_record) for _, value in rec.entries(data, "v")]
        return [record for _, record in sorted(decoded, key=lambda pair: pair[0])]

    # events and alerts

    async def add_event(self, event: Event) -> Event:
        value = rec.event_value(event)  # refuses data that is not JSON before anything is written
        async with self._writing(f"add event {event.kind}"):
            stored = dataclasses.replace(event, id=await self._sequence.take())
            value = rec.event_value(stored)
            pair = f"{event.promotion_id or ''}\n{event.release_id or ''}"
            await self._buckets.upsert(
                self._name("events", pair),
                {rec.event_key(stored.id or 0): value},
                labels=self._labels(
                    "events", promotion=event.promotion_id or "none", release=event.release_id or "none"
                ),
                max_entries=self._spec.max_events,
            )
        return stored

    async def list_events(
        self,
        *,
        promotion_id: str | None = None,
        release_id: str | None = None,
        after: int = 0,
        limit: int = 500,
    ) -> list[Event]:
        self._check_open("list events")
        _check_limit(limit)
        buckets = await self._buckets.read_all(self._labels("events", promotion=promotion_id, release=release_id))
        found: list[Event] = []
        for bucket in buckets:
            for key, value in rec.entries(bucket.data, "e"):
                found.append(rec.decode(f"event {key}", self._where, value, rec.event_record))
        kept = [
            e
            for e in found
            if (e.id or 0) > after
            and (promotion_id is None or e.promotion_id == promotion_id)
            and (release_id is None or e.release_id == release_id)
        ]
        return sorted(kept, key=lambda e: e.id or 0)[:limit]

    async def add_alert(self, alert: AlertRecord) -> AlertRecord:
        rec.alert_value(alert)
        async with self._writing(f"add alert {alert.fingerprint}"):
            stored = dataclasses.replace(alert, id=await self._sequence.take())
            await self._buckets.upsert(
                f"{self._spec.prefix}-alerts",
                {rec.alert_key(stored.id or 0): rec.alert_value(stored)},
                labels=self._labels("alerts"),
                max_entries=self._spec.max_alerts,
            )
        return stored

    async def list_alerts(self, *, limit: int = 100) -> list[AlertRecord]:
        self._check_open("list alerts")
        _check_limit(limit)
        data = await self._buckets.read(f"{self._spec.prefix}-alerts")
        found = [rec.decode(f"alert {key}", self._where, v, rec.alert_record) for key, v in rec.entries(data, "a")]
        return sorted(found, key=lambda a: (a.received_at, a.id or 0), reverse=True)[:limit]

    # break-glass overrides and chat threads

    async def add_override(self, override: Override) -> Override:
        async with self._writing(f"add override {override.id}"):
            return await self._overrides.add(override)

    async def list_overrides(
        self, *, service: str | None = None, environment: str | None = None, used: bool | None = None
    ) -> list[Override]:
        """The overrides that pass every filter given, in the order they were granted (oldest first)."""
        self._check_open("list overrides")
        return await self._overrides.list(service=service, environment=environment, used=used)

    async def consume_override(
        self, override_id: str, *, promotion_id: str, at: float, overridden: Mapping[str, Any]
    ) -> Override:
        async with self._writing(f"consume override {override_id}"):
            return await self._overrides.consume(override_id, promotion_id=promotion_id, at=at, overridden=overridden)

    async def get_chat_thread(self, subject: str, notifier: str) -> ChatThread | None:
        self._check_open(f"read chat thread of {subject}")
        found = await self._objects.get(self._chat_name(subject, notifier))
        if found is None or found.labels.get(f"{LABEL_PREFIX}record") != CHAT_THREAD:
            return None
        return self._decode(f"chat thread of {subject} ({notifier})", found, chat_thread_from_dict)

    async def save_chat_thread(self, thread: ChatThread) -> None:
        """Replace the document whole (last writer wins: the thread is the notifier's own record)."""
        data = {DOCUMENT: rec.dumps(chat_thread_dict(thread), f"chat thread of {thread.subject}")}
        async with self._writing(f"save chat thread of {thread.subject}"):
            name = self._chat_name(thread.subject, thread.notifier)
            labels = self._labels(CHAT_THREAD, notifier=thread.notifier)
            try:
                await self._objects.patch(name, data=data, labels=labels)
            except ObjectMissing:
                try:
                    await self._objects.create(name, labels=labels, data=data)
                except ObjectExists:  # another daemon created it meanwhile: ours is the later write
                    await self._objects.patch(name, data=data, labels=labels)

    async def close(self) -> None:
        """Stop taking calls and close the client if this store opened it; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await asyncio.shield(self._api.close())

    # plumbing

    def _writing(self, what: str) -> asyncio.Lock:
        """The write lock: one write at a time, in call order (``asyncio.Lock`` serves waiters in turn)."""
        self._check_open(what)
        return self._writes

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StoreError(f"state store {self._where} is closed; cannot {what}")

    def _name(self, kind: str, key: str) -> str:
        return f"{self._spec.prefix}-{kind}-{name_part(key)}"

    def _chat_name(self, subject: str, notifier: str) -> str:
        return self._name("chat", f"{subject}\n{notifier}")

    def _labels(self, record: str, **values: str | bool | None) -> dict[str, str]:
        labels = {**MANAGED_BY, f"{LABEL_PREFIX}store": self._spec.prefix, f"{LABEL_PREFIX}record": record}
        for key, value in values.items():
            if isinstance(value, bool):
                labels[f"{LABEL_PREFIX}{key}"] = str(value).lower()
            elif value is not None:
                labels[f"{LABEL_PREFIX}{key}"] = label_value(value)
        return labels

    def _promotion_labels(self, p: Promotion) -> dict[str, str]:
        return self._labels(
            "promotion", service=p.service, environment=p.environment, release=p.release_id, active=_active(p)
        )

    def _release_labels(self, r: Release) -> dict[str, str]:
        return self._labels("release", service=r.service, active=not r.phase.terminal)

    async def _save(self, name: str, labels: Mapping[str, str], document: Mapping[str, object]) -> None:
        """Write a document at the resourceVersion last seen (read first if this store never saw it)."""
        if name not in self._versions:
            found = await self._objects.get(name)
            if found is None or found.labels.get(f"{LABEL_PREFIX}record") == "tombstone":
                raise ObjectMissing(name)
            self._versions[name] = found.version
        data = {DOCUMENT: rec.dumps(document, name)}
        try:
            saved = await self._objects.patch(name, data=data, labels=labels, version=self._versions[name])
        except (ObjectChanged, ObjectMissing):
            self._versions.pop(name, None)
            raise
        self._versions[name] = saved.version

    async def _get_document(self, name: str, record: str) -> KubeObject | None:
        found = await self._objects.get(name)
        if found is None or found.labels.get(f"{LABEL_PREFIX}record") != record:
            return None
        self._versions[name] = found.version
        return found

    async def _list_documents(
        self, labels: Mapping[str, str], reader: Callable[[Mapping[str, object]], T], record: str
    ) -> list[T]:
        found = await self._objects.list(labels)
        ordered: list[tuple[float, int, T]] = []
        for obj in found:
            self._versions[obj.name] = obj.version
            value = self._decode(f"{record} {obj.name}", obj, reader)
            created = float(getattr(value, "created_at", 0.0))
            ordered.append((created, int(obj.data.get(SEQ, "0") or 0), value))
        ordered.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [value for _, _, value in ordered]

    def _decode(self, what: str, obj: KubeObject, reader: Callable[[Mapping[str, object]], T]) -> T:
        return rec.decode(what, self._where, obj.data.get(DOCUMENT, ""), lambda text: reader(json.loads(text)))

    async def _inspect(self, promotion_id: str) -> HolderState:
        found = await self._objects.get(self._name("promotion", promotion_id))
        if found is None:
            return HolderState(Holder.MISSING)
        if found.labels.get(f"{LABEL_PREFIX}record") == "tombstone":
            return HolderState(Holder.BURIED)
        promotion = self._decode(f"promotion {promotion_id}", found, Promotion.from_dict)
        return HolderState(Holder.ACTIVE if _active(promotion) else Holder.FINISHED, promotion)

    async def _bury(self, promotion_id: str) -> None:
        """Take the name of a promotion that holds a lock but was never written, so it never will be."""
        await self._objects.create(
            self._name("promotion", promotion_id),
            labels=self._labels("tombstone", promotion=promotion_id),
            data={"tombstone": f"promotion {promotion_id} claimed a lock but was never written"},
        )

    async def _exists(self, promotion: Promotion) -> Exception:
        found = await self._objects.get(self._name("promotion", promotion.id))
        if found is not None and found.labels.get(f"{LABEL_PREFIX}record") == "tombstone":
            return ConflictError(
                f"promotion {promotion.id} of {promotion.target} lost its claim to another writer; start it again"
            )
        return ConflictError(f"promotion {promotion.id} already exists")

    def _requires(self, promotion_id: str, what: str) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            if await self._get_document(self._name("promotion", promotion_id), "promotion") is None:
                raise NotFoundError(f"promotion {promotion_id} not found; cannot record its {what}")

        return check

    def _changed(self, what: str) -> StoreError:
        return StoreError(
            f"state store {self._where}: cannot save {what}: another writer changed it since this daemon"
            " read it; reload it and try again"
        )


def _doc(record: Promotion | Release, seq: int) -> dict[str, str]:
    return {DOCUMENT: rec.dumps(record.to_dict(), f"{type(record).__name__.lower()} {record.id}"), SEQ: str(seq)}


def _active(promotion: Promotion) -> bool:
    return not promotion.phase.terminal


def _matches(record: Promotion | Release, **filters: str | bool | None) -> bool:
    for field, wanted in filters.items():
        if wanted is None:
            continue
        if field == "active":
            if (not record.phase.terminal) != wanted:
                return False
        elif getattr(record, field) != wanted:
            return False
    return True


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise InputError(f"limit must be 0 or more, not {limit}")
