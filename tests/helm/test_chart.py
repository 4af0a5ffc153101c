"""The Helm chart: rendered by Helm's own engine, every manifest checked against Kubernetes' schemas.

The chart is rendered with ``helm-python-sdk`` (Helm as a library: no binary, no cluster) for the
default values and for value sets covering HA, monitoring, an external OPA and every optional
mount; each manifest is validated strictly by ``kubernetes-validate`` against Kubernetes 1.29 and
1.37. The Prometheus Operator's ServiceMonitor and PrometheusRule are no core kinds, so they are
checked against the small schemas below instead. The generated files must equal their sources:
the probe alerts ``render_rules()`` writes, and the permissions in ``RULES``. The Job templates of
load tests on Kubernetes are filled by vouch's own runner and validated the same way.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from support.components import require_binary

from vouch.daemon.breakglass import GrantRequest
from vouch.daemon.config import parse_config
from vouch.loadtests.locustfiles import generated_locustfile, parse_request
from vouch.loadtests.model import LoadPlan
from vouch.probes.rules import render_rules
from vouch.rollout.attestations.kubesource import KubernetesSourceSpec
from vouch.rollout.loadtest_kube import KubernetesLoadRunnerSpec, manifests
from vouch.rollout.platforms.kube.loadjobs import FILES, LoadJobTemplates
from vouch.rollout.platforms.kube.rbac import RULES

CHART = Path(__file__).resolve().parents[2] / "helm" / "vouch"
NAMESPACE = "delivery"
RELEASE = "vouch"
KUBERNETES_VERSIONS = ("1.29", "1.37")

HA: dict[str, Any] = {
    "replicas": 3,
    "store": {"kind": "kubernetes"},
    "leaderElection": {"enabled": True},
}
MONITORING: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
}
OPA_POLICY = {"kind": "opa", "url": "http://opa.opa.svc:8181", "path": "vouch/decision"}
LOADTEST: dict[str, Any] = {"loadtest": {"enabled": True, "namespace": "loadtests", "workers": 3}}
PREVIEWS: dict[str, Any] = {"previews": {"enabled": True}}


def opa_values() -> dict[str, Any]:
    """Both environments judged by an OPA server outside vouch; no policy files in the chart."""
    config = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    for environment in config["environments"].values():
        environment["gates"] = ["attestations", *environment["gates"]]
        environment["policy"] = OPA_POLICY
    return {"config": config}


def everything_values() -> dict[str, Any]:
    """Every optional mount: Rego files, trusted keys, signing key, chat, kubeconfig, overrides."""
    config = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    config["platform"]["environments"]["production"] = {"namespace": "shop", "context": "prod-eu"}
    config["attestations"] = {"trust": {"keys": [{"path": "/etc/vouch/trust-keys/ci.pub"}]}}
    for environment in config["environments"].values():
        environment["policy"] = {"kind": "rego", "path": "/etc/vouch/policies"}
    return {
        "config": config,
        "policies": {"files": {"release.rego": "package vouch\n\nimport rego.v1\n\ndefault allow := false\n"}},
        "trustKeys": {"files": {"ci.pub": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"}},
        "apiToken": {"existingSecret": "vouch-token", "key": "api.token"},
        "signingKey": {"existingSecret": "vouch-signing", "key": "vouch.key"},
        "chat": {"existingSecret": "vouch-slack"},
        "kubeconfig": {"existingSecret": "vouch-kubeconfig"},
        "breakGlass": {
            "overrides": {
                "checkout-slo.yaml": {
                    "service": "checkout",
                    "environment": "production",
                    "gate": "slo",
                    "reason": "INC-7: known flaky metric",
                    "actor": "ana@example.com",
                }
            }
        },
        "persistence": {"enabled": True, "size": "2Gi"},
        "rbac": {"namespaces": ["shop-staging"]},
        "extraEnv": [{"name": "LOG_FORMAT", "value": "json"}],
    }


def with_attestation_source(values: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``config.attestations.source`` set to ``source``."""
    config = {**(values.get("config") or yaml.safe_load((CHART / "values.yaml").read_text())["config"])}
    config["attestations"] = {**config.get("attestations", {}), "source": source}
    return {**values, "config": config}


VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ha": HA,
    "monitoring": MONITORING,
    "opa": opa_values(),
    "everything": everything_values(),
    "loadtest": LOADTEST,
    "previews": PREVIEWS,
}


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's manifests for ``values``, as an install would apply them (NOTES.txt left out)."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for template, text in sorted(rendered.items())
        if template.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)["vouch/templates/NOTES.txt"]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(one(docs, "ConfigMap", RELEASE)["data"]["vouch.yaml"])
    return config


# --------------------------------------------------------------------------- schemas of the operator's kinds

# kubernetes-validate knows the core kinds only. These check what the chart writes in the
# Prometheus Operator's ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1), strictly.
_METADATA = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                        },
                    },
                },
            },
        },
    },
}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["alert", "expr"],
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"},
        "keep_firing_for": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                    },
                },
            },
        },
    },
}
OPERATOR_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}


def validate(doc: dict[str, Any], version: str) -> None:
    """One manifest against Kubernetes ``version``'s strict schema (or the operator schema above)."""
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, OPERATOR_SCHEMAS[doc["kind"]])
        return
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {where}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


# --------------------------------------------------------------------------- every value set


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_validates_strictly(chart: helm.Chart, values: dict[str, Any]) -> None:
    docs = render(chart, values)
    assert "Deployment" in kinds(docs)
    for doc in docs:
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE or doc["kind"] in ("Role", "RoleBinding")
        for version in KUBERNETES_VERSIONS:
            validate(doc, version)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
@pytest.mark.parametrize("kube_version", [f"v{v}.0" for v in KUBERNETES_VERSIONS])
def test_helm_lint_reports_no_errors_or_warnings(values: dict[str, Any], kube_version: str) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=kube_version)
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == []
    assert serious == []


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_rendered_configuration_is_a_valid_vouch_configuration(chart: helm.Chart, values: dict[str, Any]) -> None:
    docs = render(chart, values)
    text = one(docs, "ConfigMap", RELEASE)["data"]["vouch.yaml"]
    config = parse_config(text)
    assert config.daemon.listen == "0.0.0.0:8470"
    assert config.daemon.state_dir == "/var/lib/vouch"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_mount_has_its_volume_and_every_volume_its_source(chart: helm.Chart, values: dict[str, Any]) -> None:
    docs = render(chart, values)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert set(mounts) == set(volumes)
    made = {(d["kind"], d["metadata"]["name"]) for d in docs}
    existing = {values.get(k, {}).get("existingSecret") for k in ("apiToken", "signingKey", "chat", "kubeconfig")}
    for volume in volumes.values():
        if "configMap" in volume and not volume["configMap"].get("optional"):
            assert ("ConfigMap", volume["configMap"]["name"]) in made
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            assert ("Secret", name) in made or name in existing
        if "persistentVolumeClaim" in volume:
            assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in made
    config = rendered_config(docs)
    token = mounts["api-token"]["mountPath"]
    assert config["daemon"]["token_file"].startswith(token + "/")
    items = volumes["api-token"]["secret"]["items"]
    assert [f"{token}/{i['path']}" for i in items] == [config["daemon"]["token_file"]]


# --------------------------------------------------------------------------- the default install


