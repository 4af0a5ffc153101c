"""The manifests of a preview on Kubernetes: valid for the API, locked down, wired to the mocks, read back whole."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest

from vouch.core.errors import InputError
from vouch.daemon.preview.kubeobjects import (
    KubePreviewsSpec,
    available,
    failure,
    id_of,
    is_preview,
    namespace_name,
    preview_objects,
    preview_of,
    terminating,
)
from vouch.rollout.config import ServiceSpec
from vouch.rollout.preview import MockSpec

NOW = 1_700_000_000.25
IMAGE = "registry.example.com/vouch:1.4.0"
OWNER = {"pr": "42", "repo": "shop/checkout", "actor": "ana", "commit": "0a1b2c3", "digest": "sha256:" + "ab" * 32}


def checkout(**changes: Any) -> ServiceSpec:
    document: dict[str, Any] = {
        "image": "registry.example.com/checkout:{version}",
        "env": {"LOG_LEVEL": "debug", "LISTEN": ":{port}", "PAYMENTS_URL": "https://payments.example.com"},
        "readiness": {"path": "/ready"},
        "environments": [{"name": "staging"}],
        "preview": {
            "env": {"PAYMENTS_URL": "{mock:payments}", "STOCK": "{mock:inventory}/v1", "WHO": "{service}@{version}"},
            "mocks": [
                {"name": "payments", "routes": [{"method": "POST", "path": "/charge", "json": {"ok": True}}]},
                {"name": "inventory", "routes": [{"path": "/v1/items/{id}", "body": "{{path.id}}"}]},
            ],
        },
    }
    document.update(changes)
    return ServiceSpec.model_validate(document)


def build(service: ServiceSpec | None = None, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "name": "checkout-pr-42",
        "created_at": NOW,
        "ttl": 3600.0,
        "owner": OWNER,
        "settings": KubePreviewsSpec(),
        "preview_id": "4f3e2d1c",
        "mock_image": IMAGE,
        **overrides,
    }
    return preview_objects("checkout", service or checkout(), "2.4.1", **options)


def by_kind_and_name(made: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in made.objects}


@pytest.mark.parametrize("version", ["1.29", "1.37"])
def test_every_manifest_validates_strictly(version: str) -> None:
    made = build()
    for manifest in (made.namespace, *made.objects):
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {where}: {exc.message}")


def test_the_namespace_carries_the_ttl_labels_and_the_owner() -> None:
    made = build()
    namespace = made.namespace
    assert namespace["metadata"]["name"] == "preview-checkout-pr-42"
    assert namespace["metadata"]["labels"] == {
        "vouch.dev/preview": "checkout-pr-42",
        "vouch.dev/expires-at": "1700003600",  # whole seconds: the creation time as recorded, plus the ttl
        "app.kubernetes.io/managed-by": "vouch",
    }
    notes = namespace["metadata"]["annotations"]
    assert {key: notes[f"vouch.dev/{key}"] for key in OWNER} == OWNER
    assert notes["vouch.dev/service"] == "checkout"
    assert notes["vouch.dev/version"] == "2.4.1"
    assert notes["vouch.dev/created-at"] == "2023-11-14T22:13:20Z"
    assert id_of(namespace) == "4f3e2d1c"
    assert is_preview(namespace, "checkout-pr-42")
    assert not is_preview(namespace, "checkout-pr-43")


def test_every_object_is_labelled_like_its_namespace_and_lives_in_it() -> None:
    made = build()
    ttl = made.namespace["metadata"]["labels"]
    assert sorted(by_kind_and_name(made)) == [
        ("ConfigMap", "mock-inventory"),
        ("ConfigMap", "mock-payments"),
        ("Deployment", "checkout"),
        ("Deployment", "mock-inventory"),
        ("Deployment", "mock-payments"),
        ("Service", "checkout"),
        ("Service", "mock-inventory"),
        ("Service", "mock-payments"),
    ]
    for manifest in made.objects:
        assert manifest["metadata"]["namespace"] == "preview-checkout-pr-42"
        assert ttl.items() <= manifest["metadata"]["labels"].items()
        if manifest["kind"] == "Deployment":
            pod_labels = manifest["spec"]["template"]["metadata"]["labels"]
            assert ttl.items() <= pod_labels.items()
            assert manifest["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert made.deployments == ("mock-payments", "mock-inventory", "checkout"), (
        "the mocks first: the service calls them"
    )


def test_the_service_runs_its_image_at_the_version_wired_to_the_mocks() -> None:
    made = build()
    objects = by_kind_and_name(made)
    deployment = objects["Deployment", "checkout"]
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/checkout:2.4.1"
    assert container["env"] == [
        {"name": "LOG_LEVEL", "value": "debug"},
        {"name": "LISTEN", "value": ":8080"},
        {"name": "PAYMENTS_URL", "value": "http://mock-payments.preview-checkout-pr-42.svc:8080"},
        {"name": "STOCK", "value": "http://mock-inventory.preview-checkout-pr-42.svc:8080/v1"},
        {"name": "WHO", "value": "checkout@2.4.1"},
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    service = objects["Service", "checkout"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert made.preview.address == "checkout.preview-checkout-pr-42.svc:8080"
    assert dict(made.preview.mocks) == {
        "payments": "http://mock-payments.preview-checkout-pr-42.svc:8080",
        "inventory": "http://mock-inventory.preview-checkout-pr-42.svc:8080",
    }


def test_each_mock_runs_vouchs_image_on_its_spec() -> None:
    service = checkout()
    assert service.preview is not None
    objects = by_kind_and_name(build(service))
    for mock in service.preview.mocks:
        name = f"mock-{mock.name}"
        spec = json.loads(objects["ConfigMap", name]["data"]["spec.json"])
        assert MockSpec.model_validate(spec) == mock
        pod = objects["Deployment", name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        argv = [*container["command"], *container["args"]]
        module = ["python", "-m", "vouch.daemon.preview.mock"]
        assert argv == [*module, "--spec", "/etc/mock/spec.json", "--host", "0.0.0.0", "--port", "8080"]
        assert {"name": "spec", "configMap": {"name": name}} in pod["volumes"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/__vouch/health", "port": "http"}
        assert objects["Service", name]["spec"]["ports"][0]["port"] == 8080


def test_every_pod_is_locked_down() -> None:
    settings = KubePreviewsSpec(run_as_user=1000)
    for manifest in build(settings=settings).objects:
        if manifest["kind"] != "Deployment":
            continue
        pod = manifest["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        (container,) = pod["containers"]
        locked = container["securityContext"]
        assert locked["readOnlyRootFilesystem"] is True
        assert locked["allowPrivilegeEscalation"] is False
        assert locked["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    image_user = build(settings=KubePreviewsSpec(run_as_user=None)).objects
    pod = next(o for o in image_user if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "runAsUser" not in pod["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_preview_reads_back_from_its_namespace() -> None:
    made = build()
    found = preview_of(made.namespace)
    assert found is not None
    assert found.to_dict() == {**made.preview.to_dict(), "data": {**made.preview.data, "status": "up"}}
    marked = {**made.namespace, "status": {"phase": "Terminating"}}
    assert terminating(marked)
    going = preview_of(marked)
    assert going is not None
    assert going.data["status"] == "terminating"
    assert preview_of({"metadata": {"name": "default", "labels": {}}}) is None


@pytest.mark.parametrize("name", ["checkout-pr-42", "a" * 55, "b" * 56, "c" * 63, "d" * 62 + "-e"])
def test_namespace_names_are_dns_labels_and_distinct(name: str) -> None:
    found = namespace_name(name)
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", found), found
    assert found.startswith("preview-")
    assert found == namespace_name(name)
    assert found != namespace_name(name[:-1] + "z")


@pytest.mark.parametrize(
    ("service", "options", "message"),
    [
        (checkout(image=None), {}, "needs an `image`"),
        (checkout(image="registry.example.com/checkout:latest"), {}, "'{version}' placeholder"),
        (checkout(preview=None), {}, "no `preview` settings"),
        (checkout(), {"mock_image": None}, "set previews.image or \\$VOUCH_IMAGE"),
        (checkout(), {"owner": {"team": "shop"}}, "unknown owner field"),
        (checkout(preview={"mocks": [{"name": "pay-", "routes": [{"path": "/"}]}]}), {}, "must end with a letter"),
    ],
    ids=["no-image", "no-version", "no-preview", "no-mock-image", "owner", "mock-name"],
)
def test_what_cannot_be_previewed_is_refused(service: ServiceSpec, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        build(service, **options)


def test_a_service_whose_name_is_no_kubernetes_service_name_is_refused() -> None:
    with pytest.raises(InputError, match="must start with a letter"):
        preview_objects(
            "9shop",
            checkout(),
            "1.0.0",
            name="shop-pr-1",
            created_at=NOW,
            ttl=60,
            owner={},
            settings=KubePreviewsSpec(),
            preview_id="x",
            mock_image=IMAGE,
        )


def test_no_mocks_need_no_image() -> None:
    made = build(checkout(preview={}), mock_image=None)
    assert made.deployments == ("checkout",)


def test_availability_and_failure_of_a_deployment() -> None:
    def deployment(status: dict[str, Any], generation: int | None = None) -> dict[str, Any]:
        metadata = {"name": "x"} if generation is None else {"name": "x", "generation": generation}
        return {"metadata": metadata, "spec": {"replicas": 1}, "status": status}

    assert not available(deployment({}))
    assert not available(deployment({"availableReplicas": 0, "updatedReplicas": 1}))
    assert available(deployment({"availableReplicas": 1, "updatedReplicas": 1}))
    assert not available(deployment({"availableReplicas": 1, "observedGeneration": 1}, generation=2))
    assert available(deployment({"availableReplicas": 1, "observedGeneration": 2}, generation=2))
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
    assert failure(deployment({"conditions": [stuck]})) == "ProgressDeadlineExceeded: too slow"
    assert failure(deployment({"conditions": [{"type": "Progressing", "status": "True"}]})) is None
