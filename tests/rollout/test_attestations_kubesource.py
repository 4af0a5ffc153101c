"""The ``kubernetes`` attestation source against the kmock emulator: real HTTP, real client, injected faults."""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration
from pydantic import TypeAdapter
from support.api_fakes import FakeStore, make_promotion
from support.kmockserver import write_kubeconfig
from support.kubeapi import VersionedKubernetes, serve_kubernetes

from vouch.core.errors import GateError, InputError, StoreError
from vouch.daemon.verification import DeployedAttester, ReleaseVerification
from vouch.rollout.attestations.keys import generate_keypair
from vouch.rollout.attestations.kubesource import (
    DIGEST_ANNOTATION,
    SUBJECT_LABEL,
    KubernetesSource,
    KubernetesSourceSpec,
    object_name,
)
from vouch.rollout.attestations.model import RawAttestation
from vouch.rollout.attestations.sources import AttestationSource, SourceSpec, build_source
from vouch.rollout.attestations.verify import AttestationVerifier, KeySpec, TrustSpec
from vouch.rollout.engine.decide import Denied, Verified
from vouch.rollout.platforms.kube.client import KubeApi, RetryPolicy
from vouch.rollout.policy.rego import RegoPolicy
from vouch.rollout.state import Phase, Release

NAMESPACE = "delivery"
HEX = "ab" * 32
DIGEST = f"sha256:{HEX}"
QUICK = RetryPolicy(request_timeout=2.0, initial=0.01, maximum=0.05, deadline=5.0)
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Cluster = tuple[VersionedKubernetes, str]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with serve_kubernetes() as served:
        yield served


@pytest.fixture
async def source(cluster: Cluster) -> AsyncIterator[KubernetesSource]:
    made = source_at(cluster[1])
    try:
        yield made
    finally:
        await made.close()


def source_at(url: str, retry: RetryPolicy = QUICK, **settings: Any) -> KubernetesSource:
    """A source with its own client of the API server at ``url``, as each replica has."""
    spec = KubernetesSourceSpec(kind="kubernetes", namespace=NAMESPACE, **settings)
    return KubernetesSource(spec, api=KubeApi(ApiClient(Configuration(host=url)), retry))


def stored(emulator: VersionedKubernetes, name: str) -> dict[str, Any]:
    found = emulator.object("configmaps", NAMESPACE, name)
    assert found is not None, f"no ConfigMap {name}"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --------------------------------------------------------------------------- put and find


async def test_put_then_find_round_trip(cluster: Cluster, source: KubernetesSource) -> None:
    emulator, _ = cluster
    assert isinstance(source, AttestationSource)
    assert await source.find(DIGEST) == []
    tests = await source.put(DIGEST, "tests", b'{"b": 2}')
    build = await source.put(DIGEST, "build.json", b'{"a": 1}')
    name = f"vouch-att-{HEX}-build"
    assert build == f"kubernetes:{NAMESPACE}/configmaps/{name}#build.json"
    assert tests == f"kubernetes:{NAMESPACE}/configmaps/vouch-att-{HEX}-tests#tests.json"
    assert await source.find(DIGEST) == [RawAttestation(build, b'{"a": 1}'), RawAttestation(tests, b'{"b": 2}')]
    assert await source.find("sha256:" + "cd" * 32) == []
    kept = stored(emulator, name)
    assert kept["metadata"]["labels"] == {SUBJECT_LABEL: HEX[:63], "app.kubernetes.io/managed-by": "vouch"}
    assert kept["metadata"]["annotations"] == {DIGEST_ANNOTATION: DIGEST}
    assert kept["data"] == {"build.json": '{"a": 1}'}


async def test_digests_sharing_the_labelled_63_digits_are_told_apart(source: KubernetesSource) -> None:
    first, second = "sha256:" + "e" * 63 + "0", "sha256:" + "e" * 63 + "1"
    await source.put(first, "build", b'{"first": true}')
    await source.put(second, "build", b'{"second": true}')
    assert [r.data for r in await source.find(first)] == [b'{"first": true}']
    assert [r.data for r in await source.find(second)] == [b'{"second": true}']


