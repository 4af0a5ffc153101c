"""The ``kubernetes`` platform: pod-count canaries on real Deployments, no service mesh needed.

A service is its stable Deployment (named after the service, in the environment's namespace) and
the Service selecting its pods. vouch makes and owns a second Deployment, ``<service>-canary``,
from the stable pod template with the new image and ``vouch.dev/track: canary`` and
``vouch.dev/version`` labels. The Service selects on the stable template's labels, so it spreads
traffic over stable and canary pods alike: the canary's share of traffic is its share of ready
pods. Environments map to clusters and namespaces as
:mod:`~vouch.rollout.platforms.kube.settings` describes.

* ``scale`` sets the canary's and stable's replicas (growing before shrinking, so capacity never
  dips below the smaller total), creating the canary or moving it to a new version first.
* ``promote`` updates the stable template to the new version at full replicas, waits for that
  rollout to finish while the canary keeps serving, then scales the canary to 0.
* ``rollback`` scales the canary to 0 first (terminating pods leave the Service's endpoints at
  once), then stable back to full.

Each call writes absolute values and only what differs from what is there (see
:func:`~vouch.rollout.platforms.kube.objects.merge_diff`), so a repeated call writes nothing, and a
call retried after a lost answer converges. Every change is annotated on the Deployment
(``vouch.dev/promotion``: ``service/environment@version``, ``vouch.dev/last-transition``) and
recorded as a Kubernetes Event on it. The client library and retries are described in
:mod:`~vouch.rollout.platforms.kube.client`; the API permissions used are listed in
:mod:`~vouch.rollout.platforms.kube.rbac`.

Example::

    platform = KubernetesPlatform(KubernetesPlatformSpec(), {"shop": shop})
    await platform.start()
    try:
        await platform.scale(Target("shop", "staging"), stable_replicas=3, canary_version="1.1.0", canary_replicas=1)
        print(await platform.observe(Target("shop", "staging")))
    finally:
        await platform.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vouch.core.errors import PlatformError, PlatformUnavailable
from vouch.rollout.config import ServiceSpec
from vouch.rollout.model import Endpoint, Observed, Target
from vouch.rollout.platforms.kube import objects as k8s
from vouch.rollout.platforms.kube.client import KubeApi, KubeApiError, RetryPolicy, connect, path
from vouch.rollout.platforms.kube.objects import Json
from vouch.rollout.platforms.kube.settings import KubeClusterSpec, KubernetesPlatformSpec

log = logging.getLogger(__name__)

_ClusterKey = tuple[str | None, str | None, bool]


@dataclass(eq=False)
class _Binding:
    """One target's place: its cluster, namespace, Deployment names, and a lock serialising changes."""

    target: Target
    service: ServiceSpec
    image: str
    cluster: KubeClusterSpec
    canary_name: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    api: KubeApi | None = None

    @property
    def name(self) -> str:
        return self.target.service

    @property
    def namespace(self) -> str:
        assert self.cluster.namespace is not None
        return self.cluster.namespace

    @property
    def full(self) -> int:
        return self.service.replicas_in(self.target.environment)

    @property
    def client(self) -> KubeApi:
        if self.api is None:
            raise PlatformError("the kubernetes platform is not running")
        return self.api

    def deployment_path(self, name: str | None = None) -> str:
        return path("apps/v1", "deployments", self.namespace, name)

    def version(self, obj: Json) -> str | None:
        return k8s.version_of(obj, service=self.name, image_template=self.image)

    def stable_version(self, stable: Json) -> str | None:
        return k8s.stable_version(stable, service=self.name, image_template=self.image)


