"""Load-test overhead: one locustfile and the same users, run by ``vouch loadtest run`` and by bare ``locust``.

What is measured: the request rate Locust achieves against the same local
target when vouch runs it and when it is run by hand. The vouch side is the
command people use, ``vouch loadtest run URL --locustfile F --users N
--spawn-rate N --duration Ts --json``, a process of its own that starts Locust
through :class:`~vouch.loadtests.locust.LocustRunner` (the runner the
``loadtest`` gate uses): in a process group of its own, in a fresh folder,
with ``--json-file``, ``--csv``, ``--only-summary`` and ``--exit-code-on-error
0``, reading the stats history every second for its progress bar. The peer
is ``python -m locust -f F --headless --host URL -u N -r N -t Ts --json-file
X`` in a fresh folder, printing its console statistics as a run by hand does.
Both use the same Python and Locust, the same environment (no ``VOUCH_RATE*``,
``VOUCH_HOSTS`` or ``LOCUST_*`` variables, so nobody paces), and the same
file: vouch's generated locustfile for ``GET /`` (one ``FastHttpUser``, one
task, no wait between requests), so every user sends as fast as the target
answers and one Locust process (one core at most: gevent) is what limits the rate.

The rate of either side is read from Locust's ``--json-file`` by the same
function (:func:`~vouch.loadtests.stats.parse_stats`): requests in the whole
seconds after spawning, over those seconds. The runs alternate (vouch, peer,
then peer, vouch, …, so each side goes first equally often), after a short
warm-up run that is not counted; each figure is the median of ``--runs`` runs
per side, and ``ratio`` is vouch's median rate over the peer's.

CPU, per run, read from ``/proc`` while the finished process is not yet
reaped: ``locust_cpu_s``, the Locust process alone, and ``vouch_own_cpu_s``,
the vouch command without its Locust (its start, imports included, the
progress it reads, the judging). ``requests_per_locust_cpu_s`` is what Locust
sends per CPU second it gets: unlike the rate it barely moves when other
processes take CPU from Locust, so ``efficiency_ratio`` (vouch's over the
peer's) is the cross-check of ``ratio`` on a busy machine.

A shared machine disturbs the rates (other work takes the core Locust needs):
before every run the benchmark waits, at most ``--settle`` seconds, until
everything else uses under ``--quiet-below`` cores, and reports per run
``others_cores``, the CPU the machine spent on anything but this benchmark's
processes during it (the kernel's loopback work included, so never quite 0).

The target must not be what limits the rate: a minimal keep-alive HTTP server
on asyncio in a child process (pipelined requests answered in one write), on
127.0.0.1 and a free port, stopped at the end. Its CPU over each run's
duration is reported (``target_cores_max``): a small share of one core while
Locust sends all it can. (The demo service, a threaded ``http.server`` with
a connection per request, answers fewer requests than one Locust process sends
here, so it would measure itself.)

Target: ``ratio`` at least 0.95. Progress goes to stderr; the last line of
stdout is one JSON object::

    python benchmarks/loadtest_overhead.py [--runs 6] [--duration 12] [--users 10] [--warmup 3] [--settle 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vouch.loadtests.locustfiles import parse_request, write_locustfile
from vouch.loadtests.stats import parse_stats

HOST = "127.0.0.1"
PEER = "locust"
TARGET_RATIO = 0.95
BUSY_TARGET_CORES = 0.5
"""A target using more than this many cores in a run may be limiting the rate: said on stderr."""
OVERRUN = 120.0
"""Seconds past its duration a run may take (start, spawning, writing results) before it counts as hung."""
TICK = os.sysconf("SC_CLK_TCK")
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n"
END_OF_HEAD = b"\r\n\r\n"


# --------------------------------------------------------------------------- the target (a child process)


class _Answer(asyncio.Protocol):
    """Answers every request head on a kept-alive connection with :data:`ANSWER`; pipelined heads in one write."""

    def __init__(self) -> None:
        self._pending = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._pending += data
        heads = self._pending.count(END_OF_HEAD)
        if heads and self._transport is not None:
            self._pending = self._pending[self._pending.rfind(END_OF_HEAD) + len(END_OF_HEAD) :]
            self._transport.write(ANSWER * heads)


async def _serve() -> None:
    server = await asyncio.get_running_loop().create_server(_Answer, HOST, 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


@contextlib.contextmanager
def target() -> Iterator[tuple[str, int]]:
    """Start the target in a child process on a free port; yields its URL and pid, stops it at the end."""
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://{HOST}:{port}", child.pid
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


# --------------------------------------------------------------------------- CPU, from /proc


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of process ``pid`` itself and of its reaped children (it may be a zombie not yet reaped)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own, children = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
    return own / TICK, children / TICK


def machine_busy() -> float:
    """CPU seconds every core of the machine has spent busy (neither idle nor waiting for I/O) since boot."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def settle(*, below: float, longest: float) -> float:
    """Wait until the machine is busy with under ``below`` cores over a second, at most ``longest`` seconds.

    Called between runs, when this benchmark's own processes are idle: what it reads is everything else.
    Returns the last reading, in cores.
    """
    began = time.monotonic()
    readings: list[float] = []
    while True:
        before, start = machine_busy(), time.monotonic()
        time.sleep(1.0)  # the measuring window itself
        readings.append((machine_busy() - before) / (time.monotonic() - start))
        if readings[-1] < below or time.monotonic() - began >= longest:
            break
    if len(readings) > 1:
        waited = time.monotonic() - began
        print(
            f"  waited {waited:.0f}s for a quiet machine: other processes used {max(readings):.2f} cores at most, "
            f"{readings[-1]:.2f} at the end",
            file=sys.stderr,
            flush=True,
        )
    return readings[-1]


