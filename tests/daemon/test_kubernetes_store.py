"""The Kubernetes state store against kmock's emulator (plus resourceVersions, see support/kubeapi.py).

The behaviour tests of the SQLite store that speak only through the Store
protocol run here again, unchanged, against this store; the tests after them
cover what only this store has: two daemons on one cluster, optimistic
concurrency, the 1 MiB budget, lost answers and tombstones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration
from support.kubeapi import VersionedKubernetes, serve_kubernetes

from vouch.core.errors import ConflictError, NotFoundError, StoreError
from vouch.daemon.store.kubernetes import KubernetesStore, KubernetesStoreSpec
from vouch.rollout.state import ChatThread, Event, Phase, StepRecord, Store

NAMESPACE = "vouch"


def _load_sqlite_tests() -> ModuleType:
    """tests/daemon/test_store.py as a module (test folders are not packages)."""
    path = Path(__file__).with_name("test_store.py")
    spec = importlib.util.spec_from_file_location("_store_behaviour_tests", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_shared = _load_sqlite_tests()
make_promotion = _shared.make_promotion
make_release = _shared.make_release
make_override = _shared.make_override
FIRST_USE = _shared.FIRST_USE
race_for_overrides = _shared.race_for_overrides

# The behaviour every Store must have, as the SQLite store's tests state it; `store` below is this store.
test_promotion_with_every_field_round_trips_through_the_store = (
    _shared.test_promotion_with_every_field_round_trips_through_the_store
)
test_release_create_get_save_and_list = _shared.test_release_create_get_save_and_list
test_release_errors_name_the_release = _shared.test_release_errors_name_the_release
test_promotion_save_and_list_filters = _shared.test_promotion_save_and_list_filters
test_promotion_errors_name_the_promotion = _shared.test_promotion_errors_name_the_promotion
test_second_active_promotion_is_refused_naming_the_first = (
    _shared.test_second_active_promotion_is_refused_naming_the_first
)
test_terminal_promotion_frees_the_slot = _shared.test_terminal_promotion_frees_the_slot
test_concurrent_creates_from_two_tasks_one_wins = _shared.test_concurrent_creates_from_two_tasks_one_wins
test_steps_upsert_by_promotion_and_index = _shared.test_steps_upsert_by_promotion_and_index
test_verdicts_round_trip_and_a_repeated_run_replaces = _shared.test_verdicts_round_trip_and_a_repeated_run_replaces
test_events_are_numbered_and_listed_in_order = _shared.test_events_are_numbered_and_listed_in_order
test_event_data_that_is_not_json_is_a_store_error = _shared.test_event_data_that_is_not_json_is_a_store_error
test_writes_keep_the_order_they_were_started_in = _shared.test_writes_keep_the_order_they_were_started_in
test_alerts_round_trip_newest_first = _shared.test_alerts_round_trip_newest_first
test_override_round_trips_and_adding_it_again_keeps_its_use = (
    _shared.test_override_round_trips_and_adding_it_again_keeps_its_use
)
test_override_list_filters = _shared.test_override_list_filters
test_override_is_consumed_once_and_the_second_is_told_by_whom = (
    _shared.test_override_is_consumed_once_and_the_second_is_told_by_whom
)
test_unknown_override_is_not_found = _shared.test_unknown_override_is_not_found
test_override_use_that_is_not_json_is_refused_and_leaves_it_unused = (
    _shared.test_override_use_that_is_not_json_is_refused_and_leaves_it_unused
)
test_chat_thread_save_replace_and_get = _shared.test_chat_thread_save_replace_and_get


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[VersionedKubernetes, str]]:
    async with serve_kubernetes() as served:
        yield served


def spec(**overrides: Any) -> KubernetesStoreSpec:
    return KubernetesStoreSpec(**{"namespace": NAMESPACE, "request_timeout": 2.0, "backoff": 0.01, **overrides})


@pytest.fixture
async def daemons(cluster: tuple[VersionedKubernetes, str]) -> AsyncIterator[list[KubernetesStore]]:
    """Two stores, each with its own client: two daemons sharing one cluster."""
    _, url = cluster
    apis = [ApiClient(Configuration(host=url)) for _ in range(2)]
    try:
        yield [KubernetesStore(api, spec()) for api in apis]
    finally:
        for api in apis:
            await api.close()


@pytest.fixture
async def store(daemons: list[KubernetesStore]) -> KubernetesStore:
    return daemons[0]


def lock(emulator: VersionedKubernetes) -> dict[str, Any]:
    """The lock of checkout/staging."""
    [found] = [
        obj.raw
        for obj in emulator.objects.values()
        if not obj.deleted and obj.raw["metadata"]["labels"].get("vouch.dev/record") == "lock"
    ]
    assert found["metadata"]["labels"]["vouch.dev/service"] == "checkout"
    assert found["metadata"]["name"].startswith("vouch-lock-checkout-staging-")
    return dict(found)


def configmap(emulator: VersionedKubernetes, name: str) -> dict[str, Any]:
    found = emulator.object("configmaps", NAMESPACE, name)
    assert found is not None, f"no configmap {name}"
    return found


# what only this store has


async def test_it_is_a_store_and_names_itself(store: KubernetesStore) -> None:
    assert isinstance(store, Store)
    assert store.where == "kubernetes:vouch/vouch"


async def test_state_survives_the_daemon(cluster: tuple[VersionedKubernetes, str]) -> None:
    """A new pod (a new client, a new store) finds every record where the old one left it."""
    _, url = cluster
    async with ApiClient(Configuration(host=url)) as api:
        first = KubernetesStore(api, spec())
        await first.create_release(make_release("r-1"))
        await first.create_promotion(make_promotion("p-1"))
        await first.save_step(StepRecord("p-1", 0, "1", canary_replicas=1, stable_replicas=4, started_at=1.0))
        event = await first.add_event(Event("created", "one", 1.0, promotion_id="p-1", release_id="r-1"))
        await first.close()
    async with ApiClient(Configuration(host=url)) as api:
        second = KubernetesStore(api, spec())
        assert await second.get_promotion("p-1") == make_promotion("p-1")
        assert await second.get_release("r-1") == make_release("r-1")
        assert [s.index for s in await second.list_steps("p-1")] == [0]
        assert await second.list_events(promotion_id="p-1") == [event]
        assert [p.id for p in await second.list_promotions(active=True)] == ["p-1"]
        # The lock came along: the second daemon still refuses a second active promotion.
        with pytest.raises(ConflictError, match="active promotion p-1"):
            await second.create_promotion(make_promotion("p-2"))


async def test_records_are_labelled_configmaps(
    cluster: tuple[VersionedKubernetes, str], store: KubernetesStore
) -> None:
    emulator, _ = cluster
    await store.create_promotion(make_promotion("p-1"))
    promotion = configmap(emulator, "vouch-promotion-p-1")
    assert promotion["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "vouch",
        "vouch.dev/store": "vouch",
        "vouch.dev/record": "promotion",
        "vouch.dev/service": "checkout",
        "vouch.dev/environment": "staging",
        "vouch.dev/release": "r-1",
        "vouch.dev/active": "true",
    }
    assert json.loads(promotion["data"]["document"])["id"] == "p-1"
    assert lock(emulator)["data"]["promotion"] == "p-1"

    await store.save_promotion(dataclasses.replace(make_promotion("p-1"), phase=Phase.SUCCEEDED))
    assert configmap(emulator, "vouch-promotion-p-1")["metadata"]["labels"]["vouch.dev/active"] == "false"
    assert lock(emulator)["data"]["promotion"] == ""


async def test_ids_that_are_not_dns_names_get_safe_distinct_names(store: KubernetesStore) -> None:
    odd = ["P_1", "p 1", "p-1", "p/1", "Ünïcode" * 20]
    for number, promotion_id in enumerate(odd):
        await store.create_promotion(make_promotion(promotion_id, service=f"s{number}", release_id=promotion_id))
    for promotion_id in odd:
        assert (await store.get_promotion(promotion_id)).id == promotion_id
        assert [p.id for p in await store.list_promotions(release_id=promotion_id)] == [promotion_id]


async def test_two_daemons_racing_for_one_target_one_wins(daemons: list[KubernetesStore]) -> None:
    one, two = daemons
    for round_ in range(10):
        results = await asyncio.gather(
            one.create_promotion(make_promotion(f"p-{round_}-a", service=f"s{round_}")),
            two.create_promotion(make_promotion(f"p-{round_}-b", service=f"s{round_}")),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["ConflictError", "NoneType"], results
    assert len(await one.list_promotions(active=True)) == 10
    assert len(await two.list_promotions(active=True)) == 10


async def test_a_finished_promotion_frees_the_target_for_the_other_daemon(daemons: list[KubernetesStore]) -> None:
    one, two = daemons
    first = make_promotion("p-a")
    await one.create_promotion(first)
    with pytest.raises(ConflictError, match=r"already has an active promotion p-a of 2\.4\.1 \(Progressing\)"):
        await two.create_promotion(make_promotion("p-b"))
    await one.save_promotion(dataclasses.replace(first, phase=Phase.ROLLED_BACK))
    await two.create_promotion(make_promotion("p-b"))
    with pytest.raises(ConflictError, match="active promotion p-b"):
        await one.save_promotion(dataclasses.replace(first, phase=Phase.PROGRESSING))


async def test_a_save_over_another_writers_change_is_refused(daemons: list[KubernetesStore]) -> None:
    """Optimistic concurrency: a daemon saving from a stale read does not overwrite what another wrote."""
    one, two = daemons
    promotion = make_promotion("p-1")
    await one.create_promotion(promotion)
    seen_by_two = await two.get_promotion("p-1")
    await one.save_promotion(dataclasses.replace(promotion, step=1, updated_at=2.0))
    with pytest.raises(StoreError, match="another writer changed it since this daemon read it"):
        await two.save_promotion(dataclasses.replace(seen_by_two, message="stale", updated_at=3.0))
    assert (await one.get_promotion("p-1")).step == 1
    # Having read it again, the second daemon may write.
    reread = await two.get_promotion("p-1")
    await two.save_promotion(dataclasses.replace(reread, message="fresh"))
    assert (await one.get_promotion("p-1")).message == "fresh"


async def test_a_lock_left_by_a_finished_promotion_is_taken_over(
    cluster: tuple[VersionedKubernetes, str], daemons: list[KubernetesStore]
) -> None:
    """A daemon that saved a promotion as finished and died before clearing the lock blocks nobody."""
    emulator, _ = cluster
    one, two = daemons
    await one.create_promotion(make_promotion("p-b"))
    document = configmap(emulator, "vouch-promotion-p-b")["data"]["document"]
    finished = json.loads(document) | {"phase": "RolledBack"}
    emulator.objects[emulator_key(emulator, "vouch-promotion-p-b")]["data"] = {
        "document": json.dumps(finished),
        "seq": "1",
    }
    assert lock(emulator)["data"]["promotion"] == "p-b"
    await two.create_promotion(make_promotion("p-c"))
    assert lock(emulator)["data"]["promotion"] == "p-c"


async def test_a_lock_naming_a_promotion_never_written_is_taken_over_with_a_tombstone(
    cluster: tuple[VersionedKubernetes, str], daemons: list[KubernetesStore]
) -> None:
    """A writer claimed the lock, then stalled before writing its promotion: the other daemon buries
    the promotion's name and takes the lock; the late write is then refused for good."""
    emulator, _ = cluster
    one, two = daemons
    await one.add_event(Event("warm", "the sequence counter exists", 0.0))
    stall = emulator.fail("POST", "configmaps", status=0, delay=1.0, name="vouch-promotion-p-late")
    late = asyncio.create_task(one.create_promotion(make_promotion("p-late")))
    async with asyncio.timeout(10):
        await stall.used.wait()  # the late create has reached the server, which holds it for a while
    assert lock(emulator)["data"]["promotion"] == "p-late"

    await two.create_promotion(make_promotion("p-new"))
    assert lock(emulator)["data"]["promotion"] == "p-new"
    assert configmap(emulator, "vouch-promotion-p-late")["metadata"]["labels"]["vouch.dev/record"] == "tombstone"
    with pytest.raises(ConflictError, match="promotion p-late of checkout/staging lost its claim"):
        await late
    assert lock(emulator)["data"]["promotion"] == "p-new"
    with pytest.raises(NotFoundError, match="promotion p-late not found"):
        await one.get_promotion("p-late")
    with pytest.raises(NotFoundError):
        await one.save_promotion(make_promotion("p-late", phase=Phase.SUCCEEDED))
    assert [p.id for p in await one.list_promotions()] == ["p-new"]


