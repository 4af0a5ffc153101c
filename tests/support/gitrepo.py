"""Real git repositories made in a test: commits with or without sign-off, signed by SSH or GPG keys, merges.

Nothing here reads or writes the user's own configuration: every command runs with ``HOME``,
``GIT_CONFIG_GLOBAL`` and ``GNUPGHOME`` pointing into the test's directories (see :func:`isolated_env`;
tests also apply it to the process with ``monkeypatch`` so the code under test sees the same).

Example::

    env = isolated_env(tmp_path / "home")
    repo = GitRepo.init(tmp_path / "repo", env=env)
    base = repo.commit("first", signoff=ALICE)
    repo.branch("feature")
    head = repo.commit("change", signoff=ALICE)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Identity:
    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


ALICE = Identity("Alice Author", "alice@example.org")
BOB = Identity("Bob Builder", "bob@example.org")


def require(binary: str) -> str:
    """The path of ``binary``, or skip the test naming what is missing."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed: needed for this git scenario")
    return path


def isolated_env(home: Path) -> dict[str, str]:
    """Environment variables that keep git and gpg away from the user's own configuration and keys."""
    home.mkdir(parents=True, exist_ok=True)
    global_config = home / "gitconfig"
    global_config.touch()
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_GLOBAL": str(global_config),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GNUPGHOME": str(home / "no-gnupg"),
        "GIT_TERMINAL_PROMPT": "0",
    }


# --------------------------------------------------------------------------- signers


@dataclass(frozen=True)
class SshSigner:
    """An ed25519 key made by ``ssh-keygen`` for one identity, without passphrase."""

    identity: Identity
    private_key: Path

    @property
    def public_key(self) -> str:
        return Path(f"{self.private_key}.pub").read_text().strip()

    def git_config(self) -> list[str]:
        return ["gpg.format=ssh", f"user.signingkey={self.private_key}"]

    def env(self) -> dict[str, str]:
        return {}


def make_ssh_signer(directory: Path, identity: Identity) -> SshSigner:
    """A new SSH signing key in ``directory`` (skips the test when ``ssh-keygen`` is missing)."""
    keygen = require("ssh-keygen")
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / identity.email.replace("@", "_at_")
    _checked([keygen, "-q", "-t", "ed25519", "-N", "", "-C", identity.email, "-f", str(key)])
    return SshSigner(identity, key)


def write_allowed_signers(path: Path, signers: Sequence[SshSigner]) -> Path:
    """An allowed signers file (``gpg.ssh.allowedSignersFile``) trusting ``signers`` for their email."""
    lines = [f"{s.identity.email} {s.public_key}\n" for s in signers]
    path.write_text("".join(lines))
    return path


@dataclass(frozen=True)
class GpgSigner:
    """A GPG key in its own throwaway home, trusted ultimately there (as gpg does for keys it makes)."""

    identity: Identity
    home: Path
    fingerprint: str

    def git_config(self) -> list[str]:
        return ["gpg.format=openpgp", f"user.signingkey={self.fingerprint}"]

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}


@contextmanager
def gpg_signer(identity: Identity) -> Iterator[GpgSigner]:
    """A batch-generated ed25519 GPG key in a fresh ``GNUPGHOME``; its gpg-agent is stopped on exit.

    The home is made under the system temp directory rather than ``tmp_path``: gpg puts its agent's
    socket there, and a socket path longer than ~107 bytes cannot be bound.
    """
    gpg = require("gpg")
    home = Path(tempfile.mkdtemp(prefix="vouch-gpg-"))
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        batch = [gpg, "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        _checked([*batch, "--quick-gen-key", str(identity), "ed25519", "sign", "never"], env=env)
        listing = _checked([gpg, "--batch", "--with-colons", "--list-secret-keys"], env=env)
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        yield GpgSigner(identity, home, fingerprint)
    finally:
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run([gpgconf, "--kill", "all"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


Signer = SshSigner | GpgSigner


# --------------------------------------------------------------------------- repositories


@dataclass
class GitRepo:
    """A working repository; every method runs git with the isolated environment."""

    path: Path
    env: Mapping[str, str]
    committer: Identity = ALICE
    _counter: int = field(default=0, repr=False)

    @classmethod
    def init(cls, path: Path, *, env: Mapping[str, str], branch: str = "main") -> GitRepo:
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path, dict(env))
        repo.git("init", "-q", "-b", branch)
        repo.git("config", "user.name", ALICE.name)
        repo.git("config", "user.email", ALICE.email)
        repo.git("config", "commit.gpgsign", "false")
        return repo

    def git(self, *args: str, config: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
        options = [item for c in config for item in ("-c", c)]
        return _checked(["git", "-C", str(self.path), *options, *args], env={**os.environ, **self.env, **(env or {})})

    def commit(
        self,
        message: str,
        *,
        author: Identity = ALICE,
        signoff: Identity | Sequence[Identity] | None = None,
        signer: Signer | None = None,
    ) -> str:
        """Commit one new file; ``signoff`` adds ``Signed-off-by:`` trailers; returns the commit id."""
        self._counter += 1
        name = f"file-{self._counter}.txt"
        (self.path / name).write_text(f"{message}\n")
        self.git("add", name)
        signoffs = [] if signoff is None else [signoff] if isinstance(signoff, Identity) else list(signoff)
        body = message + ("\n\n" + "\n".join(f"Signed-off-by: {s}" for s in signoffs) if signoffs else "")
        sign = ["-S"] if signer is not None else []
        self.git(
            "commit",
            "-q",
            *sign,
            "-m",
            body,
            config=signer.git_config() if signer else (),
            env={**self._identity_env(author), **(signer.env() if signer else {})},
        )
        return self.rev("HEAD")

    def branch(self, name: str, start: str = "HEAD") -> None:
        """Create ``name`` at ``start`` and switch to it."""
        self.git("switch", "-q", "-c", name, start)

    def switch(self, name: str) -> None:
        self.git("switch", "-q", name)

    def merge(self, branch: str, *, fast_forward: bool, signer: Signer | None = None) -> str:
        """Merge ``branch`` into the current branch: ``--ff-only`` or ``--no-ff``; returns the new tip."""
        mode = "--ff-only" if fast_forward else "--no-ff"
        sign = ["-S"] if signer is not None and not fast_forward else []
        self.git(
            "merge",
            "-q",
            mode,
            *sign,
            "-m",
            f"Merge {branch}",
            branch,
            config=signer.git_config() if signer else (),
            env={**self._identity_env(self.committer), **(signer.env() if signer else {})},
        )
        return self.rev("HEAD")

    def rev(self, revision: str) -> str:
        return self.git("rev-parse", "--verify", f"{revision}^{{commit}}").strip()

    def _identity_env(self, author: Identity) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": self.committer.name,
            "GIT_COMMITTER_EMAIL": self.committer.email,
        }


def _checked(command: Sequence[str], *, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(list(command), capture_output=True, text=True, env=dict(env) if env else None, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout
