"""Steady background requests into a router, for tests that need the canary to see traffic."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


@contextmanager
def steady_traffic(urls: list[str], *, rate: float = 40.0) -> Iterator[Counter[str]]:
    """Send about ``rate`` requests a second to each of ``urls`` until the block ends."""
    counts: Counter[str] = Counter()
    stop = threading.Event()

    def run() -> None:
        interval = 1.0 / (rate * len(urls))
        next_at = time.monotonic()
        i = 0
        with httpx.Client(timeout=5.0) as http:
            while not stop.is_set():
                try:
                    counts[str(http.get(urls[i % len(urls)] + "/work").status_code)] += 1
                except httpx.HTTPError:
                    counts["error"] += 1
                i += 1
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=run, name="steady-traffic", daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(timeout=10)
