"""``vouch attest keygen|sign|verify``: make and check the signed evidence a release is judged on.

CI calls ``sign`` after each pipeline step (DCO, build, tests, scans,
approval...) to write an in-toto Statement in a DSSE envelope, signed with a
local key or, on runners with an OIDC token, keyless through Sigstore.
``verify`` checks one document the way the attestations gate does, offline.

Exit codes: 0 done / verified; 1 verification failed (the reason is printed);
2 usage: missing or contradictory options, unreadable files, bad keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from vouch.core.errors import InputError
from vouch.daemon.cliout import EXIT_FAILED, err, out, reported
from vouch.rollout.attestations.dsse import parse_digest, parse_subject, sign_statement
from vouch.rollout.attestations.keys import KEY_TYPES, KeyType, generate_keypair, load_signer
from vouch.rollout.attestations.model import Attestation, RawAttestation, Statement, Subject
from vouch.rollout.attestations.predicates import has_property, predicate_type_for, validate_predicate
from vouch.rollout.attestations.sources import DirectorySource
from vouch.rollout.attestations.verify import AttestationVerifier, IdentitySpec, KeySpec, TrustSpec

attest_app = typer.Typer(
    name="attest",
    help=(
        "Make and check signed attestations: in-toto statements in DSSE envelopes or Sigstore bundles.\n\n"
        "Example: vouch attest sign --step coverage --subject app@sha256:HEX --key ci.key --predicate cov.json"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")]


# --------------------------------------------------------------------------- plumbing


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read artifact {path}: {exc.strerror or exc}") from exc
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------- keygen


@attest_app.command("keygen")
def keygen(
    out_path: Annotated[
        Path, typer.Option("--out", metavar="KEY", help="Private key file to write (mode 0600); KEY.pub next to it.")
    ],
    key_type: Annotated[str, typer.Option("--type", metavar="|".join(KEY_TYPES), help="Key algorithm.")] = "ed25519",
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate a signing key pair: a private key (PEM, 0600) and its public key KEY.pub.

    Give KEY to `vouch attest sign --key` in CI (as a secret) and KEY.pub to the verifiers
    (`attestations.trust.keys` in vouch.yaml, or `vouch attest verify --key`).

    Example: vouch attest keygen --out ci.key --type ecdsa-p256
    """
    with reported(as_json=as_json):
        if key_type not in KEY_TYPES:
            raise InputError(f"--type {key_type!r}: choose one of {', '.join(KEY_TYPES)}")
        kind: KeyType = "ed25519" if key_type == "ed25519" else "ecdsa-p256"
        pair = generate_keypair(out_path, key_type=kind, overwrite=force)
    if as_json:
        document = {"private_key": str(pair.private_path), "public_key": str(pair.public_path), "keyid": pair.keyid}
        print(json.dumps({**document, "type": pair.key_type}))
    else:
        out.print(f"wrote {pair.private_path} (private, 0600) and {pair.public_path}; keyid {pair.keyid}")


# --------------------------------------------------------------------------- sign


def _predicate(path: Path | None, *, predicate_type: str, commit: str | None) -> dict[str, Any]:
    """The predicate from ``path`` (or ``{}``) with ``commit`` recorded where the type's schema has it."""
    predicate: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = json.loads(_read(path, "predicate"))
        except ValueError as exc:
            raise InputError(f"--predicate {path}: not JSON ({exc})") from exc
        if not isinstance(loaded, dict):
            raise InputError(f"--predicate {path}: must hold a JSON object")
        predicate = loaded
    if commit is not None:
        commit = commit.lower()
        if not has_property(predicate_type, "commit"):
            raise InputError(f"--commit: predicates of type {predicate_type} have no commit field")
        if str(predicate.get("commit", commit)).lower() != commit:
            raise InputError(f"--commit {commit} contradicts the predicate's commit {predicate['commit']}")
        predicate["commit"] = commit
    problems = validate_predicate(predicate_type, predicate)
    if problems:
        raise InputError(f"the predicate does not fit {predicate_type}: {'; '.join(problems)}")
    return predicate


def _signed(statement: Statement, keys: Sequence[Path], *, keyless: bool, token: str | None) -> tuple[bytes, list[str]]:
    """The signed document and who signed it (keyids, or ``keyless``)."""
    if keyless:
        from vouch.rollout.attestations.sigstore import sign_keyless  # sigstore-python loads only for keyless

        return sign_keyless(statement, identity_token=token).encode(), ["keyless"]
    signers = [load_signer(path) for path in keys]
    envelope = sign_statement(statement, signers)
    return json.dumps(envelope, indent=2).encode() + b"\n", [s.public_key.keyid for s in signers]


