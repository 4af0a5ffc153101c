"""Pure functions over Kubernetes objects (plain JSON dicts): what the platform reads and writes.

Everything here is a decision without I/O, so it is tested directly: which pods belong to which
track, which version a template runs, what the canary Deployment looks like, and the smallest
merge patch that turns what is into what should be (an empty patch means there is nothing to do,
which is what makes every platform call idempotent without extra bookkeeping).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from vouch.core.errors import PlatformError
from vouch.rollout.model import Endpoint, Observed

Json = dict[str, Any]

TRACK_LABEL = "vouch.dev/track"
"""On the canary's pods (``canary``): keeps them apart from stable's though both match its selector."""
VERSION_LABEL = "vouch.dev/version"
"""On pod templates: the version (label-safe); the image tag stays the source of truth."""
VERSION_ANNOTATION = "vouch.dev/version"
"""On the canary Deployment: the exact version it runs."""
PROMOTION_ANNOTATION = "vouch.dev/promotion"
"""On both Deployments: the promotion that last changed them, ``service/environment@version``."""
TRANSITION_ANNOTATION = "vouch.dev/last-transition"
TRANSITION_AT_ANNOTATION = "vouch.dev/last-transition-at"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CANARY = "canary"
DEFAULT_PORT = 80

_COPIED_SPEC = ("minReadySeconds", "progressDeadlineSeconds", "revisionHistoryLimit", "strategy")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


# --------------------------------------------------------------------------- small readers


def meta(obj: Mapping[str, Any]) -> Json:
    found = obj.get("metadata")
    return found if isinstance(found, dict) else {}


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    found = meta(obj).get("labels")
    return dict(found) if isinstance(found, dict) else {}


def spec(obj: Mapping[str, Any]) -> Json:
    found = obj.get("spec")
    return found if isinstance(found, dict) else {}


def replicas(deployment: Mapping[str, Any]) -> int:
    """Desired replicas; the API's default is 1 when the field is absent."""
    value = spec(deployment).get("replicas", 1)
    return value if isinstance(value, int) else 1


def template(deployment: Mapping[str, Any]) -> Json:
    found = spec(deployment).get("template")
    if not isinstance(found, dict):
        raise PlatformError(f"Deployment {meta(deployment).get('name')!r} has no pod template")
    return found


def selector(deployment: Mapping[str, Any]) -> Json:
    found = spec(deployment).get("selector")
    if not isinstance(found, dict):
        raise PlatformError(f"Deployment {meta(deployment).get('name')!r} has no selector")
    return found


# --------------------------------------------------------------------------- versions and images


def image_for(image_template: str, version: str) -> str:
    """``registry/shop:{version}`` with the version filled in."""
    return image_template.replace("{version}", version)


def version_from_image(image_template: str, image: str) -> str | None:
    """The version an image runs, if the image follows the service's template.

    >>> version_from_image("reg/shop:{version}", "reg/shop:1.2.0")
    '1.2.0'
    >>> version_from_image("reg/shop:{version}", "reg/other:1.2.0") is None
    True
    """
    before, _, after = image_template.partition("{version}")
    pattern = re.escape(before) + r"([A-Za-z0-9_.+-]+)" + re.escape(after)
    match = re.fullmatch(pattern, image)
    return match.group(1) if match else None


def label_value(version: str) -> str:
    """``version`` as a valid label value (63 characters of ``[A-Za-z0-9_.-]``, alphanumeric ends)."""
    return _LABEL_UNSAFE.sub("_", version)[:63].strip("_.-") or "unknown"


def containers(pod_spec: Mapping[str, Any]) -> list[Json]:
    found = pod_spec.get("containers")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def managed_index(pod_spec: Mapping[str, Any], service: str) -> int:
    """Which container runs the service's image: the one named after the service, else the first."""
    found = containers(pod_spec)
    if not found:
        raise PlatformError(f"the pod template of {service!r} has no containers")
    names = [c.get("name") for c in found]
    return names.index(service) if service in names else 0


def known_version(pod_or_template: Mapping[str, Any], *, service: str, image_template: str) -> str | None:
    """The version vouch can name: from the image when it follows the service's template, else the label."""
    pod_spec = spec(pod_or_template)
    found = containers(pod_spec)
    if found:
        image = found[managed_index(pod_spec, service)].get("image")
        if isinstance(image, str) and (version := version_from_image(image_template, image)) is not None:
            return version
    return labels(pod_or_template).get(VERSION_LABEL)