@dataclass(frozen=True)
class Finished:
    """A process run to its end: its exit code, wall time, its own CPU and its children's."""

    code: int
    wall_s: float
    own_cpu_s: float
    children_cpu_s: float


def run_process(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> Finished:
    """Run ``argv`` with stdout and stderr in files in ``cwd``; its CPU is read before it is reaped."""
    start = time.perf_counter()
    with (cwd / "stdout.txt").open("wb") as stdout, (cwd / "stderr.txt").open("wb") as stderr:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    try:
        deadline = start + timeout
        while os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            if time.perf_counter() > deadline:
                raise SystemExit(f"{argv[:4]} did not finish within {timeout:g}s")
            time.sleep(0.05)  # polling for the exit without reaping, so /proc still holds its CPU
        wall = time.perf_counter() - start
        own, children = process_cpu(child.pid)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)  # the vouch command stops its Locust group on the way out
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        child.wait()
    return Finished(child.returncode, wall, own, children)


# --------------------------------------------------------------------------- one run of each side


@dataclass(frozen=True)
class Load:
    """What both sides run: the same locustfile, users and duration against the same target and environment."""

    url: str
    locustfile: Path
    users: int
    duration: int
    env: dict[str, str]
    ramp: float = 1.0
    """Seconds of spawning: the spawn rate is the user count, so every user starts in the first second."""


@dataclass(frozen=True)
class Run:
    """One run's figures."""

    side: str
    round: int
    rps: float
    requests: int
    locust_cpu_s: float
    vouch_own_cpu_s: float
    wall_s: float
    target_cores: float
    """The target's CPU over the run's duration: the share of a core it needed to answer."""
    others_cores: float
    """CPU the machine spent on anything but this benchmark's processes during the run, in cores."""

    @property
    def requests_per_locust_cpu_s(self) -> float:
        return self.requests / self.locust_cpu_s if self.locust_cpu_s > 0 else 0.0


def _measured(side: str, load: Load, *, argv: list[str], cwd: Path, target_pid: int) -> tuple[Finished, float, float]:
    """Run one side; returns how it finished, the target's cores and the others' cores during it."""
    served, busy = sum(process_cpu(target_pid)), machine_busy()
    done = run_process(argv, cwd=cwd, env=load.env, timeout=load.duration + OVERRUN)
    target_cpu = sum(process_cpu(target_pid)) - served
    others = machine_busy() - busy - target_cpu - done.own_cpu_s - done.children_cpu_s
    if done.code not in (0, 1):  # 1: a bound failed (vouch) or a request failed (Locust); both checked later
        tail = (cwd / "stderr.txt").read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{side}: exited with {done.code}: {' | '.join(tail)}")
    return done, target_cpu / load.duration, max(others, 0.0) / done.wall_s


