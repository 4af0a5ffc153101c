"""The objects of a preview on Kubernetes, as plain JSON: what :mod:`~vouch.daemon.preview.kube` creates and reads.

A preview is one namespace, ``preview-<name>``, holding everything it runs, so removing the namespace
removes the preview whole and nothing of it can be left behind in a shared namespace. The namespace
carries what ``list``, ``down`` and the reaper need, and nothing else is ever read back:

* labels ``vouch.dev/preview: <name>``, ``vouch.dev/expires-at: <unix seconds>`` (a label, so the
  reaper's question "which are expired" needs nothing but the namespace list) and
  ``app.kubernetes.io/managed-by: vouch`` (a namespace without it is never deleted);
* annotations: who and what it is for (``vouch.dev/pr``, ``repo``, ``actor``, ``commit``, ``digest``),
  the ``service``, ``version``, ``created-at`` (RFC 3339), its ``address`` and ``mocks`` (their URLs),
  and ``vouch.dev/preview-id``, a random id telling this ``up``'s namespace from another's.

Inside: the service's Deployment (one replica of ``ServiceSpec.image`` at the version) and its Service;
per mock a ConfigMap with the mock's spec, a Deployment running vouch's own image
(``python -m vouch.daemon.preview.mock``) and a Service ``mock-<NAME>``. The service's environment is
its ``env`` plus the preview's, where ``{mock:NAME}`` is ``http://mock-NAME.<namespace>.svc:8080``.
Every object carries the namespace's labels; every pod runs as a non-root user on a read-only root
filesystem with no capabilities and no service-account token.

Everything here is pure (no I/O), so the manifests are tested directly.

Example::

    made = preview_objects("checkout", spec, "2.4.1", name="checkout-pr-42", created_at=now, ttl=3600,
                           owner={"pr": "42"}, settings=KubePreviewsSpec(image="ghcr.io/vouch-dev/vouch:1.0"),
                           preview_id="4f3e2d1c")
    for manifest in (made.namespace, *made.objects):
        ...
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from vouch.core.durations import Duration
from vouch.core.errors import InputError
from vouch.core.settings import Model
from vouch.daemon.preview.local import MOCK_MODULE
from vouch.daemon.preview.mockroutes import CONTROL_PREFIX
from vouch.daemon.preview.model import Preview
from vouch.rollout.config import ServiceSpec
from vouch.rollout.platforms.kube.objects import MANAGED_BY_LABEL, image_for, label_value
from vouch.rollout.platforms.processes import render
from vouch.rollout.preview import MOCK_PLACEHOLDER, MockSpec, PreviewSpec

Json = dict[str, Any]
ResourceKind = Literal["requests", "limits"]

PREVIEW_LABEL = "vouch.dev/preview"
"""On the namespace and everything in it: the preview's name."""
EXPIRES_LABEL = "vouch.dev/expires-at"
"""On the namespace and everything in it: when the reaper may remove it, in whole seconds since the epoch."""
COMPONENT_LABEL = "vouch.dev/preview-component"
"""On each Deployment, its pods and Service: ``service`` or ``mock-<NAME>``; what the Service selects."""
VERSION_LABEL = "vouch.dev/version"
ID_ANNOTATION = "vouch.dev/preview-id"
OWNER_KEYS = ("pr", "repo", "actor", "commit", "digest")
"""The owner fields a preview records, each as annotation ``vouch.dev/<key>``."""
NAMESPACE_PREFIX = "preview-"
MOCK_PORT = 8080
MOCK_SPEC_DIR = "/etc/mock"
MOCK_SPEC_FILE = "spec.json"
VOUCH_IMAGE_ENV = "VOUCH_IMAGE"
"""Names vouch's own image where it runs (the chart sets it on the daemon): the mocks' default image."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SERVICE_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_ANNOTATION = "vouch.dev/"


def _resources(cpu: str, memory: str, limit: str) -> dict[ResourceKind, dict[str, str]]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}


class KubePreviewsSpec(Model):
    """Previews on Kubernetes: which cluster, vouch's image for the mocks, and how long to wait."""

    image: str | None = None
    """The image the mocks run (vouch's own); default ``$VOUCH_IMAGE``, which the chart sets to the
    daemon's image. Needed only by previews that have mocks."""
    context: str | None = None
    """A kubeconfig context naming the cluster; none: in-cluster inside a pod, else the current context."""
    kubeconfig: str | None = None
    """A kubeconfig file; default ``$KUBECONFIG`` or ``~/.kube/config`` (unused in-cluster)."""
    port: int = Field(default=8080, ge=1, le=65535)
    """The port the service's container listens on: its Service's port, and ``{port}`` in its ``env``."""
    resources: dict[ResourceKind, dict[str, str]] = Field(default_factory=lambda: _resources("100m", "128Mi", "256Mi"))
    """Requests and limits of the service's container."""
    mock_resources: dict[ResourceKind, dict[str, str]] = Field(
        default_factory=lambda: _resources("50m", "64Mi", "128Mi")
    )
    """Requests and limits of each mock's container."""
    run_as_user: int | None = Field(default=65532, ge=1)
    """The user every container runs as (never root); null: the image's own user, which must not be root."""
    ready_timeout: Duration = Field(default=300.0, gt=0)
    """How long ``up`` waits for every Deployment to be available (image pulls included) before it
    removes the preview and fails."""
    delete_timeout: Duration = Field(default=60.0, gt=0)
    """How long ``down`` waits for the namespace to be gone or terminating."""
    poll_interval: Duration = Field(default=1.0, gt=0)
    """Time between two looks at the Deployments (``up``) or the namespace (``down``)."""


