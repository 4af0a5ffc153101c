"""Which pipeline step a predicate type stands for, and whether a predicate is well formed.

Standard predicates are used where they exist (SLSA provenance for the build,
in-toto test-result for tests, in-toto vulns for the CVE scan); vouch defines
its own, each with a stable type URI and a JSON Schema shipped in
``schemas/``, for the steps that have none. The policy reasons about *steps*
(``dco``, ``build``, ``vulnerability-scan``...), so every predicate type maps
to one step here and nowhere else.

>>> step_of("https://slsa.dev/provenance/v1")
'build'
>>> predicate_type_for("dco")
'https://vouch.dev/attestations/dco/v1'
>>> validate_predicate(predicate_type_for("coverage"), {"percent": 140})
['percent: 140 is greater than the maximum of 100']
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs in the lint set

from vouch.core.errors import InputError

VOUCH_PREFIX = "https://vouch.dev/attestations/"
"""Every predicate type vouch defines starts with this, followed by ``STEP/vN``."""

SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
TEST_RESULT_V01 = "https://in-toto.io/attestation/test-result/v0.1"
VULNS_V02 = "https://in-toto.io/attestation/vulns/v0.2"
ARTIFACT_SIGNATURE_V1 = VOUCH_PREFIX + "artifact-signature/v1"
"""Synthesised for a Sigstore message-signature bundle: the artifact was signed, no statement was."""
DEPLOYED_V1 = VOUCH_PREFIX + "deployed/v1"
"""vouch's own: "deployed to ENVIRONMENT and it held"; the next environment's policy can require it."""

VOUCH_STEPS = (
    "dco",
    "signed-commits",
    "coverage",
    "secret-scan",
    "review-approval",
    "ephemeral-environment-health",
    "network-tests",
    "deployed",
    "artifact-signature",
)
"""Steps whose predicate vouch defines: type ``VOUCH_PREFIX + STEP + "/v1"``, schema ``schemas/STEP.v1.json``."""

STANDARD_STEPS: Mapping[str, str] = {
    SLSA_PROVENANCE_V1: "build",
    TEST_RESULT_V01: "tests",
    VULNS_V02: "vulnerability-scan",
}
"""Standard predicate types and the step each stands for."""

PREDICATE_TYPES: Mapping[str, str] = {
    **{VOUCH_PREFIX + step + "/v1": step for step in VOUCH_STEPS},
    **STANDARD_STEPS,
}
"""Every predicate type vouch knows, to its step."""


def step_of(predicate_type: str) -> str | None:
    """The pipeline step ``predicate_type`` stands for, or ``None`` when vouch does not know the type."""
    return PREDICATE_TYPES.get(predicate_type)


def predicate_type_for(step: str) -> str:
    """The predicate type to sign for ``step``; a full URI passes through unchanged.

    Raises :class:`InputError` naming the known steps when ``step`` is neither.
    """
    if "://" in step:
        return step
    for predicate_type, known in PREDICATE_TYPES.items():
        if known == step:
            return predicate_type
    known_steps = ", ".join(sorted(set(PREDICATE_TYPES.values())))
    raise InputError(f"unknown step {step!r}; known steps: {known_steps} (or pass a predicate type URI)")


def has_property(predicate_type: str, name: str) -> bool:
    """Whether vouch's schema for ``predicate_type`` defines a top-level property ``name`` (e.g. ``commit``)."""
    schema = _schema(predicate_type)
    return schema is not None and name in schema.get("properties", {})


def validate_predicate(predicate_type: str, predicate: Mapping[str, Any]) -> list[str]:
    """Every problem with ``predicate`` for its type, as ``path: message``; empty when it is well formed.

    vouch's own types are checked against their JSON Schema; standard types get
    the structural checks a policy relies on; unknown types are not checked
    (the policy decides whether it wants them at all).
    """
    if not isinstance(predicate, Mapping):
        return [f"predicate: expected an object, got {type(predicate).__name__}"]
    schema = _schema(predicate_type)
    if schema is not None:
        validator = Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(dict(predicate)), key=lambda e: list(e.absolute_path))
        return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]
    check = _STANDARD_CHECKS.get(predicate_type)
    return check(predicate) if check is not None else []


@cache
def _schema(predicate_type: str) -> Mapping[str, Any] | None:
    """vouch's JSON Schema for ``predicate_type``, read once from the package; ``None`` if it is not vouch's."""
    step = PREDICATE_TYPES.get(predicate_type)
    if step is None or not predicate_type.startswith(VOUCH_PREFIX):
        return None
    text = resources.files("vouch.rollout.attestations.schemas").joinpath(f"{step}.v1.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "predicate"


# --------------------------------------------------------------------------- standard types


def _object(value: Any, path: str, problems: list[str]) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    problems.append(f"{path}: expected an object")
    return None


def _string(value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, str) or not value:
        problems.append(f"{path}: expected a non-empty string")


def _check_slsa_provenance(predicate: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    build = _object(predicate.get("buildDefinition"), "buildDefinition", problems)
    if build is not None:
        _string(build.get("buildType"), "buildDefinition.buildType", problems)
    run = _object(predicate.get("runDetails"), "runDetails", problems)
    if run is not None:
        builder = _object(run.get("builder"), "runDetails.builder", problems)
        if builder is not None:
            _string(builder.get("id"), "runDetails.builder.id", problems)
    return problems


def _check_test_result(predicate: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    if predicate.get("result") not in ("PASSED", "WARNED", "FAILED"):
        problems.append(f"result: expected PASSED, WARNED or FAILED, got {predicate.get('result')!r}")
    if not isinstance(predicate.get("configuration"), list):
        problems.append("configuration: expected a list of resource descriptors")
    for name in ("passedTests", "warnedTests", "failedTests"):
        value = predicate.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{name}: expected a list of test names")
    return problems


def _check_vulns(predicate: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    scanner = _object(predicate.get("scanner"), "scanner", problems)
    if scanner is None:
        return problems
    _string(scanner.get("uri"), "scanner.uri", problems)
    result = scanner.get("result")
    if not isinstance(result, list):
        problems.append("scanner.result: expected a list (empty when nothing was found)")
        return problems
    for index, finding in enumerate(result):
        item = _object(finding, f"scanner.result[{index}]", problems)
        if item is not None:
            _string(item.get("id"), f"scanner.result[{index}].id", problems)
            if not isinstance(item.get("severity", []), list):
                problems.append(f"scanner.result[{index}].severity: expected a list")
    return problems


_STANDARD_CHECKS: Mapping[str, Callable[[Mapping[str, Any]], list[str]]] = {
    SLSA_PROVENANCE_V1: _check_slsa_provenance,
    TEST_RESULT_V01: _check_test_result,
    VULNS_V02: _check_vulns,
}
