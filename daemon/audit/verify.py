"""The audit log's format, and reading it back: proving the chain intact, or listing records.

A record is one line of canonical JSON (sorted keys, no spaces, UTF-8)::

    {"actor":"api:alice","at":1718000000.5,"data":{"gate":"slo"},"environment":"staging",
     "hash":"9f…","kind":"override.granted","prev":"3a…","seq":12,"service":"checkout"}

``hash`` is the SHA-256 of the record's canonical JSON without ``hash``, ``sig`` and ``keyid``;
``prev`` is the hash of the record before (64 zeros for seq 0). Editing a record breaks its hash;
deleting, inserting or reordering records breaks the run of ``seq`` and ``prev``. Cutting records
off the end breaks nothing in the chain, so the writer keeps a checkpoint of its last record (seq and
hash) in ``<log>.head``, and a log that ends before its head was cut. With the daemon's key, ``sig``
signs ``vouch.audit.record.v1:<hash>`` (and the head its own fields), so whoever can write the files
but does not hold the key cannot forge records consistently.

What no file check can show: someone holding the key (or, without signatures, anyone who can write
the files) may rewrite the whole log; and an older signed head with a log cut to match it looks
whole. Copy heads elsewhere (a ticket, a chat message) to rule that out.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> (folder / "audit.jsonl").write_bytes(b"")
0
>>> verify_log(folder / "audit.jsonl").problem
'no head checkpoint audit.jsonl.head next to the log: a cut tail cannot be ruled out'
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Key, Signature  # type: ignore[attr-defined]  # re-exported without __all__

from vouch.core.errors import InputError, StoreError

GENESIS = "0" * 64
"""The ``prev`` of the first record (seq 0)."""
UNHASHED = frozenset({"hash", "sig", "keyid"})
"""Fields outside a record's hash: the hash itself and the signature over it."""
SUBJECT_FIELDS = ("service", "environment", "version", "promotion_id", "release_id")
"""What a record may be about; each optional, each a string."""
_RECORD_DOMAIN = b"vouch.audit.record.v1:"
_HEAD_DOMAIN = b"vouch.audit.head.v1:"
_SHOWN = 500


def canonical(document: Mapping[str, Any]) -> bytes:
    """The one byte form of a document: sorted keys, no spaces, UTF-8, no NaN.

    >>> canonical({"b": 1, "a": "é"})
    b'{"a":"\\xc3\\xa9","b":1}'
    """
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """The hex SHA-256 of ``record``'s canonical JSON without ``hash``, ``sig`` and ``keyid``."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k not in UNHASHED})).hexdigest()


def record_payload(digest: str) -> bytes:
    """What a record's signature signs: its hash, in a domain of its own (never mistaken for a DSSE payload)."""
    return _RECORD_DOMAIN + digest.encode("ascii")


def head_path(log_path: Path) -> Path:
    """The head checkpoint of the log at ``log_path``: ``<log_path>.head``."""
    return log_path.with_name(log_path.name + ".head")


@dataclass(frozen=True)
class Head:
    """The writer's checkpoint: the seq and hash of the last record it made durable (seq -1 when none)."""

    seq: int
    hash: str
    at: float
    keyid: str | None = None
    sig: str | None = None

    def payload(self) -> bytes:
        """What the head's signature signs: its seq, hash and time."""
        return _HEAD_DOMAIN + canonical({"at": self.at, "hash": self.hash, "seq": self.seq})

    def encode(self) -> bytes:
        """The head file's content."""
        return canonical({k: v for k, v in asdict(self).items() if v is not None}) + b"\n"


