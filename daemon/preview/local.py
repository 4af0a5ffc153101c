"""Local previews: one replica of a pull request's artifact, and its mocked backends, as processes on loopback.

``vouch preview up`` returns while the preview keeps running, so unlike the local platform's replicas
(children that die with the daemon) each process here is *detached*: spawned in a session of its own,
with no tie to the command that started it, its output in ``<state_dir>/previews/<name>/logs/``. Their
pids and start times are saved in the preview's state (:mod:`~vouch.daemon.preview.state`) before
anything waits on them, so ``down`` and the reaper find them from any later command, and never signal
a pid the kernel has since handed to another process.

The service's replica is started the way the local platform starts one: its ``command`` with the
placeholders ``{port}``, ``{version}``, ``{service}``, ``{environment}`` (the preview's name),
``{replica}`` (0) and ``{python}``; its ``env`` plus the preview's ``env``, where ``{mock:NAME}`` is
mock NAME's base URL. It is ready when its readiness path answers 2xx; a mock is ready when it prints
``ready on http://HOST:PORT``.

Example::

    previews = LocalPreviews(Path(".vouch"))
    preview = await previews.up("checkout", spec, "2.4.1", name="checkout-pr-42", owner={"pr": "42"})
    print(preview.url, dict(preview.mocks))
    await previews.down("checkout-pr-42")
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from vouch.core.errors import InputError, PlatformError
from vouch.daemon.preview.model import Preview
from vouch.daemon.preview.state import PreviewState, check_name
from vouch.rollout.config import ReadinessSpec, ServiceSpec
from vouch.rollout.platforms.processes import ReplicaSpec, free_port, proc_start_time, signal_group
from vouch.rollout.preview import MOCK_PLACEHOLDER, MockSpec, PreviewSpec

log = logging.getLogger(__name__)

MOCK_MODULE = "vouch.daemon.preview.mock"
READY_LINE = b"ready on http://"
"""What a mock prints once it listens."""
LOG_TAIL_LINES = 20
"""Lines of a process's log quoted when it fails to start."""
KILL_WAIT = 5.0
"""How long ``down`` waits for processes to vanish after SIGKILL before it gives up."""
POLL = 0.02


@dataclass(frozen=True)
class ProcessRecord:
    """One detached process of a preview, as saved: enough to find it again and be sure it is the same one."""

    role: str
    """``mock`` or ``service``."""
    name: str
    pid: int
    start_time: int
    port: int
    log: str

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ListedPreview:
    """A preview as ``list`` shows it, at the time asked."""

    preview: Preview
    age: float
    expires_in: float
    """Seconds until the reaper may remove it (negative once expired)."""
    running: bool
    """Every process of it is still alive."""


class _StartFailed(Exception):
    """A process of a preview exited or did not become ready in time."""


def records(preview: Preview) -> list[ProcessRecord]:
    """The processes saved with ``preview``."""
    try:
        return [ProcessRecord.of(entry) for entry in preview.data.get("processes", [])]
    except (KeyError, TypeError) as exc:
        raise PlatformError(f"preview {preview.name}: its process list is malformed: {exc}") from exc


