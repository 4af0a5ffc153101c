"""What the local platform remembers across restarts, and the clean-up of what a dead daemon left.

The file ``<state_dir>/local-platform.json`` holds the desired state of every
target and the children (pid and start time) that were running::

    {"format": 1,
     "targets": [{"service": "shop", "environment": "staging", "stable_version": "1.0.0",
                  "stable_replicas": 3, "canary_version": "1.1.0", "canary_replicas": 1}],
     "children": [{"pid": 4242, "start_time": 912345, "service": "shop", "environment": "staging",
                   "version": "1.1.0", "replica": 0}]}

It is written atomically (temporary file, fsync, rename) *before* the platform
acts on a change, so a daemon killed at any point restarts into the state it
was asked for. Children normally die with the daemon (PDEATHSIG); the list is
the second line of defence, and a pid is only killed when its start time
proves it is still the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from vouch.core.errors import PlatformError
from vouch.rollout.model import Target
from vouch.rollout.platforms.processes import proc_start_time, signal_group

log = logging.getLogger(__name__)

STATE_FILE = "local-platform.json"
FORMAT = 1


@dataclass(frozen=True)
class Desired:
    """What one target should run."""

    stable_version: str | None = None
    stable_replicas: int = 0
    canary_version: str | None = None
    canary_replicas: int = 0


@dataclass(frozen=True)
class ChildRecord:
    """A child process as persisted: enough to find it again, and to be sure it is the same one."""

    pid: int
    start_time: int
    service: str
    environment: str
    version: str
    replica: int


@dataclass(frozen=True)
class PlatformState:
    """The whole persisted document."""

    desired: dict[Target, Desired]
    children: tuple[ChildRecord, ...] = ()


def load_state(path: Path) -> PlatformState:
    """Read the state file; a missing file is an empty state, an unreadable one an error (fail closed)."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return PlatformState(desired={})
    except (OSError, ValueError) as exc:
        raise PlatformError(f"cannot read the local platform's state {path}: {exc}") from exc
    try:
        if document.get("format") != FORMAT:
            raise ValueError(f"unknown format {document.get('format')!r}")
        desired = {}
        for entry in document["targets"]:
            entry = dict(entry)
            target = Target(entry.pop("service"), entry.pop("environment"))
            desired[target] = Desired(**entry)
        children = tuple(ChildRecord(**child) for child in document["children"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PlatformError(f"the local platform's state {path} is malformed: {exc}") from exc
    return PlatformState(desired=desired, children=children)


def save_state(path: Path, state: PlatformState, *, durable: bool = True) -> None:
    """Write the state atomically: a crash leaves either the old or the new file, never half of one.

    ``durable`` also flushes it to disk, for changes of the desired state. The
    list of children alone need not survive a power loss (the children do not
    either), so its many updates skip the two fsyncs.
    """
    document = {
        "format": FORMAT,
        "targets": [
            {"service": target.service, "environment": target.environment, **asdict(desired)}
            for target, desired in sorted(state.desired.items(), key=lambda item: str(item[0]))
        ],
        "children": [asdict(child) for child in state.children],
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w") as handle:
            json.dump(document, handle, indent=1)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except OSError as exc:
        raise PlatformError(f"cannot write the local platform's state {path}: {exc}") from exc


async def kill_leftovers(children: tuple[ChildRecord, ...], *, timeout: float = 5.0) -> list[int]:
    """SIGKILL every recorded child that is still the same process; return the pids killed.

    These are orphans of a daemon that died without stopping them: they are
    not our children any more, so they are not ours to reap; we wait only
    until they are gone or zombies.
    """
    killed: dict[int, int] = {}
    for child in children:
        if proc_start_time(child.pid) == child.start_time:
            log.warning(
                "killing replica %s/%s %s#%d (pid %d) left over by a previous run",
                child.service,
                child.environment,
                child.version,
                child.replica,
                child.pid,
            )
            signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child.pid, signal.SIGKILL)
            killed[child.pid] = child.start_time
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = list(killed)
    while pending and loop.time() < deadline:
        await asyncio.sleep(0.01)
        pending = [pid for pid in pending if proc_start_time(pid) == killed[pid]]
    if pending:
        raise PlatformError(f"replicas left over by a previous run would not die: pids {pending}")
    return list(killed)