def test_default_daemon_is_locked_down_and_probed(chart: helm.Chart) -> None:
    docs = render(chart, {})
    deployment = one(docs, "Deployment", RELEASE)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/vouch-dev/vouch:{chart.metadata['appVersion']}"
    assert container["command"] == ["vouch", "daemon", "--config", "/etc/vouch/vouch.yaml"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert "emptyDir" in state
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert {"ServiceMonitor", "PrometheusRule"}.isdisjoint(kinds(docs))


def test_default_configuration_is_the_values_with_the_chart_paths_over_it(chart: helm.Chart) -> None:
    daemon = {"listen": "127.0.0.1:1", "log_level": "debug"}
    docs = render(chart, {"config": {**chart.values["config"], "daemon": daemon}})
    config = rendered_config(docs)
    assert config["daemon"] == {
        "listen": "0.0.0.0:8470",
        "log_level": "debug",
        "state_dir": "/var/lib/vouch",
        "token_file": "/etc/vouch/secrets/api-token/token",
        "store": {"kind": "sqlite"},
        "leader_election": {"enabled": False},
    }
    assert config["services"] == chart.values["config"]["services"]
    assert config["environments"] == chart.values["config"]["environments"]


def test_default_token_secret_is_made_and_named_in_notes(chart: helm.Chart) -> None:
    docs = render(chart, {})
    secret = one(docs, "Secret", f"{RELEASE}-api-token")
    assert len(base64.b64decode(secret["data"]["token"])) >= 32
    text = notes(chart, {})
    assert f"kubectl -n {NAMESPACE} port-forward service/{RELEASE} 8470:8470" in text
    assert f"get secret {RELEASE}-api-token -o jsonpath='{{.data.token}}'" in text
    assert "vouch promote SERVICE VERSION --env ENVIRONMENT --wait" in text
    assert f"url: http://{RELEASE}.{NAMESPACE}.svc:8470/api/v1/alerts" in text
    assert f"credentials_file: /etc/alertmanager/secrets/{RELEASE}-api-token/token" in text


def test_service_serves_api_and_metrics_on_the_container_port(chart: helm.Chart) -> None:
    docs = render(chart, {})
    service = one(docs, "Service", RELEASE)
    pod = one(docs, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == pod["spec"]["containers"][0]["ports"][0]["name"]
    assert port["port"] == 8470
    assert "vouch.dev/leader" not in service["spec"]["selector"], "a lone daemon needs no leader label"
    assert "PodDisruptionBudget" not in kinds(docs)


# --------------------------------------------------------------------------- HA


def test_ha_elects_a_leader_and_keeps_state_in_the_cluster(chart: helm.Chart) -> None:
    docs = render(chart, HA)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    # Every healthy replica is ready (followers are standbys), so an ordinary rolling update ends
    # and a disruption budget can keep a standby through a drain.
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert deployment["spec"]["strategy"] == strategy
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The API and Alertmanager's webhooks go to the pod the leader labels; metrics come from every pod.
    api = one(docs, "Service", RELEASE)
    assert api["spec"]["selector"]["vouch.dev/leader"] == "true"
    every = one(docs, "Service", f"{RELEASE}-metrics")
    assert "vouch.dev/leader" not in every["spec"]["selector"]
    assert every["spec"]["selector"].items() <= pod_labels.items()
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in deployment_env(docs) if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    daemon = rendered_config(docs)["daemon"]
    assert daemon["store"] == {"kind": "kubernetes", "prefix": RELEASE}
    assert daemon["leader_election"] == {"enabled": True, "lease_name": f"{RELEASE}-leader"}
    assert parse_config(yaml.safe_dump(rendered_config(docs))).daemon.leader_election.enabled


def test_the_kubernetes_store_keeps_attestations_in_the_cluster_too(chart: helm.Chart) -> None:
    config = rendered_config(render(chart, HA))
    assert config["attestations"] == {"source": {"kind": "kubernetes"}}
    parsed = parse_config(yaml.safe_dump(config))
    assert isinstance(parsed.attestations.source, KubernetesSourceSpec)
    # with the sqlite store the daemon's default (a folder in its state directory) stays
    assert "attestations" not in rendered_config(render(chart, {}))
    # a source the configuration names wins, and the signing key is written beside it
    http = {"kind": "http", "url": "https://attestations.example.com/{digest}"}
    values = with_attestation_source({**HA, "signingKey": {"existingSecret": "vouch-signing"}}, http)
    attestations = rendered_config(render(chart, values))["attestations"]
    assert attestations == {"source": http, "signing_key": "/etc/vouch/secrets/signing-key/signing.key"}


def test_store_and_election_settings_pass_through_over_the_chart_defaults(chart: helm.Chart) -> None:
    values = {
        **HA,
        "store": {"kind": "kubernetes", "settings": {"prefix": "shop", "max_events": 200}},
        "leaderElection": {"enabled": True, "settings": {"lease_name": "shop-leader", "lease_duration": "30s"}},
    }
    daemon = rendered_config(render(chart, values))["daemon"]
    assert daemon["store"] == {"kind": "kubernetes", "prefix": "shop", "max_events": 200}
    assert daemon["leader_election"] == {"enabled": True, "lease_name": "shop-leader", "lease_duration": "30s"}


def deployment_env(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "replicas > 1 needs leaderElection.enabled=true"),
        ({"leaderElection": {"enabled": True}}, "leaderElection.enabled needs store.kind=kubernetes"),
        ({**HA, "persistence": {"enabled": True}}, "persistence is one volume for one replica"),
        (
            {"prometheusRule": {"enabled": True, "vouchRules": False, "probeRules": False}},
            "prometheusRule.enabled with no rule groups",
        ),
    ],
)
def test_unsafe_combinations_fail_with_what_to_change(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


# --------------------------------------------------------------------------- RBAC


def granted(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str, str]]]:
    """(apiGroup, resource, verb) granted to vouch's ServiceAccount, by namespace ("" for cluster-wide)."""
    roles = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}
    grants: dict[str, set[tuple[str, str, str]]] = {}
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace", "")
        role = roles[(ref["kind"], "" if ref["kind"] == "ClusterRole" else namespace, ref["name"])]
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames, no nonResourceURLs"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert "*" not in (group, resource, *rule["verbs"])
                    grants.setdefault(namespace, set()).update((group, resource, v) for v in rule["verbs"])
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in docs if b["kind"].endswith("Binding")}
    assert {(kind, name) for kind, _, name in roles if kind in ("Role", "ClusterRole")} <= bound
    return grants