class KubernetesPlatform:
    """Runs stable and canary Deployments per service; see the module docstring."""

    def __init__(self, spec: KubernetesPlatformSpec, services: Mapping[str, ServiceSpec]) -> None:
        for name, service in services.items():
            if not service.image or "{version}" not in service.image:
                raise PlatformError(
                    f"service {name!r} needs an `image` with a '{{version}}' placeholder for the kubernetes platform, "
                    "e.g. registry.example.com/shop:{version}"
                )
        known = {env.name for service in services.values() for env in service.environments}
        if unknown := sorted(set(spec.environments) - known):
            # a misspelt environment would silently fall back to the default cluster: refuse it
            raise PlatformError(
                f"kubernetes platform settings name unknown environment(s) {unknown}; known: {sorted(known)}"
            )
        self._spec = spec
        self._retry = RetryPolicy(
            request_timeout=spec.request_timeout,
            initial=spec.retry_initial,
            maximum=spec.retry_max,
            deadline=spec.retry_deadline,
        )
        self._bindings = {
            Target(name, env.name): _Binding(
                Target(name, env.name),
                service,
                str(service.image),
                spec.cluster(env.name),
                canary_name=f"{name}{spec.canary_suffix}",
            )
            for name, service in services.items()
            for env in service.environments
        }
        self._apis: dict[_ClusterKey, KubeApi] = {}
        self._running = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to every cluster an environment names (once per kubeconfig context)."""
        if self._running:
            return
        try:
            for binding in self._bindings.values():
                cluster = binding.cluster
                key = (cluster.context, cluster.kubeconfig, cluster.in_cluster)
                if key not in self._apis:
                    reconnect = functools.partial(
                        connect, context=cluster.context, kubeconfig=cluster.kubeconfig, in_cluster=cluster.in_cluster
                    )
                    self._apis[key] = KubeApi(await reconnect(), self._retry, reconnect=reconnect)
                binding.api = self._apis[key]
        except KubeApiError as exc:
            await self.stop()
            raise PlatformError(str(exc)) from exc
        self._running = True

    async def stop(self) -> None:
        """Close every cluster connection. Idempotent; the cluster's workloads keep running."""
        self._running = False
        apis, self._apis = list(self._apis.values()), {}
        for binding in self._bindings.values():
            binding.api = None
        for api in apis:
            with contextlib.suppress(Exception):
                await asyncio.shield(api.close())

    # ------------------------------------------------------------------ the Platform contract

    async def address(self, target: Target) -> Endpoint:
        """The Service's cluster DNS name and first port: reachable from inside that cluster."""
        b = self._binding(target)
        with _translated(target, "address"):
            service = await b.client.get(path("v1", "services", b.namespace, b.name))
        if service is None:
            raise PlatformError(f"{target}: no Service {b.name!r} in namespace {b.namespace!r}")
        return Endpoint(f"{b.name}.{b.namespace}.svc", k8s.service_port(service))

    async def observe(self, target: Target) -> Observed:
        b = self._binding(target)
        with _translated(target, "observe"):
            stable = await self._stable(b)
            canary = await b.client.get(b.deployment_path(b.canary_name))
            pods = await self._pods(b, stable)
        return k8s.observe(stable, canary, pods, service=b.name, image_template=b.image)

    async def scale(self, target: Target, *, stable_replicas: int, canary_version: str, canary_replicas: int) -> None:
        if stable_replicas < 0 or canary_replicas < 0:
            raise PlatformError(f"{target}: replica counts cannot be negative")
        if canary_replicas and not canary_version:
            raise PlatformError(f"{target}: a canary needs a version")
        b = self._binding(target)
        with _translated(target, "scale"):
            async with b.lock:
                stable = await self._stable(b)
                if canary_replicas and canary_version == b.stable_version(stable):
                    raise PlatformError(f"{target}: {canary_version} is already the stable version")
                canary = await b.client.get(b.deployment_path(b.canary_name))
                grows = canary_replicas >= (k8s.replicas(canary) if canary is not None else 0)
                if grows:  # add capacity before taking any away
                    await self._set_canary(b, stable, canary, version=canary_version, count=canary_replicas)
                await self._set_stable_replicas(b, stable, stable_replicas, version=canary_version)
                if not grows:
                    await self._set_canary(b, stable, canary, version=canary_version, count=canary_replicas)

    async def promote(self, target: Target, version: str) -> None:
        if not version:
            raise PlatformError(f"{target}: promote needs a version")
        b = self._binding(target)
        with _translated(target, "promote"):
            async with b.lock:
                stable = await self._stable(b)
                desired = k8s.with_version(
                    k8s.template(stable),
                    service=b.name,
                    version=version,
                    image=k8s.image_for(b.image, version),
                    track=None,
                )
                change: Json = {}
                if template_patch := k8s.merge_diff(k8s.template(stable), desired):
                    change["template"] = template_patch
                if k8s.replicas(stable) != b.full:
                    change["replicas"] = b.full
                if change:
                    text = f"stable moving to {version} at {b.full} replicas"
                    await self._patch(b, stable, change, version=version, text=text, reason="Promoting")
                await self._await_rollout(b, version)
                canary = await b.client.get(b.deployment_path(b.canary_name))
                removed = canary is not None and k8s.replicas(canary) != 0
                if canary is not None and removed:
                    text = f"{version} is stable; canary scaled to 0"
                    await self._patch(b, canary, {"replicas": 0}, version=version, text=text, reason="CanaryRemoved")
                if change or removed:
                    await self._record(b, stable, "Promoted", f"{version} is stable at {b.full} replicas")

    async def rollback(self, target: Target) -> None:
        b = self._binding(target)
        with _translated(target, "rollback"):
            await self._stop_canary(b)  # out of traffic first, without waiting for a call in progress
            async with b.lock:
                await self._stop_canary(b)  # again: a scale that held the lock may have raised it meanwhile
                stable = await self._stable(b)
                version = b.stable_version(stable)
                if version is not None:
                    await self._set_stable_replicas(b, stable, b.full, version=version, reason="StableRestored")

    # ------------------------------------------------------------------ steps

    def _binding(self, target: Target) -> _Binding:
        binding = self._bindings.get(target)
        if binding is None:
            services = sorted({t.service for t in self._bindings})
            if target.service not in services:
                raise PlatformError(f"unknown service {target.service!r}; the kubernetes platform runs {services}")
            known = sorted(t.environment for t in self._bindings if t.service == target.service)
            raise PlatformError(f"service {target.service!r} has no environment {target.environment!r}; it has {known}")
        if not self._running:
            raise PlatformError("the kubernetes platform is not running")
        return binding

    async def _stable(self, b: _Binding) -> Json:
        stable = await b.client.get(b.deployment_path(b.name))
        if stable is None:
            raise PlatformError(
                f"{b.target}: no Deployment {b.name!r} in namespace {b.namespace!r}; "
                "the kubernetes platform rolls out an existing Deployment named after the service"
            )
        return stable

    async def _pods(self, b: _Binding, stable: Json) -> list[Json]:
        query = k8s.selector_query(k8s.selector(stable))
        return await b.client.list_objects(path("v1", "pods", b.namespace), label_selector=query)

    async def _set_canary(self, b: _Binding, stable: Json, canary: Json | None, *, version: str, count: int) -> None:
        """Make the canary run ``count`` pods of ``version`` (re-templated from stable when the version moves)."""
        if canary is None and count == 0:
            return
        desired = None
        if version and count:
            image = k8s.image_for(b.image, version)
            desired = k8s.with_version(
                k8s.template(stable), service=b.name, version=version, image=image, track=k8s.CANARY
            )
        if canary is None:
            assert desired is not None
            canary = await self._create_canary(b, stable, desired, version=version, count=count)
        change: Json = {}
        if desired is not None and (template_patch := k8s.merge_diff(k8s.template(canary), desired)):
            await self._check_service(b, desired)
            change["template"] = template_patch
        if k8s.replicas(canary) != count:
            change["replicas"] = count
        if change:
            text = f"canary {version} scaled to {count}" if count else "canary scaled to 0"
            await self._patch(b, canary, change, version=version or None, text=text, reason="CanaryScaled")

    async def _create_canary(self, b: _Binding, stable: Json, desired: Json, *, version: str, count: int) -> Json:
        """Create the canary Deployment and return it as it now is.

        When it already exists, an earlier attempt landed but its answer was lost: the existing one
        is returned (and compared with what is wanted by the caller).
        """
        await self._check_service(b, desired)
        text = f"canary {version} created with {count} replicas"
        body = k8s.canary_deployment(
            stable,
            name=b.canary_name,
            pod_template=desired,
            replica_count=count,
            annotations=self._annotations(b, version, text),
        )
        body["metadata"]["namespace"] = b.namespace
        made = await b.client.create(b.deployment_path(), body)
        if made is None:
            made = await b.client.get(b.deployment_path(b.canary_name))
            if made is None:
                raise PlatformUnavailable(f"{b.target}: the canary Deployment was reported both existing and missing")
        await self._record(b, made, "CanaryCreated", text)
        return made

    async def _set_stable_replicas(
        self, b: _Binding, stable: Json, count: int, *, version: str | None, reason: str = "StableScaled"
    ) -> None:
        if k8s.replicas(stable) != count:
            text = f"stable scaled to {count}"
            await self._patch(b, stable, {"replicas": count}, version=version or None, text=text, reason=reason)

    async def _stop_canary(self, b: _Binding) -> None:
        canary = await b.client.get(b.deployment_path(b.canary_name))
        if canary is None or k8s.replicas(canary) == 0:
            return
        annotations = k8s.meta(canary).get("annotations") or {}
        version = annotations.get(k8s.VERSION_ANNOTATION) or b.version(k8s.template(canary))
        text = f"rolled back: canary {version} scaled to 0"
        await self._patch(b, canary, {"replicas": 0}, version=version, text=text, reason="RolledBack", warning=True)

    async def _await_rollout(self, b: _Binding, version: str) -> None:
        """Wait until stable runs ``full`` ready pods of ``version`` and no pod of another version is left."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._spec.rollout_timeout
        while True:
            stable = await self._stable(b)
            pods = await self._pods(b, stable)
            ready, old = k8s.rollout_progress(stable, pods, version=version, service=b.name, image_template=b.image)
            if ready >= b.full and old == 0:
                return
            if loop.time() >= give_up:
                raise PlatformUnavailable(
                    f"{b.target}: the stable rollout of {version} is not finished after "
                    f"{self._spec.rollout_timeout:g}s ({ready}/{b.full} ready, {old} old pods left); the canary "
                    "keeps serving, promoting again resumes the wait"
                )
            await asyncio.sleep(self._spec.poll_interval)

    async def _check_service(self, b: _Binding, pod_template: Json) -> None:
        """Refuse a canary the Service would not send traffic to: gates would judge a canary without traffic."""
        service = await b.client.get(path("v1", "services", b.namespace, b.name))
        if service is None:
            raise PlatformError(f"{b.target}: no Service {b.name!r} in namespace {b.namespace!r} to send traffic")
        missing = k8s.missing_selection(service, k8s.labels(pod_template))
        if missing:
            raise PlatformError(
                f"{b.target}: Service {b.name!r} selects on {missing}, which the canary's pods would not carry; "
                "select on labels shared by every version (never on the version)"
            )

    async def _patch(
        self,
        b: _Binding,
        deployment: Json,
        change: Json,
        *,
        version: str | None,
        text: str,
        reason: str,
        warning: bool = False,
    ) -> None:
        """Patch a Deployment's spec with ``change``, annotate the transition, and record it as an Event."""
        name = str(k8s.meta(deployment).get("name"))
        annotations = self._annotations(b, version, text)
        if version and name == b.canary_name:
            annotations[k8s.VERSION_ANNOTATION] = version
        patched = await b.client.patch(
            b.deployment_path(name), {"metadata": {"annotations": annotations}, "spec": change}
        )
        await self._record(b, patched, reason, text, warning=warning)

    def _annotations(self, b: _Binding, version: str | None, text: str) -> dict[str, str]:
        found = {
            k8s.TRANSITION_ANNOTATION: text,
            k8s.TRANSITION_AT_ANNOTATION: datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if version:
            found[k8s.PROMOTION_ANNOTATION] = f"{b.target}@{version}"
        return found

    async def _record(self, b: _Binding, deployment: Json, reason: str, text: str, *, warning: bool = False) -> None:
        """Record a transition as an Event on the Deployment; best effort (the annotations already hold it)."""
        name = str(k8s.meta(deployment).get("name"))
        now = datetime.now(UTC).isoformat(timespec="seconds")
        involved = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "namespace": b.namespace}
        if uid := k8s.meta(deployment).get("uid"):
            involved["uid"] = uid
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{time.time_ns():x}{secrets.token_hex(2)}", "namespace": b.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": text,
            "type": "Warning" if warning else "Normal",
            "source": {"component": "vouch"},
            "reportingComponent": "vouch",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await b.client.create(path("v1", "events", b.namespace), event)
        except KubeApiError as exc:
            log.warning("%s: cannot record event %s on %s: %s", b.target, reason, name, exc)


@contextlib.contextmanager
def _translated(target: Target, action: str) -> Iterator[None]:
    """API failures become platform errors: retryable ones PlatformUnavailable, refusals PlatformError."""
    try:
        yield
    except KubeApiError as exc:
        kind = PlatformUnavailable if exc.retryable else PlatformError
        raise kind(f"{target}: {action} failed: {exc}") from exc
