"""The Kubernetes permissions vouch's code actually uses, in one place.

Why a registry: the Helm chart's Role/ClusterRole must grant exactly what the code calls — no more
(least privilege), no less (a missing verb only shows up mid-promotion as a 403). The chart's test
compares its rendered rules against :data:`RULES`, and each Kubernetes module lists its calls here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One API permission: verbs on a resource, granted namespaced (Role) or cluster-wide (ClusterRole)."""

    api_group: str  # "" for core, "apps", "coordination.k8s.io"
    resource: str  # "deployments", "pods", "services", "events", "configmaps", "leases", ...
    verbs: tuple[str, ...]
    scope: str  # "namespace" (Role) or "cluster" (ClusterRole)
    # "platform" | "store" | "leader" | "self" (the daemon's own pod) | "attestations" | "loadtest" | "previews"
    used_by: str


RULES: list[Rule] = [
    # --- platform (rollout/platforms/kubernetes.py, rollout/platforms/kube/) ---
    # read the stable Deployment, create/patch the canary, patch stable's replicas and template
    Rule("apps", "deployments", ("get", "create", "patch"), "namespace", "platform"),
    # canary and stable pod addresses and readiness for observe()
    Rule("", "pods", ("list",), "namespace", "platform"),
    # the Service that spreads traffic over stable and canary pods, for address()
    Rule("", "services", ("get",), "namespace", "platform"),
    # each transition recorded as an Event on the Deployment
    Rule("", "events", ("create",), "namespace", "platform"),
    # --- end platform ---
    # --- store and leader (K3: append below this line only) ---
    # the state store (daemon/store/kubernetes.py, daemon/store/kube_*.py): records, buckets, locks and the
    # sequence counter are ConfigMaps in the store's namespace; read one, list by label, create, merge-patch
    # (resourceVersion-checked where it matters). Nothing is ever deleted or replaced (PUT).
    Rule("", "configmaps", ("get", "list", "create", "patch"), "namespace", "store"),
    # leader election (daemon/leader.py): one coordination.k8s.io/v1 Lease, read, created once, then
    # renewed and taken over with resourceVersion-checked merge patches
    Rule("coordination.k8s.io", "leases", ("get", "create", "patch"), "namespace", "leader"),
    # the leader marks its own pod vouch.dev/leader=true (daemon/leaderlabel.py) so the Service routes the API
    # and Alertmanager's webhooks to it; in the daemon's own namespace, with leader election
    Rule("", "pods", ("patch",), "namespace", "self"),
    # --- end store and leader ---
    # the kubernetes attestation source (rollout/attestations/kubesource.py): one ConfigMap per document in
    # the source's namespace; listed by label, created, read back to check a repeated put. Never changed.
    Rule("", "configmaps", ("get", "list", "create"), "namespace", "attestations"),
    # --- load tests on Kubernetes (rollout/loadtest_kube.py), in the load-test namespace ---
    # each run's master and worker Jobs: created, polled until the master's finishes, deleted
    Rule("batch", "jobs", ("get", "create", "delete"), "namespace", "loadtest"),
    # the run's locustfile (a ConfigMap) and the Service its workers reach the master through
    Rule("", "configmaps", ("create", "delete"), "namespace", "loadtest"),
    Rule("", "services", ("create", "delete"), "namespace", "loadtest"),
    # the master's pod, found by label, and its log, which ends with Locust's statistics
    Rule("", "pods", ("list",), "namespace", "loadtest"),
    Rule("", "pods/log", ("get",), "namespace", "loadtest"),
    # a failed run recorded as an Event on its master Job
    Rule("", "events", ("create",), "namespace", "loadtest"),
    # --- end load tests ---
    # --- previews on Kubernetes (daemon/preview/kube.py): one namespace per preview, removed whole ---
    # the preview's namespace: created (with its TTL labels), read (an existing one's owner, down's check,
    # waiting for it to terminate), listed by label (list, the reaper), deleted (down, the reaper; only
    # namespaces labelled as vouch's previews). Namespaces are cluster-scoped.
    Rule("", "namespaces", ("get", "list", "create", "delete"), "cluster", "previews"),
    # what runs in it, in namespaces made on the fly (so granted cluster-wide): the service's and the
    # mocks' Deployments, read until available; their Services; the mocks' specs. Never changed or
    # deleted one by one: they go with their namespace.
    Rule("apps", "deployments", ("get", "create"), "cluster", "previews"),
    Rule("", "services", ("create",), "cluster", "previews"),
    Rule("", "configmaps", ("create",), "cluster", "previews"),
    # --- end previews ---
]