@pytest.mark.parametrize(
    "names",
    [("Build_Provenance", "build-provenance"), ("v1.2.3", "v1-2-3"), ("x" * 190, "x" * 189 + "y")],
    ids=["case-and-underscore", "dots", "too-long"],
)
async def test_names_that_are_no_dns_labels_become_distinct_valid_object_names(
    source: KubernetesSource, names: tuple[str, str]
) -> None:
    objects = {object_name("vouch-att", DIGEST, name) for name in names}
    assert len(objects) == 2
    for made in objects:
        assert len(made) <= 253
        assert DNS_1123.match(made), made
    for index, name in enumerate(names):
        await source.put(DIGEST, name, b'{"n": %d}' % index)
    assert sorted(r.data for r in await source.find(DIGEST)) == [b'{"n": 0}', b'{"n": 1}']


async def test_binary_documents_are_kept_as_binary_data(cluster: Cluster, source: KubernetesSource) -> None:
    data = bytes(range(256))
    await source.put(DIGEST, "blob", data)
    assert "binaryData" in stored(cluster[0], f"vouch-att-{HEX}-blob")
    assert [r.data for r in await source.find(DIGEST)] == [data]


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", ""])
async def test_unusable_names_are_refused(source: KubernetesSource, name: str) -> None:
    with pytest.raises(InputError, match="not a usable attestation name"):
        await source.put(DIGEST, name, b"{}")


async def test_a_digest_that_is_not_sha256_is_refused(source: KubernetesSource) -> None:
    with pytest.raises(InputError, match="is not a digest"):
        await source.find("sha256:../../etc")


# --------------------------------------------------------------------------- never replaced


async def test_putting_the_same_document_again_changes_nothing(cluster: Cluster, source: KubernetesSource) -> None:
    first = await source.put(DIGEST, "build", b'{"a": 1}')
    again = await source.put(DIGEST, "build", b'{"a": 1}')
    assert again == first
    assert len(await source.find(DIGEST)) == 1
    assert stored(cluster[0], f"vouch-att-{HEX}-build")["metadata"]["resourceVersion"] == "1"


async def test_other_bytes_under_a_stored_name_are_refused(cluster: Cluster, source: KubernetesSource) -> None:
    await source.put(DIGEST, "build", b'{"a": 1}')
    with pytest.raises(StoreError, match="already stored with other content"):
        await source.put(DIGEST, "build", b'{"a": 2}')
    assert stored(cluster[0], f"vouch-att-{HEX}-build")["data"] == {"build.json": '{"a": 1}'}
    assert [r.data for r in await source.find(DIGEST)] == [b'{"a": 1}']


async def test_a_create_whose_answer_was_lost_counts_as_done(cluster: Cluster, source: KubernetesSource) -> None:
    emulator, _ = cluster
    fault = emulator.fail("POST", "configmaps", status=500, after=True)
    await source.put(DIGEST, "build", b'{"a": 1}')
    assert fault.used.is_set()
    assert [r.data for r in await source.find(DIGEST)] == [b'{"a": 1}']


# --------------------------------------------------------------------------- what find keeps


