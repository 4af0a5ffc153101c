"""Does the probe scheduler keep thousands of probes on time? 10,000 HTTP probes every 60 s for 3 minutes.

Starts a few demo services (``python -m vouch.daemon.demo.service``), each
in its own process, spreads the probe definitions over them, and runs every
probe with the real :class:`~vouch.probes.http.HttpProbe` through the
:class:`~vouch.probes.scheduler.Scheduler`, its results going to
:class:`~vouch.probes.metrics.ProbeMetrics` as in the daemon. Lateness is how
much later than its slot each run started; the target is a p99 under one
second. CPU is this process' own (the probes and the scheduler), not the
services'.

The last line of stdout is one JSON object::

    python benchmarks/probe_scale.py [--probes 10000] [--duration 180] [--servers 4] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from vouch.probes.http import HttpProbe, HttpProbeSpec
from vouch.probes.metrics import ProbeMetrics
from vouch.probes.scheduler import ProbeRun, Scheduler
from vouch.probes.tlsinfo import TlsContexts

INTERVAL = 60.0
TARGET_P99_MS = 1000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(stack: ExitStack, port: int) -> None:
    """One demo service in its own process, stopped (SIGTERM, then SIGKILL) when ``stack`` closes."""
    command = [sys.executable, "-m", "vouch.daemon.demo.service", "--port", str(port), "--version", "bench"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    stack.callback(stop)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"demo service on port {port} exited with {process.returncode}")
        with suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            if answer.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"demo service on port {port} did not answer within 30 s")


@dataclass
class Tally:
    """What the runs showed, collected by the scheduler's ``on_result``."""

    metrics: ProbeMetrics
    lateness: list[float] = field(default_factory=list)
    failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def __call__(self, run: ProbeRun) -> None:
        self.metrics.observe(run)
        self.lateness.append(run.lateness)
        if not run.result.success:
            self.failures += 1
            reason = run.result.reason.value if run.result.reason else "unknown"
            self.reasons[reason] = self.reasons.get(reason, 0) + 1


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(ports: list[int], args: argparse.Namespace) -> dict[str, object]:
    tally = Tally(ProbeMetrics(CollectorRegistry()))
    scheduler = Scheduler(concurrency=args.concurrency, on_result=tally)
    contexts = TlsContexts()
    labels = {"service": "bench", "environment": "local"}
    specs = [
        HttpProbeSpec(
            name=f"bench-{i}",
            targets=[f"http://127.0.0.1:{ports[i % len(ports)]}/check/{i}"],
            interval=INTERVAL,
            timeout=5.0,
            labels=labels,
        )
        for i in range(args.probes)
    ]
    probes = [HttpProbe(spec, contexts=contexts) for spec in specs]
    # Build first, then add in one go: slots are planned at add(), so slow building would count as lateness.
    for spec, probe in zip(specs, probes, strict=True):
        scheduler.add(f"{spec.name}|{spec.targets[0]}", probe, spec=spec, target=spec.targets[0])
    print(f"{args.probes} probes defined over {len(ports)} services; running for {args.duration:g} s", flush=True)
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    task = asyncio.create_task(scheduler.run(), name="probe-scheduler")
    try:
        while (elapsed := time.monotonic() - wall0) < args.duration:
            await asyncio.sleep(min(10.0, args.duration - elapsed))
            late = tally.lateness
            print(
                f"{time.monotonic() - wall0:6.0f} s: {len(late):6d} runs, lateness p50 "
                f"{percentile(late, 0.5) * 1000:7.1f} ms p99 {percentile(late, 0.99) * 1000:7.1f} ms, "
                f"{tally.failures} failures, {(cpu_seconds() - cpu0) / (time.monotonic() - wall0):.2f} cores",
                flush=True,
            )
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
    for probe in probes:
        await probe.close()
    if tally.reasons:
        print(f"failures by reason: {tally.reasons}", flush=True)
    p99 = percentile(tally.lateness, 0.99) * 1000
    return {
        "benchmark": "probe_scale",
        "probes": args.probes,
        "interval_s": INTERVAL,
        "duration_s": round(wall, 1),
        "runs": len(tally.lateness),
        "lateness_p50_ms": round(percentile(tally.lateness, 0.5) * 1000, 2),
        "lateness_p99_ms": round(p99, 2),
        "lateness_max_ms": round(max(tally.lateness, default=float("nan")) * 1000, 2),
        "cpu_cores_used": round(cpu / wall, 3),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "failures": tally.failures,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99 < TARGET_P99_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=10_000, help="probe definitions, each with one target")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds to run (3 intervals by default)")
    parser.add_argument("--servers", type=int, default=4, help="demo services to spread the targets over")
    parser.add_argument("--concurrency", type=int, default=64, help="runs in flight at most")
    args = parser.parse_args()
    with ExitStack() as stack:
        ports = [free_port() for _ in range(args.servers)]
        for port in ports:
            start_service(stack, port)
        result = asyncio.run(measure(ports, args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