def expected(users: set[str], scope: str) -> set[tuple[str, str, str]]:
    return {(r.api_group, r.resource, v) for r in RULES if r.used_by in users and r.scope == scope for v in r.verbs}


def test_rbac_rules_file_is_rules() -> None:
    on_file = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())["rules"]
    assert on_file == [
        {"apiGroup": r.api_group, "resource": r.resource, "verbs": list(r.verbs), "scope": r.scope, "usedBy": r.used_by}
        for r in RULES
    ], "helm/vouch/files/rbac-rules.yaml is stale: run .venv/bin/python scripts/render-chart-files"


def test_generated_files_are_current_by_the_script_too() -> None:
    script = CHART.parents[1] / "scripts" / "render-chart-files"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_ha_rbac_grants_exactly_the_rules_the_code_uses(chart: helm.Chart) -> None:
    grants = granted(render(chart, {**HA, **LOADTEST, **PREVIEWS}))
    everything = {(r.api_group, r.resource, v, r.scope) for r in RULES for v in r.verbs}
    as_granted = {(*g, "cluster" if ns == "" else "namespace") for ns, gs in grants.items() for g in gs}
    assert as_granted == everything
    platform = expected({"platform"}, "namespace")
    home = expected({"store", "leader", "self", "attestations"}, "namespace")
    assert grants.pop(NAMESPACE, set()) == home
    assert grants.pop("loadtests", set()) == expected({"loadtest"}, "namespace")
    users = {"platform", "store", "leader", "self", "attestations", "loadtest", "previews"}
    assert grants.pop("", set()) == expected(users, "cluster")
    assert grants == {"shop": platform, "shop-staging": platform}


def test_store_and_lease_rules_go_where_the_store_and_the_lease_are(chart: helm.Chart) -> None:
    values = {
        **HA,
        "store": {"kind": "kubernetes", "settings": {"namespace": "vouch-state"}},
        "leaderElection": {"enabled": True, "settings": {"namespace": "vouch-leases"}},
    }
    grants = granted(render(chart, values))
    assert grants.pop("vouch-state") == expected({"store"}, "namespace")
    assert grants.pop("vouch-leases") == expected({"leader"}, "namespace")
    # the pods it labels are its own; the attestations stay in the pod's namespace unless configured
    assert grants.pop(NAMESPACE) == expected({"self", "attestations"}, "namespace")


