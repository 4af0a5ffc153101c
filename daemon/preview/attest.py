"""The two attestations an environment's checks become: ``ephemeral-environment-health`` and ``network-tests``.

Both are in-toto statements about the artifact's digest, naming the commit they ran on, signed
as DSSE envelopes with a local key and stored in the attestation source beside the pipeline's
other attestations, where the staging and production policies look for them. They are written
whether the checks passed or not: a failed attestation is how the policy learns why it denies.

Example::

    written = await attest(report, subject_name="checkout", digest="sha256:...", commit=sha,
                           key=Path("keys/ci.key"), source=DirectorySource(Path("attestations")))
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vouch.core.errors import InputError
from vouch.daemon.config import VouchConfig
from vouch.daemon.preview.model import CheckReport
from vouch.rollout.attestations.dsse import parse_digest, sign_statement
from vouch.rollout.attestations.keys import load_signer
from vouch.rollout.attestations.model import Statement, Subject
from vouch.rollout.attestations.predicates import predicate_type_for, validate_predicate
from vouch.rollout.attestations.sources import AttestationSource, DirectorySourceSpec, build_source

HEALTH_STEP = "ephemeral-environment-health"
TESTS_STEP = "network-tests"

_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def rfc3339(timestamp: float) -> str:
    """``timestamp`` (epoch seconds) as RFC 3339 in UTC, as the schemas want it.

    >>> rfc3339(0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def health_predicate(report: CheckReport, *, commit: str) -> dict[str, Any]:
    """The ``ephemeral-environment-health`` predicate of ``report``."""
    return {
        "healthy": report.healthy,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in report.health],
        "environment": report.environment,
        "commit": commit,
        "checked_at": rfc3339(report.checked_at),
    }


def tests_predicate(report: CheckReport, *, commit: str) -> dict[str, Any]:
    """The ``network-tests`` predicate of ``report``: the result, the counts and the failed tests' names."""
    failed = [c.name for c in report.tests if not c.passed]
    return {
        "result": report.tests_result,
        "passed": sum(1 for c in report.tests if c.passed and not c.skipped),
        "failed": len(failed),
        "skipped": sum(1 for c in report.tests if c.skipped),
        "failed_tests": failed,
        "mocked_backends": list(report.mocked_backends),
        "commit": commit,
    }


def statements(report: CheckReport, *, subject_name: str, digest: str, commit: str) -> list[Statement]:
    """The two statements about the artifact ``digest`` (``sha256:HEX``) built from ``commit``.

    Raises :class:`InputError` for a digest or commit that is not one, or a predicate that does not
    fit its schema (which would be a defect here: the verifier would reject it).
    """
    hex_digest = parse_digest(digest)
    commit = commit.strip().lower()
    if not _COMMIT.match(commit):
        raise InputError(f"{commit!r} is not a commit: give its hex object id (7 to 64 hex digits)")
    subject = Subject(name=subject_name, digest={"sha256": hex_digest})
    made = []
    for step, predicate in (
        (HEALTH_STEP, health_predicate(report, commit=commit)),
        (TESTS_STEP, tests_predicate(report, commit=commit)),
    ):
        predicate_type = predicate_type_for(step)
        problems = validate_predicate(predicate_type, predicate)
        if problems:
            raise InputError(f"the {step} predicate does not fit its schema: {'; '.join(problems)}")
        made.append(Statement((subject,), predicate_type, predicate))
    return made


async def attest(
    report: CheckReport, *, subject_name: str, digest: str, commit: str, key: Path, source: AttestationSource
) -> list[str]:
    """Sign both attestations of ``report`` with ``key`` (a private key PEM) and store them for ``digest``.

    Returns where each went, health first. Each document's name ends with a hash of its bytes, so a
    re-run adds to what is stored and never replaces it.
    """
    signer = load_signer(key)
    written = []
    environment = _UNSAFE.sub("-", report.environment).strip("-") or "environment"
    for statement in statements(report, subject_name=subject_name, digest=digest, commit=commit):
        document = json.dumps(sign_statement(statement, [signer]), indent=2).encode() + b"\n"
        step = HEALTH_STEP if statement.predicate_type == predicate_type_for(HEALTH_STEP) else TESTS_STEP
        name = f"{step}-{environment}-{hashlib.sha256(document).hexdigest()[:12]}"
        written.append(await source.put(f"sha256:{parse_digest(digest)}", name, document))
    return written


def attestation_source(config: VouchConfig | None, *, store: Path | None = None) -> AttestationSource:
    """Where attestations go: ``store`` (a folder) when given, else the configuration's source.

    The configuration's default is the daemon's own, ``<state_dir>/attestations``, so the attestations
    gate finds what was written here. With neither, :class:`InputError`.
    """
    if store is not None:
        return build_source(DirectorySourceSpec(path=str(store)))
    if config is None:
        raise InputError("no attestation store: give --store DIR or a configuration")
    spec = config.attestations.source
    if spec is None:
        return build_source(DirectorySourceSpec(path=str(config.state_path() / "attestations")))
    if isinstance(spec, DirectorySourceSpec):
        return build_source(DirectorySourceSpec(path=str(config.resolve(spec.path))))
    return build_source(spec)


def signing_key(config: VouchConfig, key: Path | None) -> Path:
    """``--key``, else the configuration's ``attestations.signing_key``; an :class:`InputError` with neither."""
    if key is not None:
        return key
    if config.attestations.signing_key is not None:
        return config.resolve(config.attestations.signing_key)
    raise InputError("attesting needs a signing key: give --key KEY or set attestations.signing_key")


async def attest_to(
    config: VouchConfig,
    report: CheckReport,
    *,
    store: Path | None,
    subject_name: str,
    digest: str,
    commit: str,
    key: Path,
) -> list[str]:
    """:func:`attest` into ``store`` or the configuration's source (:func:`attestation_source`), closed after."""
    source = attestation_source(config, store=store)
    try:
        return await attest(report, subject_name=subject_name, digest=digest, commit=commit, key=key, source=source)
    finally:
        await asyncio.shield(source.close())
