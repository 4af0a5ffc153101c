"""ConfigMaps as the Kubernetes store sees them: small typed reads and writes, retried, errors translated.

Everything the store keeps in the cluster is a ConfigMap in one namespace. This
module is the only one that talks to the API server for it; the rest of the
store speaks of :class:`KubeObject` values and three outcomes that are part of
its logic rather than failures: the object exists already (:class:`ObjectExists`),
it is not there (:class:`ObjectMissing`), or it changed since the version named
in a write (:class:`ObjectChanged`, the optimistic-concurrency refusal).

Transient failures (429, 5xx, connection errors, timeouts) are retried a few
times with backoff. A write whose answer was lost may still have been applied;
a retry of it that is then refused as "exists" or "changed" reads the object
back and counts as done when the object now holds exactly what was written.
Anything else becomes :class:`~vouch.core.errors.StoreError` naming the object.

Kubernetes calls used (see ``vouch.rollout.platforms.kube.rbac``): configmaps
get, list, create, patch — in the store's namespace only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

if TYPE_CHECKING:
    # kubernetes_asyncio loads every API model on import (a fifth of a second): only Kubernetes work imports it.
    from kubernetes_asyncio.client import ApiClient, V1ConfigMap

from vouch.core.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

LABEL_PREFIX = "vouch.dev/"
MANAGED_BY = {"app.kubernetes.io/managed-by": "vouch"}

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ObjectExists(Exception):
    """A create found the name taken."""


class ObjectMissing(Exception):
    """A read or patch found no object of that name."""


class ObjectChanged(Exception):
    """A patch named a resourceVersion that is no longer current: another writer got there first."""


@dataclass(frozen=True)
class KubeObject:
    """One ConfigMap: its name, labels, data and the resourceVersion they were read at."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)
    version: str | None = None


@dataclass(frozen=True)
class ApiSettings:
    """How hard to try one API call."""

    timeout: float = 10.0
    """Longest one request may take, in seconds."""
    attempts: int = 4
    """Tries of a call that fails transiently (429, 5xx, connection error, timeout), the first included."""
    backoff: float = 0.2
    """Wait before the second try, in seconds; doubles for each further one."""


def default_namespace() -> str:
    """Where vouch keeps its own objects when not told: ``$POD_NAMESPACE``, else its pod's namespace, else default."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def name_part(key: str, *, limit: int = 40) -> str:
    """``key`` as part of an object name: itself when it is a short DNS label, else a slug plus a hash.

    Deterministic, so the same id always finds the same object, and two ids never share one.
    """
    if len(key) <= limit and _NAME_PART.match(key):
        return key
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[: limit - 11].strip("-")
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{slug}-{digest}" if slug else digest


def label_value(value: str) -> str:
    """``value`` as a label value (63 characters, restricted alphabet): itself when valid, else slug plus hash."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    return name_part(value, limit=63)