async def test_a_lock_naming_a_vanished_promotion_is_taken_over(
    cluster: tuple[VersionedKubernetes, str], daemons: list[KubernetesStore]
) -> None:
    emulator, _ = cluster
    one, two = daemons
    await one.create_promotion(make_promotion("p-ghost"))
    del emulator.objects[emulator_key(emulator, "vouch-promotion-p-ghost")]
    await two.create_promotion(make_promotion("p-new"))
    assert lock(emulator)["data"]["promotion"] == "p-new"
    with pytest.raises(ConflictError, match="active promotion p-new"):
        await one.create_promotion(make_promotion("p-ghost"))


async def test_two_daemons_racing_for_one_override_one_uses_it(daemons: list[KubernetesStore]) -> None:
    one, two = daemons
    await race_for_overrides(one, two, rounds=10)


async def test_a_consume_refused_by_resource_version_reads_again_and_names_the_winner(
    cluster: tuple[VersionedKubernetes, str],
) -> None:
    """Both daemons read the override unused; the one whose write lands second is refused by the
    API server (stale resourceVersion), reads it again and reports the other's use."""
    emulator, url = cluster
    async with ApiClient(Configuration(host=url)) as api_one, ApiClient(Configuration(host=url)) as api_two:
        one, two = KubernetesStore(api_one, spec(request_timeout=30.0)), KubernetesStore(api_two, spec())
        await one.add_override(make_override())
        held = emulator.fail("PATCH", "configmaps", status=0, delay=1.0, name="vouch-override-bg-1")
        slow = asyncio.create_task(one.consume_override("bg-1", promotion_id="p-slow", at=1.0, overridden={}))
        async with asyncio.timeout(10):
            await held.used.wait()  # one's write, from an unused read, is at the server, held a while
        used = await two.consume_override("bg-1", promotion_id="p-fast", at=2.0, overridden=FIRST_USE)
        assert used.promotion_id == "p-fast"
        with pytest.raises(ConflictError, match="already used by promotion p-fast"):
            await slow
        stored = json.loads(configmap(emulator, "vouch-override-bg-1")["data"]["document"])
        assert (stored["promotion_id"], stored["overridden"]) == ("p-fast", FIRST_USE)
        assert configmap(emulator, "vouch-override-bg-1")["metadata"]["labels"]["vouch.dev/used"] == "true"


