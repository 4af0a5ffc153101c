"""CPU per HTTP probe: vouch's ``http`` probe against blackbox_exporter, on the same local target in the same run.

Both open a fresh connection per probe, as they do in production. The target
is a minimal HTTP server in a separate process, so its CPU is counted for
neither. vouch's CPU is this process's (``time.process_time``) while it runs
``HttpProbe.run``; blackbox_exporter's is read from ``/proc/<pid>/stat``
(utime + stime) around the ``/probe`` requests this process sends it, so the
client's own cost is not counted against the peer. Both run the same number
of probes with the same modest concurrency, after a warm-up.

The last line of stdout is one JSON object; ``ratio`` is vouch / peer
(target: at most 1.0).

    python benchmarks/probe_cpu.py [--probes 2000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx

from vouch.probes.http import HttpProbe, HttpProbeSpec

HOST = "127.0.0.1"
BLACKBOX = "prometheus-blackbox-exporter"
WARMUP = 200
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"


# --------------------------------------------------------------------------- the target (a child process)


class _Answer(asyncio.Protocol):
    """Answers every request with :data:`ANSWER` once its head is in, then closes."""

    def __init__(self) -> None:
        self._seen = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._seen += data
        if b"\r\n\r\n" in self._seen and self._transport is not None:
            self._transport.write(ANSWER)
            self._transport.close()


async def _serve() -> None:
    server = await asyncio.get_running_loop().create_server(_Answer, HOST, 0, backlog=512)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


@contextlib.contextmanager
def target() -> Iterator[str]:
    """Start the target server in a child process; yields its URL."""
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://{HOST}:{port}/"
    finally:
        _stop(child)


# --------------------------------------------------------------------------- the peer


@contextlib.contextmanager
def blackbox_exporter(directory: Path) -> Iterator[tuple[str, int]]:
    """Start blackbox_exporter with an ``http_2xx`` module; yields its base URL and pid."""
    binary = shutil.which(BLACKBOX) or f"/usr/bin/{BLACKBOX}"
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{BLACKBOX} not installed: apt-get install prometheus-blackbox-exporter")
    config = directory / "blackbox.yml"
    config.write_text(
        "modules:\n  http_2xx:\n    prober: http\n    timeout: 5s\n    http:\n      preferred_ip_protocol: ip4\n"
    )
    port = free_port()
    log = (directory / "blackbox.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--web.listen-address={HOST}:{port}"], stdout=log, stderr=log
    )
    url = f"http://{HOST}:{port}"
    try:
        _wait_ready(url, process)
        yield url, process.pid
    finally:
        _stop(process)
        log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{BLACKBOX} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/healthy", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise SystemExit(f"{BLACKBOX} was not ready within 30s")


def _stop(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the measurements


async def _drive(count: int, concurrency: int, once: Callable[[], Awaitable[bool]]) -> int:
    """Call ``once`` ``count`` times from ``concurrency`` workers; returns how many reported success."""
    left = count
    good = 0

    async def worker() -> None:
        nonlocal left, good
        while left > 0:
            left -= 1
            ok = await once()
            good += ok

    async with asyncio.TaskGroup() as group:
        for index in range(concurrency):
            group.create_task(worker(), name=f"probe-worker-{index}")
    return good


async def measure_vouch(url: str, probes: int, concurrency: int) -> float:
    """CPU µs per probe of ``HttpProbe.run`` in this process."""
    probe = HttpProbe(HttpProbeSpec(name="bench", targets=[url], timeout=5))

    async def once() -> bool:
        return (await probe.run(url)).success

    await _drive(WARMUP, concurrency, once)
    before = time.process_time()
    good = await _drive(probes, concurrency, once)
    used = time.process_time() - before
    await probe.close()
    if good != probes:
        raise SystemExit(f"vouch: only {good} of {probes} probes succeeded")
    return used / probes * 1e6


async def measure_peer(base: str, pid: int, url: str, probes: int, concurrency: int) -> float:
    """CPU µs per probe of blackbox_exporter (its own process), driven through ``/probe``."""
    params = {"module": "http_2xx", "target": url}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:

        async def once() -> bool:
            answer = await client.get("/probe", params=params)
            return "\nprobe_success 1" in answer.text

        await _drive(WARMUP, concurrency, once)
        before = process_cpu(pid)
        good = await _drive(probes, concurrency, once)
        used = process_cpu(pid) - before
    if good != probes:
        raise SystemExit(f"blackbox_exporter: only {good} of {probes} probes succeeded")
    return used / probes * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=2000, help="probes per prober (at least 2000 for the record)")
    parser.add_argument("--concurrency", type=int, default=4, help="probes in flight at once")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve())
        return 0
    with tempfile.TemporaryDirectory(prefix="vouch-probe-cpu-") as tmp, target() as url:
        print(f"target {url}; {args.probes} probes each, {args.concurrency} at a time", flush=True)
        with blackbox_exporter(Path(tmp)) as (base, pid):
            peer = asyncio.run(measure_peer(base, pid, url, args.probes, args.concurrency))
            print(f"blackbox_exporter: {peer:.0f} µs CPU per probe", flush=True)
        ours = asyncio.run(measure_vouch(url, args.probes, args.concurrency))
        print(f"vouch: {ours:.0f} µs CPU per probe", flush=True)
    result = {
        "benchmark": "probe_cpu",
        "probes": args.probes,
        "concurrency": args.concurrency,
        "vouch_us_per_probe": round(ours, 1),
        "peer": "blackbox_exporter",
        "peer_us_per_probe": round(peer, 1),
        "ratio": round(ours / peer, 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
