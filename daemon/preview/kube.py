"""Previews on Kubernetes: a namespace per preview, labelled with its expiry, removed whole by ``down`` or the reaper.

``up`` creates the namespace first (with its TTL labels and owner annotations, see
:mod:`~vouch.daemon.preview.kubeobjects`), then the mocks' ConfigMaps, Deployments and Services, then
the service's Deployment and Service, and polls the Deployments until each is available or
``ready_timeout`` passes. A preview that does not come up is removed before the error is raised. Since
the namespace exists before anything in it, a command killed at any point leaves a namespace the
reaper recognises and removes once it expires; nothing needs to be remembered on the machine that ran
``up``, so ``down``, ``list`` and the reaper work from any machine that reaches the cluster.

``down`` deletes the namespace (propagation ``Background``: the cluster's namespace controller removes
everything in it) and waits until it is gone or terminating. ``list`` and the reaper list namespaces
by label, and check the labels again themselves (a server may ignore the selector). A namespace is
deleted only when its labels say vouch made it for that preview; any other is left alone.

The API permissions these calls need are in :mod:`~vouch.rollout.platforms.kube.rbac` (user
``previews``): namespaces ``create``, ``get``, ``list``, ``delete``; Deployments ``create``, ``get``;
Services and ConfigMaps ``create`` — cluster-wide, as the namespaces are made on the fly.

Without an ``api`` given, each call connects to the cluster the settings name (in-cluster, or a
kubeconfig context) and closes the connection when done, so a command or the daemon's reaper holds
no connection between calls.

Example::

    previews = KubePreviews(KubePreviewsSpec(context="ci", image="ghcr.io/vouch-dev/vouch:1.4.0"))
    preview = await previews.up("checkout", spec, "2.4.1", name="checkout-pr-42", owner={"pr": "42"})
    print(preview.url, dict(preview.mocks))   # http://checkout.preview-checkout-pr-42.svc:8080 ...
    await previews.down("checkout-pr-42")
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

from vouch.core.errors import ConflictError, InputError, NotFoundError, PlatformError, PlatformUnavailable
from vouch.daemon.preview.kubeobjects import (
    EXPIRES_LABEL,
    PREVIEW_LABEL,
    VOUCH_IMAGE_ENV,
    Json,
    KubePreviewsSpec,
    PreviewObjects,
    available,
    failure,
    id_of,
    is_preview,
    mock_name,
    namespace_name,
    preview_objects,
    preview_of,
    terminating,
)
from vouch.daemon.preview.local import ListedPreview
from vouch.daemon.preview.model import Preview
from vouch.daemon.preview.state import check_name
from vouch.rollout.config import ServiceSpec
from vouch.rollout.platforms.kube.client import KubeApi, KubeApiError, RetryPolicy, connect, path
from vouch.rollout.platforms.kube.objects import MANAGED_BY_LABEL
from vouch.rollout.platforms.kube.settings import KubernetesPlatformSpec

log = logging.getLogger(__name__)

NAMESPACES = "/api/v1/namespaces"
SELECTOR = f"{MANAGED_BY_LABEL}=vouch,{PREVIEW_LABEL}"
"""The namespaces of previews (checked again on the client)."""
COLLECTIONS = {
    "Deployment": ("apps/v1", "deployments"),
    "Service": ("v1", "services"),
    "ConfigMap": ("v1", "configmaps"),
}


class KubePreviews:
    """Previews as namespaces of one cluster; see the module docstring."""

    platform = "kubernetes"

    def __init__(
        self,
        settings: KubePreviewsSpec | None = None,
        *,
        api: KubeApi | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``api``: use this client (the caller closes it) instead of connecting per call."""
        self._settings = settings or KubePreviewsSpec()
        self._api = api
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._forbidden_told = False

    @classmethod
    def on_platform(cls, platform: KubernetesPlatformSpec, settings: KubePreviewsSpec | None = None) -> KubePreviews:
        """Previews in the cluster of the kubernetes platform's own context, retried as its calls are."""
        base = settings or KubePreviewsSpec()
        cluster = {"context": base.context or platform.context, "kubeconfig": base.kubeconfig or platform.kubeconfig}
        retry = RetryPolicy(
            request_timeout=platform.request_timeout,
            initial=platform.retry_initial,
            maximum=platform.retry_max,
            deadline=platform.retry_deadline,
        )
        return cls(base.model_copy(update=cluster), retry=retry)

    # ------------------------------------------------------------------ up

    async def up(
        self,
        service_name: str,
        service: ServiceSpec,
        version: str,
        *,
        name: str,
        ttl: float | None = None,
        owner: Mapping[str, str] | None = None,
    ) -> Preview:
        """Create the preview's namespace and objects, wait until every Deployment is available, return it.

        Raises :class:`ConflictError` when the namespace exists already, :class:`InputError` for a service
        that cannot be previewed on Kubernetes, and :class:`PlatformError` when the API refuses or the
        Deployments are not available in time; then the namespace is removed again.
        """
        ttl = (service.preview.ttl if service.preview is not None else 1.0) if ttl is None else ttl
        if ttl <= 0:
            raise InputError(f"a preview's ttl must be positive, not {ttl}")
        made = preview_objects(
            service_name,
            service,
            version,
            name=check_name(name),
            created_at=self._clock(),
            ttl=ttl,
            owner=owner or {},
            settings=self._settings,
            preview_id=secrets.token_hex(8),
            mock_image=self._settings.image or self._environ.get(VOUCH_IMAGE_ENV) or None,
        )
        async with self._session() as api:
            try:
                await self._create_namespace(api, made)
                for manifest in made.objects:
                    await self._create(api, manifest)
                await self._wait_available(api, made)
            except BaseException:
                await asyncio.shield(self._discard(api, made.preview))
                raise
        return dataclasses.replace(made.preview, data={**made.preview.data, "status": "up"})

    async def _create_namespace(self, api: KubeApi, made: PreviewObjects) -> None:
        """Create the namespace; a 409 is our own create whose answer was lost (same id), or a conflict."""
        namespace, name = str(made.preview.data["namespace"]), made.preview.name
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._retry.deadline
        while True:
            with _translated(f"cannot create namespace {namespace}"):
                if await api.create(NAMESPACES, made.namespace) is not None:
                    return
                found = await api.get(_namespace_path(namespace))
            if found is not None:
                if id_of(found) == made.preview.data["id"]:
                    return
                if terminating(found):
                    raise ConflictError(
                        f"preview {name} is still being removed (namespace {namespace}): try again soon"
                    )
                what = "preview" if is_preview(found, name) else "namespace that is not a vouch preview"
                raise ConflictError(
                    f"namespace {namespace} exists already (a {what}): `vouch preview down {name}` or another name"
                )
            if loop.time() > give_up:  # refused as existing, yet not there: it was just removed
                raise PlatformUnavailable(f"cannot create namespace {namespace}: conflicts kept coming")
            await asyncio.sleep(self._retry.initial)

    async def _create(self, api: KubeApi, manifest: Json) -> None:
        """Create one object in the preview's fresh namespace; one that exists is our own retried create."""
        group_version, resource = COLLECTIONS[manifest["kind"]]
        metadata = manifest["metadata"]
        with _translated(f"cannot create {manifest['kind']} {metadata['name']} in namespace {metadata['namespace']}"):
            await api.create(path(group_version, resource, metadata["namespace"]), manifest)

    async def _wait_available(self, api: KubeApi, made: PreviewObjects) -> None:
        """Poll the Deployments until each is available; fail on a stuck one or at ``ready_timeout``."""
        namespace, name = str(made.preview.data["namespace"]), made.preview.name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.ready_timeout
        pending = list(made.deployments)
        while True:
            waiting: list[str] = []
            for deployment in pending:
                with _translated(f"cannot read Deployment {deployment} in namespace {namespace}"):
                    found = await api.get(path("apps/v1", "deployments", namespace, deployment))
                if found is None:
                    raise PlatformError(f"preview {name}: Deployment {deployment} disappeared while coming up")
                if (why := failure(found)) is not None:
                    raise PlatformError(f"preview {name} did not come up: Deployment {deployment}: {why}")
                if not available(found):
                    waiting.append(deployment)
            pending = waiting
            if not pending:
                return
            left = deadline - loop.time()
            if left <= 0:
                raise PlatformError(
                    f"preview {name} did not come up: Deployment(s) {', '.join(pending)} not available within "
                    f"{self._settings.ready_timeout:g}s (see `kubectl -n {namespace} get pods`)"
                )
            await asyncio.sleep(min(self._settings.poll_interval, left))

    async def _discard(self, api: KubeApi, preview: Preview) -> None:
        """Clean up after a failed ``up``: remove its namespace if this ``up`` made it (never another's of the
        same name); a failure is logged, and the reaper removes the namespace once it expires."""
        try:
            await self._remove(api, str(preview.data["namespace"]), only_id=str(preview.data["id"]))
        except Exception:
            log.exception("could not remove preview %s after it failed to come up", preview.name)

    # ------------------------------------------------------------------ down, list, reap

    async def down(self, name: str) -> Preview | None:
        """Delete the preview's namespace and wait until it is gone or terminating.

        Returns the preview removed (``None`` when its annotations cannot be read); raises
        :class:`NotFoundError` when there is no such preview, and :class:`ConflictError` (touching
        nothing) when the namespace of that name is not one vouch made for it.
        """
        namespace = namespace_name(check_name(name))
        async with self._session() as api:
            with _translated(f"cannot read namespace {namespace}"):
                found = await api.get(_namespace_path(namespace))
            if found is None:
                raise NotFoundError(f"no preview named {name!r}; `vouch preview list` shows those that exist")
            if not is_preview(found, name):
                raise ConflictError(f"namespace {namespace} is not vouch's preview {name}: it is left alone")
            await self._remove(api, namespace)
        return preview_of(found)

    async def _remove(self, api: KubeApi, namespace: str, *, only_id: str | None = None) -> None:
        """Delete ``namespace`` until it is gone or terminating (a repeated delete of a terminating one is 409).

        With ``only_id``, a namespace made by another ``up`` is left alone.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.delete_timeout
        where = _namespace_path(namespace)
        while True:
            refused = False
            with _translated(f"cannot delete namespace {namespace}"):
                found = await api.get(where)
                if found is None or terminating(found) or (only_id is not None and id_of(found) != only_id):
                    return
                if not is_preview(found):
                    raise PlatformError(f"namespace {namespace} is not a vouch preview: it is left alone")
                try:
                    await api.request(
                        "DELETE", where, query=[("propagationPolicy", "Background")], retry_conflicts=False
                    )
                except KubeApiError as exc:
                    if exc.status not in (404, 409):
                        raise
                    refused = True
            if loop.time() > deadline:
                raise PlatformError(f"namespace {namespace} is not terminating {self._settings.delete_timeout:g}s on")
            if refused:
                await asyncio.sleep(self._settings.poll_interval)

    async def list(self, now: float) -> builtins.list[ListedPreview]:
        """Every preview not being removed, by name, with its age, time left, and whether all of it is available."""
        async with self._session() as api:
            listed = []
            for namespace in await self._namespaces(api):
                preview = preview_of(namespace)
                if preview is None:
                    log.warning(
                        "namespace %s looks like a preview but its annotations cannot be read", _name(namespace)
                    )
                    continue
                running = await self._running(api, preview)
                listed.append(ListedPreview(preview, now - preview.created_at, preview.expires_at - now, running))
        return sorted(listed, key=lambda item: item.preview.name)

    async def _running(self, api: KubeApi, preview: Preview) -> bool:
        namespace = str(preview.data["namespace"])
        for deployment in (preview.service, *(mock_name(m) for m in preview.mocks)):
            with _translated(f"cannot read Deployment {deployment} in namespace {namespace}"):
                found = await api.get(path("apps/v1", "deployments", namespace, deployment))
            if found is None or not available(found):
                return False
        return True

    async def reap(self, now: float) -> builtins.list[str]:
        """Remove every preview whose ``expires-at`` label is past ``now``; return their names (failures are logged).

        A cluster where vouch may not list namespaces (the chart's ``previews.enabled`` is off) has nothing
        of vouch's to reap: said once, then nothing.
        """
        removed = []
        async with self._session() as api:
            try:
                namespaces = await self._namespaces(api)
            except PlatformError as exc:
                if not isinstance(exc.__cause__, KubeApiError) or exc.__cause__.status != 403:
                    raise
                if not self._forbidden_told:
                    log.warning("previews on Kubernetes are not reaped: %s", exc)
                    self._forbidden_told = True
                return []
            for namespace in namespaces:
                name, expires = _expiry(namespace)
                if expires is None or now < expires:
                    continue
                try:
                    await self._remove(api, _name(namespace))
                except PlatformError as exc:
                    log.error("cannot remove expired preview %s: %s", name, exc)
                    continue
                removed.append(name)
        return removed

    async def _namespaces(self, api: KubeApi) -> builtins.list[Json]:
        """The namespaces of previews that are not being removed (the selector is checked here again)."""
        with _translated("cannot list the namespaces of previews"):
            found = await api.list_objects(NAMESPACES, label_selector=SELECTOR)
        return [n for n in found if is_preview(n) and not terminating(n)]

    # ------------------------------------------------------------------ the connection

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[KubeApi]:
        """The given client, or a new one for this call, closed after it (shielded from cancellation)."""
        if self._api is not None:
            yield self._api
            return
        reconnect = functools.partial(connect, context=self._settings.context, kubeconfig=self._settings.kubeconfig)
        try:
            api = KubeApi(await reconnect(), self._retry, reconnect=reconnect)
        except KubeApiError as exc:
            raise PlatformError(f"cannot reach the cluster for previews: {exc}") from exc
        try:
            yield api
        finally:
            await asyncio.shield(api.close())


# --------------------------------------------------------------------------- helpers


def _namespace_path(namespace: str) -> str:
    return f"{NAMESPACES}/{quote(namespace, safe='')}"


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name"))


def _expiry(namespace: Mapping[str, Any]) -> tuple[str, float | None]:
    """The preview's name and expiry from the namespace's labels; no expiry when the label is not a number."""
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    name = str(labels.get(PREVIEW_LABEL))
    try:
        return name, float(int(labels[EXPIRES_LABEL]))
    except (KeyError, ValueError, TypeError):
        log.warning(
            "preview %s (namespace %s) has no valid %s label: not reaped", name, _name(namespace), EXPIRES_LABEL
        )
        return name, None


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """API failures (after the client's retries): retryable ones PlatformUnavailable, refusals PlatformError."""
    try:
        yield
    except KubeApiError as exc:
        hint = " (vouch needs the chart's previews permissions: previews.enabled)" if exc.status == 403 else ""
        kind = PlatformUnavailable if exc.retryable else PlatformError
        raise kind(f"{action}: {exc}{hint}") from exc
