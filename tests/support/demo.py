"""Helpers to run the bundled demo service: as a ServiceSpec for the local platform, or by hand.

Example::

    spec = demo_service(replicas=3, faults_file=tmp_path / "faults.json")
    platform = LocalPlatform(LocalPlatformSpec(), {"shop": spec}, state_dir=tmp_path, traffic=recorder)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from vouch.rollout.config import ReadinessSpec, ServiceEnvironment, ServiceSpec

DEMO_MODULE = "vouch.daemon.demo.service"


def demo_command(*extra: str) -> list[str]:
    """The argv of one demo replica, with the local platform's placeholders."""
    return [sys.executable, "-m", DEMO_MODULE, "--port", "{port}", "--version", "{version}", *extra]


def demo_service(
    *,
    replicas: int = 1,
    environments: Sequence[str] = ("staging",),
    faults_file: Path | None = None,
    readiness_interval: float = 0.02,
) -> ServiceSpec:
    """A service running the demo, polled for readiness often so tests move fast."""
    extra = ("--faults-file", str(faults_file)) if faults_file else ()
    return ServiceSpec(
        command=demo_command(*extra),
        replicas=replicas,
        readiness=ReadinessSpec(interval=readiness_interval, timeout=20.0),
        environments=[ServiceEnvironment(name=name) for name in environments],
    )


@contextlib.contextmanager
def demo_processes() -> Iterator[Callable[..., str]]:
    """Start demo replicas as processes of their own; every one is killed when the block ends.

    ``start(*args, version="1.0.0", env=None, wait=True)`` starts one with the extra command-line
    ``args`` and returns its base URL, once ``/healthz`` answers 200 (unless ``wait`` is false). A
    replica that exits before it answers fails the test with the end of its stderr.

        with demo_processes() as start:
            url = start("--error-ratio", "0.2")
    """
    started: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as files:

        def start(*args: str, version: str = "1.0.0", env: dict[str, str] | None = None, wait: bool = True) -> str:
            port = free_port()
            argv = [sys.executable, "-m", DEMO_MODULE, "--port", str(port), "--version", version, *args]
            errors = files.enter_context(tempfile.TemporaryFile())  # a file: a pipe nobody reads can fill up
            process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errors)
            started.append(process)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while wait and not healthy(url):
                if process.poll() is not None:
                    errors.seek(0)
                    raise AssertionError(f"the demo exited ({process.returncode}): {errors.read()[-2000:]!r}")
                assert time.monotonic() < deadline, "the demo did not come up"
                time.sleep(0.01)
            return url

        try:
            yield start
        finally:
            for process in started:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=10)


def healthy(url: str) -> bool:
    """Whether ``url``/healthz answers 200 (straight, past any proxy of the environment)."""
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie waits on a reaper we do not own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def demo_children() -> list[int]:
    """Pids of demo replicas whose parent is this test process (there should be none after a test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == os.getpid() and fields[0] not in "ZX" and DEMO_MODULE.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
