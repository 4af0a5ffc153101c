"""kmock's Kubernetes emulator as a real API server on 127.0.0.1, with scripted faults and a kubeconfig.

The real client talks HTTP to it; objects live in memory (``server.objects``) and every request is
recorded (``server.requests()``). Traps of the emulator (measured): it ignores label selectors,
keeps no ``resourceVersion``, ``uid`` or ``generation``, has no status subresource, applies PATCH as
a JSON merge patch (a list body as a JSON Patch), and answers 404 for a collection of a resource it
has never seen (so :data:`RESOURCES` are declared up front).

Faults: ``server.fail(Fault(...))`` makes matching requests fail before the emulator applies them
(a refusal, throttling, a server error, or a stall longer than the client's timeout), or after
(``after=True``: the change lands, the answer is lost — the case retries must converge on).

    async with kube_server() as server:
        write_kubeconfig(tmp_path / "kubeconfig", {"test": server.url})
        server.fail(Fault("PATCH", "deployments", status=409, times=2))
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock

RESOURCES = (
    "apps/v1/deployments",
    "v1/pods",
    "v1/services",
    "v1/events",
    "v1/configmaps",
    "coordination.k8s.io/v1/leases",
)


@dataclass
class Fault:
    """Requests matching ``method`` and ``resource`` (and ``name``, if set) fail ``times`` times (None: always).

    ``status`` answers with that API status; ``delay`` stalls first (with ``status=None``: then
    answers normally — a stall longer than the client's timeout is a timeout). ``after`` applies the
    request before failing, so the change lands but its answer does not.
    """

    method: str
    resource: str
    name: str | None = None
    status: int | None = 500
    delay: float = 0.0
    after: bool = False
    times: int | None = 1
    hits: int = 0

    def matches(self, request: kmock.Request) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        resource = request.resource
        return (
            str(request.method.value).upper() == self.method.upper()
            and resource is not None
            and resource.plural == self.resource
            and (self.name is None or request.name == self.name)
        )


@attrs.define(kw_only=True)
class FaultyEmulator(kmock.KubernetesEmulator):
    """The emulator, with scripted faults checked before (or after) it applies each request."""

    faults: list[Fault] = attrs.field(factory=list)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        fault = next((f for f in self.faults if f.matches(request)), None)
        if fault is None:
            return await super()._handle(request)
        fault.hits += 1
        if fault.after:
            response = await super()._handle(request)
            await asyncio.sleep(fault.delay)
            if fault.status is None:
                return response
        else:
            await asyncio.sleep(fault.delay)
            if fault.status is None:
                return await super()._handle(request)
        raise kmock.KubernetesError(status=fault.status, reason=f"Injected{fault.status}", message="injected fault")


@dataclass
class KubeServer:
    """A running emulator and its address."""

    emulator: FaultyEmulator
    url: str

    @property
    def objects(self) -> kmock.ObjectsArray:
        return self.emulator.objects

    def fail(self, fault: Fault) -> Fault:
        self.emulator.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.emulator.faults.clear()

    def requests(self, method: str | None = None, resource: str | None = None) -> list[kmock.Request]:
        """Requests served so far, optionally only one method and resource plural."""
        return [
            r
            for r in self.emulator
            if (method is None or str(r.method.value).upper() == method.upper())
            and (resource is None or (r.resource is not None and r.resource.plural == resource))
        ]

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (a plain dict), or None when it does not exist."""
        try:
            found = self.emulator.objects[resource, namespace, name]
        except KeyError:
            return None
        return None if found.deleted else found.raw

    def put(self, resource: str, namespace: str, obj: Mapping[str, Any]) -> None:
        """Store an object directly, as if a user had applied it."""
        body = json.loads(json.dumps(obj))
        body.setdefault("metadata", {})["namespace"] = namespace
        self.emulator.objects[resource, namespace, body["metadata"]["name"]] = body


@asynccontextmanager
async def kube_server() -> AsyncIterator[KubeServer]:
    """Start an emulator on 127.0.0.1 (a free port) and stop it on exit."""
    async with FaultyEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        for resource in RESOURCES:
            emulator.resources[resource] = {}
        yield KubeServer(emulator, str(server.url).rstrip("/"))


def write_kubeconfig(path: Path, contexts: Mapping[str, str], *, current: str | None = None) -> Path:
    """A kubeconfig with one context (cluster and token user) per ``name: server URL``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}} for name, url in contexts.items()],
        "users": [{"name": name, "user": {"token": f"token-{name}"}} for name in contexts],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}} for name in contexts],
        "current-context": current or next(iter(contexts)),
    }
    path.write_text(json.dumps(config, indent=2))
    return path