def read_head(log_path: Path) -> Head | None:
    """The head checkpoint next to the log, or ``None`` when there is none; :class:`StoreError` if unreadable."""
    path = head_path(log_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read the audit head {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(data)
        head = Head(**document) if isinstance(document, dict) else None
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{path}: not an audit head checkpoint ({exc})") from exc
    if head is None or not _is_int(head.seq) or head.seq < -1 or not _is_hex(head.hash) or not _is_head(head):
        raise StoreError(f"{path}: not an audit head checkpoint (needs seq >= -1, a hex sha256 hash and a time)")
    return head


def _is_head(head: Head) -> bool:
    signature_ok = all(value is None or isinstance(value, str) for value in (head.keyid, head.sig))
    return isinstance(head.at, int | float) and not isinstance(head.at, bool) and signature_ok


def parse_record(line: bytes) -> dict[str, Any]:
    """One line (without its line end) as a record; ``ValueError`` saying what is malformed."""
    record = json.loads(line.decode("utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    if not _is_int(record.get("seq")) or record["seq"] < 0:
        raise ValueError("seq is not a whole number >= 0")
    if not isinstance(record.get("at"), int | float) or isinstance(record.get("at"), bool):
        raise ValueError("at is not a number")
    for name in ("kind", "actor"):
        if not isinstance(record.get(name), str):
            raise ValueError(f"{name} is not a string")
    if not isinstance(record.get("data"), dict):
        raise ValueError("data is not an object")
    for name in ("prev", "hash"):
        if not _is_hex(record.get(name)):
            raise ValueError(f"{name} is not a hex sha256")
    for name in (*SUBJECT_FIELDS, "sig", "keyid"):
        if name in record and not isinstance(record[name], str):
            raise ValueError(f"{name} is not a string")
    return record


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify_log` found. When not ``ok``, the first bad record and what is wrong with it.

    ``first_bad_seq`` is the seq the first bad record carries, or, when it has none to trust (a
    malformed line, records cut off the end), the seq that was due there; ``line`` is its 1-based
    line (for a cut tail, the line where the first missing record should be).
    """

    ok: bool
    path: str
    records: int
    """Records that chained correctly (before the first bad one)."""
    last_seq: int
    """The seq of the last good record; -1 when there is none."""
    last_hash: str
    """The hash of the last good record; :data:`GENESIS` when there is none."""
    head_seq: int | None
    """The seq the head checkpoint names; ``None`` without a readable head."""
    signatures_checked: bool
    first_bad_seq: int | None = None
    line: int | None = None
    problem: str | None = None
    record: str | None = None
    """The first bad line as read (cut to 500 characters)."""

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


class _Chain:
    """The running state of a check: the last good seq and hash, and the trusted keys by keyid."""

    def __init__(self, keys: Sequence[Key] | None) -> None:
        self.seq = -1
        self.hash = GENESIS
        self.count = 0
        self.keys = {key.keyid: key for key in keys} if keys is not None else None

    def feed(self, raw: bytes, head: Head | None) -> tuple[str | None, int]:
        """Check the next line (and that it is the record ``head`` names, if it names its seq).

        Returns what is wrong with it, ``None`` if nothing, and the seq to report.
        """
        due = self.seq + 1
        if not raw.endswith(b"\n"):
            return "the line is cut short (no line end): the log was cut, or a write was torn", due
        try:
            record = parse_record(raw[:-1])
        except ValueError as exc:
            return f"not an audit record: {exc}", due
        seq: int = record["seq"]
        if record["hash"] != record_hash(record):
            return "its hash does not match its content: the record was changed after it was written", seq
        if raw[:-1] != canonical(record):
            return "the line is not in canonical form: it was rewritten after it was written", seq
        if seq != due:
            return _seq_problem(seq, last=self.seq), seq
        if record["prev"] != self.hash:
            return f"prev is not the hash of seq {self.seq}: a record before it was replaced or inserted", seq
        if head is not None and head.seq == seq and head.hash != record["hash"]:
            return f"the head checkpoint names another record for seq {seq}: the log was rewritten", seq
        problem = self._signature(record)
        if problem is not None:
            return problem, seq
        self.seq, self.hash, self.count = seq, record["hash"], self.count + 1
        return None, seq

    def _signature(self, record: Mapping[str, Any]) -> str | None:
        if self.keys is None:
            return None
        keyid, sig = record.get("keyid"), record.get("sig")
        if sig is None or keyid is None:
            return "the record is not signed, and signatures were required"
        return self.check(keyid, sig, record_payload(record["hash"]))

    def check(self, keyid: str, sig: str, payload: bytes) -> str | None:
        """What is wrong with the signature ``sig`` by ``keyid`` over ``payload``; ``None`` if it verifies."""
        key = (self.keys or {}).get(keyid)
        if key is None:
            return f"signed by keyid {keyid[:16]}…, which is not one of the trusted keys"
        try:
            key.verify_signature(Signature(keyid, sig), payload)
        except UnverifiedSignatureError:
            return f"the signature does not verify under key {keyid[:16]}…"
        return None


def _seq_problem(seq: int, *, last: int) -> str:
    if seq > last + 1:
        missing = f"seq {last + 1}" if seq == last + 2 else f"seq {last + 1} to {seq - 1}"
        return f"seq {seq} follows seq {last}: {missing} missing (deleted or moved)"
    return f"seq {seq} comes after seq {last}: a record was inserted, repeated or moved"


def verify_log(path: str | Path, *, public_keys: Sequence[Key] | None = None, require_head: bool = True) -> AuditReport:
    """Check every record of the log at ``path`` and its head checkpoint; the report names the first bad record.

    With ``public_keys`` every record and the head must be signed by one of them. ``require_head=False``
    accepts a log whose head file is missing (a copy without it), and so cannot see a cut tail.
    :class:`InputError` when the log cannot be read at all (a missing file is not a verdict on it).

    Example: ``verify_log(Path(".vouch/audit.jsonl"), public_keys=[load_public_key(Path("vouch.key.pub"))])``
    """
    log_path = Path(path)
    if public_keys is not None and not public_keys:
        raise InputError("no public keys given to verify the audit log's signatures with")
    chain = _Chain(public_keys)
    try:
        head, head_problem = read_head(log_path), None
    except StoreError as exc:
        head, head_problem = None, str(exc)
    line = 0
    for raw in _lines(log_path):
        line += 1
        problem, seq = chain.feed(raw, head)
        if problem is not None:
            return _report(log_path, chain, head, bad=(seq, line, problem, raw))
    problem = head_problem or _head_problem(log_path, chain, head, require_head=require_head)
    if problem is not None:
        return _report(log_path, chain, head, bad=(chain.seq + 1, line + 1, problem, b""))
    return _report(log_path, chain, head, bad=None)


def _head_problem(log_path: Path, chain: _Chain, head: Head | None, *, require_head: bool) -> str | None:
    name = head_path(log_path).name
    if head is None:
        return f"no head checkpoint {name} next to the log: a cut tail cannot be ruled out" if require_head else None
    if head.seq > chain.seq:
        cut = head.seq - chain.seq
        ends = f"ends at seq {chain.seq}" if chain.seq >= 0 else "is empty"
        return f"the log {ends} but its head {name} names seq {head.seq}: {cut} record(s) cut off the end"
    if head.seq == -1 and head.hash != GENESIS:
        return f"the head {name} names no record but a hash other than the genesis"
    if chain.keys is not None:
        if head.sig is None or head.keyid is None:
            return f"the head {name} is not signed, and signatures were required"
        problem = chain.check(head.keyid, head.sig, head.payload())
        return None if problem is None else f"the head {name}: {problem}"
    return None


def _report(
    log_path: Path, chain: _Chain, head: Head | None, *, bad: tuple[int, int, str, bytes] | None
) -> AuditReport:
    common: dict[str, Any] = {
        "path": str(log_path),
        "records": chain.count,
        "last_seq": chain.seq,
        "last_hash": chain.hash,
        "head_seq": head.seq if head is not None else None,
        "signatures_checked": chain.keys is not None,
    }
    if bad is None:
        return AuditReport(ok=True, **common)
    seq, line, problem, raw = bad
    shown = raw.rstrip(b"\n").decode("utf-8", "replace")[:_SHOWN] or None
    return AuditReport(ok=False, first_bad_seq=seq, line=line, problem=problem, record=shown, **common)


def _lines(log_path: Path) -> Iterator[bytes]:
    """The log's lines with their line ends, read as a stream (logs grow large)."""
    try:
        with log_path.open("rb") as handle:
            yield from handle
    except FileNotFoundError:
        raise InputError(f"{log_path}: no such audit log") from None
    except OSError as exc:
        raise InputError(f"cannot read the audit log {log_path}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class AuditFilter:
    """Which records :func:`read_records` returns; every criterion given must hold."""

    kind: str | None = None
    """A glob over the kind: ``override.*``."""
    service: str | None = None
    environment: str | None = None
    actor: str | None = None
    since: float | None = None
    """Unix time: records made at or after it."""
    limit: int | None = None
    """Only the last this many of the records that match."""

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` passes every criterion given (``limit`` aside)."""
        if self.kind is not None and not fnmatch.fnmatchcase(record["kind"], self.kind):
            return False
        wanted = {"service": self.service, "environment": self.environment, "actor": self.actor}
        if any(value is not None and record.get(name) != value for name, value in wanted.items()):
            return False
        return self.since is None or record["at"] >= self.since


def read_records(path: str | Path, filters: AuditFilter | None = None) -> list[dict[str, Any]]:
    """The records of the log that pass ``filters``, oldest first. Reads, never verifies: see :func:`verify_log`.

    :class:`InputError` names the line of anything that is not a record.
    """
    chosen = filters or AuditFilter()
    if chosen.limit is not None and chosen.limit < 0:
        raise InputError("the limit cannot be negative")
    found: deque[dict[str, Any]] = deque(maxlen=chosen.limit)
    for line, raw in enumerate(_lines(Path(path)), start=1):
        try:
            record = parse_record(raw.rstrip(b"\n"))
        except ValueError as exc:
            raise InputError(f"{path}:{line}: not an audit record ({exc}); `vouch audit verify` tells more") from exc
        if chosen.matches(record):
            found.append(record)
    return list(found)