async def test_a_consume_whose_answer_was_lost_is_not_reported_as_a_conflict(
    cluster: tuple[VersionedKubernetes, str], daemons: list[KubernetesStore]
) -> None:
    emulator, _ = cluster
    one, two = daemons
    await one.add_override(make_override())
    emulator.fail("PATCH", "configmaps", status=500, after=True, name="vouch-override-bg-1")
    used = await one.consume_override("bg-1", promotion_id="p-1", at=1.0, overridden=FIRST_USE)
    assert used.promotion_id == "p-1"
    with pytest.raises(ConflictError, match="already used by promotion p-1"):
        await two.consume_override("bg-1", promotion_id="p-2", at=2.0, overridden={})


async def test_a_new_daemon_granting_a_used_override_again_keeps_its_use(daemons: list[KubernetesStore]) -> None:
    one, two = daemons
    await one.add_override(make_override())
    await one.consume_override("bg-1", promotion_id="p-1", at=5.0, overridden=FIRST_USE)
    again = await two.add_override(make_override())
    assert (again.used_at, again.promotion_id, again.overridden) == (5.0, "p-1", FIRST_USE)
    assert [o.id for o in await two.list_overrides(used=False)] == []


async def test_overrides_and_chat_threads_are_labelled_configmaps(
    cluster: tuple[VersionedKubernetes, str], store: KubernetesStore
) -> None:
    emulator, _ = cluster
    await store.add_override(make_override())
    assert configmap(emulator, "vouch-override-bg-1")["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "vouch",
        "vouch.dev/store": "vouch",
        "vouch.dev/record": "override",
        "vouch.dev/service": "checkout",
        "vouch.dev/environment": "staging",
        "vouch.dev/gate": "slo",
        "vouch.dev/used": "false",
    }
    await store.save_chat_thread(ChatThread("pr:acme/checkout#42", "slack", "C1", "1.2", 1.0))
    [thread] = [
        obj.raw
        for obj in emulator.objects.values()
        if not obj.deleted and obj.raw["metadata"]["labels"].get("vouch.dev/record") == "chat-thread"
    ]
    assert thread["metadata"]["name"].startswith("vouch-chat-pr-acme-checkout-42-slack-")
    assert thread["metadata"]["labels"]["vouch.dev/notifier"] == "slack"


