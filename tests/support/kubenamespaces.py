"""Namespaces for the Kubernetes emulator, and a controller doing what a cluster does with them and with Deployments.

kmock cannot serve namespaces: its path parser takes every ``namespaces/X`` as the scope of a namespaced
request, so ``/api/v1/namespaces`` is an error and ``/api/v1/namespaces/X`` names no object.
:class:`NamespacedKubernetes` (the emulator of :mod:`support.kubeapi`, with its resourceVersions and
faults) serves them itself, as the API server does:

* ``POST /api/v1/namespaces`` creates one (phase ``Active``, the ``kubernetes`` finalizer); a name in use,
  terminating or not, is 409 AlreadyExists;
* ``GET`` one (404 when absent), or all of them (``labelSelector`` ignored, like kmock does);
* ``DELETE`` marks it terminating (``deletionTimestamp``, phase ``Terminating``) and answers with it; a
  second ``DELETE`` of a terminating namespace is 409 Conflict;
* creating any object in a namespace that does not exist is 404, in a terminating one 403 Forbidden.

Faults scripted with ``fail(method, "namespaces", ...)`` apply to these requests too.

:class:`ClusterController` plays the namespace controller and the Deployment controller, ticking every
few milliseconds: the objects of a terminating namespace are deleted, then the namespace; a Deployment
becomes available ``ready_delay`` after it appears, unless its image's tag was marked with
:meth:`ClusterController.fail_version` (pods that never get ready).

    async with serve_namespaced() as (emulator, url), run_cluster(emulator) as cluster:
        api = ApiClient(Configuration(host=url))
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import kmock
from support.kubeapi import Fault, VersionedKubernetes

NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
RESOURCES = ("apps/v1/deployments", "v1/services", "v1/configmaps", "v1/pods")


@attrs.define(kw_only=True)
class NamespacedKubernetes(VersionedKubernetes):
    """The emulator with namespaces (see the module docstring)."""

    namespaces: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    namespace_requests: list[tuple[str, str | None, dict[str, str]]] = attrs.field(factory=list)
    """Each namespace request served: method, name (None for the collection), query."""

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """A namespace made by someone else (``kubectl create namespace``)."""
        made = _namespace({"metadata": {"name": name, "labels": labels or {}}})
        self.namespaces[name] = made
        return made

    def contents(self, namespace: str) -> list[tuple[str, str]]:
        """``(plural, name)`` of every object still stored in ``namespace``."""
        return sorted(
            (resource.plural, name)
            for (resource, ns, name), obj in self.objects.items()
            if ns == namespace and not obj.deleted
        )

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = NAMESPACE_PATH.match(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.json() if raw_request.method in ("POST", "PATCH", "PUT") else None
        name = match.group(1) or ((body or {}).get("metadata") or {}).get("name")
        method = raw_request.method.upper()
        self.namespace_requests.append((method, match.group(1), dict(raw_request.query)))
        fault = self._namespace_fault(method, name)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and not fault.after and fault.status:
            return await self._render_error(self._error(fault.status))
        try:
            status, answer = self._namespace_answer(method, match.group(1), body)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        if fault is not None and fault.after and fault.status:
            return await self._render_error(self._error(fault.status))
        return aiohttp.web.json_response(answer, status=status)

    def _namespace_answer(self, method: str, name: str | None, body: Any) -> tuple[int, dict[str, Any]]:
        if name is None and method == "GET":
            return 200, {"apiVersion": "v1", "kind": "NamespaceList", "items": list(self.namespaces.values())}
        if name is None and method == "POST":
            made = _namespace(body)
            wanted = made["metadata"]["name"]
            if wanted in self.namespaces:
                raise kmock.KubernetesError(409, "AlreadyExists", f'namespaces "{wanted}" already exists')
            made["metadata"]["resourceVersion"] = str(next(self._counter))
            self.namespaces[wanted] = made
            return 201, made
        found = self.namespaces.get(name) if name is not None else None
        if found is None:
            raise kmock.KubernetesError(404, "NotFound", f'namespaces "{name}" not found')
        if method == "GET":
            return 200, found
        if method == "DELETE":
            if found["status"]["phase"] == "Terminating":
                raise kmock.KubernetesError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on namespaces "{name}": The system is ensuring all content is '
                    "removed from this namespace.  Upon completion, this namespace will automatically be purged.",
                )
            found["metadata"]["deletionTimestamp"] = datetime.now(UTC).isoformat(timespec="seconds")
            found["status"]["phase"] = "Terminating"
            return 200, found
        raise kmock.KubernetesError(405, "MethodNotAllowed", f"{method} of a namespace is not emulated")

    def _namespace_fault(self, method: str, name: str | None) -> Fault | None:
        for fault in self.faults:
            if fault.plural != "namespaces" or fault.method != method or fault.count <= 0:
                continue
            if fault.name is not None and fault.name != name:
                continue
            fault.count -= 1
            if not fault.count:
                fault.used.set()
            return fault
        return None

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.action == kmock.action.CREATE and request.resource is not None and request.namespace is not None:
            found = self.namespaces.get(request.namespace)
            if found is None:
                error = kmock.KubernetesError(404, "NotFound", f'namespaces "{request.namespace}" not found')
                return await self._render_error(error)
            if found["status"]["phase"] == "Terminating":
                error = kmock.KubernetesError(
                    403,
                    "Forbidden",
                    f"unable to create new content in namespace {request.namespace} because it is being terminated",
                )
                return await self._render_error(error)
        return await super()._handle(request)


def _namespace(body: Any) -> dict[str, Any]:
    metadata = dict((body or {}).get("metadata") or {})
    metadata.setdefault("labels", {})
    metadata["creationTimestamp"] = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata,
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


@asynccontextmanager
async def serve_namespaced() -> AsyncIterator[tuple[NamespacedKubernetes, str]]:
    """A running emulator with namespaces on 127.0.0.1 and its URL; stopped on exit."""
    async with NamespacedKubernetes() as emulator, kmock.Server(emulator, host="127.0.0.1"):
        for resource in RESOURCES:
            emulator.resources[resource] = {}
        yield emulator, str(emulator.url).rstrip("/")


@dataclass
class ClusterController:
    """The namespace controller and a Deployment controller, simplified (see the module docstring)."""

    emulator: NamespacedKubernetes
    ready_delay: float = 0.02
    tick: float = 0.01
    failing: set[str] = field(default_factory=set)
    paused: bool = False
    """Do nothing (a cluster whose controllers lag): Deployments stay unavailable, namespaces terminating."""
    _seen: dict[tuple[str, str], float] = field(default_factory=dict)

    def fail_version(self, version: str) -> None:
        """Deployments whose image's tag is ``version`` never become available."""
        self.failing.add(version)

    async def run(self) -> None:
        while True:
            if not self.paused:
                self.step(asyncio.get_running_loop().time())
            await asyncio.sleep(self.tick)

    def step(self, now: float) -> None:
        for name, namespace in list(self.emulator.namespaces.items()):
            if namespace["status"]["phase"] == "Terminating":
                for key, obj in list(self.emulator.objects.items()):
                    if key[1] == name and not obj.deleted:
                        obj.delete()
                del self.emulator.namespaces[name]
        for (resource, ns, name), obj in list(self.emulator.objects.items()):
            if resource.plural == "deployments" and not obj.deleted and ns is not None:
                self._deployment(ns, name, obj.raw, now)

    def _deployment(self, namespace: str, name: str, deployment: dict[str, Any], now: float) -> None:
        first = self._seen.setdefault((namespace, name), now)
        desired = deployment.get("spec", {}).get("replicas", 1)
        containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        tags = {c.get("image", "").rsplit(":", 1)[-1] for c in containers}
        ready = desired if now - first >= self.ready_delay and not tags & self.failing else 0
        status = {
            "replicas": desired,
            "updatedReplicas": desired,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                {"type": "Available", "status": "True" if ready >= desired else "False"},
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
            ],
        }
        if deployment.get("status") != status:
            self.emulator.objects["apps/v1/deployments", namespace, name].patch({"status": status})


@asynccontextmanager
async def run_cluster(emulator: NamespacedKubernetes, **options: Any) -> AsyncIterator[ClusterController]:
    """Run a :class:`ClusterController` over ``emulator`` for the block's duration."""
    controller = ClusterController(emulator, **options)
    task = asyncio.create_task(controller.run(), name="cluster-controller")
    try:
        yield controller
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