@dataclass(frozen=True)
class PreviewObjects:
    """Every object of one preview: the namespace, then what goes in it, in the order they are created."""

    namespace: Json
    objects: tuple[Json, ...]
    preview: Preview
    """What ``up`` returns once every Deployment is available."""

    @property
    def deployments(self) -> tuple[str, ...]:
        return tuple(_name(o) for o in self.objects if o["kind"] == "Deployment")


# --------------------------------------------------------------------------- names


def namespace_name(preview: str) -> str:
    """``preview-<name>``, shortened with a hash of the name when that is longer than a DNS label.

    >>> namespace_name("checkout-pr-42")
    'preview-checkout-pr-42'
    >>> len(namespace_name("x" * 63))
    63
    """
    full = f"{NAMESPACE_PREFIX}{preview}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(preview.encode()).hexdigest()[:8]
    return f"{full[: 63 - len(digest) - 1].rstrip('-')}-{digest}"


def mock_name(mock: str) -> str:
    return f"mock-{mock}"


def mock_url(mock: str, namespace: str) -> str:
    """The base URL of mock ``mock`` from inside the cluster."""
    return f"http://{mock_name(mock)}.{namespace}.svc:{MOCK_PORT}"


# --------------------------------------------------------------------------- building


def preview_objects(
    service_name: str,
    service: ServiceSpec,
    version: str,
    *,
    name: str,
    created_at: float,
    ttl: float,
    owner: Mapping[str, str],
    settings: KubePreviewsSpec,
    preview_id: str,
    mock_image: str | None = None,
) -> PreviewObjects:
    """The namespace and objects of preview ``name`` of ``service`` at ``version``; see the module docstring.

    Raises :class:`InputError` for what cannot be previewed on Kubernetes: no ``image`` with
    ``{version}``, no ``preview`` settings, names that make no valid object, unknown owner fields,
    mocks with no image to run them.
    """
    spec = _checked(service_name, service, owner=owner, mock_image=mock_image)
    namespace = namespace_name(name)
    created = math.floor(created_at)
    expires = math.ceil(created + ttl)
    labels = {PREVIEW_LABEL: name, EXPIRES_LABEL: str(expires), MANAGED_BY_LABEL: "vouch"}
    mocks = {mock.name: mock_url(mock.name, namespace) for mock in spec.mocks}
    preview = Preview(
        name=name,
        service=service_name,
        version=version,
        platform="kubernetes",
        created_at=float(created),
        expires_at=float(expires),
        address=f"{service_name}.{namespace}.svc:{settings.port}",
        mocks=mocks,
        owner={key: owner[key] for key in OWNER_KEYS if owner.get(key)},
        data={"namespace": namespace, "id": preview_id, "status": "starting"},
    )
    objects: list[Json] = []
    for mock in spec.mocks:
        assert mock_image is not None  # _checked refuses mocks without an image
        objects += _mock_objects(mock, namespace=namespace, labels=labels, image=mock_image, settings=settings)
    objects += _service_objects(preview, service, spec, labels=labels, settings=settings)
    return PreviewObjects(_namespace(preview, labels=labels, preview_id=preview_id), tuple(objects), preview)