def run_vouch(load: Load, *, number: int, target_pid: int, folder: Path) -> Run:
    """``vouch loadtest run`` with the shared locustfile, as a process of its own."""
    argv = [
        sys.executable, "-m", "vouch.daemon", "loadtest", "run", load.url,
        "--locustfile", str(load.locustfile),
        "--users", str(load.users), "--spawn-rate", str(load.users),
        "--duration", f"{load.duration}s", "--json",
    ]  # fmt: skip
    done, target_cores, others = _measured("vouch", load, argv=argv, cwd=folder, target_pid=target_pid)
    result = json.loads((folder / "stdout.txt").read_text(encoding="utf-8"))["result"]
    command = result["data"]["command"]
    if command[command.index("-f") + 1] != str(load.locustfile.resolve()):
        raise SystemExit(f"vouch ran another locustfile: {command}")
    _check("vouch", requests=int(result["requests"]), failures=int(result["failures"]))
    return Run(
        "vouch", number, float(result["rps"]), int(result["requests"]), done.children_cpu_s, done.own_cpu_s,
        done.wall_s, target_cores, others,
    )  # fmt: skip


def run_peer(load: Load, *, number: int, target_pid: int, folder: Path) -> Run:
    """Bare ``locust`` with the shared locustfile, as it is run by hand (plus the results file read here)."""
    argv = [
        sys.executable, "-m", "locust", "-f", str(load.locustfile), "--headless", "--host", load.url,
        "-u", str(load.users), "-r", str(load.users), "-t", f"{load.duration}s",
        "--json-file", str(folder / "result"),
    ]  # fmt: skip
    done, target_cores, others = _measured(PEER, load, argv=argv, cwd=folder, target_pid=target_pid)
    entries = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    result = parse_stats(entries, target=load.url, users=load.users, ramp=load.ramp)
    _check(PEER, requests=result.requests, failures=result.failures)
    return Run(
        PEER, number, result.rps, result.requests, done.own_cpu_s + done.children_cpu_s, 0.0, done.wall_s,
        target_cores, others,
    )  # fmt: skip


def _check(side: str, *, requests: int, failures: int) -> None:
    """A run that sent nothing or saw a failed request measured something else than sending."""
    if requests == 0 or failures:
        raise SystemExit(f"{side}: {requests} requests, {failures} failed: the target did not answer every one")


# --------------------------------------------------------------------------- the rounds and the result


