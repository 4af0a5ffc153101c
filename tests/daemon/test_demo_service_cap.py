"""The demo service's concurrency cap: requests over it wait their turn; the health check never does."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.demo import demo_processes

from vouch.daemon.demo.service import Slots


def get(url: str, timeout: float = 30) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return int(response.status)


@pytest.fixture
def start_demo() -> Iterator[Callable[..., str]]:
    with demo_processes() as start:
        yield start


def elapsed_for(url: str, count: int) -> float:
    """Seconds ``count`` concurrent requests take to be answered."""
    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        assert list(pool.map(lambda i: get(f"{url}/work/{i}"), range(count))) == [200] * count
    return time.monotonic() - started


def test_requests_over_the_cap_wait_for_a_slot(start_demo) -> None:
    """Six requests of 200 ms through one slot: each waits for the one before, so at least 1.2 s in all."""
    url = start_demo("--latency-ms", "200", "--max-in-flight", "1")
    assert elapsed_for(url, 6) >= 1.2


def test_the_cap_comes_from_the_faults_file_per_version(start_demo, tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"1.0.0": {"latency_ms": 200, "max_in_flight": 2}, "2.0.0": {"max_in_flight": 1}}))
    url = start_demo("--faults-file", str(faults))
    assert elapsed_for(url, 6) >= 0.6  # three rounds of two


def test_the_health_check_is_answered_while_every_slot_is_busy(start_demo) -> None:
    url = start_demo("--latency-ms", "3000", "--max-in-flight", "1")
    finished: list[str] = []
    slow = threading.Thread(target=lambda: (get(f"{url}/slow"), finished.append("slow")))
    slow.start()
    try:
        time.sleep(0.2)  # nothing to wait on from outside: give the slow request time to take the one slot
        assert get(f"{url}/healthz") == 200
        finished.append("healthz")
    finally:
        slow.join()
    assert finished == ["healthz", "slow"]


def test_slots_let_waiters_in_in_arrival_order_and_no_cap_never_waits() -> None:
    slots = Slots()
    order: list[int] = []
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with slots.held(1):
            holding.set()
            release.wait()

    def wait_in_line(number: int) -> None:
        with slots.held(1):
            order.append(number)

    first = threading.Thread(target=hold)
    first.start()
    holding.wait()
    waiters = []
    for number in range(5):
        waiter = threading.Thread(target=wait_in_line, args=(number,))
        waiter.start()
        waiters.append(waiter)
        deadline = time.monotonic() + 5
        while len(slots._waiting) < number + 1:  # queued before the next one starts
            assert time.monotonic() < deadline
            time.sleep(0.001)
    release.set()
    for thread in [first, *waiters]:
        thread.join(timeout=5)
    assert order == [0, 1, 2, 3, 4]
    with slots.held(0), slots.held(0):  # no cap: never waits, even nested
        pass