def _checked(
    service_name: str, service: ServiceSpec, *, owner: Mapping[str, str], mock_image: str | None
) -> PreviewSpec:
    if not service.image or "{version}" not in service.image:
        raise InputError(
            f"service {service_name!r} needs an `image` with a '{{version}}' placeholder for a preview on Kubernetes"
        )
    if service.preview is None:
        raise InputError(
            f"service {service_name!r} has no `preview` settings: add `preview: {{}}` (no mocked backends) "
            "or declare its mocks, so a preview never calls real backends by accident"
        )
    if not _SERVICE_NAME.match(service_name):
        raise InputError(f"service {service_name!r} cannot name a Kubernetes Service: it must start with a letter")
    mocks = {mock_name(m.name) for m in service.preview.mocks}
    if service_name in mocks:
        raise InputError(f"service {service_name!r} has the name of one of its mocks' Services: rename the mock")
    if bad := sorted(n for n in mocks if not _DNS_LABEL.match(n)):
        raise InputError(f"mock names must end with a letter or digit to name a Kubernetes object: {bad}")
    if unknown := sorted(set(owner) - set(OWNER_KEYS)):
        raise InputError(f"unknown owner field(s) {unknown} of a preview; known: {', '.join(OWNER_KEYS)}")
    if mocks and not mock_image:
        raise InputError(
            f"the mocks of a preview on Kubernetes run vouch's own image: set previews.image or ${VOUCH_IMAGE_ENV}"
        )
    return service.preview


def _namespace(preview: Preview, *, labels: Mapping[str, str], preview_id: str) -> Json:
    created = datetime.fromtimestamp(preview.created_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    annotations = {
        **{f"{_ANNOTATION}{key}": value for key, value in preview.owner.items()},
        f"{_ANNOTATION}service": preview.service,
        f"{_ANNOTATION}version": preview.version,
        f"{_ANNOTATION}created-at": created,
        f"{_ANNOTATION}address": preview.address,
        f"{_ANNOTATION}mocks": json.dumps(dict(preview.mocks), sort_keys=True),
        ID_ANNOTATION: preview_id,
    }
    metadata = {"name": preview.data["namespace"], "labels": dict(labels), "annotations": annotations}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def _service_objects(
    preview: Preview,
    service: ServiceSpec,
    spec: PreviewSpec,
    *,
    labels: Mapping[str, str],
    settings: KubePreviewsSpec,
) -> list[Json]:
    """The service's Deployment and Service; its env wired to the mocks, ``{port}`` and the rest filled."""
    namespace = str(preview.data["namespace"])
    values = {
        "port": str(settings.port),
        "version": preview.version,
        "service": preview.service,
        "environment": preview.name,
        "replica": "0",
        "python": "python",
    }
    urls = dict(preview.mocks)
    wired = {key: MOCK_PLACEHOLDER.sub(lambda m: urls[m.group(1)], value) for key, value in spec.env.items()}
    env = [{"name": key, "value": render(value, values)} for key, value in {**service.env, **wired}.items()]
    assert service.image is not None
    container: Json = {
        "name": preview.service,
        "image": image_for(service.image, preview.version),
        "ports": [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}],
        "env": env,
        "readinessProbe": {
            "httpGet": {"path": service.readiness.path, "port": "http"},
            "periodSeconds": max(1, math.ceil(service.readiness.interval)),
            "timeoutSeconds": 2,
        },
        "resources": _copy(settings.resources),
    }
    pod_labels = {VERSION_LABEL: label_value(preview.version), "app.kubernetes.io/name": preview.service}
    deployment = _deployment(
        preview.service, "service", namespace, labels, container, settings=settings, pod_labels=pod_labels
    )
    return [deployment, _service(preview.service, "service", namespace, labels, port=settings.port)]


