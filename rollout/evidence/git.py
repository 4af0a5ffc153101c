"""DCO sign-off, commit signatures and merge kind, read from a git repository through the ``git`` command.

git itself does the reading and the cryptography: ``%(trailers)`` parses ``Signed-off-by:`` the way git
does, and ``%G?`` verifies GPG and SSH signatures with the user's own ``gpg`` and ``ssh-keygen``, so
vouch agrees with what ``git log --show-signature`` shows. Everything here is synchronous: it runs in
the CLI and in CI, never in the daemon's loop.

Ranges are ``A..B`` as git reads them: the commits reachable from ``B`` and not from ``A``. Both ends
must name a commit; an unknown one is an :class:`~vouch.core.errors.InputError` naming it. An empty
range (nothing to check) does not pass: evidence about no commits proves nothing.

Example::

    report = dco("/src/checkout", "origin/main..HEAD")
    if not report.passed:
        print("\\n".join(report.problems))
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vouch.core.errors import InputError

MergeKind = Literal["fast-forward", "non-fast-forward"]
SignatureFormat = Literal["gpg", "ssh", "x509"]

GIT_TIMEOUT = 120.0
"""Seconds one git command may take; a hung verifier must not hang CI for ever."""

STATUS_MEANINGS: Mapping[str, str] = {
    "G": "good signature",
    "B": "bad signature",
    "U": "good signature, but the key is not trusted",
    "X": "good signature that has expired",
    "Y": "good signature made by a key that has expired",
    "R": "good signature made by a key that was revoked",
    "E": "the signature cannot be checked (key missing or verifier failed)",
    "N": "no signature",
}
"""What git's ``%G?`` letters mean. Only ``G`` counts as verified: everything else fails closed."""

_SIGNATURE_HEADERS = (b"gpgsig ", b"gpgsig-sha256 ")
_ARMOR_FORMATS: Mapping[bytes, SignatureFormat] = {
    b"-----BEGIN PGP SIGNATURE-----": "gpg",
    b"-----BEGIN PGP MESSAGE-----": "gpg",
    b"-----BEGIN SSH SIGNATURE-----": "ssh",
    b"-----BEGIN SIGNED MESSAGE-----": "x509",
}
_IDENTITY = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<email>[^<>]*)>\s*$")


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class CommitSignOff:
    """One commit's DCO result: ``why`` says what is wrong, and is empty when signed off."""

    sha: str
    author: str
    """``Name <email>`` as recorded in the commit (not rewritten by ``.mailmap``)."""
    signed_off: bool
    why: str = ""
    sign_offs: tuple[str, ...] = ()
    """Every ``Signed-off-by:`` value found, so a mismatch can be seen."""


@dataclass(frozen=True)
class DcoReport:
    """DCO sign-off of every non-merge commit in a range.

    Merge commits are listed in ``skipped_merges`` and not checked: they carry no authorship of their
    own (the DCO applies to the commits they bring in, which are checked), and tools such as GitHub's
    merge button create them without a trailer.
    """

    range: str
    """The range as resolved commits, ``BASE_SHA..HEAD_SHA``."""
    commit: str
    """The head of the range: the commit the evidence is about."""
    commits: tuple[CommitSignOff, ...]
    skipped_merges: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.commits) and all(c.signed_off for c in self.commits)

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the check did not pass, one line per commit (empty when it passed)."""
        if not self.commits:
            return (f"no commits to check in {self.range}",)
        return tuple(f"{c.sha[:12]} ({c.author}): {c.why}" for c in self.commits if not c.signed_off)

    def to_predicate(self) -> dict[str, Any]:
        """The predicate document of a DCO attestation (schema ``dco.v1.json``)."""
        return {
            "range": self.range,
            "commit": self.commit,
            "passed": self.passed,
            "commits": [_sign_off_entry(c) for c in self.commits],
        }


def _sign_off_entry(c: CommitSignOff) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha": c.sha, "author": c.author, "signed_off": c.signed_off}
    entry["signed_off_by"] = list(c.sign_offs)
    if c.why:
        entry["reason"] = c.why
    return entry


@dataclass(frozen=True)
class CommitSignature:
    """One commit's signature as git verified it."""

    sha: str
    author: str
    verified: bool
    status: str
    """git's ``%G?`` letter (see :data:`STATUS_MEANINGS`)."""
    meaning: str
    """The letter in words, adapted to the signature format (why it did not verify, when it did not)."""
    signer: str | None
    """GPG: the key's user id; SSH: the principal matched in the allowed signers file."""
    key: str | None
    """GPG: the key fingerprint; SSH: ``SHA256:...`` of the public key."""
    format: SignatureFormat | None
    """``None`` when the commit is not signed."""


