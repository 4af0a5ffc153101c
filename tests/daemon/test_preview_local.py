"""Local previews: the demo service and two mocks as detached processes, checked, listed, removed, reaped."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.daemon import demo_service_pids
from support.demo import demo_command, is_alive

from vouch.core.errors import ConflictError, InputError, NotFoundError, PlatformError
from vouch.daemon.preview.local import LocalPreviews, records
from vouch.daemon.preview.mock import MockClient
from vouch.daemon.preview.state import PreviewReaper, PreviewState, check_name, default_name
from vouch.rollout.config import ServiceSpec

NOW = 1_800_000_000.0

MOCKS = [
    {"name": "payments", "routes": [{"method": "POST", "path": "/charge", "json": {"charged": True}}]},
    {"name": "inventory", "routes": [{"method": "POST", "path": "/reserve/{sku}", "json": {"reserved": True}}]},
]


def shop(tmp_path: Path, *, command: list[str] | None = None, **overrides: Any) -> ServiceSpec:
    """The demo service as in the daemon's tests, its two backends mocked in previews."""
    faults = tmp_path / "faults.json"
    if not faults.exists():
        faults.write_text("{}")
    document: dict[str, Any] = {
        "command": command or demo_command("--faults-file", str(faults)),
        "env": {"PAYMENTS_URL": "http://127.0.0.1:9/not-the-mock"},  # the preview's env wins
        "readiness": {"path": "/healthz", "timeout": "20s", "interval": "50ms"},
        "environments": [{"name": "staging"}],
        "preview": {
            "env": {"PAYMENTS_URL": "{mock:payments}", "INVENTORY_URL": "{mock:inventory}/"},
            "mocks": MOCKS,
            "ttl": "1h",
        },
    }
    document.update(overrides)
    return ServiceSpec.model_validate(document)