def _mock_objects(
    mock: MockSpec, *, namespace: str, labels: Mapping[str, str], image: str, settings: KubePreviewsSpec
) -> list[Json]:
    """A mock's ConfigMap (its spec, as the local preview writes it), Deployment and Service."""
    name = mock_name(mock.name)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, namespace, labels, component=name),
        "data": {MOCK_SPEC_FILE: mock.model_dump_json(by_alias=True, exclude_none=True)},
    }
    container: Json = {
        "name": "mock",
        "image": image,
        "command": ["python", "-m", MOCK_MODULE, "--spec", f"{MOCK_SPEC_DIR}/{MOCK_SPEC_FILE}"],
        "args": ["--host", "0.0.0.0", "--port", str(MOCK_PORT)],
        "ports": [{"name": "http", "containerPort": MOCK_PORT, "protocol": "TCP"}],
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "readinessProbe": {
            "httpGet": {"path": f"{CONTROL_PREFIX}health", "port": "http"},
            "periodSeconds": 1,
            "timeoutSeconds": 2,
        },
        "resources": _copy(settings.mock_resources),
        "volumeMounts": [{"name": "spec", "mountPath": MOCK_SPEC_DIR, "readOnly": True}],
    }
    volume = {"name": "spec", "configMap": {"name": name}}
    deployment = _deployment(name, name, namespace, labels, container, settings=settings, volumes=[volume])
    return [configmap, deployment, _service(name, name, namespace, labels, port=MOCK_PORT)]


def _deployment(
    name: str,
    component: str,
    namespace: str,
    labels: Mapping[str, str],
    container: Json,
    *,
    settings: KubePreviewsSpec,
    pod_labels: Mapping[str, str] | None = None,
    volumes: list[Json] | None = None,
) -> Json:
    """One replica of ``container``, locked down, with a writable ``/tmp`` and nothing else writable."""
    selector = {PREVIEW_LABEL: labels[PREVIEW_LABEL], COMPONENT_LABEL: component}
    user: Json = {"runAsUser": settings.run_as_user} if settings.run_as_user is not None else {}
    locked = {
        "runAsNonRoot": True,
        **user,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = [*container.get("volumeMounts", []), {"name": "tmp", "mountPath": "/tmp"}]
    pod_spec: Json = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, **user, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{**container, "securityContext": locked, "volumeMounts": mounts}],
        "volumes": [*(volumes or []), {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace, labels, component=component),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 1,
            "progressDeadlineSeconds": max(1, math.ceil(settings.ready_timeout)),
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**labels, COMPONENT_LABEL: component, **(pod_labels or {})}},
                "spec": pod_spec,
            },
        },
    }