def exit_code(pid: int) -> int | None:
    """Reap ``pid`` if it is our child and has exited, and return its exit code; else ``None``."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (started by an earlier command), or reaped already
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def alive(record: ProcessRecord) -> bool:
    """The recorded process still runs (a zombie child of ours is reaped on the way)."""
    exit_code(record.pid)
    return proc_start_time(record.pid) == record.start_time


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def spawn_detached(argv: list[str], *, env: Mapping[str, str], log_path: Path) -> int:
    """Start ``argv`` in a session of its own, output appended to ``log_path``; return its pid.

    ``posix_spawn`` rather than ``subprocess``: a ``Popen`` object stands for a child the caller will
    wait for, and complains when dropped while it runs; these are meant to outlive the caller.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as output:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        output.write(f"--- {stamp} vouch starts {argv}\n".encode())
        output.flush()
        return os.posix_spawnp(
            argv[0],
            argv,
            dict(env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, output.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, output.fileno(), 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
        )


class LocalPreviews:
    """Previews as detached processes on this machine; see the module docstring."""

    platform = "local"

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        stop_grace: float = 5.0,
        mock_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = PreviewState(state_dir)
        self._host = host
        self._stop_grace = stop_grace
        self._mock_timeout = mock_timeout
        self._clock = clock

    # ------------------------------------------------------------------ up

    async def up(
        self,
        service_name: str,
        service: ServiceSpec,
        version: str,
        *,
        name: str,
        ttl: float | None = None,
        owner: Mapping[str, str] | None = None,
    ) -> Preview:
        """Start the mocks and one replica, wait until all are ready, and return the preview.

        Raises :class:`ConflictError` when ``name`` is up already, :class:`InputError` for a service that
        cannot be previewed here, and :class:`PlatformError` (with the failing process's log tail) when a
        process exits or is not ready in time; then nothing of it is left running.
        """
        spec = _preview_spec(service_name, service)
        ttl = spec.ttl if ttl is None else ttl
        if ttl <= 0:
            raise InputError(f"a preview's ttl must be positive, not {ttl}")
        check_name(name)
        self.state.reserve(name)
        try:
            preview = self._planned(service_name, version, spec, name=name, ttl=ttl, owner=owner or {})
            self.state.save(preview)
            preview = self._start(preview, service, spec)
            await self._wait_ready(preview, service.readiness)
            preview = _with_data(preview, status="up")
            self.state.save(preview)
            return preview
        except BaseException as exc:
            await asyncio.shield(self._discard(name))
            if isinstance(exc, OSError):
                raise PlatformError(f"preview {name}: cannot start a process: {exc}") from exc
            if isinstance(exc, _StartFailed):
                raise PlatformError(f"preview {name} did not come up: {exc}") from None
            raise

    def _planned(
        self, service_name: str, version: str, spec: PreviewSpec, *, name: str, ttl: float, owner: Mapping[str, str]
    ) -> Preview:
        """The preview before anything runs: its ports chosen, no process yet."""
        now = self._clock()
        host = f"[{self._host}]" if ":" in self._host else self._host
        mocks = {mock.name: f"http://{host}:{free_port(self._host)}" for mock in spec.mocks}
        return Preview(
            name=name,
            service=service_name,
            version=version,
            platform=self.platform,
            created_at=now,
            expires_at=now + ttl,
            address=f"{host}:{free_port(self._host)}",
            mocks=mocks,
            owner=dict(owner),
            data={"status": "starting", "processes": []},
        )

    def _start(self, preview: Preview, service: ServiceSpec, spec: PreviewSpec) -> Preview:
        """Spawn every mock, then the replica, saving the preview after each so none is ever lost."""
        folder = self.state.folder(preview.name)
        logs = self.state.log_dir(preview.name)
        for mock in spec.mocks:
            spec_path = _write_mock_spec(folder / "mocks", mock)
            port = _port_of(preview.mocks[mock.name])
            argv = [
                sys.executable,
                "-m",
                MOCK_MODULE,
                "--spec",
                str(spec_path),
                "--host",
                self._host,
                "--port",
                str(port),
            ]
            preview = self._spawned(preview, "mock", mock.name, argv, env=os.environ, port=port, log_dir=logs)
        replica = _replica(preview, service, spec, host=self._host, stop_grace=self._stop_grace, log_dir=logs)
        port = _port_of(preview.url)
        argv, env = replica.argv(port), replica.environ(port)
        return self._spawned(preview, "service", preview.service, argv, env=env, port=port, log_dir=logs)

    def _spawned(
        self,
        preview: Preview,
        role: str,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        port: int,
        log_dir: Path,
    ) -> Preview:
        log_path = log_dir / f"{role}-{name}.log"
        pid = spawn_detached(argv, env=env, log_path=log_path)
        record = ProcessRecord(role, name, pid, proc_start_time(pid) or 0, port, str(log_path))
        preview = _with_data(preview, processes=[*preview.data["processes"], dataclasses.asdict(record)])
        self.state.save(preview)
        return preview

    async def _wait_ready(self, preview: Preview, readiness: ReadinessSpec) -> None:
        """Wait for every process in turn (they start together, so this takes as long as the slowest)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for record in records(preview):
            if record.role == "mock":
                await self._wait_mock(record, deadline=started + self._mock_timeout)
            else:
                await _wait_service(record, preview.url, readiness, deadline=started + readiness.timeout)

    async def _wait_mock(self, record: ProcessRecord, *, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        path = Path(record.log)
        while True:
            _check_running(record)
            if _says_ready(path):
                return
            if loop.time() > deadline:
                raise _StartFailed(_failure(record, f"not ready within {self._mock_timeout:g}s"))
            await asyncio.sleep(POLL)

    async def _discard(self, name: str) -> None:
        """Clean up after a failed ``up``: whatever of it runs is stopped, its folder removed."""
        try:
            await self.down(name)
        except Exception:
            log.exception("could not clean up preview %s after it failed to come up", name)

    # ------------------------------------------------------------------ down, list, reap

    async def down(self, name: str) -> Preview | None:
        """SIGTERM every process group of the preview, SIGKILL those still there after the grace period,
        and remove its folder. :class:`NotFoundError` when there is no such preview.

        Returns the preview removed (``None`` for one whose state was never written).
        """
        preview = self.state.load(name)
        if preview is not None:
            await self._stop(records(preview))
        self.state.remove(name)
        return preview

    async def _stop(self, processes: list[ProcessRecord]) -> None:
        live = [r for r in processes if alive(r)]
        for record in live:
            signal_group(record.pid, signal.SIGTERM)
        live = await _wait_gone(live, self._stop_grace)
        for record in live:
            log.warning(
                "%s %s (pid %d) ignored SIGTERM for %.1fs; killing it",
                record.role,
                record.name,
                record.pid,
                self._stop_grace,
            )
            signal_group(record.pid, signal.SIGKILL)
        live = await _wait_gone(live, KILL_WAIT)
        if live:
            raise PlatformError(f"processes of the preview would not die: pids {[r.pid for r in live]}")

    async def list(self, now: float) -> list[ListedPreview]:
        """Every preview with its age, time left and whether all its processes still run."""
        return [
            ListedPreview(
                preview=p,
                age=now - p.created_at,
                expires_in=p.expires_at - now,
                running=all(alive(r) for r in records(p)),
            )
            for p in self.state.all()
        ]

    async def reap(self, now: float) -> builtins.list[str]:  # `list` is the method above
        """``down`` every preview expired at ``now``; return the names removed (a failure is logged)."""
        removed = []
        for preview in self.state.all():
            if not preview.expired(now):
                continue
            try:
                await self.down(preview.name)
            except InputError:  # removed by someone else meanwhile
                continue
            except PlatformError as exc:
                log.error("cannot remove expired preview %s: %s", preview.name, exc)
                continue
            removed.append(preview.name)
        return removed


# --------------------------------------------------------------------------- helpers


def _preview_spec(service_name: str, service: ServiceSpec) -> PreviewSpec:
    if not service.command:
        raise InputError(f"service {service_name!r} has no `command`: a local preview runs the service's command")
    if service.preview is None:
        raise InputError(
            f"service {service_name!r} has no `preview` settings: add `preview: {{}}` (no mocked backends) "
            "or declare its mocks, so a preview never calls real backends by accident"
        )
    return service.preview


def _replica(
    preview: Preview, service: ServiceSpec, spec: PreviewSpec, *, host: str, stop_grace: float, log_dir: Path
) -> ReplicaSpec:
    """The replica as the local platform would run it, in environment ``<preview name>``, its backends mocked."""
    urls = dict(preview.mocks)
    wired = {key: MOCK_PLACEHOLDER.sub(lambda m: urls[m.group(1)], value) for key, value in spec.env.items()}
    assert service.command is not None
    return ReplicaSpec(
        service=preview.service,
        environment=preview.name,
        version=preview.version,
        index=0,
        command=tuple(service.command),
        env={**service.env, **wired},
        host=host,
        readiness=service.readiness,
        stop_grace=stop_grace,
        log_dir=log_dir,
    )


def _write_mock_spec(folder: Path, mock: MockSpec) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{mock.name}.json"
    path.write_text(mock.model_dump_json(by_alias=True, exclude_none=True))
    return path


def _says_ready(log_path: Path) -> bool:
    try:
        return READY_LINE in log_path.read_bytes()
    except OSError:
        return False


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _with_data(preview: Preview, **changes: Any) -> Preview:
    return dataclasses.replace(preview, data={**preview.data, **changes})


def _check_running(record: ProcessRecord) -> None:
    code = exit_code(record.pid)
    if code is not None or proc_start_time(record.pid) != record.start_time:
        how = f"exited with code {code}" if code is not None else "exited"
        raise _StartFailed(_failure(record, how))


def _failure(record: ProcessRecord, what: str) -> str:
    return f"{record.role} {record.name} {what}; the end of its log {record.log}:\n{log_tail(Path(record.log))}"


async def _wait_service(record: ProcessRecord, url: str, readiness: ReadinessSpec, *, deadline: float) -> None:
    """Poll the replica's readiness path until 2xx; fail when it exits or the deadline passes."""
    loop = asyncio.get_running_loop()
    target = f"{url}/{readiness.path.lstrip('/')}"
    timeout = aiohttp.ClientTimeout(total=max(1.0, readiness.interval))
    async with aiohttp.ClientSession() as http:
        while True:
            _check_running(record)
            try:
                async with http.get(target, timeout=timeout, allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("preview service not ready yet: %r", exc)
            if loop.time() > deadline:
                raise _StartFailed(_failure(record, f"not ready on {readiness.path} within {readiness.timeout:g}s"))
            await asyncio.sleep(readiness.interval)


async def _wait_gone(live: list[ProcessRecord], timeout: float) -> list[ProcessRecord]:
    """Poll until every process in ``live`` is gone or ``timeout`` passes; return those still there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while live and loop.time() < deadline:
        await asyncio.sleep(POLL)
        live = [r for r in live if alive(r)]
    return live