class ConfigMaps:
    """Reads and writes ConfigMaps of one namespace with the retries and translations described above."""

    def __init__(self, api: ApiClient, *, namespace: str, settings: ApiSettings, where: str) -> None:
        from kubernetes_asyncio.client import CoreV1Api

        self._core = CoreV1Api(api)
        self._namespace = namespace
        self._settings = settings
        self._where = where

    async def get(self, name: str) -> KubeObject | None:
        try:
            found = await self._call(
                f"read configmap {name}",
                lambda: self._core.read_namespaced_config_map(
                    name, self._namespace, _request_timeout=self._settings.timeout
                ),
            )
        except ObjectMissing:
            return None
        return _object(found)

    async def list(self, labels: Mapping[str, str]) -> list[KubeObject]:
        """Every ConfigMap carrying all of ``labels``.

        The selector goes to the server, and is applied here again too: an
        API server (or emulator) that ignores it must not widen the answer.
        """
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        found: list[KubeObject] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": selector, "limit": 500}
            if token:
                kwargs["_continue"] = token
            call = partial(
                self._core.list_namespaced_config_map,
                self._namespace,
                _request_timeout=self._settings.timeout,
                **kwargs,
            )
            try:
                page = await self._call(f"list configmaps {selector}", call)
            except ObjectMissing:
                break  # nothing of the kind was ever stored here
            found.extend(_object(item) for item in page.items or ())
            token = page.metadata._continue if page.metadata else None
            if not token:
                break
        return [obj for obj in found if all(obj.labels.get(k) == v for k, v in labels.items())]

    async def create(self, name: str, *, labels: Mapping[str, str], data: Mapping[str, str]) -> KubeObject:
        """Create ``name``; :class:`ObjectExists` when it is taken (by anyone but an earlier try of this call)."""
        from kubernetes_asyncio.client import V1ConfigMap, V1ObjectMeta

        body = V1ConfigMap(metadata=V1ObjectMeta(name=name, labels=dict(labels)), data=dict(data))
        created = await self._write(
            f"create configmap {name}",
            lambda: self._core.create_namespaced_config_map(
                self._namespace, body, _request_timeout=self._settings.timeout
            ),
            refused=ObjectExists,
            check=lambda: self._holds(name, data),
        )
        return created

    async def patch(
        self,
        name: str,
        *,
        data: Mapping[str, str | None],
        labels: Mapping[str, str] | None = None,
        version: str | None = None,
    ) -> KubeObject:
        """Merge ``data`` (``None`` removes a key) and ``labels`` into ``name``.

        With ``version`` the write only happens if the object is still at that
        resourceVersion (the API server compares it), else :class:`ObjectChanged`.
        Without it, the merge applies to whatever is current: right for keyed
        entries that no other writer rewrites.
        """
        metadata: dict[str, Any] = {}
        if labels:
            metadata["labels"] = dict(labels)
        if version is not None:
            metadata["resourceVersion"] = version
        body: dict[str, Any] = {"data": dict(data)}
        if metadata:
            body["metadata"] = metadata
        return await self._write(
            f"patch configmap {name}",
            lambda: self._core.patch_namespaced_config_map(
                name, self._namespace, body, _request_timeout=self._settings.timeout
            ),
            refused=ObjectChanged,
            check=lambda: self._holds(name, data),
        )

    async def _holds(self, name: str, data: Mapping[str, str | None]) -> KubeObject | None:
        """The object if it now holds exactly ``data`` (what a lost-answer write would have left)."""
        current = await self.get(name)
        if current is None:
            return None
        if all(current.data.get(key) == value for key, value in data.items()):
            return current
        return None

    async def _write(
        self,
        what: str,
        call: Callable[[], Awaitable[V1ConfigMap]],
        *,
        refused: type[Exception],
        check: Callable[[], Awaitable[KubeObject | None]],
    ) -> KubeObject:
        uncertain = False
        for attempt in range(1, self._settings.attempts + 1):
            try:
                return _object(await self._once(what, call))
            except _Conflict as exc:
                if uncertain and (done := await check()) is not None:
                    return done
                raise refused(what) from exc.__cause__
            except _Transient as exc:
                uncertain = True
                await self._pause(what, attempt, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, self._settings.attempts + 1):
            try:
                return await self._once(what, call)
            except _Transient as exc:
                await self._pause(what, attempt, exc)
            except _Conflict as exc:
                raise StoreError(f"state store {self._where}: cannot {what}: conflict") from exc.__cause__
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            async with asyncio.timeout(self._settings.timeout + 1.0):
                return await call()
        except ApiException as exc:
            status = int(exc.status or 0)
            if status == 404:
                raise ObjectMissing(what) from exc
            if status == 409:
                raise _Conflict() from exc
            if status in _TRANSIENT_STATUS:
                raise _Transient(f"HTTP {status} {exc.reason}") from exc
            raise StoreError(f"state store {self._where}: cannot {what}: HTTP {status} {exc.reason}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    async def _pause(self, what: str, attempt: int, exc: _Transient) -> None:
        if attempt >= self._settings.attempts:
            raise StoreError(
                f"state store {self._where}: cannot {what}: {exc} (after {attempt} tries)"
            ) from exc.__cause__
        delay = self._settings.backoff * 2 ** (attempt - 1)
        log.warning("state store %s: %s failed (%s); trying again in %.1fs", self._where, what, exc, delay)
        await asyncio.sleep(delay)


class _Transient(Exception):
    """A failure that may pass: the call is worth another try."""


class _Conflict(Exception):
    """HTTP 409 from the API server: the name is taken, or the named resourceVersion is stale."""


def _object(item: V1ConfigMap) -> KubeObject:
    meta = item.metadata
    return KubeObject(
        name=str(meta.name) if meta else "",
        labels=dict(meta.labels or {}) if meta else {},
        data=dict(item.data or {}),
        version=meta.resource_version if meta else None,
    )
