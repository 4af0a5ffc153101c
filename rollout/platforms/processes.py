"""Replicas of the local platform: child processes supervised the way a ReplicaSet keeps pods.

A :class:`Replica` is one child process of one version of a service. It gets a
free port, is polled on its readiness path until it answers 2xx (only then does
the router send it traffic), is restarted with capped exponential backoff when
it exits on its own, and on :meth:`Replica.stop` receives SIGTERM, then SIGKILL
after the grace period, and is always reaped.

Children must not outlive the daemon: each runs in its own session (so a
signal reaches everything it started) and asks the kernel, through
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, to be killed when its parent dies. The
kernel fires that signal when the *thread* that forked the child exits, so
replicas are spawned from the event loop's thread, which lives as long as the
daemon does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from vouch.core.errors import PlatformError
from vouch.rollout.config import ReadinessSpec
from vouch.rollout.model import Endpoint

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\{(port|version|service|environment|replica|python)\}")
"""The tokens replaced in a replica's command and environment; nothing else is touched."""

BACKOFF_INITIAL = 0.2
"""Seconds before the first restart of a replica that exited on its own."""
BACKOFF_MAX = 10.0
"""The longest wait between restarts."""
BACKOFF_RESET = 10.0
"""A replica that ran this long before exiting starts its backoff over."""

_PR_SET_PDEATHSIG = 1


def render(text: str, values: Mapping[str, str]) -> str:
    """Replace the placeholders in ``text`` in one pass (a value is never expanded again).

    >>> render("--port={port} {other}", {"port": "8080"})
    '--port=8080 {other}'
    """
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def proc_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or ``None`` if it is gone or a zombie.

    Together with the pid it names one process for good: a pid the kernel hands
    out again comes with a later start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on; comm may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def free_port(host: str) -> int:
    """A port on ``host`` that nothing listens on right now (a replica that loses the race restarts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid`` (each replica leads its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """The libc ``prctl``, resolved in the parent so the forked child only has to call it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def _die_with_parent(prctl: Callable[..., int], parent: int) -> None:
    """Runs in the child between fork and exec: be killed when the parent dies, even if it just did."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything needed to run one replica of one version."""

    service: str
    environment: str
    version: str
    index: int
    command: tuple[str, ...]
    env: Mapping[str, str]
    host: str
    readiness: ReadinessSpec
    stop_grace: float
    log_dir: Path

    @property
    def name(self) -> str:
        return f"{self.service}/{self.environment} {self.version}#{self.index}"

    @property
    def log_path(self) -> Path:
        version = re.sub(r"[^A-Za-z0-9._-]", "_", self.version)
        return self.log_dir / f"{self.service}-{self.environment}-{version}-{self.index}.log"

    def values(self, port: int) -> dict[str, str]:
        return {
            "port": str(port),
            "version": self.version,
            "service": self.service,
            "environment": self.environment,
            "replica": str(self.index),
            "python": sys.executable,
        }

    def argv(self, port: int) -> list[str]:
        values = self.values(port)
        return [render(part, values) for part in self.command]

    def environ(self, port: int) -> dict[str, str]:
        values = self.values(port)
        return {**os.environ, **{key: render(value, values) for key, value in self.env.items()}}


@dataclass(frozen=True)
class Child:
    """A running child process, named for good by its pid and start time."""

    pid: int
    start_time: int


