"""Kubernetes building blocks: the API client boundary, object helpers, settings and the RBAC registry.

The ``kubernetes`` platform (:mod:`vouch.rollout.platforms.kubernetes`) is built from these; the
Kubernetes store and leader election reuse :mod:`~vouch.rollout.platforms.kube.client` and list their
permissions in :mod:`~vouch.rollout.platforms.kube.rbac`.
"""