def _service(name: str, component: str, namespace: str, labels: Mapping[str, str], *, port: int) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels, component=component),
        "spec": {
            "type": "ClusterIP",
            "selector": {PREVIEW_LABEL: labels[PREVIEW_LABEL], COMPONENT_LABEL: component},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _metadata(name: str, namespace: str, labels: Mapping[str, str], *, component: str) -> Json:
    return {"name": name, "namespace": namespace, "labels": {**labels, COMPONENT_LABEL: component}}


def _copy(resources: Mapping[ResourceKind, Mapping[str, str]]) -> Json:
    return {kind: dict(values) for kind, values in resources.items()}


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name"))


# --------------------------------------------------------------------------- reading back


def is_preview(namespace: Mapping[str, Any], name: str | None = None) -> bool:
    """Whether ``namespace`` is one vouch made for a preview (named ``name``, when given).

    Checked on every namespace before it is deleted: the API server may ignore a label selector.
    """
    labels = _meta(namespace).get("labels") or {}
    found = labels.get(PREVIEW_LABEL)
    return labels.get(MANAGED_BY_LABEL) == "vouch" and bool(found) and (name is None or found == name)


def terminating(namespace: Mapping[str, Any]) -> bool:
    """Being deleted: marked with a deletion time, or in phase ``Terminating``."""
    status = namespace.get("status") or {}
    return bool(_meta(namespace).get("deletionTimestamp")) or status.get("phase") == "Terminating"


def preview_of(namespace: Mapping[str, Any]) -> Preview | None:
    """The preview a namespace holds, read from its labels and annotations; None when they do not say.

    >>> labels = {"vouch.dev/preview": "a", "vouch.dev/expires-at": "60", "app.kubernetes.io/managed-by": "vouch"}
    >>> ns = {"metadata": {"name": "preview-a", "labels": labels,
    ...                    "annotations": {"vouch.dev/created-at": "1970-01-01T00:00:00Z"}}}
    >>> preview_of(ns).expires_at
    60.0
    """
    if not is_preview(namespace):
        return None
    metadata = _meta(namespace)
    labels, notes = metadata.get("labels") or {}, metadata.get("annotations") or {}
    try:
        expires = float(int(labels[EXPIRES_LABEL]))
        created = datetime.fromisoformat(str(notes[f"{_ANNOTATION}created-at"])).timestamp()
        mocks = json.loads(notes.get(f"{_ANNOTATION}mocks") or "{}")
    except (KeyError, ValueError, TypeError):
        return None
    return Preview(
        name=str(labels[PREVIEW_LABEL]),
        service=str(notes.get(f"{_ANNOTATION}service", "")),
        version=str(notes.get(f"{_ANNOTATION}version", "")),
        platform="kubernetes",
        created_at=created,
        expires_at=expires,
        address=str(notes.get(f"{_ANNOTATION}address", "")),
        mocks={str(k): str(v) for k, v in mocks.items()} if isinstance(mocks, dict) else {},
        owner={key: str(notes[f"{_ANNOTATION}{key}"]) for key in OWNER_KEYS if f"{_ANNOTATION}{key}" in notes},
        data={
            "namespace": str(metadata.get("name")),
            "id": str(notes.get(ID_ANNOTATION, "")),
            "status": "terminating" if terminating(namespace) else "up",
        },
    )


def id_of(namespace: Mapping[str, Any]) -> str | None:
    """The id of the ``up`` that made ``namespace``."""
    found = (_meta(namespace).get("annotations") or {}).get(ID_ANNOTATION)
    return str(found) if found else None


def available(deployment: Mapping[str, Any]) -> bool:
    """Every desired replica of the Deployment's current template is available."""
    metadata, status = _meta(deployment), deployment.get("status") or {}
    generation, observed = metadata.get("generation"), status.get("observedGeneration")
    if isinstance(generation, int) and (not isinstance(observed, int) or observed < generation):
        return False
    desired = (deployment.get("spec") or {}).get("replicas", 1)
    count = status.get("availableReplicas")
    return isinstance(count, int) and count >= desired and status.get("updatedReplicas", desired) >= desired


def failure(deployment: Mapping[str, Any]) -> str | None:
    """Why the Deployment will not become available by itself (its progress deadline passed, pods refused)."""
    for condition in (deployment.get("status") or {}).get("conditions") or ():
        if not isinstance(condition, dict):
            continue
        kind, status = condition.get("type"), condition.get("status")
        stuck = kind == "Progressing" and status == "False"
        if stuck or (kind == "ReplicaFailure" and status == "True"):
            return f"{condition.get('reason') or kind}: {condition.get('message') or ''}".rstrip(": ")
    return None


def _meta(obj: Mapping[str, Any]) -> Json:
    found = obj.get("metadata")
    return found if isinstance(found, dict) else {}
