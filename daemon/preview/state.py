"""Where local previews are kept between commands, and the reaper that removes the expired ones.

A preview outlives the command that stood it up, so everything ``down``, ``list`` and the reaper
need is on disk, one folder per preview::

    <state_dir>/previews/<name>/preview.json    the Preview, with its processes (pid, start time)
    <state_dir>/previews/<name>/logs/           one log per process
    <state_dir>/previews/<name>/mocks/          the mock servers' specs

Making the folder reserves the name (``mkdir`` either creates it or finds it there, atomically), and
``preview.json`` is written atomically (temporary file, fsync, rename) before any process starts and
again after each one, so a command killed at any point leaves something ``down`` can clean up.

:class:`PreviewReaper` is the daemon's side: every minute it asks each :class:`Reaper` (the local
previews, the Kubernetes ones) to remove what has expired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from vouch.core.errors import ConflictError, InputError, NotFoundError, PlatformError
from vouch.daemon.preview.model import Preview
from vouch.rollout.config import NAME_PATTERN

log = logging.getLogger(__name__)

PREVIEWS = "previews"
PREVIEW_FILE = "preview.json"
_NAME = re.compile(NAME_PATTERN)

REAP_INTERVAL = 60.0
"""Seconds between two rounds of the daemon's reaper."""


def check_name(name: str) -> str:
    """``name`` if it can name a preview (a DNS label, which is also a safe folder name).

    >>> check_name("checkout-pr-42")
    'checkout-pr-42'
    """
    if not _NAME.match(name):
        raise InputError(f"{name!r} cannot name a preview: use lowercase letters, digits and '-' (at most 63)")
    return name


def default_name(service: str, pr: int) -> str:
    """``<service>-pr-<number>``, cut to fit a DNS label.

    >>> default_name("checkout", 42)
    'checkout-pr-42'
    """
    suffix = f"-pr-{pr}"
    return check_name(service[: 63 - len(suffix)].rstrip("-") + suffix)


class PreviewState:
    """The folders of the local previews under ``<state_dir>/previews``; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / PREVIEWS

    def folder(self, name: str) -> Path:
        return self.root / check_name(name)

    def log_dir(self, name: str) -> Path:
        return self.folder(name) / "logs"

    def reserve(self, name: str) -> Path:
        """Make the preview's folder, or raise :class:`ConflictError` when the name is taken."""
        folder = self.folder(name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            folder.mkdir()
        except FileExistsError as exc:
            raise ConflictError(
                f"a preview named {name!r} is already up (or was left half made): `vouch preview down {name}` first"
            ) from exc
        except OSError as exc:
            raise PlatformError(f"cannot make the preview's folder {folder}: {exc}") from exc
        return folder

    def exists(self, name: str) -> bool:
        return self.folder(name).is_dir()

    def save(self, preview: Preview) -> None:
        """Write ``preview.json`` atomically and durably: a crash leaves the old or the new file, never half."""
        path = self.folder(preview.name) / PREVIEW_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with tmp.open("w") as handle:
                json.dump(preview.to_dict(), handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise PlatformError(f"cannot write the preview's state {path}: {exc}") from exc

    def load(self, name: str) -> Preview | None:
        """The saved preview; ``None`` for a folder with no ``preview.json`` yet; :class:`NotFoundError` if
        there is no such preview at all."""
        folder = self.folder(name)
        if not folder.is_dir():
            raise NotFoundError(f"no preview named {name!r}; `vouch preview list` shows those that exist")
        path = folder / PREVIEW_FILE
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PlatformError(f"cannot read the preview's state {path}: {exc}") from exc
        try:
            return Preview.from_dict(document)
        except TypeError as exc:
            raise PlatformError(f"the preview's state {path} is malformed: {exc}") from exc

    def names(self) -> list[str]:
        """Every preview folder, in name order (those half made included)."""
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise PlatformError(f"cannot list the previews in {self.root}: {exc}") from exc
        return [e.name for e in entries if e.is_dir() and _NAME.match(e.name)]

    def all(self) -> list[Preview]:
        """Every saved preview; one that cannot be read is logged and left out (the others still count)."""
        found = []
        for name in self.names():
            try:
                preview = self.load(name)
            except (NotFoundError, PlatformError) as exc:  # removed meanwhile, or unreadable
                log.warning("skipping preview %s: %s", name, exc)
                continue
            if preview is not None:
                found.append(preview)
        return found

    def remove(self, name: str) -> None:
        folder = self.folder(name)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PlatformError(f"cannot remove the preview's folder {folder}: {exc}") from exc


# --------------------------------------------------------------------------- the reaper


class Reaper(Protocol):
    """Anything that removes its expired previews: the local ones, the Kubernetes ones."""

    async def reap(self, now: float) -> list[str]:
        """Remove every preview expired at ``now`` (seconds since the epoch); return their names."""
        ...


class PreviewReaper:
    """Runs every reaper each ``interval`` seconds, as long as the daemon leads.

    One reaper failing (a Kubernetes API down) is logged and does not keep the others from their work;
    the next round tries again.

    Example::

        reaper = PreviewReaper([LocalPreviews(state_dir)], interval=60.0)
        group.create_task(reaper.run(), name="preview-reaper")
    """

    def __init__(
        self,
        reapers: Sequence[Reaper],
        *,
        interval: float = REAP_INTERVAL,
        clock: Callable[[], float] = time.time,
        on_reaped: Callable[[str], None] | None = None,
    ) -> None:
        self._reapers = list(reapers)
        self._interval = interval
        self._clock = clock
        self._on_reaped = on_reaped

    async def run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(self._interval)

    async def once(self) -> list[str]:
        """One round: every reaper in turn; the names removed."""
        removed: list[str] = []
        for reaper in self._reapers:
            try:
                names = await reaper.reap(self._clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaping previews with %s failed; trying again next round", type(reaper).__name__)
                continue
            for name in names:
                log.info("removed expired preview %s", name)
                if self._on_reaped is not None:
                    self._on_reaped(name)
            removed += names
        return removed