@dataclass(frozen=True)
class SignatureReport:
    """Signatures of every commit in a range, merges included: a merge can carry changes of its own."""

    range: str
    commit: str
    commits: tuple[CommitSignature, ...]

    @property
    def passed(self) -> bool:
        return bool(self.commits) and all(c.verified for c in self.commits)

    @property
    def problems(self) -> tuple[str, ...]:
        if not self.commits:
            return (f"no commits to check in {self.range}",)
        return tuple(f"{c.sha[:12]} ({c.author}): {c.meaning}" for c in self.commits if not c.verified)

    def to_predicate(self) -> dict[str, Any]:
        """The predicate document of a signed-commits attestation (schema ``signed-commits.v1.json``)."""
        return {
            "range": self.range,
            "commit": self.commit,
            "passed": self.passed,
            "commits": [_signature_entry(c) for c in self.commits],
        }


def _signature_entry(c: CommitSignature) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha": c.sha, "verified": c.verified, "format": c.format or "none", "status": c.status}
    if c.signer:
        entry["signer"] = c.signer
    if c.key:
        entry["key"] = c.key
    if not c.verified:
        entry["reason"] = c.meaning
    return entry


# --------------------------------------------------------------------------- producers


def dco(repo: str | Path, range: str) -> DcoReport:
    """Check that every non-merge commit in ``range`` has a ``Signed-off-by:`` trailer by its author.

    The trailer must name the author's name and email (compared case-insensitively, whitespace
    collapsed); a sign-off by someone else does not count, as the DCO is the author's own statement.

    Example: ``dco(".", "origin/main..HEAD").passed``
    """
    root = _repository(repo)
    base, head = _resolve_range(root, range)
    fields = "%H%x00%P%x00%an%x00%ae%x00%(trailers:key=Signed-off-by,valueonly,unfold,separator=%x1f)"
    commits: list[CommitSignOff] = []
    merges: list[str] = []
    for sha, parents, name, email, trailers in _log(root, base, head, fields, count=5):
        if len(parents.split()) > 1:
            merges.append(sha)
            continue
        commits.append(_sign_off(sha, name, email, tuple(t.strip() for t in trailers.split("\x1f") if t.strip())))
    return DcoReport(range=f"{base}..{head}", commit=head, commits=tuple(commits), skipped_merges=tuple(merges))