async def test_find_keeps_only_this_sources_objects_for_exactly_this_digest(
    cluster: Cluster, source: KubernetesSource
) -> None:
    """kmock ignores label selectors, like an API server that would: every object is filtered here too."""
    emulator, url = cluster
    await source.put(DIGEST, "build", b'{"mine": true}')
    labels = {SUBJECT_LABEL: HEX[:63], "app.kubernetes.io/managed-by": "vouch"}
    other = source_at(url, prefix="other")
    try:
        await other.put(DIGEST, "build", b'{"other prefix": true}')
    finally:
        await other.close()
    api = KubeApi(ApiClient(Configuration(host=url)), QUICK)
    try:
        for name, annotations in [
            (f"vouch-att-{HEX}-no-annotation", {}),
            (f"vouch-att-{HEX}-other-digest", {DIGEST_ANNOTATION: "sha256:" + HEX[:63] + "0"}),
        ]:
            body = {"metadata": {"name": name, "labels": labels, "annotations": annotations}, "data": {"x.json": "{}"}}
            await api.create(f"/api/v1/namespaces/{NAMESPACE}/configmaps", body)
        await api.create(f"/api/v1/namespaces/{NAMESPACE}/configmaps", {"metadata": {"name": "unrelated"}})
    finally:
        await api.close()
    assert len(emulator.objects) >= 5
    assert [r.data for r in await source.find(DIGEST)] == [b'{"mine": true}']


async def test_another_replica_finds_what_the_first_wrote(cluster: Cluster) -> None:
    writer, reader = source_at(cluster[1]), source_at(cluster[1])
    try:
        where = await writer.put(DIGEST, "deployed-staging-p1", b'{"held": true}')
        await writer.close()
        assert await reader.find(DIGEST) == [RawAttestation(where, b'{"held": true}')]
    finally:
        await writer.close()
        await reader.close()


# --------------------------------------------------------------------------- faults


async def test_server_errors_are_retried(cluster: Cluster, source: KubernetesSource) -> None:
    emulator, _ = cluster
    await source.put(DIGEST, "build", b'{"a": 1}')
    listing = emulator.fail("GET", "configmaps", status=500, count=2)
    assert [r.data for r in await source.find(DIGEST)] == [b'{"a": 1}']
    assert listing.used.is_set()
    creating = emulator.fail("POST", "configmaps", status=503, count=2)
    await source.put(DIGEST, "tests", b'{"b": 2}')
    assert creating.used.is_set()
    assert len(await source.find(DIGEST)) == 2


async def test_an_api_that_keeps_failing_is_a_gate_error_for_find_and_a_store_error_for_put(cluster: Cluster) -> None:
    emulator, url = cluster
    impatient = source_at(url, RetryPolicy(request_timeout=2.0, initial=0.01, maximum=0.02, deadline=0.1))
    emulator.fail("GET", "configmaps", status=500, count=1000)
    emulator.fail("POST", "configmaps", status=500, count=1000)
    try:
        with pytest.raises(GateError, match="cannot list attestations in kubernetes:delivery/vouch-att"):
            await impatient.find(DIGEST)
        with pytest.raises(StoreError, match="cannot store attestation"):
            await impatient.put(DIGEST, "build", b"{}")
    finally:
        await impatient.close()


async def test_a_refusal_is_not_retried_and_is_a_gate_error(cluster: Cluster, source: KubernetesSource) -> None:
    emulator, _ = cluster
    emulator.fail("GET", "configmaps", status=403, count=5)
    with pytest.raises(GateError, match="403"):
        await source.find(DIGEST)
    assert emulator.faults[-1].count == 4, "one request, no retry"


async def test_an_unreachable_api_is_a_gate_error(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"gone": f"http://127.0.0.1:{free_port()}"})
    spec = KubernetesSourceSpec(
        kind="kubernetes", namespace=NAMESPACE, kubeconfig=str(kubeconfig), context="gone", retry_deadline=0.2
    )
    source = build_source(spec)
    try:
        with pytest.raises(GateError, match="cannot list attestations"):
            await source.find(DIGEST)
        with pytest.raises(StoreError, match="cannot store attestation"):
            await source.put(DIGEST, "build", b"{}")
    finally:
        await source.close()


async def test_a_configuration_that_cannot_be_loaded_is_a_gate_error(tmp_path: Path) -> None:
    spec = KubernetesSourceSpec(kind="kubernetes", namespace=NAMESPACE, kubeconfig=str(tmp_path / "missing"))
    source = KubernetesSource(spec)
    try:
        with pytest.raises(GateError, match="cannot reach the attestation source"):
            await source.find(DIGEST)
        with pytest.raises(StoreError, match="cannot reach the attestation source"):
            await source.put(DIGEST, "build", b"{}")
    finally:
        await source.close()


