"""kmock's Kubernetes emulator plus what vouch's store and leader election rely on: resourceVersions.

kmock keeps objects and serves the real client, but has no ``resourceVersion``,
so it cannot refuse a stale write. :class:`VersionedKubernetes` adds exactly that,
as the API server does it: every create and patch stamps a new, increasing
``metadata.resourceVersion``, and a patch that names a resourceVersion other than
the current one is refused with 409 Conflict. Checks and writes happen under one
lock, so two clients racing see one winner.

It can also inject faults: :meth:`fail` answers the next matching requests with
an error status (before or after applying them) or delays them past the client's
timeout, to test retries and lost answers.

    async with serve_kubernetes() as (emulator, url):
        api = ApiClient(Configuration(host=url))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import kmock


@dataclass
class Fault:
    """Answer the next ``count`` requests matching ``method`` and ``plural`` with ``status``."""

    method: str
    plural: str
    status: int = 500
    count: int = 1
    after: bool = False
    """Apply the request first, then answer with the error: the client loses a successful answer."""
    delay: float = 0.0
    """Wait this long before handling (past the client's timeout, the client gives up)."""
    name: str | None = None
    """Only requests about the object of this name."""
    used: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the last of the ``count`` requests has arrived."""


@attrs.define(kw_only=True)
class VersionedKubernetes(kmock.KubernetesEmulator):
    """The emulator with resourceVersion checks and injectable faults (see the module docstring)."""

    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _counter: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)

    def fail(
        self,
        method: str,
        plural: str,
        *,
        status: int = 500,
        count: int = 1,
        after: bool = False,
        delay: float = 0.0,
        name: str | None = None,
    ) -> Fault:
        """Answer the next ``count`` matching requests with ``status`` (0: answer normally, after ``delay``)."""
        fault = Fault(method.upper(), plural, status, count, after, delay, name)
        self.faults.append(fault)
        return fault

    def object(self, plural: str, namespace: str, name: str, *, group_version: str = "v1") -> dict[str, Any] | None:
        """The stored object (a plain dict), or None."""
        for (resource, ns, obj_name), obj in self.objects.items():
            if resource.plural == plural and ns == namespace and obj_name == name and not obj.deleted:
                return dict(obj.raw)
        return None

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        fault = self._fault(request)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and not fault.after and fault.status:
            return await self._render_error(self._error(fault.status))
        if request.resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            response = await super()._handle(request)
        else:
            async with self._write_lock:
                refused = self._stamp(request)
                response = await (self._render_error(refused) if refused else super()._handle(request))
        if fault is not None and fault.after and fault.status:
            return await self._render_error(self._error(fault.status))
        return response

    def _stamp(self, request: kmock.Request) -> kmock.KubernetesError | None:
        """Check the named resourceVersion and write a new one into the request's body."""
        if not isinstance(request.data, dict):
            return None
        metadata = request.data.setdefault("metadata", {})
        if request.action == kmock.action.UPDATE:
            current = self._current(request)
            wanted = metadata.get("resourceVersion")
            if current is not None and wanted is not None and str(wanted) != str(current):
                return kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message=f"Operation cannot be fulfilled on {request.resource}: the object has been modified;"
                    " please apply your changes to the latest version and try again",
                )
        metadata["resourceVersion"] = str(next(self._counter))
        return None

    def _current(self, request: kmock.Request) -> str | None:
        for (resource, namespace, name), obj in self.objects.items():
            if resource == request.resource and namespace == request.namespace and name == request.name:
                if obj.deleted:
                    return None
                return obj.get("metadata", {}).get("resourceVersion")
        return None

    def _fault(self, request: kmock.Request) -> Fault | None:
        plural = request.resource.plural if request.resource is not None else None
        name = request.name
        if name is None and isinstance(request.data, dict):
            name = request.data.get("metadata", {}).get("name")
        for fault in self.faults:
            if fault.name is not None and fault.name != name:
                continue
            if fault.count > 0 and fault.method == str(request.method.value) and fault.plural == plural:
                fault.count -= 1
                if not fault.count:
                    fault.used.set()
                return fault
        return None

    @staticmethod
    def _error(status: int) -> kmock.KubernetesError:
        reason = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
        return kmock.KubernetesError(status=status, reason=reason.get(status, "Error"), message="injected fault")


@contextlib.asynccontextmanager
async def serve_kubernetes() -> AsyncIterator[tuple[VersionedKubernetes, str]]:
    """A running emulator on 127.0.0.1 and its URL; stopped on exit."""
    async with VersionedKubernetes() as emulator, kmock.Server(emulator):
        for resource in ("v1/configmaps", "coordination.k8s.io/v1/leases"):
            emulator.resources[resource] = {}
        yield emulator, str(emulator.url).rstrip("/")
