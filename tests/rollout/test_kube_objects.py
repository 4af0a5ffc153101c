"""The pure decisions of the kubernetes platform: selectors, versions, patches, what counts as ready."""

from __future__ import annotations

from typing import Any

import pytest

from vouch.core.errors import PlatformError
from vouch.rollout.model import Endpoint
from vouch.rollout.platforms.kube import objects as k8s

IMAGE = "registry.test/shop:{version}"


def pod(name: str, *, version: str, ready: bool = True, track: str | None = None, **meta: Any) -> dict[str, Any]:
    labels = {"app": "shop", **({k8s.TRACK_LABEL: track} if track else {})}
    return {
        "metadata": {"name": name, "labels": labels, **meta},
        "spec": {"containers": [{"name": "shop", "image": IMAGE.format(version=version)}]},
        "status": {"podIP": f"10.0.0.{name[-1]}", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def deployment(version: str, replicas: int, *, canary: bool = False) -> dict[str, Any]:
    match = {"app": "shop", **({k8s.TRACK_LABEL: "canary"} if canary else {})}
    return {
        "metadata": {"name": "shop-canary" if canary else "shop"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": match},
                "spec": {"containers": [{"name": "shop", "image": IMAGE.format(version=version)}]},
            },
        },
    }


@pytest.mark.parametrize(
    ("expression", "labels", "matches"),
    [
        ({"key": "tier", "operator": "In", "values": ["web", "api"]}, {"tier": "web"}, True),
        ({"key": "tier", "operator": "In", "values": ["web"]}, {}, False),
        ({"key": "tier", "operator": "NotIn", "values": ["web"]}, {"tier": "api"}, True),
        ({"key": "tier", "operator": "NotIn", "values": ["web"]}, {"tier": "web"}, False),
        ({"key": "tier", "operator": "NotIn", "values": ["web"]}, {}, True),
        ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
        ({"key": "tier", "operator": "Exists"}, {}, False),
        ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "x"}, False),
    ],
)
def test_selector_expressions(expression: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    selector = {"matchLabels": {"app": "shop"}, "matchExpressions": [expression]}
    assert k8s.selector_matches(selector, {"app": "shop", **labels}) is matches
    assert k8s.selector_matches(selector, labels) is False  # matchLabels still apply


def test_selector_query_speaks_the_api_syntax() -> None:
    selector = {
        "matchLabels": {"b": "2", "a": "1"},
        "matchExpressions": [
            {"key": "t", "operator": "In", "values": ["y", "x"]},
            {"key": "u", "operator": "NotIn", "values": ["z"]},
            {"key": "v", "operator": "DoesNotExist"},
        ],
    }
    assert k8s.selector_query(selector) == "a=1,b=2,t in (x,y),u notin (z),!v"


def test_versions_come_from_the_image_then_the_label() -> None:
    assert k8s.version_from_image(IMAGE, "registry.test/shop:1.2.3-rc.1") == "1.2.3-rc.1"
    assert k8s.version_from_image("registry.test/shop@{version}", "registry.test/shop@sha256") == "sha256"
    assert k8s.version_from_image(IMAGE, "registry.test/shop:1.0/evil") is None
    labelled = {"metadata": {"labels": {k8s.VERSION_LABEL: "9"}}, "spec": {"containers": [{"image": "other:1"}]}}
    assert k8s.version_of(labelled, service="shop", image_template=IMAGE) == "9"
    off_template = {"spec": {"containers": [{"image": "other:1"}]}}
    assert k8s.version_of(off_template, service="shop", image_template=IMAGE) == "other:1"
    assert k8s.label_value("1.2.0+build.7") == "1.2.0_build.7"
    assert k8s.label_value("-" * 70) == "unknown"


def test_only_a_placeholder_deployment_has_no_stable_version() -> None:
    def stable(image: str, replicas: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
        template = {"metadata": {"labels": labels or {}}, "spec": {"containers": [{"name": "shop", "image": image}]}}
        return {"spec": {"replicas": replicas, "template": template}}

    def version(obj: dict[str, Any]) -> str | None:
        return k8s.stable_version(obj, service="shop", image_template=IMAGE)

    assert version(stable("placeholder:latest", 0)) is None
    assert version(stable("placeholder:latest", 2)) == "placeholder:latest"
    assert version(stable("registry.test/shop:1.0", 0)) == "1.0"  # scaled to 0 by a 100% canary step: still 1.0
    assert version(stable("placeholder:latest", 0, {k8s.VERSION_LABEL: "1.0"})) == "1.0"
    scaled_by_vouch = stable("elsewhere/shop:old", 0)
    scaled_by_vouch["metadata"] = {"annotations": {k8s.TRANSITION_ANNOTATION: "stable scaled to 0"}}
    assert version(scaled_by_vouch) == "elsewhere/shop:old"  # a rollback must bring it back


def test_the_service_container_is_the_one_named_after_it() -> None:
    spec = {"containers": [{"name": "proxy"}, {"name": "shop"}]}
    assert k8s.managed_index(spec, "shop") == 1
    assert k8s.managed_index(spec, "cart") == 0
    with pytest.raises(PlatformError, match="no containers"):
        k8s.managed_index({"containers": []}, "shop")


def test_merge_diff_is_empty_when_nothing_changes_and_ignores_nulls() -> None:
    current = {"metadata": {"labels": {"a": "1"}, "creationTimestamp": None}, "spec": {"containers": [{"x": 1}]}}
    assert k8s.merge_diff(current, {"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"x": 1}]}}) == {}
    assert k8s.merge_diff({"a": 1}, {"a": 1, "b": None}) == {}
    assert k8s.merge_diff({"a": 1, "b": 2}, {"a": 1, "b": None}) == {"b": None}
    assert k8s.merge_diff({"l": [1, 2]}, {"l": [1]}) == {"l": [1]}  # lists are replaced whole


def test_observe_counts_only_ready_pods_of_each_tracks_version() -> None:
    pods = [
        pod("s1", version="1.0"),
        pod("s2", version="1.0", ready=False),
        pod("s3", version="0.9"),  # an old stable pod still around: not the stable version
        pod("s4", version="1.0", deletionTimestamp="now"),  # terminating: out of traffic
        pod("c1", version="1.1", track="canary"),
        pod("c2", version="1.1", track="canary", ready=False),
    ]

    observed = k8s.observe(
        deployment("1.0", 3), deployment("1.1", 2, canary=True), pods, service="shop", image_template=IMAGE
    )

    assert (observed.stable_version, observed.stable_desired, observed.stable_ready) == ("1.0", 3, 1)
    assert (observed.canary_version, observed.canary_desired, observed.canary_ready) == ("1.1", 2, 1)
    assert observed.stable_endpoints == (Endpoint("10.0.0.1", 80),)
    assert observed.canary_endpoints == (Endpoint("10.0.0.1", 80),)


def test_a_canary_scaled_to_zero_reports_no_version_but_its_pods_until_they_leave() -> None:
    pods = [pod("s1", version="1.0"), pod("c1", version="1.1", track="canary")]

    observed = k8s.observe(
        deployment("1.0", 1), deployment("1.1", 0, canary=True), pods, service="shop", image_template=IMAGE
    )

    assert (observed.canary_version, observed.canary_desired, observed.canary_ready) == (None, 0, 1)


def test_canary_pods_are_never_counted_as_stable_without_a_canary_deployment() -> None:
    pods = [pod("s1", version="1.0"), pod("c1", version="1.0", track="canary")]

    observed = k8s.observe(deployment("1.0", 1), None, pods, service="shop", image_template=IMAGE)

    assert (observed.stable_ready, observed.canary_ready) == (1, 0)


def test_rollout_progress_counts_new_ready_and_old_live_pods() -> None:
    pods = [
        pod("a1", version="2.0"),
        pod("a2", version="2.0", ready=False),
        pod("a3", version="1.0"),
        pod("a4", version="1.0", deletionTimestamp="now"),
        pod("a5", version="2.0", track="canary"),
    ]
    assert k8s.rollout_progress(deployment("2.0", 3), pods, version="2.0", service="shop", image_template=IMAGE) == (
        1,
        1,
    )


def test_the_canary_deployment_is_owned_by_stable_only_when_stable_has_a_uid() -> None:
    stable = deployment("1.0", 3)
    made = k8s.canary_deployment(stable, name="shop-canary", pod_template={}, replica_count=1, annotations={})
    assert "ownerReferences" not in made["metadata"]
    stable["metadata"]["uid"] = "u1"
    made = k8s.canary_deployment(stable, name="shop-canary", pod_template={}, replica_count=1, annotations={})
    assert made["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop", "uid": "u1"}
    ]
    assert stable["spec"]["selector"] == {"matchLabels": {"app": "shop"}}  # the stable's own is left alone
