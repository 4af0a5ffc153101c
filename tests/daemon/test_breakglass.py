"""Break-glass grants: the checks, the overrides folder, and two daemons racing for one file.

A "daemon" here is what acts on overrides: its own store connection (two SqliteStore on one file,
or two KubernetesStore clients on one emulated cluster), its own reader of the shared overrides
folder, and its own OverrideShell. Both read the file; both see a failure at the same moment;
exactly one may let it pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient, Configuration
from support.kubeapi import serve_kubernetes
from support.notify_fakes import promotion, release

from vouch.core.errors import InputError, NotFoundError
from vouch.daemon.breakglass import BreakGlassSpec, GrantRequest, OverrideFiles, Scope, check_grant
from vouch.daemon.store.kubernetes import KubernetesStore, KubernetesStoreSpec
from vouch.daemon.store.sqlite import SqliteStore
from vouch.rollout.config import EnvironmentSpec, ServiceEnvironment, ServiceSpec
from vouch.rollout.engine.breakglass import OverrideShell
from vouch.rollout.model import GatePhase, Verdict
from vouch.rollout.overrides import match_override
from vouch.rollout.state import Event, Store

NOW = 1_700_000_000.0
SCOPE = Scope(
    services={
        "checkout": ServiceSpec(
            command=["serve", "--port", "{port}"],
            environments=[ServiceEnvironment(name="staging"), ServiceEnvironment(name="production")],
        )
    },
    environments={
        "staging": EnvironmentSpec(gates=["attestations", "slo", "alarms"]),
        "production": EnvironmentSpec(gates=["slo", "alarms", "probes"]),
    },
    spec=BreakGlassSpec(max_ttl=7200),
)
GRANT = {"service": "checkout", "environment": "staging", "gate": "slo", "reason": "INC-1", "actor": "ana"}


def grant(**changes: Any) -> GrantRequest:
    return GrantRequest.model_validate({**GRANT, **changes})


def checked(request: GrantRequest, *, actor: str = "api") -> Any:
    return check_grant(request, SCOPE, actor=actor, override_id="bg-1", source="api", now=NOW)


# --------------------------------------------------------------------------- the checks


def test_a_grant_defaults_to_one_hour_and_names_its_actor() -> None:
    override = checked(grant(actor=None), actor="bob")
    assert (override.actor, override.expires_at - override.created_at) == ("bob", 3600.0)
    assert override.scope() == "checkout/staging gate slo"
    assert checked(grant(ttl="30m", version="2.4.1")).scope() == "checkout@2.4.1/staging gate slo"


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"service": "cart"}, NotFoundError, "service: no service 'cart'; known: checkout"),
        ({"environment": "dev"}, NotFoundError, "checkout is not deployed to 'dev'; its chain is staging, production"),
        ({"gate": "probes"}, InputError, "'probes' does not run in staging; its gates are attestations, slo, alarms"),
        ({"gate": "approval"}, InputError, "gate: 'approval' does not run in staging"),
        ({"reason": "  "}, InputError, "reason: say why"),
        ({"ttl": "3h"}, InputError, "longer than break_glass.max_ttl (7200s)"),
        ({"expires_at": "2023-11-14T22:00:00Z"}, InputError, "would already have expired"),
        ({"expires_at": "2023-11-14T23:00:00"}, InputError, "give a time zone"),
        ({"ttl": "1h", "expires_at": "2023-11-14T23:00:00Z"}, InputError, "give ttl or expires_at, not both"),
    ],
)
def test_grants_out_of_scope_or_time_are_refused_saying_why(
    changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        checked(grant(**changes))


def test_only_an_unused_unexpired_override_in_scope_matches_and_the_oldest_first() -> None:
    older = checked(grant())
    newer = older.__class__(**{**older.to_dict(), "id": "bg-2", "created_at": NOW + 1})
    pinned = older.__class__(**{**older.to_dict(), "id": "bg-3", "version": "9.9"})
    used = older.__class__(**{**older.to_dict(), "id": "bg-4", "used_at": NOW})
    where = {"service": "checkout", "environment": "staging", "gate": "slo", "version": "2.4.1"}
    assert match_override([newer, pinned, used, older], **where, now=NOW + 10) is older
    assert match_override([pinned, used], **where, now=NOW + 10) is None
    assert match_override([newer], **where, now=NOW + 3601) is None, "expired"
    assert match_override([older], **{**where, "gate": "alarms"}, now=NOW) is None


# --------------------------------------------------------------------------- two daemons, one file


async def race(stores: list[Store], folder: Path) -> tuple[list[Any], list[str]]:
    """Both daemons read the folder, then both meet a failing SLO verdict at once: who lets it pass?"""
    events: list[str] = []
    files = [OverrideFiles(folder, store=s, scope=SCOPE, on_event=lambda e: events.append(e.kind)) for s in stores]
    for reader in files:
        (found,) = await reader.scan()
        assert found.source == "file:inc-7.yaml"
    rel = release(environments=("staging",))
    shells = [OverrideShell(s, on_event=lambda e: events.append(e.kind), clock=lambda: NOW) for s in stores]
    failing = Verdict("slo", GatePhase.FAIL, ("error ratio 0.2 > 0.05",))
    runs = [
        shell.apply(promotion(rel, "staging", created_at=NOW), [failing])
        for shell in shells
        for _ in range(3)  # and each daemon tries more than once
    ]
    results = await asyncio.gather(*runs)
    return [verdicts[0].phase for verdicts in results], events


def write_file(folder: Path) -> None:
    (folder / "inc-7.yaml").write_text(yaml.safe_dump({**GRANT, "reason": "INC-7: metrics pipeline down"}))


async def check_one_winner(stores: list[Store], folder: Path) -> None:
    write_file(folder)
    phases, events = await race(stores, folder)
    assert phases.count(GatePhase.PASS) == 1, phases
    assert phases.count(GatePhase.FAIL) == 5
    assert events.count("override.granted") == 1, "the second reader found the grant already kept"
    assert events.count("override.used") == 1
    (override,) = await stores[1].list_overrides(service="checkout")
    assert override.used
    assert override.overridden is not None
    assert override.overridden["reasons"] == ["error ratio 0.2 > 0.05"]


async def test_two_daemons_on_one_sqlite_file_racing_for_one_file_one_uses_it(tmp_path: Path) -> None:
    folder = tmp_path / "overrides"
    folder.mkdir()
    stores = [await SqliteStore.open(tmp_path / "vouch.db") for _ in range(2)]
    try:
        await check_one_winner(list(stores), folder)
    finally:
        for store in stores:
            await store.close()


@pytest.fixture
async def cluster_stores() -> AsyncIterator[list[KubernetesStore]]:
    async with serve_kubernetes() as (_, url):
        apis = [ApiClient(Configuration(host=url)) for _ in range(2)]
        spec = KubernetesStoreSpec(namespace="vouch", request_timeout=2.0, backoff=0.01)
        try:
            yield [KubernetesStore(api, spec) for api in apis]
        finally:
            for api in apis:
                await api.close()


async def test_two_daemons_on_one_cluster_racing_for_one_file_one_uses_it(
    tmp_path: Path, cluster_stores: list[KubernetesStore]
) -> None:
    await check_one_winner(list(cluster_stores), tmp_path)  # the folder: a ConfigMap both pods mount


async def test_a_used_file_is_renamed_and_a_bad_one_refused_once(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "vouch.db")
    folder = tmp_path / "overrides"
    folder.mkdir()
    events: list[Event] = []
    record: Callable[[Event], None] = events.append
    try:
        write_file(folder)
        (folder / "bad.yaml").write_text(yaml.safe_dump({**GRANT, "actor": None}))
        (folder / "notes.txt").write_text("not an override")
        reader = OverrideFiles(folder, store=store, scope=SCOPE, on_event=record, clock=lambda: NOW)
        for _ in range(3):
            await reader.scan()
        assert [e.kind for e in events] == ["override.refused", "override.granted"], "each announced once"
        assert events[0].data["reason"] == "actor: a file must say who breaks the glass"
        shell = OverrideShell(store, on_event=record, clock=lambda: NOW)
        rel = release(environments=("staging",))
        used = await shell.use(promotion(rel, "staging"), "slo", {"phase": "Fail"})
        assert used is not None
        await reader.scan()
        names = await asyncio.to_thread(lambda: sorted(p.name for p in folder.iterdir()))
        assert names == ["bad.yaml", "inc-7.yaml.used", "notes.txt"]
    finally:
        await store.close()
