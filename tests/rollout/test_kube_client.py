"""The Kubernetes API boundary: real client, kmock's server, scripted faults, bounded retries."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient
from support.kmockserver import Fault, KubeServer, kube_server, write_kubeconfig

from vouch.rollout.platforms.kube.client import KubeApi, KubeApiError, RetryPolicy, connect, path

QUICK = RetryPolicy(request_timeout=0.5, initial=0.01, maximum=0.05, deadline=2.0)
CM = path("v1", "configmaps", "ns")


@pytest.fixture
async def server() -> AsyncIterator[KubeServer]:
    async with kube_server() as running:
        yield running


async def api_for(server_url: str, tmp_path: Path, retry: RetryPolicy = QUICK) -> KubeApi:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"here": server_url})
    return KubeApi(await connect(kubeconfig=str(kubeconfig), context="here"), retry)


async def test_objects_round_trip_as_plain_json(server: KubeServer, tmp_path: Path) -> None:
    api = await api_for(server.url, tmp_path)
    try:
        made = await api.create(CM, {"metadata": {"name": "a"}, "data": {"k": "v"}, "unknownField": [1]})
        assert made is not None
        assert made["unknownField"] == [1]
        assert await api.create(CM, {"metadata": {"name": "a"}}) is None  # exists: a retried create is safe
        patched = await api.patch(f"{CM}/a", {"data": {"k": None, "j": "w"}})
        assert patched["data"] == {"j": "w"}
        assert await api.get(f"{CM}/missing") is None
        assert [item["metadata"]["name"] for item in await api.list_objects(CM, label_selector="x=y")] == ["a"]
        assert server.requests("GET", "configmaps")[-1].params == {"labelSelector": "x=y"}
        assert server.requests("GET")[0].headers["Authorization"] == "Bearer token-here"
    finally:
        await api.close()


@pytest.mark.parametrize("status", [409, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(server: KubeServer, tmp_path: Path, status: int) -> None:
    server.put("v1/configmaps", "ns", {"metadata": {"name": "a"}})
    fault = server.fail(Fault("PATCH", "configmaps", status=status, times=2))
    api = await api_for(server.url, tmp_path)
    try:
        await api.patch(f"{CM}/a", {"data": {"k": "v"}})
    finally:
        await api.close()
    assert fault.hits == 2
    assert len(server.requests("PATCH")) == 3
    assert server.get("v1/configmaps", "ns", "a") == {"metadata": {"name": "a", "namespace": "ns"}, "data": {"k": "v"}}


async def test_conflicts_can_be_left_to_the_caller(server: KubeServer, tmp_path: Path) -> None:
    server.put("v1/configmaps", "ns", {"metadata": {"name": "a"}})
    server.fail(Fault("PATCH", "configmaps", status=409))
    api = await api_for(server.url, tmp_path)
    try:
        with pytest.raises(KubeApiError) as caught:
            await api.patch(f"{CM}/a", {"data": {}}, retry_conflicts=False)
    finally:
        await api.close()
    assert caught.value.status == 409
    assert caught.value.reason == "Injected409"


async def test_refusals_fail_at_once_with_the_apis_reason(server: KubeServer, tmp_path: Path) -> None:
    server.fail(Fault("GET", "configmaps", status=403))
    api = await api_for(server.url, tmp_path)
    try:
        with pytest.raises(KubeApiError) as caught:
            await api.get(f"{CM}/a")
    finally:
        await api.close()
    assert (caught.value.status, caught.value.retryable) == (403, False)
    assert caught.value.message == "injected fault"
    assert len(server.requests()) == 1


async def test_a_stalled_request_times_out_and_retries_until_the_deadline(server: KubeServer, tmp_path: Path) -> None:
    server.fail(Fault("GET", "configmaps", status=None, delay=2.0, times=None))
    api = await api_for(
        server.url, tmp_path, RetryPolicy(request_timeout=0.2, initial=0.01, maximum=0.01, deadline=0.5)
    )
    try:
        with pytest.raises(KubeApiError) as caught:
            await api.get(f"{CM}/a")
    finally:
        await api.close()
    assert (caught.value.status, caught.value.reason, caught.value.retryable) == (None, "Timeout", True)
    assert len(server.requests("GET")) >= 2


async def test_no_server_is_a_retryable_failure(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        api = await api_for(f"http://127.0.0.1:{port}", tmp_path, RetryPolicy(deadline=0.1, initial=0.01))
        try:
            with pytest.raises(KubeApiError) as caught:
                await api.get(f"{CM}/a")
        finally:
            await api.close()
    assert caught.value.status is None
    assert caught.value.retryable


async def test_expired_credentials_make_one_fresh_client(server: KubeServer, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"here": server.url})
    made = []

    async def reconnect() -> ApiClient:
        made.append(await connect(kubeconfig=str(kubeconfig), context="here"))
        return made[-1]

    api = KubeApi(await connect(kubeconfig=str(kubeconfig), context="here"), QUICK, reconnect=reconnect)
    try:
        server.fail(Fault("GET", "configmaps", status=401))
        assert await api.get(f"{CM}/a") is None
        assert len(made) == 1
        server.fail(Fault("GET", "configmaps", status=401, times=2))
        with pytest.raises(KubeApiError) as caught:
            await api.get(f"{CM}/a")  # still refused with fresh credentials: a refusal, not a loop
        assert caught.value.status == 401
        assert len(made) == 2
    finally:
        await api.close()


async def test_configuration_problems_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeApiError, match="context nope"):
        await connect(kubeconfig=str(write_kubeconfig(tmp_path / "k", {"a": "http://127.0.0.1:1"})), context="nope")
    with pytest.raises(KubeApiError, match="in-cluster"):
        await connect(in_cluster=True)  # no service account token here
