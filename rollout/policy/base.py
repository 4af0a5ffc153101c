"""The PolicyEngine family: decides from a documented input whether a release may proceed.

Contract
--------
``decide(input)`` evaluates the environment's policy on ``input`` and returns
a :class:`Decision`. It fails closed: an undefined result, an evaluation
error, an unsupported builtin, an unreachable server or a malformed answer is
``allow=False`` with a reason saying which, and ``failed`` set: the policy could
not decide, which is not the same as the policy denying. A denial lists every
reason the policy gave, never just "denied".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Decision:
    """A policy's answer, with the digests of what it read so it can be explained and re-run."""

    allow: bool
    denials: tuple[str, ...] = ()
    input_digest: str = ""
    """``sha256:HEX`` of the canonical JSON of the input."""
    policy_digest: str = ""
    """``sha256:HEX`` of the policy evaluated (its sources, sorted by name)."""
    elapsed: float = 0.0
    failed: bool = False
    """The policy could not decide (an evaluation error, no or a malformed answer, a timeout, a crash, an
    unreachable server): a deny all the same, whose denials say what went wrong rather than what is missing."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "denials": list(self.denials),
            "failed": self.failed,
            "input_digest": self.input_digest,
            "policy_digest": self.policy_digest,
            "elapsed": self.elapsed,
        }


@runtime_checkable
class PolicyEngine(Protocol):
    """Evaluates a policy; fails closed."""

    @property
    def full_statements(self) -> bool:
        """Whether the policy reads whole statements: its input must then carry them (``policy_input``'s argument)."""

    async def decide(self, input: Mapping[str, Any]) -> Decision:
        """Decide on ``input`` (see ``rollout/policy/input.schema.json``)."""

    async def close(self) -> None:
        """Release connections."""