async def test_events_are_capped_per_promotion(cluster: tuple[VersionedKubernetes, str]) -> None:
    _, url = cluster
    async with ApiClient(Configuration(host=url)) as api:
        store = KubernetesStore(api, spec(max_events=10))
        for number in range(25):
            await store.add_event(Event("n", str(number), float(number), promotion_id="p-1"))
        await store.add_event(Event("other", "x", 30.0, promotion_id="p-2"))
        kept = await store.list_events(promotion_id="p-1")
        assert [e.message for e in kept] == [str(n) for n in range(15, 25)]
        assert [e.message for e in await store.list_events(promotion_id="p-2")] == ["x"]
        # A new daemon learns what the bucket holds and keeps within the cap as well.
        again = KubernetesStore(api, spec(max_events=10))
        await again.add_event(Event("n", "25", 25.0, promotion_id="p-1"))
        assert [e.message for e in await again.list_events(promotion_id="p-1")] == [str(n) for n in range(16, 26)]


async def test_bytes_are_capped_below_the_configmap_limit(cluster: tuple[VersionedKubernetes, str]) -> None:
    emulator, url = cluster
    async with ApiClient(Configuration(host=url)) as api:
        store = KubernetesStore(api, spec(max_bytes=10_000))
        for number in range(40):
            await store.add_event(Event("big", "x" * 1000, float(number), release_id="r-1"))
        kept = await store.list_events(release_id="r-1")
        assert 5 <= len(kept) < 10
        assert kept[-1].at == 39.0
        sizes = [
            sum(len(k) + len(v) for k, v in (obj.raw.get("data") or {}).items())
            for obj in emulator.objects.values()
            if not obj.deleted
        ]
        assert max(sizes) <= 10_000
        with pytest.raises(StoreError, match="would exceed the 10000-byte budget"):
            await store.add_event(Event("huge", "x" * 20_000, 99.0, release_id="r-1"))


