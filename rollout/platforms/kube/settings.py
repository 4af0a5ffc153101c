"""Settings of the ``kubernetes`` platform: which cluster and namespace each environment lives in.

Kept apart from the platform itself so the configuration models can name them without importing
a Kubernetes client.

How an environment finds its cluster and namespace (each field falls back to the next):

* ``environments.<name>.context`` / ``.kubeconfig`` / ``.namespace`` — this environment only
  (``in_cluster: true`` picks the cluster vouch runs in, whatever the platform's context);
* ``context`` / ``kubeconfig`` / ``namespace`` — every environment;
* no context and no kubeconfig: in-cluster (the pod's service account) when running in a pod,
  else the current context of ``$KUBECONFIG`` or ``~/.kube/config``; no namespace: the
  environment's own name (``staging`` runs in namespace ``staging``).

Example: staging in namespace ``shop-staging`` of the cluster vouch runs in, production in another
cluster reached through a kubeconfig context::

    platform:
      kind: kubernetes
      environments:
        staging: {namespace: shop-staging}
        production: {context: prod-eu, kubeconfig: /etc/vouch/kubeconfig, namespace: shop}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vouch.core.durations import Duration
from vouch.core.settings import Model

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class KubeClusterSpec(Model):
    """Where one environment's workloads run; unset fields fall back to the platform's own."""

    context: str | None = None
    """A kubeconfig context naming the cluster and credentials."""
    kubeconfig: str | None = None
    """A kubeconfig file (or several, separated by ``:``); default ``$KUBECONFIG`` or ``~/.kube/config``."""
    namespace: str | None = Field(default=None, pattern=DNS_LABEL)
    """The namespace of the service's Deployment and Service here."""
    in_cluster: bool = False
    """Use the cluster vouch runs in (its pod's service account), whatever the platform's context."""


class KubernetesPlatformSpec(Model):
    """Runs each service as its own stable Deployment plus a canary Deployment vouch makes and owns.

    The Service selecting the stable pods also selects the canary's (they share the stable pod
    template's labels), so the canary's share of traffic is its share of ready pods.
    """

    kind: Literal["kubernetes"] = "kubernetes"
    context: str | None = None
    """Default kubeconfig context; none means in-cluster inside a pod, else the current context."""
    kubeconfig: str | None = None
    """Default kubeconfig file; default ``$KUBECONFIG`` or ``~/.kube/config`` (unused in-cluster)."""
    namespace: str | None = Field(default=None, pattern=DNS_LABEL)
    """Default namespace; none means the environment's name."""
    environments: dict[str, KubeClusterSpec] = Field(default_factory=dict)
    """Per-environment cluster and namespace, by environment name."""
    canary_suffix: str = Field(default="-canary", pattern=r"^-[a-z0-9-]{1,20}$")
    """The canary Deployment is named after the stable one plus this suffix."""
    request_timeout: Duration = 10.0
    """Longest one API request may take before it is abandoned and retried."""
    retry_initial: Duration = 0.2
    """First back-off after a conflict (409), throttling (429), server error (5xx) or timeout."""
    retry_max: Duration = 5.0
    """Longest back-off between two attempts (a server's ``Retry-After`` is honoured up to this)."""
    retry_deadline: Duration = 30.0
    """How long one API call keeps retrying before the operation fails as unavailable (and the
    engine retries the whole operation, which is idempotent)."""
    rollout_timeout: Duration = 300.0
    """Promote: how long to wait for the stable Deployment's rollout before reporting it unfinished
    (the canary keeps serving meanwhile; promoting again resumes the wait)."""
    poll_interval: Duration = 1.0
    """Promote: time between two looks at the stable rollout."""

    def cluster(self, environment: str) -> KubeClusterSpec:
        """The effective cluster and namespace of ``environment``.

        >>> KubernetesPlatformSpec(context="prod").cluster("staging").namespace
        'staging'
        """
        own = self.environments.get(environment, KubeClusterSpec())
        namespace = own.namespace or self.namespace or environment
        if own.in_cluster:
            return KubeClusterSpec(namespace=namespace, in_cluster=True)
        return KubeClusterSpec(
            context=own.context if own.context is not None else self.context,
            kubeconfig=own.kubeconfig if own.kubeconfig is not None else self.kubeconfig,
            namespace=namespace,
        )