def test_attestation_source_rules_go_where_its_configmaps_are(chart: helm.Chart) -> None:
    values = with_attestation_source(HA, {"kind": "kubernetes", "namespace": "vouch-attestations"})
    grants = granted(render(chart, values))
    assert grants.pop("vouch-attestations") == expected({"attestations"}, "namespace")
    assert grants.pop(NAMESPACE) == expected({"store", "leader", "self"}, "namespace")
    # with the sqlite store, a kubernetes source named in the configuration is granted too
    alone = granted(render(chart, with_attestation_source({}, {"kind": "kubernetes"})))
    assert alone.pop(NAMESPACE) == expected({"attestations"}, "namespace")


@pytest.mark.parametrize(
    "source",
    [
        {"kind": "kubernetes", "context": "elsewhere"},
        {"kind": "http", "url": "https://attestations.example.com/{digest}"},
        {"kind": "directory", "path": "/var/lib/vouch/attestations"},
    ],
    ids=["other-cluster", "http", "directory"],
)
def test_no_attestation_rules_when_the_source_is_not_in_this_cluster(chart: helm.Chart, source: dict[str, Any]) -> None:
    grants = granted(render(chart, with_attestation_source(HA, source)))
    assert grants[NAMESPACE] == expected({"store", "leader", "self"}, "namespace")
    alone = granted(render(chart, with_attestation_source({}, source)))
    assert NAMESPACE not in alone


def test_default_rbac_grants_only_the_platform_rules_where_it_acts(chart: helm.Chart) -> None:
    grants = granted(render(chart, {}))
    platform = expected({"platform"}, "namespace")
    cluster = expected({"platform"}, "cluster")
    assert grants == {"shop": platform, "shop-staging": platform} | ({"": cluster} if cluster else {})


def test_rbac_leaves_out_environments_in_other_clusters(chart: helm.Chart) -> None:
    values = everything_values()
    values["rbac"] = {"namespaces": []}
    grants = granted(render(chart, values))
    assert set(grants) - {""} == {"shop-staging"}, "production is reached through the kubeconfig context prod-eu"


def test_load_test_rules_go_where_the_jobs_run_and_only_when_enabled(chart: helm.Chart) -> None:
    grants = granted(render(chart, LOADTEST))
    assert grants.pop("loadtests") == expected({"loadtest"}, "namespace")
    assert set(grants) == {"shop", "shop-staging"}
    # by default in the release's namespace, beside nothing else there (the sqlite store needs nothing)
    here = granted(render(chart, {"loadtest": {"enabled": True}}))
    assert here.pop(NAMESPACE) == expected({"loadtest"}, "namespace")
    default = granted(render(chart, {}))
    assert not {resource for grants_here in default.values() for _, resource, _ in grants_here} & {"jobs", "pods/log"}


def test_preview_rules_are_cluster_wide_and_only_when_enabled(chart: helm.Chart) -> None:
    previews = expected({"previews"}, "cluster")
    assert ("", "namespaces", "delete") in previews, "each preview is a namespace, removed whole"
    grants = granted(render(chart, PREVIEWS))
    assert grants.pop("") == previews
    assert grants == granted(render(chart, {})), "the namespaced grants stay as they were"
    # granted whatever the platform: a local daemon may still reap the previews CI made in a cluster
    config = {**chart.values["config"], "platform": {"kind": "local"}}
    assert granted(render(chart, {**PREVIEWS, "config": config})) == {"": previews}
    assert "" not in granted(render(chart, {**HA, **LOADTEST}))