def _sign_off(sha: str, name: str, email: str, sign_offs: tuple[str, ...]) -> CommitSignOff:
    author = f"{name} <{email}>"
    if not sign_offs:
        return CommitSignOff(sha, author, signed_off=False, why="no Signed-off-by trailer")
    wanted = (_fold(name), _fold(email))
    for value in sign_offs:
        match = _IDENTITY.match(value)
        if match and (_fold(match["name"]), _fold(match["email"])) == wanted:
            return CommitSignOff(sha, author, signed_off=True, sign_offs=sign_offs)
    others = ", ".join(sign_offs)
    why = f"signed off by {others}, not by the author {author}"
    return CommitSignOff(sha, author, signed_off=False, why=why, sign_offs=sign_offs)


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def signed_commits(
    repo: str | Path, range: str, *, allowed_signers: Path | None = None, gpg_home: Path | None = None
) -> SignatureReport:
    """Verify the signature of every commit in ``range`` (merges included) the way git does.

    GPG signatures are checked against the keyring in ``gpg_home`` (default: ``$GNUPGHOME`` or
    ``~/.gnupg``) and pass only when git reports a good signature by a trusted key (``G``): import the
    signers' keys and give them ownertrust, or set ``trust-model always`` in that home's gpg.conf.
    SSH signatures are checked against ``allowed_signers`` (default: the repository's
    ``gpg.ssh.allowedSignersFile``); without either, no SSH signature verifies.

    Example: ``signed_commits(".", "origin/main..HEAD", allowed_signers=Path(".github/allowed_signers"))``
    """
    root = _repository(repo)
    config, have_signers = _signers_config(root, allowed_signers)
    env: dict[str, str] = {}
    if gpg_home is not None:
        if not gpg_home.is_dir():
            raise InputError(f"GnuPG home {gpg_home} is not a directory")
        env["GNUPGHOME"] = str(gpg_home.resolve())
    base, head = _resolve_range(root, range)
    fields = "%H%x00%G?%x00%GS%x00%GK%x00%GF%x00%an%x00%ae"
    rows = list(_log(root, base, head, fields, count=7, config=config, env=env))
    formats = _signature_formats(root, [row[0] for row in rows])
    commits = []
    for sha, status, signer, key_id, fingerprint, name, email in rows:
        fmt = formats.get(sha)
        verified = status == "G"
        commits.append(
            CommitSignature(
                sha=sha,
                author=f"{name} <{email}>",
                verified=verified,
                status=status,
                meaning=_meaning(status, fmt, have_signers=have_signers),
                signer=signer or None,
                key=fingerprint or key_id or None,
                format=fmt,
            )
        )
    return SignatureReport(range=f"{base}..{head}", commit=head, commits=tuple(commits))


def _meaning(status: str, fmt: SignatureFormat | None, *, have_signers: bool) -> str:
    if status == "U" and fmt == "ssh":
        if not have_signers:
            return "SSH signature, but no allowed signers file was given (--allowed-signers)"
        return "signed by an SSH key that is not in the allowed signers file"
    if status == "U" and fmt == "gpg":
        return "good signature by a GPG key of unknown validity (not trusted in the keyring)"
    return STATUS_MEANINGS.get(status, f"unknown signature status {status!r}")


def _signers_config(root: Path, allowed_signers: Path | None) -> tuple[list[str], bool]:
    """``-c`` options naming the allowed signers file, and whether there is one.

    git aborts the whole log when SSH-signed commits meet a missing allowed signers file, so with none
    at all an empty one is given: SSH signatures then fail to verify one by one, with a reason.
    """
    if allowed_signers is not None:
        if not allowed_signers.is_file():
            raise InputError(f"allowed signers file {allowed_signers} does not exist")
        return [f"gpg.ssh.allowedSignersFile={allowed_signers.resolve()}"], True
    configured = _git(root, ["config", "--path", "--get", "gpg.ssh.allowedSignersFile"], check=False).strip()
    if configured and Path(configured).is_file():
        return [], True
    return [f"gpg.ssh.allowedSignersFile={os.devnull}"], False


def _signature_formats(root: Path, shas: Sequence[str]) -> dict[str, SignatureFormat]:
    """The format of each signed commit, read from its ``gpgsig`` header (``%G?`` does not say)."""
    if not shas:
        return {}
    raw = _git_bytes(root, ["cat-file", "--batch"], stdin="".join(f"{s}\n" for s in shas).encode())
    formats: dict[str, SignatureFormat] = {}
    pos = 0
    while pos < len(raw):
        header_end = raw.index(b"\n", pos)
        sha, _kind, size = raw[pos:header_end].decode().split()
        body = raw[header_end + 1 : header_end + 1 + int(size)]
        pos = header_end + 1 + int(size) + 1
        fmt = _format_of(body)
        if fmt is not None:
            formats[sha] = fmt
    return formats


def _format_of(commit: bytes) -> SignatureFormat | None:
    headers = commit.split(b"\n\n", 1)[0]
    for line in headers.split(b"\n"):
        for prefix in _SIGNATURE_HEADERS:
            if line.startswith(prefix):
                return _ARMOR_FORMATS.get(line[len(prefix) :].strip())
    return None


