"""The ``audit`` section of the configuration: where the audit log lives and whether its records are signed.

>>> from pathlib import Path
>>> AuditSpec().resolve_path(Path("/var/lib/vouch"))
PosixPath('/var/lib/vouch/audit.jsonl')
>>> AuditSpec(path="/var/log/vouch/audit.jsonl").resolve_path(Path("/var/lib/vouch"))
PosixPath('/var/log/vouch/audit.jsonl')
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from vouch.core.settings import Model


class AuditSpec(Model):
    """The tamper-evident audit log: every promotion transition, decision, override, configuration load and
    API mutation, with its actor, each record carrying the hash of the one before."""

    path: str = Field(default="audit.jsonl", min_length=1)
    """File of the audit log (JSON lines); a relative path resolves against the state folder
    (``daemon.state_dir``). A checkpoint of its last record is kept next to it, in ``<path>.head``:
    keep the two together (a log without its head cannot prove that its tail was not cut off)."""
    sign: bool = True
    """Sign every record, and the head checkpoint, with vouch's own key (``attestations.signing_key``) when
    one is configured, so that whoever can write the file still cannot forge records; verify them with
    ``vouch audit verify --key vouch.key.pub``. Without a configured key records are hash-chained only."""

    def resolve_path(self, state_dir: Path) -> Path:
        """The log's file: ``path`` itself when absolute, otherwise taken against ``state_dir``."""
        path = Path(self.path).expanduser()
        return path if path.is_absolute() else state_dir / path
