"""What a policy sees of a verified attestation: a projection of its statement, and the whole statement on request.

Handing a document to the embedded engine costs time per value, and the
engine reads a value's fields by scanning them, so the policy input carries
each attestation as a small projection rather than the statement as signed:

- ``step``: the pipeline step its predicate type stands for (``None`` when unknown);
- ``predicate``: only the predicate fields that judge the step (:data:`PROJECTION`),
  with their names and nesting as signed;
- ``subjects``: the statement's subjects as ``sha256:HEX`` digests;
- ``commits``: the commits the statement says it was made for (:func:`named_commits`);
- ``signers``: who signed, without the fields that do not apply (a key has no issuer);
- ``source``, ``digest``: where it was found, and the sha256 of the document verified.

A policy that reads more of the statement (another predicate field, the
predicate type of a step vouch does not know) asks for it (``full_statements``
in its settings): each attestation then also carries ``statement``, the
in-toto Statement as signed. ``input.schema.json`` documents both.

>>> from vouch.rollout.attestations.model import Attestation, Signer, Statement, Subject
>>> statement = Statement(
...     subjects=(Subject("app", {"sha256": "ab" * 32}),),
...     predicate_type="https://vouch.dev/attestations/coverage/v1",
...     predicate={"commit": "9f3e2a1", "percent": 91.5, "tool": "coverage.py"},
... )
>>> seen = project(Attestation(statement, (Signer("key", keyid="ci"),), "a.json", "sha256:" + "00" * 32, "coverage"))
>>> seen["predicate"], seen["commits"], seen["signers"]
({'percent': 91.5}, ['9f3e2a1'], [{'kind': 'key', 'keyid': 'ci'}])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from vouch.rollout.attestations.model import STATEMENT_TYPE, Attestation

KEEP: Final = True
"""In :data:`PROJECTION`: keep this field's value whole."""

PROJECTION: Mapping[str, Mapping[str, Any]] = {
    "tests": {"result": KEEP, "failedTests": KEEP},
    "network-tests": {"result": KEEP, "failed_tests": KEEP},
    "vulnerability-scan": {"scanner": {"result": [{"id": KEEP, "severity": [{"score": KEEP}]}]}},
    "dco": {"passed": KEEP, "commits": [{"sha": KEEP, "signed_off": KEEP, "reason": KEEP}]},
    "signed-commits": {"passed": KEEP, "commits": [{"sha": KEEP, "verified": KEEP, "reason": KEEP}]},
    "coverage": {"percent": KEEP},
    "secret-scan": {"findings": [{"rule": KEEP, "file": KEEP}]},
    "review-approval": {"author": KEEP, "approvers": [{"name": KEEP, "commit": KEEP}]},
    "ephemeral-environment-health": {"healthy": KEEP, "checks": [{"name": KEEP, "passed": KEEP}]},
    "deployed": {"environment": KEEP, "service": KEEP, "held": KEEP},
}
"""Per step, the predicate fields the projection keeps: a field maps to :data:`KEEP` (the whole value),
to an object of the fields kept inside it, or to a one-item list saying what is kept of each item.
A value of another shape than described is kept whole, so a policy sees what was signed and can
say what is wrong with it. Steps not listed (``build``, ``artifact-signature``) keep no predicate
field: their commit is in ``commits``."""


def project(attestation: Attestation, *, full_statement: bool = False) -> dict[str, Any]:
    """``attestation`` as the policy input carries it (see the module docstring).

    The keys come in the order a policy reads them, which is the order the
    engine scans them in; the input's digest does not depend on it.
    """
    statement = attestation.statement
    predicate = statement.predicate
    view: dict[str, Any] = {
        "step": attestation.step,
        "predicate": _pruned(predicate, PROJECTION.get(attestation.step or "", {})),
        "subjects": [f"sha256:{s.digest['sha256']}" for s in statement.subjects if "sha256" in s.digest],
        "commits": named_commits(attestation.step, predicate),
        "signers": [{k: v for k, v in s.to_dict().items() if v is not None} for s in attestation.signers],
        "source": attestation.source,
        "digest": attestation.digest,
    }
    if full_statement:
        view["statement"] = {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": s.name, "digest": dict(s.digest)} for s in statement.subjects],
            "predicateType": statement.predicate_type,
            "predicate": dict(predicate),
        }
    return view


def named_commits(step: str | None, predicate: Mapping[str, Any]) -> list[str]:
    """The commits a statement says it was made for, each once, in the order given.

    vouch's predicates name one in ``commit``. Standard ones name them in the
    ``gitCommit`` digest of their resource descriptors: SLSA provenance in
    ``buildDefinition.resolvedDependencies``, test results in ``configuration``
    (read for any step that has it). None named is an empty list.

    >>> named_commits("dco", {"commit": "9f3e2a1"})
    ['9f3e2a1']
    >>> named_commits("tests", {"configuration": [{"digest": {"gitCommit": "9f3e2a1"}}, {"uri": "ci.yaml"}]})
    ['9f3e2a1']
    """
    commit = predicate.get("commit")
    if isinstance(commit, str):
        return [commit]
    descriptors: Any = None
    if step == "build":
        build = predicate.get("buildDefinition")
        descriptors = build.get("resolvedDependencies") if isinstance(build, Mapping) else None
    if not isinstance(descriptors, list):
        descriptors = predicate.get("configuration")
    if not isinstance(descriptors, list):
        return []
    found: list[str] = []
    for descriptor in descriptors:
        digest = descriptor.get("digest") if isinstance(descriptor, Mapping) else None
        sha = digest.get("gitCommit") if isinstance(digest, Mapping) else None
        if isinstance(sha, str) and sha not in found:
            found.append(sha)
    return found


def _pruned(value: Any, shape: Any) -> Any:
    """``value`` with only the fields ``shape`` keeps (see :data:`PROJECTION`); another shape is kept whole."""
    if shape is KEEP:
        return value
    if isinstance(shape, Mapping) and isinstance(value, Mapping):
        return {name: _pruned(value[name], inner) for name, inner in shape.items() if name in value}
    if isinstance(shape, list) and isinstance(value, list):
        return [_pruned(item, shape[0]) for item in value]
    return value