class Replica:
    """One supervised child process; see the module docstring.

    ``on_change`` is called (synchronously, on the event loop) whenever the
    replica becomes ready or unready, or its process starts or exits, so the
    router and the persisted pid list follow at once.
    """

    def __init__(
        self,
        spec: ReplicaSpec,
        *,
        http: aiohttp.ClientSession,
        on_change: Callable[[Replica], None],
        restarts_metric: Any = None,
    ) -> None:
        self.spec = spec
        self.port = 0
        self.ready = False
        self.restarts = 0
        self._http = http
        self._on_change = on_change
        self._restarts_metric = restarts_metric
        self._process: asyncio.subprocess.Process | None = None
        self._start_time = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Replica {self.spec.name} pid={self.pid} ready={self.ready}>"

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.spec.host, self.port)

    @property
    def child(self) -> Child | None:
        """The running process, if any (``None`` once it has exited)."""
        process = self._process
        if process is None or process.returncode is not None:
            return None
        return Child(process.pid, self._start_time)

    @property
    def pid(self) -> int | None:
        child = self.child
        return child.pid if child else None

    async def launch(self, tasks: asyncio.TaskGroup) -> None:
        """Start the process and its supervisor; return once the process exists (not once it is ready)."""
        try:
            process = await self._spawn()
        except OSError as exc:
            raise PlatformError(f"cannot start replica {self.spec.name}: {exc}") from exc
        try:
            self._task = tasks.create_task(self._supervise(process), name=f"replica {self.spec.name}")
        except RuntimeError as exc:
            self.kill()
            raise PlatformError(f"cannot supervise replica {self.spec.name}: the platform is shut") from exc

    async def stop(self) -> None:
        """SIGTERM, wait up to the grace period, then SIGKILL; return once the process is reaped."""
        self._stopping = True
        self._wake.set()
        self._set_ready(False)
        self._signal(signal.SIGTERM)
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.spec.stop_grace)
        except TimeoutError:
            log.warning("replica %s ignored SIGTERM for %.1fs; killing it", self.spec.name, self.spec.stop_grace)
            self._signal(signal.SIGKILL)
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL at once, without waiting (the last resort of shutdown paths that cannot await)."""
        self._stopping = True
        self._wake.set()
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            signal_group(process.pid, signum)

    def _set_ready(self, ready: bool) -> None:
        if self.ready != ready:
            self.ready = ready
            self._on_change(self)

    async def _spawn(self) -> asyncio.subprocess.Process:
        """Fork and exec on the event loop's thread (see PDEATHSIG in the module docstring)."""
        spec = self.spec
        port = free_port(spec.host)
        argv = spec.argv(port)
        prctl = _prctl()
        preexec = functools.partial(_die_with_parent, prctl, os.getpid()) if prctl else None
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        with spec.log_path.open("ab") as output:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            output.write(f"--- {stamp} vouch starts replica {spec.name}: {argv}\n".encode())
            output.flush()
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=spec.environ(port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )
        self._process = process
        self._start_time = proc_start_time(process.pid) or 0
        self.port = port
        self._on_change(self)
        return process

    async def _supervise(self, process: asyncio.subprocess.Process | None) -> None:
        """Serve, and restart after unexpected exits, until :meth:`stop`; never leave the process behind."""
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_INITIAL
        try:
            while True:
                started = loop.time()
                if process is not None:
                    if self._stopping:  # stop() came while we were forking, and could not signal this one
                        self._signal(signal.SIGTERM)
                    code = await self._serve(process)
                    if self._stopping:
                        return
                    if loop.time() - started >= BACKOFF_RESET:
                        backoff = BACKOFF_INITIAL
                    log.warning(
                        "replica %s exited with code %s; restarting in %.1fs (log: %s)",
                        self.spec.name,
                        code,
                        backoff,
                        self.spec.log_path,
                    )
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                if self._stopping:
                    return
                self.restarts += 1
                if self._restarts_metric is not None:
                    self._restarts_metric.inc()
                process = await self._respawn()
        finally:
            self._set_ready(False)
            self._signal(signal.SIGKILL)  # only does anything if we leave while the process still runs

    async def _respawn(self) -> asyncio.subprocess.Process | None:
        try:
            return await self._spawn()
        except OSError as exc:
            log.error("cannot restart replica %s: %s", self.spec.name, exc)
            return None

    async def _serve(self, process: asyncio.subprocess.Process) -> int:
        """Poll readiness while the process runs; return its exit code."""
        poll = asyncio.create_task(self._poll_ready(process), name=f"readiness {self.spec.name}")
        try:
            return await process.wait()
        finally:
            self._set_ready(False)
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
            self._on_change(self)

    async def _poll_ready(self, process: asyncio.subprocess.Process) -> None:
        readiness = self.spec.readiness
        host = f"[{self.spec.host}]" if ":" in self.spec.host else self.spec.host
        url = f"http://{host}:{self.port}/{readiness.path.lstrip('/')}"
        timeout = aiohttp.ClientTimeout(total=max(1.0, readiness.interval))
        deadline = asyncio.get_running_loop().time() + readiness.timeout
        warned = False
        while process.returncode is None:
            try:
                async with self._http.get(url, timeout=timeout, allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        self._set_ready(True)
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.debug("replica %s not ready yet: %r", self.spec.name, exc)
            if not warned and asyncio.get_running_loop().time() > deadline:
                warned = True
                log.warning(
                    "replica %s not ready after %.1fs (log: %s)",
                    self.spec.name,
                    readiness.timeout,
                    self.spec.log_path,
                )
            await asyncio.sleep(readiness.interval)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