async def test_transient_api_errors_are_retried(
    cluster: tuple[VersionedKubernetes, str], store: KubernetesStore
) -> None:
    emulator, _ = cluster
    emulator.fail("POST", "configmaps", status=503, count=2)
    emulator.fail("PATCH", "configmaps", status=429)
    emulator.fail("GET", "configmaps", status=500)
    await store.create_promotion(make_promotion("p-1"))
    await store.save_promotion(dataclasses.replace(make_promotion("p-1"), step=1))
    assert (await store.get_promotion("p-1")).step == 1
    assert all(fault.count == 0 for fault in emulator.faults)


async def test_a_write_whose_answer_was_lost_is_not_reported_as_a_conflict(
    cluster: tuple[VersionedKubernetes, str], store: KubernetesStore
) -> None:
    """The create landed but its answer did not: the retry's 409 is our own write, not another's."""
    emulator, _ = cluster
    emulator.fail("POST", "configmaps", status=500, after=True)
    await store.create_release(make_release("r-1"))
    emulator.fail("PATCH", "configmaps", status=503, after=True)
    await store.save_release(dataclasses.replace(make_release("r-1"), index=1))
    assert (await store.get_release("r-1")).index == 1
    await store.create_promotion(make_promotion("p-1"))
    emulator.fail("PATCH", "configmaps", status=500, after=True)  # the sequence counter's patch
    first = await store.add_event(Event("a", "one", 1.0))
    second = await store.add_event(Event("b", "two", 2.0))
    assert (first.id or 0) < (second.id or 0)