def test_the_daemon_knows_its_own_image_for_the_mocks_of_previews(chart: helm.Chart) -> None:
    values = {"image": {"repository": "registry.example.com/vouch", "tag": "1.4.0"}}
    env = {e["name"]: e.get("value") for e in deployment_env(render(chart, values))}
    assert env["VOUCH_IMAGE"] == "registry.example.com/vouch:1.4.0"
    env = {e["name"]: e.get("value") for e in deployment_env(render(chart, {}))}
    assert env["VOUCH_IMAGE"] == f"ghcr.io/vouch-dev/vouch:{chart.metadata['appVersion']}"


def test_local_platform_needs_no_kubernetes_permissions(chart: helm.Chart) -> None:
    config = {**chart.values["config"], "platform": {"kind": "local"}}
    assert granted(render(chart, {"config": config})) == {}


# --------------------------------------------------------------------------- monitoring


def test_prometheus_rule_holds_vouchs_alerts_and_exactly_the_probe_rules(chart: helm.Chart) -> None:
    assert (CHART / "files" / "probe-rules.yaml").read_text() == render_rules(), (
        "helm/vouch/files/probe-rules.yaml is stale: run .venv/bin/python scripts/render-chart-files"
    )
    docs = render(chart, MONITORING)
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = {g["name"]: g for g in rule["spec"]["groups"]}
    probe_groups = yaml.safe_load(render_rules())["groups"]
    assert [groups[g["name"]] for g in probe_groups] == probe_groups
    own = {r["alert"]: r for r in groups["vouch"]["rules"]}
    assert {
        "VouchDown",
        "VouchPromotionPaused",
        "VouchRolledBack",
        "VouchPolicyFailed",
        "VouchProbeSeriesStale",
    } <= set(own)
    assert f'job="{RELEASE}", namespace="{NAMESPACE}"' in own["VouchDown"]["expr"]
    assert own["VouchRolledBack"]["annotations"]["summary"] == "vouch rolled back a release ({{ $labels.cause }})"
    for alert in own.values():
        assert not {"service", "environment"} & set(alert.get("labels", {})), "vouch's own alerts never abort"


def test_the_policy_alert_fires_on_a_failed_decision_and_not_on_a_denial(chart: helm.Chart, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rule = one(render(chart, MONITORING), "PrometheusRule")
    vouch_group = next(g for g in rule["spec"]["groups"] if g["name"] == "vouch")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [vouch_group]}))
    where = f'job="{RELEASE}",namespace="{NAMESPACE}"'
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"up{{{where}}}", "values": "1x30"},
                    {
                        "series": f'vouch_policy_decisions_total{{{where},environment="staging",outcome="denied"}}',
                        "values": "0 1 2 3 4 5 6 7 8 9 10",
                    },
                    {
                        "series": f'vouch_policy_decisions_total{{{where},environment="production",outcome="failed"}}',
                        "values": "0 0 0 0 0 1 1 1 1 1 1",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "VouchPolicyFailed", "exp_alerts": []},
                    {
                        "eval_time": "8m",
                        "alertname": "VouchPolicyFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "policy_environment": "production"},
                                "exp_annotations": {
                                    "summary": "vouch's policy could not decide in production",
                                    "description": own_description(vouch_group, "VouchPolicyFailed"),
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests))
    done = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def own_description(group: dict[str, Any], alert: str) -> str:
    return str(next(r for r in group["rules"] if r.get("alert") == alert)["annotations"]["description"])


