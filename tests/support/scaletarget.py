"""Demo replicas with a capacity: ``max_in_flight`` workers of ``latency_ms`` each, for scale tests to find.

Example::

    async with capped_replicas() as start:
        replica = await start("2.0.0", latency_ms=50, max_in_flight=4)  # 80 requests per second
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

from support.demo import DEMO_MODULE, eventually, free_port
from support.loadtarget import _healthy

from vouch.rollout.model import Endpoint

StartCapped = Callable[..., Awaitable[Endpoint]]


def capacity(*, latency_ms: float, max_in_flight: int) -> float:
    """Requests per second a replica with these faults serves: ``max_in_flight / latency``."""
    return max_in_flight / (latency_ms / 1000)


@contextlib.asynccontextmanager
async def capped_replicas() -> AsyncIterator[StartCapped]:
    """Start capped demo replicas; every one is stopped when the block ends."""
    started: list[asyncio.subprocess.Process] = []

    async def start(version: str = "1.0.0", *, latency_ms: float, max_in_flight: int) -> Endpoint:
        port = free_port()
        argv = [sys.executable, "-m", DEMO_MODULE, "--port", str(port), "--version", version]
        argv += ["--latency-ms", str(latency_ms), "--max-in-flight", str(max_in_flight)]
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
