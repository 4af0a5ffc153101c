"""Policy engines that decide, from verified attestations, whether a release may enter an environment.

One registry builds an engine (see ``base.PolicyEngine``) from its settings by ``kind``:
``rego`` evaluates Rego with regopy (the embedded default, with vouch's default
policy unless ``path`` names your own, which then runs in a worker process of its
own: see :mod:`.isolated`); ``opa`` asks an OPA server.

>>> engine = build_policy(RegoPolicySpec())
>>> engine.query, engine.full_statements
('data.vouch.decision', False)
>>> OpaPolicySpec(kind="opa", url="http://127.0.0.1:8181").path
'vouch/decision'
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from vouch.core.durations import Duration
from vouch.core.errors import ConfigError, Problem
from vouch.core.settings import Model
from vouch.rollout.policy.base import Decision, PolicyEngine
from vouch.rollout.policy.isolated import IsolatedRegoPolicy
from vouch.rollout.policy.opa import OpaPolicy
from vouch.rollout.policy.rego import DEFAULT_QUERY, RegoPolicy

__all__ = [
    "POLICY_KINDS",
    "Decision",
    "OpaPolicySpec",
    "PolicyEngine",
    "PolicySpec",
    "RegoPolicySpec",
    "build_policy",
]

POLICY_KINDS: tuple[str, ...] = ("rego", "opa")
"""Policy engine kinds a ``policy`` setting may name."""


class RegoPolicySpec(Model):
    """Rego evaluated in-process by regopy, with strict builtins: the embedded default."""

    kind: Literal["rego"] = "rego"
    path: str | None = None
    """A directory of ``.rego`` files (or one file); unset means the default policy shipped with vouch."""
    query: str = DEFAULT_QUERY
    """The rule whose value is the decision ``{"allow": bool, "denials": [string, ...]}``."""
    full_statements: bool | None = None
    """Give the policy each attestation's whole statement as signed (``attestations[].statement``), besides its
    projection. Unset: on for a policy of your own (``path``), off for vouch's default policy, which reads only
    the projection; turn it off for your own when it does too, as handing statements over costs time."""
    isolated: bool | None = None
    """Evaluate in a worker process of its own, so that a policy or input that makes regopy crash or never
    return denies with the reason instead of stopping the daemon. Unset: on for a policy of your own
    (``path``), off for vouch's default policy, which calls none of the builtins that can (and is then
    a few tenths of a millisecond faster a decision)."""
    timeout: Duration = 5.0
    """Longest one decision may take in the worker (``isolated``); a slower one is stopped and denies."""


class OpaPolicySpec(Model):
    """An OPA server asked through its REST Data API (``POST /v1/data/<path>``)."""

    kind: Literal["opa"]
    url: str = Field(pattern=r"^https?://")
    """Base URL of the server, e.g. ``http://opa:8181``."""
    path: str = Field(default="vouch/decision", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
    """The decision rule's path under ``data``, with slashes: ``vouch/decision`` is ``data.vouch.decision``."""
    timeout: Duration = 5.0
    """Longest wait for an answer; a slower server is a deny, never an allow."""
    full_statements: bool = True
    """Send each attestation's whole statement as signed (``attestations[].statement``), besides its projection;
    turn it off when the server's policy reads only the projection (vouch's default policy does)."""


PolicySpec = Annotated[RegoPolicySpec | OpaPolicySpec, Field(discriminator="kind")]
"""Settings of one policy engine, told apart by ``kind``."""


def build_policy(spec: RegoPolicySpec | OpaPolicySpec) -> PolicyEngine:
    """The engine ``spec`` describes. The caller owns it and closes it with ``close()``.

    An unknown kind, or a Rego policy that cannot be read or compiled, is a
    :class:`ConfigError` naming the file and line: a policy is checked when the
    configuration is loaded, never first at a promotion.
    """
    if isinstance(spec, RegoPolicySpec):
        if spec.path is None:
            policy = RegoPolicy.default(query=spec.query, full_statements=spec.full_statements or False)
        else:
            full = True if spec.full_statements is None else spec.full_statements
            policy = RegoPolicy.from_path(spec.path, query=spec.query, full_statements=full)
        isolated = spec.path is not None if spec.isolated is None else spec.isolated
        return IsolatedRegoPolicy(policy, timeout=spec.timeout) if isolated else policy
    if isinstance(spec, OpaPolicySpec):
        return OpaPolicy(spec.url, spec.path, timeout=spec.timeout, full_statements=spec.full_statements)
    kind = getattr(spec, "kind", None)
    raise ConfigError(
        [
            Problem(
                "configuration",
                None,
                "policy.kind",
                f"unknown policy kind {kind!r}; known kinds: {', '.join(POLICY_KINDS)}",
            )
        ]
    )
