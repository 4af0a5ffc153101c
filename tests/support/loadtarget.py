"""Demo-service processes to aim load at, and a look for Locust processes a test left behind.

Example::

    async with demo_targets() as start:
        canary = await start("2.0.0", latency_ms=50)
        result = await LocustRunner().run(LoadPlan(target=canary.url, ...))
        capped = await start("2.0.0", latency_ms=50, max_in_flight=4)  # a knee at 80 requests per second
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from support.demo import DEMO_MODULE, eventually, free_port

from vouch.rollout.model import Endpoint

StartDemo = Callable[..., Awaitable[Endpoint]]


def capacity(*, latency_ms: float, max_in_flight: int) -> float:
    """Requests per second a replica with these faults serves: ``max_in_flight / latency``."""
    return max_in_flight / (latency_ms / 1000)


@contextlib.asynccontextmanager
async def demo_targets() -> AsyncIterator[StartDemo]:
    """Start demo replicas with injected faults; every one is stopped when the block ends."""
    started: list[asyncio.subprocess.Process] = []

    async def start(
        version: str = "1.0.0", *, latency_ms: float = 0, error_ratio: float = 0, max_in_flight: int | None = None
    ) -> Endpoint:
        port = free_port()
        argv = [sys.executable, "-m", DEMO_MODULE, "--port", str(port), "--version", version]
        argv += ["--latency-ms", str(latency_ms), "--error-ratio", str(error_ratio)]
        if max_in_flight is not None:
            argv += ["--max-in-flight", str(max_in_flight)]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        started.append(process)
        endpoint = Endpoint("127.0.0.1", port)
        await eventually(lambda: _healthy(endpoint), what=f"demo {version} on port {port}")
        return endpoint

    try:
        yield start
    finally:
        for process in started:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def _healthy(endpoint: Endpoint) -> bool:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(f"{endpoint.url}/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    return await asyncio.to_thread(probe)


def locust_children() -> list[int]:
    """Pids of live Locust processes started by this test process (there should be none after a run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == os.getpid() and fields[0] not in "ZX" and b"locust" in cmdline:
            found.append(int(entry.name))
    return found
