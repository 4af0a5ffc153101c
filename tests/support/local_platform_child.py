"""Runs a LocalPlatform with demo replicas until it is killed: the daemon in crash tests.

Usage: ``python local_platform_child.py STATE_DIR``. Once every replica is
ready it prints one JSON line, ``{"stable": [pids], "canary": [pids]}``, then
waits forever, so the test can SIGKILL it and check that no replica survives.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.demo import demo_service

from vouch.rollout.config import LocalPlatformSpec
from vouch.rollout.model import Target
from vouch.rollout.platforms.local import LocalPlatform
from vouch.rollout.platforms.traffic import TrafficRecorder

TARGET = Target("shop", "staging")


async def main(state_dir: Path) -> None:
    platform = LocalPlatform(
        LocalPlatformSpec(), {"shop": demo_service(replicas=2)}, state_dir=state_dir, traffic=TrafficRecorder()
    )
    await platform.start()
    await platform.promote(TARGET, "1.0.0")
    await platform.scale(TARGET, stable_replicas=2, canary_version="2.0.0", canary_replicas=1)
    while True:
        observed = await platform.observe(TARGET)
        if (observed.stable_ready, observed.canary_ready) == (2, 1):
            break
        await asyncio.sleep(0.01)
    print(json.dumps(platform.replica_pids(TARGET)), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
