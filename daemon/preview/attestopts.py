"""The options of the commands that check an environment and attest the results (``preview up``, ``verify-env``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DigestOpt = Annotated[
    str | None, typer.Option("--digest", metavar="sha256:HEX", help="Attest the results for this artifact.")
]
CommitOpt = Annotated[
    str | None, typer.Option("--commit", metavar="SHA", help="The commit the artifact was built from.")
]
ArtifactNameOpt = Annotated[
    str | None, typer.Option("--artifact-name", help="The artifact's name in the statements (default: SERVICE).")
]
SigningKeyOpt = Annotated[
    Path | None,
    typer.Option("--key", metavar="KEY", help="Private key to sign with (default: attestations.signing_key)."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", metavar="DIR", help="Store attestations here (default: the configured source)."),
]