def clean_environment() -> dict[str, str]:
    """Ours without anything that paces, spreads or configures Locust: both sides get exactly this."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VOUCH_RATE", "VOUCH_HOSTS", "LOCUST_"))}


@dataclass(frozen=True)
class Quiet:
    """How long to wait before each run for the rest of the machine to use under ``below`` cores."""

    below: float
    longest: float


def measure(load: Load, *, runs: int, warmup: int, quiet: Quiet, target_pid: int, folder: Path) -> list[Run]:
    """The warm-up, then ``runs`` rounds of one run per side, alternating which side goes first."""
    if warmup:
        (folder / "warmup").mkdir()
        short = Load(load.url, load.locustfile, load.users, warmup, load.env)
        run_peer(short, number=0, target_pid=target_pid, folder=folder / "warmup")
    done: list[Run] = []
    for number in range(1, runs + 1):
        sides = (run_vouch, run_peer) if number % 2 else (run_peer, run_vouch)
        for side in sides:
            where = folder / f"{number}-{side.__name__}"
            where.mkdir()
            if quiet.longest > 0:
                settle(below=quiet.below, longest=quiet.longest)
            run = side(load, number=number, target_pid=target_pid, folder=where)
            done.append(run)
            show(run)
    return done


def show(run: Run) -> None:
    own = f" + vouch {run.vouch_own_cpu_s:.1f} s" if run.side == "vouch" else ""
    print(
        f"round {run.round} {run.side:>6}: {run.rps:,.0f} requests/s ({run.requests:,} requests), "
        f"CPU Locust {run.locust_cpu_s:.1f} s{own}, {run.wall_s:.1f} s wall; "
        f"target {run.target_cores:.2f} cores, others {run.others_cores:.2f} cores",
        file=sys.stderr,
        flush=True,
    )
    if run.target_cores > BUSY_TARGET_CORES:
        print(f"  the target used {run.target_cores:.2f} cores: it may be limiting the rate", file=sys.stderr)


def _median(runs: list[Run], name: str) -> float:
    return float(statistics.median(getattr(r, name) for r in runs))


def summary(runs: list[Run]) -> dict[str, Any]:
    """Medians per side, their ratios, and every run's figures."""
    ours = [r for r in runs if r.side == "vouch"]
    peers = [r for r in runs if r.side == PEER]
    vouch_rps, peer_rps = _median(ours, "rps"), _median(peers, "rps")
    ratio = vouch_rps / peer_rps
    vouch_efficiency, peer_efficiency = (
        _median(ours, "requests_per_locust_cpu_s"),
        _median(peers, "requests_per_locust_cpu_s"),
    )
    return {
        "vouch_rps": round(vouch_rps, 1),
        "peer": PEER,
        "peer_rps": round(peer_rps, 1),
        "ratio": round(ratio, 4),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
        "round_ratios": [round(v.rps / p.rps, 4) for v, p in zip(ours, peers, strict=True)],
        "vouch_requests_per_locust_cpu_s": round(vouch_efficiency),
        "peer_requests_per_locust_cpu_s": round(peer_efficiency),
        "efficiency_ratio": round(vouch_efficiency / peer_efficiency, 4),
        "vouch_locust_cpu_s": round(_median(ours, "locust_cpu_s"), 2),
        "vouch_own_cpu_s": round(_median(ours, "vouch_own_cpu_s"), 2),
        "peer_cpu_s": round(_median(peers, "locust_cpu_s"), 2),
        "vouch_wall_s": round(_median(ours, "wall_s"), 2),
        "peer_wall_s": round(_median(peers, "wall_s"), 2),
        "target_cores_max": round(max(r.target_cores for r in runs), 3),
        "others_cores_median": round(_median(runs, "others_cores"), 3),
        "others_cores_max": round(max(r.others_cores for r in runs), 3),
        "runs": [{k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(r).items()} for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6, help="runs per side; each figure is their median")
    parser.add_argument("--duration", type=int, default=12, help="seconds per run, spawning included (at least 3)")
    parser.add_argument("--users", type=int, default=10, help="Locust users, all started in the first second")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of an uncounted bare Locust run first (0: none)")
    parser.add_argument("--settle", type=float, default=30, help="seconds to wait for a quiet machine at most (0: no)")
    parser.add_argument("--quiet-below", type=float, default=0.3, help="cores the rest of the machine may use")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve())
        return 0
    if args.runs < 1 or args.duration < 3 or args.users < 1 or args.warmup < 0 or args.settle < 0:
        parser.error("--runs and --users must be at least 1, --duration at least 3, --warmup and --settle at least 0")
    quiet = Quiet(args.quiet_below, args.settle)
    with tempfile.TemporaryDirectory(prefix="vouch-bench-loadtest-") as tmp, target() as (url, pid):
        folder = Path(tmp)
        locustfile = write_locustfile([parse_request("/")], folder / "locustfile")
        load = Load(url, locustfile, args.users, args.duration, clean_environment())
        print(
            f"target {url}; {args.runs} runs per side of {args.duration}s, {args.users} users, "
            f"the generated locustfile sending GET / without pause",
            file=sys.stderr,
            flush=True,
        )
        runs = measure(load, runs=args.runs, warmup=args.warmup, quiet=quiet, target_pid=pid, folder=folder)
    result = {
        "benchmark": "loadtest_overhead",
        "users": args.users,
        "duration_s": args.duration,
        "runs_per_side": args.runs,
        "locustfile": "generated: one FastHttpUser, GET /, no wait",
        **summary(runs),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