def merge_kind(repo: str | Path, *, base: str, head: str, merged: str) -> MergeKind:
    """Whether merging pull request ``head`` into ``base`` was a fast-forward that produced ``merged``.

    It was exactly when ``merged`` is the pull request's head commit itself and ``base`` is an ancestor
    of it: the branch tip is the very commit the pull request's attestations are about, so they can be
    reused. Anything else (a merge commit, a rebase, a squash, a head not built on ``base``) is
    non-fast-forward and must earn its attestations again.

    Example: ``merge_kind(".", base="main@{1}", head="pr-head-sha", merged="main")``
    """
    root = _repository(repo)
    base_sha, head_sha, merged_sha = (
        _resolve(root, rev, role) for rev, role in ((base, "base"), (head, "head"), (merged, "merged"))
    )
    if merged_sha != head_sha:
        return "non-fast-forward"
    return "fast-forward" if _is_ancestor(root, base_sha, head_sha) else "non-fast-forward"


# --------------------------------------------------------------------------- git plumbing


def _repository(repo: str | Path) -> Path:
    root = Path(repo)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory (expected a git repository)")
    try:
        _git(root, ["rev-parse", "--git-dir"])
    except InputError as exc:
        raise InputError(f"{root} is not a git repository") from exc
    return root


def _resolve_range(root: Path, spec: str) -> tuple[str, str]:
    """Both ends of ``A..B`` as full commit ids."""
    if "..." in spec or spec.count("..") != 1:
        raise InputError(f"range {spec!r} must have the form A..B (two revisions, two dots)")
    base, head = spec.split("..")
    if not base or not head:
        raise InputError(f"range {spec!r} must name both ends: A..B")
    return _resolve(root, base, "range start"), _resolve(root, head, "range end")


def _resolve(root: Path, rev: str, role: str) -> str:
    if not rev or rev.startswith("-"):
        raise InputError(f"{role} {rev!r} is not a revision")
    out = _git(root, ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"], check=False)
    sha = out.strip()
    if not sha:
        raise InputError(f"{role} {rev!r} is not a commit in {root}")
    return sha


def _is_ancestor(root: Path, ancestor: str, descendant: str) -> bool:
    result = _run(root, ["merge-base", "--is-ancestor", ancestor, descendant])
    if result.returncode not in (0, 1):
        raise InputError(f"git merge-base failed in {root}: {_stderr(result)}")
    return result.returncode == 0


def _log(
    root: Path,
    base: str,
    head: str,
    fields: str,
    *,
    count: int,
    config: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[tuple[str, ...]]:
    """One tuple of ``count`` fields per commit in ``base..head``, oldest first."""
    args = ["log", "--reverse", "--no-show-signature", "--no-color", f"--format={fields}%x1e", f"{base}..{head}"]
    out = _git(root, args, config=config, env=env)
    rows = []
    for record in out.split("\x1e"):
        record = record.strip("\n")
        if not record:
            continue
        values = tuple(record.split("\x00"))
        if len(values) != count:
            raise InputError(f"git log in {root} gave {len(values)} fields where {count} were expected")
        rows.append(values)
    return rows


def _git(
    root: Path,
    args: Sequence[str],
    *,
    check: bool = True,
    config: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> str:
    return _git_bytes(root, args, check=check, config=config, env=env).decode("utf-8", errors="replace")


def _git_bytes(
    root: Path,
    args: Sequence[str],
    *,
    check: bool = True,
    config: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> bytes:
    result = _run(root, args, config=config, env=env, stdin=stdin)
    if check and result.returncode != 0:
        raise InputError(f"git {args[0]} failed in {root}: {_stderr(result)}")
    return result.stdout


def _run(
    root: Path,
    args: Sequence[str],
    *,
    config: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run git in ``root``; ``log.showSignature`` is forced off so a user's config cannot mix gpg output in."""
    options = ["-c", "log.showSignature=false"]
    for item in config:
        options += ["-c", item]
    command = ["git", "-C", str(root), *options, *args]
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    try:
        return subprocess.run(command, input=stdin, capture_output=True, env=full_env, timeout=GIT_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise InputError("git is not installed (it is needed to read commits)") from exc
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"git {args[0]} in {root} took longer than {GIT_TIMEOUT:.0f} s") from exc


def _stderr(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = [line.strip() for line in result.stderr.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return "; ".join(lines[-3:]) if lines else f"exit code {result.returncode}"