async def test_persistent_api_errors_become_store_errors(
    cluster: tuple[VersionedKubernetes, str], store: KubernetesStore
) -> None:
    emulator, _ = cluster
    emulator.fail("GET", "configmaps", status=503, count=100)
    with pytest.raises(StoreError, match=r"kubernetes:vouch/vouch: cannot read configmap vouch-promotion-p-1.*503"):
        await store.get_promotion("p-1")
    emulator.faults.clear()
    emulator.fail("POST", "configmaps", status=403)
    with pytest.raises(StoreError, match="HTTP 403"):
        await store.create_release(make_release("r-1"))


async def test_a_request_without_an_answer_times_out_and_is_retried(cluster: tuple[VersionedKubernetes, str]) -> None:
    emulator, url = cluster
    async with ApiClient(Configuration(host=url)) as api:
        store = KubernetesStore(api, spec(request_timeout=0.3))
        await store.create_promotion(make_promotion("p-1"))
        emulator.fail("GET", "configmaps", status=0, delay=2.0)
        assert (await store.get_promotion("p-1")).id == "p-1"


async def test_damaged_document_is_a_store_error(
    cluster: tuple[VersionedKubernetes, str], store: KubernetesStore
) -> None:
    emulator, _ = cluster
    await store.create_promotion(make_promotion("p-1"))
    emulator.objects[emulator_key(emulator, "vouch-promotion-p-1")]["data"] = {"document": '{"id": "p-1"}'}
    with pytest.raises(StoreError, match=r"promotion p-1 in state store kubernetes:vouch/vouch is unreadable"):
        await store.get_promotion("p-1")


async def test_closed_store_refuses_calls_and_close_is_idempotent(store: KubernetesStore) -> None:
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="is closed; cannot read promotion p-1"):
        await store.get_promotion("p-1")
    with pytest.raises(StoreError, match="is closed; cannot add event"):
        await store.add_event(Event("n", "m", 1.0))


async def test_two_stores_with_different_prefixes_share_a_namespace(cluster: tuple[VersionedKubernetes, str]) -> None:
    _, url = cluster
    async with ApiClient(Configuration(host=url)) as api:
        blue, green = KubernetesStore(api, spec(prefix="blue")), KubernetesStore(api, spec(prefix="green"))
        await blue.create_promotion(make_promotion("p-1"))
        await green.create_promotion(make_promotion("p-1"))
        await blue.add_event(Event("n", "blue", 1.0))
        assert [p.id for p in await green.list_promotions()] == ["p-1"]
        assert await green.list_events() == []


async def test_open_without_a_kubernetes_configuration_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(StoreError, match="cannot open the Kubernetes state store"):
        await KubernetesStore.open(spec(kubeconfig=str(tmp_path / "missing")))


def test_namespace_defaults_to_the_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "from-env")
    assert KubernetesStoreSpec().resolved_namespace() == "from-env"
    assert KubernetesStoreSpec(namespace="given").resolved_namespace() == "given"


def emulator_key(emulator: VersionedKubernetes, name: str) -> Any:
    for key, obj in emulator.objects.items():
        if key[2] == name and not obj.deleted:
            return key
    raise AssertionError(f"no object {name}")