async def test_a_closed_source_answers_nothing(source: KubernetesSource) -> None:
    await source.close()
    with pytest.raises(GateError, match="closed"):
        await source.find(DIGEST)


# --------------------------------------------------------------------------- settings


async def test_built_from_the_configuration_setting(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"here": cluster[1]})
    adapter: TypeAdapter[Any] = TypeAdapter(SourceSpec)
    spec = adapter.validate_python(
        {"kind": "kubernetes", "namespace": NAMESPACE, "kubeconfig": str(kubeconfig), "context": "here"}
    )
    assert isinstance(spec, KubernetesSourceSpec)
    source = build_source(spec)
    assert isinstance(source, KubernetesSource)
    try:
        where = await source.put(DIGEST, "build", b"{}")
        assert await source.find(DIGEST) == [RawAttestation(where, b"{}")]
    finally:
        await source.close()


def test_the_namespace_defaults_to_the_pods_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "vouch-system")
    assert KubernetesSource(KubernetesSourceSpec(kind="kubernetes")).namespace == "vouch-system"
    assert KubernetesSource(KubernetesSourceSpec(kind="kubernetes", namespace="x")).namespace == "x"


# --------------------------------------------------------------------------- the daemon's own attestations

POLICY = """
package vouch

import rego.v1

held_in_staging if {
	some a in input.attestations
	a.step == "deployed"
	a.predicate.environment == "staging"
}

decision := {"allow": true, "denials": []} if held_in_staging

else := {"allow": false, "denials": ["production needs vouch's attestation that staging held"]}
"""


async def test_deployed_attestations_written_by_one_replica_let_another_promote(
    cluster: Cluster, tmp_path: Path
) -> None:
    """One daemon signs "held in staging" through the source; another one, with its own client, is allowed."""
    keys = generate_keypair(tmp_path / "vouch.key", key_type="ecdsa-p256")  # signatures differ each time
    store = FakeStore()
    release = Release(
        id="r1",
        service="checkout",
        version="2.4.1",
        environments=("staging", "production"),
        artifact={"name": "checkout", "digest": DIGEST},
        commit={"sha": "c" * 40},
    )
    await store.create_release(release)
    staging = make_promotion("p1", release_id="r1", service="checkout", environment="staging", version="2.4.1")
    staging = dataclasses.replace(staging, phase=Phase.SUCCEEDED, finished_at=1_700_000_000.0)
    production = make_promotion("p2", release_id="r1", service="checkout", environment="production", version="2.4.1")
    production = dataclasses.replace(production, gates=("attestations",))
    writer, reader = source_at(cluster[1]), source_at(cluster[1])
    policy = RegoPolicy({"policy.rego": POLICY})
    verification = ReleaseVerification(
        store=store,
        source=reader,
        verifier=AttestationVerifier(TrustSpec(keys=[KeySpec(path=str(keys.public_path))])),
        policies={"production": policy},
        settings={},
    )
    try:
        denied = await verification(production)
        assert isinstance(denied, Denied)
        assert denied.reasons == ("production needs vouch's attestation that staging held",)
        await DeployedAttester(key=keys.private_path, source=writer)(staging, release)
        await DeployedAttester(key=keys.private_path, source=writer)(staging, release)  # a repeat changes nothing
        allowed = await verification(production)
        assert isinstance(allowed, Verified)
        (event,) = [e for e in store.events if e.kind == "verification.allowed"]
        (seen,) = event.data["attestations"]
        assert seen["verified"] is True
        assert seen["step"] == "deployed"
        assert (
            seen["source"]
            == f"kubernetes:{NAMESPACE}/configmaps/vouch-att-{HEX}-deployed-staging-p1#deployed-staging-p1.json"
        )
    finally:
        await writer.close()
        await reader.close()
        await policy.close()
