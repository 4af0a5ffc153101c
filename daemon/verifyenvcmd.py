"""``vouch verify-env``: a preview's checks, run against a stable environment, attested the same way.

After a non-fast-forward merge the merged commit is new: the pull request's preview attestations
name another commit, so the staging policy does not count them. ``verify-env`` earns them again on
a stable environment (dev or staging): the service's probes until healthy, then its network tests,
with no mocks (the environment's real backends answer). With ``--digest`` and ``--commit`` both
results are signed and stored as ``ephemeral-environment-health`` and ``network-tests``
attestations, as a preview's are.

Exit codes: 0 healthy and every test passed; 1 a check failed (the attestations, if asked for, are
written all the same and say so); 2 usage or configuration problems.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vouch.core.errors import InputError
from vouch.daemon.cliconnect import ConfigOpt, JsonOpt, load_default
from vouch.daemon.cliout import EXIT_FAILED, err, out, reported
from vouch.daemon.config import VouchConfig, split_host_port
from vouch.daemon.preview.attest import attest_to, signing_key
from vouch.daemon.preview.attestopts import ArtifactNameOpt, CommitOpt, DigestOpt, SigningKeyOpt, StoreOpt
from vouch.daemon.preview.checks import check_environment, report_document, report_lines
from vouch.daemon.preview.model import CheckReport
from vouch.rollout.config import LocalPlatformSpec, ServiceSpec
from vouch.rollout.preview import PreviewSpec


def verify_env(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service, as named in the configuration.")],
    env: Annotated[str, typer.Option("--env", "-e", help="The stable environment to check (dev or staging).")],
    address: Annotated[
        str | None,
        typer.Option("--address", metavar="HOST:PORT", help="Where the service answers (default: its local router)."),
    ] = None,
    digest: DigestOpt = None,
    commit: CommitOpt = None,
    artifact_name: ArtifactNameOpt = None,
    key: SigningKeyOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Health-check a stable environment of SERVICE and run its network tests, without mocks.

    The same checks as a preview's: the service's probes until healthy (within preview.health_deadline),
    then the suites of preview.tests in order, with $VOUCH_PREVIEW_URL pointing at the environment. With
    --digest and --commit both results are signed and stored as attestations for the artifact.

    Exits 0 when healthy and every test passed, 1 when a check failed, 2 on usage or configuration errors.

    Example: vouch verify-env checkout --env staging --digest "sha256:$DIGEST" --commit "$(git rev-parse HEAD)"
    """
    with reported(as_json=as_json):
        cfg = load_default(config)
        if cfg is None:
            raise InputError("verify-env reads the service from the configuration: give --config FILE")
        spec = cfg.service(service)
        where = _address(cfg, spec, service=service, environment=env, given=address)
        if (digest is None) != (commit is None):
            raise InputError("--digest and --commit go together: the attestations are about both")
        key_path = signing_key(cfg, key) if digest is not None else None
        err.print(f"checking {service} in {env} at {where}", markup=False)
        report, written = asyncio.run(
            _check_and_attest(
                cfg,
                spec,
                environment=env,
                address=where,
                subject=artifact_name or service,
                digest=digest,
                commit=commit,
                key=key_path,
                store=store,
            )
        )
    _print(report, written, as_json=as_json)
    if not report.passed:
        raise typer.Exit(EXIT_FAILED)


async def _check_and_attest(
    cfg: VouchConfig,
    spec: ServiceSpec,
    *,
    environment: str,
    address: str,
    subject: str,
    digest: str | None,
    commit: str | None,
    key: Path | None,
    store: Path | None,
) -> tuple[CheckReport, list[str]]:
    """Check the environment; attest the results when a digest, a commit and a key are given."""
    config_dir = cfg.source.parent if cfg.source is not None else Path.cwd()
    report = await check_environment(
        environment=environment,
        address=address,
        mocks={},
        spec=spec.preview or PreviewSpec(),
        service=spec,
        config_dir=config_dir,
    )
    if digest is None or commit is None or key is None:
        return report, []
    written = await attest_to(cfg, report, store=store, subject_name=subject, digest=digest, commit=commit, key=key)
    return report, written


def _address(cfg: VouchConfig, spec: ServiceSpec, *, service: str, environment: str, given: str | None) -> str:
    """``--address``, or the local router's fixed port of the environment; refuses production."""
    placed = spec.environment(environment)
    if placed is None:
        known = ", ".join(e.name for e in spec.environments)
        raise InputError(f"service {service!r} has no environment {environment!r}; it has {known}")
    if "prod" in environment:
        raise InputError(
            f"{environment!r} looks like production: network tests run in dev or staging, never in production"
        )
    if given is not None:
        try:
            host, port = split_host_port(given)
        except ValueError as exc:
            raise InputError(f"--address: {exc}") from exc
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not isinstance(cfg.platform, LocalPlatformSpec):
        raise InputError(f"the {cfg.platform.kind} platform has no fixed address here: give --address HOST:PORT")
    if placed.port == 0:
        raise InputError(
            f"services.{service}.environments ({environment}) sets no port (the local router picks one at start): "
            "give --address HOST:PORT, or set the port"
        )
    return f"{cfg.platform.host}:{placed.port}"


def _print(report: CheckReport, written: list[str], *, as_json: bool) -> None:
    if as_json:
        document: dict[str, Any] = {**report_document(report), "attestations": written}
        print(json.dumps(document, indent=2))
        return
    for line in report_lines(report):
        out.print(line, markup=False)
    for location in written:
        out.print(f"  attested -> {location}", markup=False)
