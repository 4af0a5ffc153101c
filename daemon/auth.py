"""Where the API's bearer token comes from, for the daemon and for the CLI.

The daemon never runs without a token. It takes one from the environment,
else from its token file, else it makes one and writes it there (mode 0600),
so a fresh install is secure without any setup and the CLI on the same
machine finds the token in the same file.

    source = resolve_token(token_env="VOUCH_TOKEN", token_file=Path("~/.vouch/token").expanduser())
    if source.origin == "created":
        print(f"API token written to {source.path}")
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vouch.core.errors import AuthError

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32
_TOKEN_SHAPE = re.compile(r"^[\x21-\x7e]+$")
"""Printable ASCII without spaces: what fits in an HTTP header unchanged."""


@dataclass(frozen=True)
class TokenSource:
    """The token and where it came from; ``path`` is the file for ``file`` and ``created``."""

    token: str
    origin: Literal["env", "file", "created"]
    path: Path | None = None


def _checked(token: str, *, where: str) -> str:
    if not _TOKEN_SHAPE.match(token):
        raise AuthError(f"the token in {where} has spaces or characters outside printable ASCII")
    return token


def _read_token_file(path: Path) -> str:
    """The stripped token in ``path``; an empty or unreadable file is an error, never "no token"."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"cannot read the token file {path}: {exc}") from exc
    token = text.strip()
    if not token:
        raise AuthError(f"the token file {path} is empty; put a token in it, or delete it and the daemon creates one")
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("token file %s is readable by other users; chmod 600 it", path)
    return _checked(token, where=str(path))


def _create_token_file(path: Path) -> str:
    """Writes a new token to ``path`` atomically, mode 0600, unless someone else did first.

    The token is written to a temporary file and hard-linked into place: the
    file is never seen half-written, and two daemons starting together agree on
    one token (the loser reads the winner's).
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".token-", dir=path.parent)
    except OSError as exc:
        raise AuthError(f"cannot create the token file {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return _read_token_file(path)
    except OSError as exc:
        raise AuthError(f"cannot write the token file {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _sync_directory(path.parent)
    return token


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def resolve_token(*, token_env: str, token_file: Path) -> TokenSource:
    """The daemon's token: ``$token_env`` when set and non-empty, else ``token_file``, else a new one.

    >>> resolve_token(token_env="VOUCH_TOKEN", token_file=Path("/var/lib/vouch/token"))  # doctest: +SKIP
    TokenSource(token='...', origin='created', path=PosixPath('/var/lib/vouch/token'))
    """
    from_env = os.environ.get(token_env, "").strip()
    if from_env:
        return TokenSource(_checked(from_env, where=f"${token_env}"), "env", None)
    if token_file.exists():
        return TokenSource(_read_token_file(token_file), "file", token_file)
    token = _create_token_file(token_file)
    return TokenSource(token, "created", token_file)


def read_client_token(*, token: str | None, token_file: Path | None, token_env: str) -> str:
    """The CLI's token: ``--token``, else ``$token_env``, else ``--token-file``.

    Unlike the daemon, the CLI never creates a token: with none to be found it
    says every way to give one.
    """
    if token is not None and token.strip():
        return _checked(token.strip(), where="--token")
    from_env = os.environ.get(token_env, "").strip()
    if from_env:
        return _checked(from_env, where=f"${token_env}")
    if token_file is not None and token_file.exists():
        return _read_token_file(token_file)
    looked = f" ({token_file} does not exist)" if token_file is not None else ""
    raise AuthError(
        f"no API token{looked}: pass --token TOKEN, set ${token_env}, or pass --token-file FILE "
        "pointing at the file the daemon wrote its token to when it started"
    )