def version_of(pod_or_template: Mapping[str, Any], *, service: str, image_template: str) -> str | None:
    """The version a pod (or pod template) runs; an image off the template is its own version.

    So a Deployment running an image vouch cannot name still counts as a stable version to judge a
    canary against, never as "nothing deployed yet".
    """
    version = known_version(pod_or_template, service=service, image_template=image_template)
    if version is not None:
        return version
    pod_spec = spec(pod_or_template)
    found = containers(pod_spec)
    image = found[managed_index(pod_spec, service)].get("image") if found else None
    return image if isinstance(image, str) else None


def stable_version(stable: Mapping[str, Any], *, service: str, image_template: str) -> str | None:
    """The stable Deployment's version; None only for a placeholder, which makes a promotion a first deploy.

    A placeholder runs no pods, has nothing vouch can name, and was never scaled by vouch (a stable
    that a 100% canary step scaled to 0 keeps its version).
    """
    pod_template = template(stable)
    untouched = TRANSITION_ANNOTATION not in (meta(stable).get("annotations") or {})
    if (
        replicas(stable) == 0
        and untouched
        and known_version(pod_template, service=service, image_template=image_template) is None
    ):
        return None
    return version_of(pod_template, service=service, image_template=image_template)


def with_version(pod_template: Mapping[str, Any], *, service: str, version: str, image: str, track: str | None) -> Json:
    """A copy of ``pod_template`` running ``image``, labelled with its version (and track)."""
    made = copy.deepcopy(dict(pod_template))
    metadata = made.setdefault("metadata", {})
    pod_labels = metadata.setdefault("labels", {})
    pod_labels[VERSION_LABEL] = label_value(version)
    if track is not None:
        pod_labels[TRACK_LABEL] = track
    pod_spec = made.setdefault("spec", {})
    index = managed_index(pod_spec, service)
    pod_spec["containers"][index]["image"] = image
    return made


# --------------------------------------------------------------------------- selectors


def selector_matches(label_selector: Mapping[str, Any], pod_labels: Mapping[str, str]) -> bool:
    """Whether labels match a LabelSelector (``matchLabels`` and ``matchExpressions``).

    Checked on the client too: some API servers (and test emulators) ignore ``labelSelector``.

    >>> selector_matches({"matchLabels": {"app": "shop"}}, {"app": "shop", "x": "y"})
    True
    """
    for key, value in (label_selector.get("matchLabels") or {}).items():
        if pod_labels.get(key) != value:
            return False
    for expression in label_selector.get("matchExpressions") or ():
        key, operator = expression.get("key"), expression.get("operator")
        values = set(expression.get("values") or ())
        present = key in pod_labels
        if operator == "In" and not (present and pod_labels[key] in values):
            return False
        if operator == "NotIn" and present and pod_labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def selector_query(label_selector: Mapping[str, Any]) -> str:
    """A LabelSelector as the ``labelSelector`` query parameter.

    >>> selector_query({"matchLabels": {"app": "shop"}, "matchExpressions": [{"key": "t", "operator": "Exists"}]})
    'app=shop,t'
    """
    parts = [f"{key}={value}" for key, value in sorted((label_selector.get("matchLabels") or {}).items())]
    for expression in label_selector.get("matchExpressions") or ():
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(sorted(expression.get("values") or ()))
        parts.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": f"{key}"}.get(
                str(operator), f"!{key}"
            )
        )
    return ",".join(parts)


# --------------------------------------------------------------------------- patches


def merge_diff(current: Mapping[str, Any], desired: Mapping[str, Any]) -> Json:
    """The JSON merge patch (RFC 7386) turning ``current`` into ``desired``; empty when they are equal.

    >>> merge_diff({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 5}})
    {'b': {'d': None, 'c': 5}}
    """
    patch: Json = {key: None for key in current if key not in desired and current[key] is not None}
    for key, value in desired.items():
        old = current.get(key)
        if value is None:  # a null is an absent field to the API: remove it only where it is set
            if old is not None:
                patch[key] = None
        elif isinstance(old, dict) and isinstance(value, dict):
            sub = merge_diff(old, value)
            if sub:
                patch[key] = sub
        elif key not in current or old != value:
            patch[key] = value
    return patch


def canary_deployment(
    stable: Mapping[str, Any],
    *,
    name: str,
    pod_template: Json,
    replica_count: int,
    annotations: dict[str, str],
) -> Json:
    """The canary Deployment: the stable's spec around ``pod_template``, selecting only canary pods.

    Owned by the stable Deployment (when it has a uid), so deleting the service removes its canary.
    """
    stable_meta = meta(stable)
    match = copy.deepcopy(selector(stable))
    match.setdefault("matchLabels", {})[TRACK_LABEL] = CANARY
    own_spec: Json = {"replicas": replica_count, "selector": match, "template": pod_template}
    for key in _COPIED_SPEC:
        if key in spec(stable):
            own_spec[key] = copy.deepcopy(spec(stable)[key])
    metadata: Json = {
        "name": name,
        "namespace": stable_meta.get("namespace"),
        "labels": {**labels(stable), MANAGED_BY_LABEL: "vouch", TRACK_LABEL: CANARY},
        "annotations": annotations,
    }
    if stable_meta.get("uid"):
        metadata["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": stable_meta.get("name"), "uid": stable_meta["uid"]}
        ]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": own_spec}


def missing_selection(service: Mapping[str, Any], pod_labels: Mapping[str, str]) -> dict[str, str]:
    """Labels the Service selects on that pods with ``pod_labels`` lack (empty: the Service reaches them)."""
    wanted = spec(service).get("selector") or {}
    return {key: value for key, value in wanted.items() if pod_labels.get(key) != value}


def service_port(service: Mapping[str, Any]) -> int:
    ports = spec(service).get("ports") or ()
    first = ports[0] if ports and isinstance(ports[0], dict) else {}
    port = first.get("port")
    return port if isinstance(port, int) else DEFAULT_PORT


# --------------------------------------------------------------------------- observing


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready, addressed and not terminating: a pod the Service sends traffic to."""
    status = pod.get("status") or {}
    if meta(pod).get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def pod_alive(pod: Mapping[str, Any]) -> bool:
    """Not terminating and not finished: still counts toward its Deployment."""
    phase = (pod.get("status") or {}).get("phase")
    return not meta(pod).get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def pod_endpoint(pod: Mapping[str, Any], *, service: str) -> Endpoint:
    """The pod's address and the port of the service's container (its first declared port)."""
    pod_spec = spec(pod)
    ordered = containers(pod_spec)
    if ordered:
        managed = ordered.pop(managed_index(pod_spec, service))
        ordered.insert(0, managed)
    for container in ordered:
        for port in container.get("ports") or ():
            if isinstance(port, dict) and isinstance(port.get("containerPort"), int):
                return Endpoint(str((pod.get("status") or {})["podIP"]), port["containerPort"])
    return Endpoint(str((pod.get("status") or {})["podIP"]), DEFAULT_PORT)


def split_pods(stable: Json, canary: Json | None, pods: list[Json]) -> tuple[list[Json], list[Json]]:
    """Stable's pods and the canary's, by selector and track label, each sorted by name."""
    stable_selector = selector(stable)
    canary_selector = selector(canary) if canary is not None else None
    stable_pods, canary_pods = [], []
    for pod in sorted(pods, key=lambda p: str(meta(p).get("name"))):
        pod_labels = labels(pod)
        if pod_labels.get(TRACK_LABEL) == CANARY:
            if canary_selector is not None and selector_matches(canary_selector, pod_labels):
                canary_pods.append(pod)
        elif selector_matches(stable_selector, pod_labels):
            stable_pods.append(pod)
    return stable_pods, canary_pods


def observe(stable: Json, canary: Json | None, pods: list[Json], *, service: str, image_template: str) -> Observed:
    """What runs: stable's version and replicas, the canary's, and the ready pods' addresses."""
    stable_pods, canary_pods = split_pods(stable, canary, pods)

    def version(obj: Mapping[str, Any]) -> str | None:
        return version_of(obj, service=service, image_template=image_template)

    stable_now = stable_version(stable, service=service, image_template=image_template)
    stable_ready = [p for p in stable_pods if pod_ready(p) and version(p) == stable_now]
    canary_desired = replicas(canary) if canary is not None else 0
    canary_version = version(template(canary)) if canary is not None and canary_desired > 0 else None
    canary_ready = [p for p in canary_pods if pod_ready(p) and (canary_version is None or version(p) == canary_version)]
    return Observed(
        stable_version=stable_now,
        canary_version=canary_version,
        stable_desired=replicas(stable),
        stable_ready=len(stable_ready),
        canary_desired=canary_desired if canary_version is not None else 0,
        canary_ready=len(canary_ready),
        stable_endpoints=tuple(pod_endpoint(p, service=service) for p in stable_ready),
        canary_endpoints=tuple(pod_endpoint(p, service=service) for p in canary_ready),
    )


def rollout_progress(
    stable: Json, pods: list[Json], *, version: str, service: str, image_template: str
) -> tuple[int, int]:
    """``(ready pods of version, live pods of other versions)`` of the stable Deployment."""
    stable_pods, _ = split_pods(stable, None, pods)
    ready = old = 0
    for pod in stable_pods:
        running = version_of(pod, service=service, image_template=image_template)
        if running == version and pod_ready(pod):
            ready += 1
        elif running != version and pod_alive(pod):
            old += 1
    return ready, old