def test_service_monitor_scrapes_the_service_port(chart: helm.Chart) -> None:
    docs = render(chart, MONITORING)
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", f"{RELEASE}-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    api = one(docs, "Service", RELEASE)
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= api["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == RELEASE, "alerts select job=<release>"
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_rule_groups_can_be_switched_and_extended(chart: helm.Chart) -> None:
    extra = {"name": "team", "rules": [{"alert": "X", "expr": "vector(1)", "labels": {"severity": "info"}}]}
    values = {"prometheusRule": {"enabled": True, "vouchRules": False, "additionalGroups": [extra]}}
    rule = one(render(chart, values), "PrometheusRule")
    assert [g["name"] for g in rule["spec"]["groups"]] == ["vouch-probes", "team"]


# --------------------------------------------------------------------------- policies, secrets, overrides


def test_external_opa_passes_through_and_mounts_no_policies(chart: helm.Chart) -> None:
    docs = render(chart, opa_values())
    config = rendered_config(docs)
    assert {e["policy"]["kind"] for e in config["environments"].values()} == {"opa"}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert "policies" not in {v["name"] for v in pod["volumes"]}


def test_optional_mounts_and_their_paths_in_the_configuration(chart: helm.Chart) -> None:
    values = everything_values()
    docs = render(chart, values)
    config = rendered_config(docs)
    assert config["daemon"]["token_file"] == "/etc/vouch/secrets/api-token/api.token"
    assert config["attestations"]["signing_key"] == "/etc/vouch/secrets/signing-key/vouch.key"
    assert "Secret" not in kinds(docs), "an existing token Secret replaces the chart's"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["policies"] == "/etc/vouch/policies"
    assert mounts["trust-keys"] == "/etc/vouch/trust-keys"
    assert mounts["chat"] == "/etc/vouch/secrets/chat"
    assert mounts["overrides"] == "/etc/vouch/overrides"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBECONFIG"] == "/etc/vouch/kubeconfig/config"
    assert env["LOG_FORMAT"] == "json"
    policies = one(docs, "ConfigMap", f"{RELEASE}-policies")["data"]
    assert policies == values["policies"]["files"]
    overrides = one(docs, "ConfigMap", f"{RELEASE}-overrides")["data"]
    assert yaml.safe_load(overrides["checkout-slo.yaml"]) == values["breakGlass"]["overrides"]["checkout-slo.yaml"]
    assert rendered_config(docs)["break_glass"]["directory"] == mounts["overrides"]
    GrantRequest.model_validate(yaml.safe_load(overrides["checkout-slo.yaml"]))  # the file format the daemon reads
    assert one(docs, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"] == "2Gi"
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/config", "checksum/policies", "checksum/trust-keys"} <= set(annotations)


def test_notes_name_an_existing_token_secret_and_its_key(chart: helm.Chart) -> None:
    text = notes(chart, {"apiToken": {"existingSecret": "vouch-token", "key": "api.token"}})
    assert "get secret vouch-token -o jsonpath='{.data.api\\.token}'" in text
    assert "credentials_file: /etc/alertmanager/secrets/vouch-token/api.token" in text


def test_an_existing_overrides_configmap_is_mounted_not_made(chart: helm.Chart) -> None:
    docs = render(chart, {"breakGlass": {"existingConfigMap": "vouch-break-glass"}})
    volume = next(v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "overrides")
    assert volume["configMap"] == {"name": "vouch-break-glass", "optional": True}
    assert f"{RELEASE}-overrides" not in {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}


def test_config_changes_roll_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    changed = json.loads(json.dumps(chart.values["config"]))
    changed["environments"]["staging"]["plan"]["pause"] = "5m"
    assert checksum({}) == checksum({})
    assert checksum({"config": changed}) != checksum({})


# --------------------------------------------------------------------------- load tests on Kubernetes


def loadtest_manifests(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """One load run's objects as vouch's runner makes them from the templates and settings the chart renders."""
    docs = render(chart, values)
    templates = LoadJobTemplates.parse(
        {part: one(docs, "ConfigMap", f"{RELEASE}-loadtest")["data"][name] for part, name in FILES.items()}
    )
    spec = KubernetesLoadRunnerSpec.model_validate(rendered_config(docs)["loadtest_runner"])
    with generated_locustfile([parse_request("/cart"), parse_request("POST /orders")]) as locustfile:
        plan = LoadPlan(
            target="http://10.1.2.3:8080",
            locustfile=locustfile,
            users=50,
            spawn_rate=10,
            duration=60,
            rate=200,
            env={"VOUCH_HOSTS": "http://10.1.2.3:8080 http://10.1.2.4:8080"},
            tags=("checkout",),
        )
        made = manifests(plan, spec, templates, run="4f3e2d1c")
    return list(made.ordered())


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_load_test_jobs_filled_from_the_chart_validate_strictly(chart: helm.Chart, kube_version: str) -> None:
    made = loadtest_manifests(chart, LOADTEST)
    assert sorted(d["kind"] for d in made) == ["ConfigMap", "Job", "Job", "Service"]
    for doc in made:
        assert "${" not in json.dumps(doc), "every placeholder is filled"
        assert doc["metadata"]["namespace"] == "loadtests"
        assert doc["metadata"]["labels"]["vouch.dev/loadtest-run"] == "4f3e2d1c"
        validate(doc, kube_version)


def test_load_test_jobs_are_locked_down_and_bounded(chart: helm.Chart) -> None:
    values = {"loadtest": {**LOADTEST["loadtest"], "settings": {"keep_finished": "15m", "start_timeout": "3m"}}}
    master, configmap, service, workers = loadtest_manifests(chart, values)
    for job, role in ((master, "master"), (workers, "worker")):
        assert job["metadata"]["labels"]["vouch.dev/loadtest-role"] == role
        assert job["spec"]["backoffLimit"] == 0
        assert job["spec"]["ttlSecondsAfterFinished"] == 900
        assert job["spec"]["activeDeadlineSeconds"] == 180 + 60 + 60
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        assert container["image"] == "locustio/locust:2.47.0"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"] == {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["locustfile"]["configMap"]["name"] == configmap["metadata"]["name"]
    master_args = master["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--master", "--headless", "--json", "--skip-log-setup", "--expect-workers=3"} <= set(master_args)
    assert "--users=50" in master_args
    assert "--expect-workers-max-wait=180" in master_args
    assert workers["spec"]["parallelism"] == workers["spec"]["completions"] == 3
    worker_args = workers["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--master-host={service['metadata']['name']}" in worker_args
    # the Service selects the master's pod, not the workers'
    assert service["spec"]["selector"].items() <= master["spec"]["template"]["metadata"]["labels"].items()
    assert not service["spec"]["selector"].items() <= workers["spec"]["template"]["metadata"]["labels"].items()


def test_the_daemon_mounts_the_load_test_templates_where_its_configuration_says(chart: helm.Chart) -> None:
    docs = render(chart, LOADTEST)
    runner = rendered_config(docs)["loadtest_runner"]
    assert (runner["kind"], runner["namespace"], runner["workers"]) == ("kubernetes", "loadtests", 3)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "loadtest-templates"]
    assert mount["mountPath"] == runner["templates_dir"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "loadtest-templates"]
    data = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    assert data == {name: (CHART / "files" / "locust" / name).read_text() for name in FILES.values()}
    # off by default: no templates, no mount, no runner
    default = render(chart, {})
    assert f"{RELEASE}-loadtest" not in {d["metadata"]["name"] for d in default if d["kind"] == "ConfigMap"}
    assert "loadtest_runner" not in rendered_config(default)


# --------------------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"replicas": 0}, "/replicas"),
        ({"replica": 2}, "replica"),
        ({"serviceMonitor": {"enable": True}}, "enable"),
        ({"store": {"kind": "etcd"}}, "/store/kind"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"service": {"port": 70000}}, "/service/port"),
        ({"apiToken": {"existingSecret": "Not_A_Name"}}, "/apiToken/existingSecret"),
        ({"config": {"services": None}}, "/config"),
        ({"config": ["not", "a", "mapping"]}, "/config"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
        ({"loadtest": {"enabled": True, "workers": 0}}, "/loadtest/workers"),
        ({"loadtest": {"enabled": True, "namespace": "Load_Tests"}}, "/loadtest/namespace"),
        ({"loadtest": {"enable": True}}, "enable"),
        ({"loadtest": {"enabled": True, "resources": {"requests": {"cpu": 1}}}}, "/loadtest/resources/requests/cpu"),
        ({"previews": {"enabled": "yes"}}, "/previews/enabled"),
        ({"previews": {"enable": True}}, "enable"),
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any], field: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=field):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_schema_accepts_every_value_set(chart: helm.Chart, values: dict[str, Any]) -> None:
    chart.validate_schema(values)
