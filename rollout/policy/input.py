"""The documents a policy reads and writes: its input, and the decision it must answer with.

The input is one JSON object, documented by ``input.schema.json`` beside this
module: the environment, the service and version, the artifact and the commit
released, every verified attestation (as the projection of
:mod:`~vouch.rollout.policy.projection`, with the whole statement when the
policy asks for it) and every rejected one (with why), the clock, and optional
environment settings the policy may read. A decision is kept with
``canonical_digest`` of its input, so it can be explained and re-run on exactly
the same bytes.

Both engines (embedded Rego and an OPA server) read the policy's answer with
:func:`read_decision`, so both fail closed the same way.

>>> doc = policy_input(
...     environment="staging", service="checkout", version="2.4.1",
...     artifact={"name": "checkout", "digest": "sha256:" + "ab" * 32},
...     commit={"sha": "9f3e2a1", "merge": "fast-forward", "pr_head": "9f3e2a1"},
...     attestations=[], rejected=[], now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
... )
>>> doc["now"], doc["commit"]["merge"]
('2026-01-02T03:04:05Z', 'fast-forward')
>>> canonical_digest({"b": 1, "a": [1, 2]}) == canonical_digest({"a": [1, 2], "b": 1})
True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, NamedTuple

from vouch.core.errors import InputError
from vouch.rollout.attestations.model import Attestation, Rejected
from vouch.rollout.policy.projection import project

MERGE_KINDS = ("fast-forward", "non-fast-forward")
"""How a commit reached the branch released; ``None`` when unknown (then no pull request's evidence counts)."""

UNDEFINED = "policy gave no decision (undefined)"
"""The denial when the policy's decision is undefined: a policy that cannot decide denies."""

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_SHA = re.compile(r"^[0-9a-f]{7,64}$")
_SHOWN = 300
"""Longest excerpt of a malformed answer quoted in a denial."""


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON: sorted keys, no spaces, UTF-8 text unescaped; NaN and infinities refused.

    >>> canonical_json({"b": [1, 2.5], "a": "é"})
    '{"a":"é","b":[1,2.5]}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_digest(obj: Any) -> str:
    """``sha256:HEX`` of the canonical JSON of ``obj``: equal documents have equal digests.

    >>> canonical_digest({})
    'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'
    """
    return "sha256:" + hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def policy_input(
    *,
    environment: str,
    service: str,
    version: str,
    artifact: Mapping[str, Any],
    commit: Mapping[str, Any],
    attestations: Sequence[Attestation],
    rejected: Sequence[Rejected],
    now: datetime,
    settings: Mapping[str, Any] | None = None,
    full_statements: bool = False,
) -> dict[str, Any]:
    """The policy input for one promotion (see ``input.schema.json``).

    ``artifact`` is ``{"digest": "sha256:HEX", "name": ...}`` (name optional);
    ``commit`` is ``{"sha", "merge", "pr_head", "author"}`` where ``merge`` is
    ``"fast-forward"``, ``"non-fast-forward"`` or ``None`` (unknown), ``pr_head``
    the pull request's head commit or ``None``, and ``author`` optional.
    ``settings`` are the environment's policy settings, passed through for the
    policy to read (the default policy merges them over its own defaults).
    ``full_statements`` adds each attestation's whole statement to its
    projection, for a policy that reads more than the projection keeps (the
    engine says which it wants: ``PolicyEngine.full_statements``).

    Raises :class:`InputError` naming the field when one is malformed, so a bad
    request is refused where it is made rather than denied later for a reason
    nobody can act on.
    """
    if now.tzinfo is None:
        raise InputError("policy input: 'now' must be timezone-aware")
    document: dict[str, Any] = {
        "environment": _text(environment, "environment"),
        "service": _text(service, "service"),
        "version": _text(version, "version"),
        "artifact": _artifact(artifact),
        "commit": _commit(commit),
        "attestations": [project(a, full_statement=full_statements) for a in attestations],
        "rejected": [r.to_policy_input() for r in rejected],
        "now": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    if settings is not None:
        document["settings"] = dict(settings)
    return document


def input_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the policy input, as shipped in ``input.schema.json``."""
    text = resources.files("vouch.rollout.policy").joinpath("input.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


class Answer(NamedTuple):
    """What a policy engine makes of one evaluation, before it becomes a :class:`~.base.Decision`."""

    allow: bool
    denials: tuple[str, ...]
    failed: bool = False
    """No decision came back (see ``Decision.failed``)."""


def failure(*reasons: str) -> Answer:
    """The answer when the policy could not decide: a deny, with ``reasons`` saying why."""
    return Answer(False, reasons, True)


def read_decision(value: Any) -> Answer:
    """Judge what a policy answered: ``(allow, denials, failed)``, failing closed on anything but a clean answer.

    The answer must be ``{"allow": bool, "denials": [str, ...]}`` (a Rego set
    arrives as an array). An allow that comes with denials is a deny: the
    denials win. A deny with no reason gets one, because a denial must say why.
    Anything else (an object where a set was meant, as a Rego v0 ``deny[msg]
    {...}`` rule yields; a string ``allow``; no answer at all) is a deny that
    quotes what came back.

    >>> read_decision({"allow": True, "denials": []})
    Answer(allow=True, denials=(), failed=False)
    >>> read_decision({"allow": True, "denials": ["coverage 71% < 80%"]})
    Answer(allow=False, denials=('coverage 71% < 80%',), failed=False)
    >>> v0 = {"allow": False, "denials": {"missing build": True}}
    >>> print(read_decision(v0)[1][0])  # doctest: +NORMALIZE_WHITESPACE
    policy decision malformed: 'denials' must be a set or array of strings, got an object {"missing build":true}
    (a Rego v0-style `deny[msg] { ... }` rule defines an object)
    """
    if not isinstance(value, Mapping):
        return failure(f"policy decision malformed: expected an object {{allow, denials}}, got {_show(value)}")
    problems: list[str] = []
    allow = value.get("allow")
    if "allow" not in value:
        problems.append("policy decision malformed: it has no 'allow'")
    elif not isinstance(allow, bool):
        problems.append(f"policy decision malformed: 'allow' must be a boolean, got {_show(allow)}")
    denials = value.get("denials")
    if "denials" not in value:
        problems.append("policy decision malformed: it has no 'denials' (an empty set when it allows)")
    elif isinstance(denials, Mapping):
        problems.append(
            f"policy decision malformed: 'denials' must be a set or array of strings, got an object "
            f"{_show(denials)} (a Rego v0-style `deny[msg] {{ ... }}` rule defines an object)"
        )
    elif not isinstance(denials, list) or not all(isinstance(d, str) for d in denials):
        problems.append(f"policy decision malformed: 'denials' must be a set or array of strings, got {_show(denials)}")
    if problems or not isinstance(denials, list):
        return failure(*problems)
    reasons = tuple(dict.fromkeys(denials))
    if allow is True and not reasons:
        return Answer(True, ())
    return Answer(False, reasons or ("policy denied without giving a reason",))


def _show(value: Any) -> str:
    """A short excerpt of ``value`` as JSON, for a denial that quotes what came back."""
    try:
        text = canonical_json(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"policy input: {name!r} must be a non-empty string, got {value!r}")
    return value


def _artifact(artifact: Mapping[str, Any]) -> dict[str, Any]:
    digest = artifact.get("digest")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise InputError(f"policy input: artifact.digest must be sha256:<64 lowercase hex>, got {digest!r}")
    document: dict[str, Any] = {"digest": digest}
    if artifact.get("name") is not None:
        document["name"] = _text(artifact["name"], "artifact.name")
    return document


def _commit(commit: Mapping[str, Any]) -> dict[str, Any]:
    sha = commit.get("sha")
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise InputError(f"policy input: commit.sha must be a hex commit id, got {sha!r}")
    merge = commit.get("merge")
    if merge is not None and merge not in MERGE_KINDS:
        raise InputError(f"policy input: commit.merge must be one of {', '.join(MERGE_KINDS)} or null, got {merge!r}")
    pr_head = commit.get("pr_head")
    if pr_head is not None and (not isinstance(pr_head, str) or not _SHA.match(pr_head)):
        raise InputError(f"policy input: commit.pr_head must be a hex commit id or null, got {pr_head!r}")
    document: dict[str, Any] = {"sha": sha, "merge": merge, "pr_head": pr_head}
    if commit.get("author") is not None:
        document["author"] = _text(commit["author"], "commit.author")
    return document
