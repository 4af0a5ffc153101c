"""What every command that talks to the daemon shares: its options and how it finds the daemon."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from vouch.daemon.auth import read_client_token
from vouch.daemon.client import VouchClient
from vouch.daemon.config import VouchConfig, load_config

DEFAULT_CONFIG = "vouch.yaml"

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="VOUCH_CONFIG",
        help="The daemon's configuration; gives the API address and token file. Default: ./vouch.yaml if present.",
    ),
]
UrlOpt = Annotated[
    str | None, typer.Option("--url", envvar="VOUCH_URL", help="The daemon's API, e.g. http://127.0.0.1:8470.")
]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="VOUCH_TOKEN", help="API token.", show_default=False)]
TokenFileOpt = Annotated[Path | None, typer.Option("--token-file", help="A file holding the API token.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout; progress goes to stderr.")]
EnvOpt = Annotated[str | None, typer.Option("--env", "-e", help="The environment, as named in the configuration.")]


def load_default(config: Path | None) -> VouchConfig | None:
    """The configuration named, or ./vouch.yaml when it exists, or None."""
    if config is None and Path(DEFAULT_CONFIG).exists():
        config = Path(DEFAULT_CONFIG)
    return load_config(config) if config is not None else None


def connect(config: Path | None, url: str | None, token: str | None, token_file: Path | None) -> VouchClient:
    """A client for the daemon named by the options, the configuration, or the defaults."""
    cfg = load_default(config)
    if url is None:
        host, port = cfg.host_port() if cfg else ("127.0.0.1", 8470)
        url = f"http://{host}:{port}"
    token_env = cfg.daemon.token_env if cfg else "VOUCH_TOKEN"
    if token_file is None and cfg is not None:
        token_file = cfg.token_path()
    secret = read_client_token(token=token, token_file=token_file, token_env=token_env)
    return VouchClient(url, secret, actor=os.environ.get("USER") or "cli")