def ours(tmp_path: Path) -> list[int]:
    """Every live process whose command line names this test's folder (the demo replica and the mocks)."""
    marker = str(tmp_path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
async def previews(tmp_path: Path) -> AsyncIterator[LocalPreviews]:
    previews = LocalPreviews(tmp_path / "state", stop_grace=2.0, clock=lambda: NOW)
    try:
        yield previews
    finally:
        for name in previews.state.names():
            await previews.down(name)
        assert ours(tmp_path) == []


async def checkout(url: str, order: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.post(f"{url}/checkout", json={"order": order, "amount": 5, "sku": "tea"}, timeout=10)


async def test_up_serves_checkout_through_the_mocks_and_down_leaves_no_process(
    previews: LocalPreviews, tmp_path: Path
) -> None:
    preview = await previews.up("shop", shop(tmp_path), "2.0.0", name="shop-pr-7", owner={"pr": "7"})

    answer = await checkout(preview.url, "o-1")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"order": "o-1", "charged": True}
    payments = MockClient(preview.mocks["payments"])
    assert [c["json"] for c in payments.calls(method="POST", path="/charge")] == [{"amount": 5, "order": "o-1"}]
    assert [c["path"] for c in MockClient(preview.mocks["inventory"]).calls()] == ["/reserve/tea"]

    assert (preview.service, preview.version, preview.platform) == ("shop", "2.0.0", "local")
    assert (preview.created_at, preview.expires_at) == (NOW, NOW + 3600)
    assert dict(preview.owner) == {"pr": "7"}
    processes = records(preview)
    assert [(r.role, r.name) for r in processes] == [("mock", "payments"), ("mock", "inventory"), ("service", "shop")]
    assert all(os.getsid(r.pid) == r.pid for r in processes), "each process leads a session of its own"
    assert len(demo_service_pids(tmp_path)) == 1
    saved = json.loads((tmp_path / "state/previews/shop-pr-7/preview.json").read_text())
    assert saved["data"]["status"] == "up"
    assert saved["address"] == preview.address

    removed = await previews.down("shop-pr-7")

    assert removed is not None
    assert removed.name == "shop-pr-7"
    assert [r.pid for r in processes if is_alive(r.pid)] == []
    assert demo_service_pids(tmp_path) == []
    assert not (tmp_path / "state/previews/shop-pr-7").exists()
    with pytest.raises(NotFoundError, match="shop-pr-7"):
        await previews.down("shop-pr-7")


async def test_list_shows_age_and_expiry_and_a_taken_name_is_a_conflict(
    previews: LocalPreviews, tmp_path: Path
) -> None:
    service = shop(tmp_path, preview={"mocks": MOCKS[:1], "env": {"PAYMENTS_URL": "{mock:payments}"}})
    preview = await previews.up("shop", service, "2.0.0", name="shop-pr-8", ttl=600.0)

    with pytest.raises(ConflictError, match="shop-pr-8"):
        await previews.up("shop", service, "2.0.1", name="shop-pr-8")

    [listed] = await previews.list(NOW + 90)
    assert listed.preview == preview, "the conflicting up left the preview as it was"
    assert (listed.age, listed.expires_in, listed.running) == (90, 510, True)
    [service_process] = [r for r in records(preview) if r.role == "service"]
    os.kill(service_process.pid, 9)
    await wait_until(lambda: not is_alive(service_process.pid) or None)
    [listed] = await previews.list(NOW + 90)
    assert listed.running is False


async def test_reap_removes_the_expired_preview_only(tmp_path: Path) -> None:
    clock = [NOW]
    previews = LocalPreviews(tmp_path / "state", stop_grace=2.0, clock=lambda: clock[0])
    service = shop(tmp_path, preview={})
    try:
        old = await previews.up("shop", service, "1.0.0", name="shop-pr-1", ttl=60.0)
        clock[0] = NOW + 30
        young = await previews.up("shop", service, "1.0.1", name="shop-pr-2", ttl=60.0)

        assert await previews.reap(NOW + 59) == []
        assert await previews.reap(NOW + 60) == ["shop-pr-1"]

        assert not any(is_alive(r.pid) for r in records(old))
        assert all(is_alive(r.pid) for r in records(young))
        assert previews.state.names() == ["shop-pr-2"]
    finally:
        await previews.reap(float("inf"))
    assert ours(tmp_path) == []


async def test_a_service_that_exits_at_start_fails_with_its_log_and_leaves_nothing(
    previews: LocalPreviews, tmp_path: Path
) -> None:
    command = demo_command("--faults-file", str(tmp_path / "faults.json"), "--no-such-flag")

    with pytest.raises(PlatformError, match="exited with code 2") as caught:
        await previews.up("shop", shop(tmp_path, command=command), "2.0.0", name="shop-pr-9")

    assert "unrecognized arguments: --no-such-flag" in str(caught.value), "the log's tail comes with the error"
    assert ours(tmp_path) == [], "the mocks were stopped too"
    assert previews.state.names() == []


async def test_a_command_that_cannot_run_fails_and_stops_the_mocks(previews: LocalPreviews, tmp_path: Path) -> None:
    service = shop(tmp_path, command=[str(tmp_path / "no-such-program"), "{port}"])

    with pytest.raises(PlatformError, match=r"cannot start a process.*no-such-program"):
        await previews.up("shop", service, "2.0.0", name="shop-pr-11")

    assert ours(tmp_path) == []
    assert previews.state.names() == []


async def test_a_service_not_ready_in_time_is_stopped(previews: LocalPreviews, tmp_path: Path) -> None:
    (tmp_path / "faults.json").write_text(json.dumps({"2.0.0": {"startup_ms": 60000}}))
    service = shop(tmp_path, readiness={"path": "/healthz", "timeout": "300ms", "interval": "50ms"})

    with pytest.raises(PlatformError, match=r"not ready on /healthz within 0\.3s"):
        await previews.up("shop", service, "2.0.0", name="shop-pr-10")

    assert ours(tmp_path) == []
    assert previews.state.names() == []


async def test_down_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import http.server, signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    previews = LocalPreviews(tmp_path / "state", stop_grace=0.2)
    service = shop(tmp_path, command=["{python}", str(script), "{port}"], preview={})
    preview = await previews.up("stubborn", service, "1.0.0", name="stubborn-pr-1")
    [process] = records(preview)
    try:
        await previews.down("stubborn-pr-1")
        assert not is_alive(process.pid)
    finally:
        if is_alive(process.pid):
            os.kill(process.pid, 9)


async def test_a_half_made_preview_is_taken_and_down_removes_it(previews: LocalPreviews, tmp_path: Path) -> None:
    previews.state.reserve("shop-pr-3")  # a command killed before it wrote anything

    with pytest.raises(ConflictError, match="vouch preview down shop-pr-3"):
        await previews.up("shop", shop(tmp_path), "2.0.0", name="shop-pr-3")
    assert await previews.list(NOW) == []

    assert await previews.down("shop-pr-3") is None
    assert previews.state.names() == []


async def test_what_cannot_be_previewed_is_refused_before_anything_starts(
    previews: LocalPreviews, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="no `preview` settings"):
        await previews.up("shop", shop(tmp_path, preview=None), "1.0.0", name="shop-pr-1")
    image_only = shop(tmp_path).model_copy(update={"command": None, "image": "shop:{version}"})
    with pytest.raises(InputError, match="no `command`"):
        await previews.up("shop", image_only, "1.0.0", name="shop-pr-1")
    with pytest.raises(InputError, match="cannot name a preview"):
        await previews.up("shop", shop(tmp_path), "1.0.0", name="../escape")
    with pytest.raises(InputError, match="ttl"):
        await previews.up("shop", shop(tmp_path), "1.0.0", name="shop-pr-1", ttl=0)
    assert previews.state.names() == []


def test_names() -> None:
    assert default_name("checkout", 42) == "checkout-pr-42"
    assert len(default_name("x" * 70, 12345)) == 63
    assert default_name("a-" * 40, 1).endswith("a-pr-1")
    with pytest.raises(InputError):
        check_name("Shop")


def test_state_skips_a_preview_it_cannot_read(tmp_path: Path) -> None:
    state = PreviewState(tmp_path)
    state.reserve("broken")
    (state.folder("broken") / "preview.json").write_text("{not json")
    assert state.all() == []
    with pytest.raises(PlatformError, match="cannot read"):
        state.load("broken")


# --------------------------------------------------------------------------- the daemon's reaper


class FakeReaper:
    def __init__(self, names: list[str] | None = None, *, fails: bool = False) -> None:
        self.names = names or []
        self.fails = fails
        self.asked: list[float] = []

    async def reap(self, now: float) -> list[str]:
        self.asked.append(now)
        if self.fails:
            raise PlatformError("the cluster is away")
        return self.names


async def test_the_reaper_asks_every_reaper_even_after_one_failed() -> None:
    broken, local = FakeReaper(fails=True), FakeReaper(["shop-pr-1", "shop-pr-2"])
    told: list[str] = []
    reaper = PreviewReaper([broken, local], clock=lambda: NOW, on_reaped=told.append)

    assert await reaper.once() == ["shop-pr-1", "shop-pr-2"]
    assert broken.asked == local.asked == [NOW]
    assert told == ["shop-pr-1", "shop-pr-2"]


async def test_the_reaper_runs_each_interval_until_cancelled() -> None:
    local = FakeReaper()
    reaper = PreviewReaper([local], interval=0.01, clock=lambda: NOW)
    task = asyncio.create_task(reaper.run(), name="preview-reaper")
    await wait_until(lambda: len(local.asked) >= 3 or None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_reaper_removes_expired_local_previews(tmp_path: Path) -> None:
    previews = LocalPreviews(tmp_path / "state", stop_grace=2.0, clock=lambda: NOW)
    preview = await previews.up("shop", shop(tmp_path, preview={}), "1.0.0", name="shop-pr-4", ttl=1.0)
    try:
        reaper = PreviewReaper([previews], clock=lambda: NOW + 1)
        assert await reaper.once() == ["shop-pr-4"]
        assert not any(is_alive(r.pid) for r in records(preview))
    finally:
        await previews.reap(float("inf"))
    assert ours(tmp_path) == []


async def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {predicate}")