@attest_app.command("sign")
def sign(
    step: Annotated[
        str,
        typer.Option("--step", metavar="NAME", help="Pipeline step (dco, build, tests, coverage...) or a type URI."),
    ],
    subject: Annotated[str, typer.Option("--subject", metavar="NAME@sha256:HEX", help="The artifact attested.")],
    key: Annotated[
        list[Path] | None, typer.Option("--key", metavar="KEY", help="Private key to sign with; repeat for several.")
    ] = None,
    keyless: Annotated[bool, typer.Option("--keyless", help="Sign through Sigstore with an OIDC identity.")] = False,
    identity_token: Annotated[
        str | None,
        typer.Option(
            "--identity-token", envvar="SIGSTORE_ID_TOKEN", help="OIDC token for --keyless.", show_default=False
        ),
    ] = None,
    predicate: Annotated[Path | None, typer.Option("--predicate", metavar="FILE", help="Predicate (JSON).")] = None,
    commit: Annotated[str | None, typer.Option("--commit", metavar="SHA", help="Commit the step ran on.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="Write the envelope here.")] = None,
    store: Annotated[
        Path | None, typer.Option("--store", metavar="DIR", help="Store in a directory source (DIR/sha256-HEX/).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign an in-toto statement that STEP ran for an artifact, as a DSSE envelope.

    The predicate is read from --predicate (a JSON object; {} when absent) and must fit the
    step's schema; --commit is recorded in it. Without --out or --store the envelope goes to stdout.

    Examples:

        vouch attest sign --step dco --subject app@sha256:HEX --key ci.key --predicate dco.json --store attestations/

        vouch attest sign --step build --subject app@sha256:HEX --predicate slsa.json --keyless --out build.json
    """
    with reported(as_json=as_json):
        if bool(key) == keyless:
            raise InputError("give --key KEY (one or more) or --keyless, not both and not neither")
        if out_file is not None and store is not None:
            raise InputError("give --out FILE or --store DIR, not both")
        parsed = parse_subject(subject)
        predicate_type = predicate_type_for(step)
        statement = Statement(
            (parsed,), predicate_type, _predicate(predicate, predicate_type=predicate_type, commit=commit)
        )
        document, signed_by = _signed(statement, key or [], keyless=keyless, token=identity_token)
        location = _store(document, parsed, step=step, out_file=out_file, store=store)
    _report_signed(statement, document, signed_by=signed_by, location=location, as_json=as_json)


def _store(document: bytes, subject: Subject, *, step: str, out_file: Path | None, store: Path | None) -> str | None:
    digest = "sha256:" + subject.digest["sha256"]
    if store is not None:
        name = f"{step.rsplit('/', 2)[-2] if '://' in step else step}-{hashlib.sha256(document).hexdigest()[:12]}"
        return asyncio.run(DirectorySource(store).put(digest, name, document))
    if out_file is not None:
        try:
            out_file.write_bytes(document)
        except OSError as exc:
            raise InputError(f"cannot write {out_file}: {exc.strerror or exc}") from exc
        return str(out_file)
    return None


def _report_signed(
    statement: Statement, document: bytes, *, signed_by: list[str], location: str | None, as_json: bool
) -> None:
    subject = statement.subjects[0]
    if as_json:
        report: dict[str, Any] = {
            "predicate_type": statement.predicate_type,
            "subject": {"name": subject.name, "digest": dict(subject.digest)},
            "signed_by": signed_by,
            "written": location,
            "digest": "sha256:" + hashlib.sha256(document).hexdigest(),
        }
        if location is None:
            report["document"] = json.loads(document)
        print(json.dumps(report, indent=2))
        return
    if location is None:
        typer.echo(document.decode(), nl=False)
    who = ", ".join(signed_by)
    where = f" -> {location}" if location else ""
    err.print(f"signed {statement.predicate_type} for {subject.name}@sha256:{subject.digest['sha256']} by {who}{where}")


# --------------------------------------------------------------------------- verify


def _trust(
    *,
    identity: str | None,
    identity_regex: str | None,
    issuer: str | None,
    keys: Sequence[Path],
    threshold: int,
    trusted_root: Path | None,
) -> TrustSpec:
    """The trust the options describe: exactly one of a Sigstore identity (with its issuer) or public keys."""
    wants_sigstore = identity is not None or identity_regex is not None
    if identity is not None and identity_regex is not None:
        raise InputError("give --identity or --identity-regex, not both")
    if wants_sigstore == bool(keys):
        raise InputError("give --identity SAN --issuer URL (Sigstore) or --key PUB.pem (DSSE), exactly one of them")
    if wants_sigstore and issuer is None:
        raise InputError("--identity needs --issuer: the OIDC issuer that must have vouched for the identity")
    if not wants_sigstore and issuer is not None:
        raise InputError("--issuer goes with --identity, not with --key")
    root = str(trusted_root) if trusted_root is not None else None
    if wants_sigstore:
        spec = IdentitySpec(san=identity, san_regex=identity_regex, issuer=issuer or "")
        return TrustSpec(sigstore=[spec], trusted_root=root)
    return TrustSpec(keys=[KeySpec(path=str(p)) for p in keys], threshold=threshold, trusted_root=root)


@attest_app.command("verify")
def verify(
    bundle: Annotated[Path, typer.Option("--bundle", metavar="FILE", help="Sigstore bundle or DSSE envelope.")],
    artifact: Annotated[Path | None, typer.Option("--artifact", metavar="FILE", help="The artifact itself.")] = None,
    digest: Annotated[str | None, typer.Option("--digest", metavar="sha256:HEX", help="The artifact's digest.")] = None,
    identity: Annotated[str | None, typer.Option("--identity", metavar="SAN", help="Expected signer SAN.")] = None,
    identity_regex: Annotated[
        str | None, typer.Option("--identity-regex", metavar="REGEX", help="Pattern the signer SAN must match.")
    ] = None,
    issuer: Annotated[str | None, typer.Option("--issuer", metavar="URL", help="Expected OIDC issuer.")] = None,
    key: Annotated[
        list[Path] | None, typer.Option("--key", metavar="PUB.pem", help="Trusted public key; repeat for several.")
    ] = None,
    threshold: Annotated[int, typer.Option("--threshold", min=1, help="Distinct keys that must have signed.")] = 1,
    trusted_root: Annotated[
        Path | None, typer.Option("--trusted-root", metavar="FILE", help="trusted_root.json (default: public good).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify one attestation offline for an artifact, as the attestations gate does.

    Exits 0 when verified (printing step, subject and signer), 1 when not (printing why),
    2 on usage errors.

    Examples:

        vouch attest verify --bundle build.sigstore.json --artifact app.tar.gz
            --identity https://github.com/org/app/.github/workflows/release.yml@refs/heads/main
            --issuer https://token.actions.githubusercontent.com

        vouch attest verify --bundle dco.json --digest sha256:HEX --key ci.key.pub
    """
    logging.getLogger("sigstore").setLevel(logging.ERROR)  # its "offline mode" notice is not news here
    with reported(as_json=as_json):
        if (artifact is None) == (digest is None):
            raise InputError("give --artifact FILE or --digest sha256:HEX, exactly one of them")
        subject_digest = _sha256_file(artifact) if artifact is not None else "sha256:" + parse_digest(digest or "")
        trust = _trust(
            identity=identity,
            identity_regex=identity_regex,
            issuer=issuer,
            keys=key or [],
            threshold=threshold,
            trusted_root=trusted_root,
        )
        raw = RawAttestation(source=str(bundle), data=_read(bundle, "bundle"))
        verifier = AttestationVerifier(trust)
    result = verifier.verify(raw, subject_digest=subject_digest)
    if isinstance(result, Attestation):
        _report_verified(result, subject_digest=subject_digest, as_json=as_json)
        return
    if as_json:
        print(json.dumps({"verified": False, "bundle": str(bundle), "subject_digest": subject_digest, **vars(result)}))
    else:
        err.print(f"[bold red]not verified:[/] {result.reason}", markup=True, highlight=False)
    raise typer.Exit(EXIT_FAILED)


def _report_verified(attestation: Attestation, *, subject_digest: str, as_json: bool) -> None:
    if as_json:
        document = {"verified": True, "subject_digest": subject_digest, **attestation.to_policy_input()}
        print(json.dumps(document, indent=2))
        return
    statement = attestation.statement
    names = ", ".join(s.name for s in statement.subjects if s.name) or "(unnamed)"
    signers = "; ".join(
        f"{s.identity} (issuer {s.issuer})" if s.kind == "sigstore" else f"key {s.keyid}" for s in attestation.signers
    )
    out.print(f"verified: step {attestation.step or '(unknown)'} ({statement.predicate_type})")
    out.print(f"  subject: {names} {subject_digest}")
    out.print(f"  signed by: {signers}")
