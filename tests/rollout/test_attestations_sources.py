"""Attestation sources: the directory layout, atomic writes, and an HTTP store served for real on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from vouch.core.errors import GateError, InputError, StoreError
from vouch.rollout.attestations.model import RawAttestation
from vouch.rollout.attestations.sources import (
    AttestationSource,
    DirectorySource,
    DirectorySourceSpec,
    HttpSource,
    HttpSourceSpec,
    SourceSpec,
    build_source,
)

DIGEST = "sha256:" + "ab" * 32
HEX = "ab" * 32
ENVELOPE = {"payload": "e30=", "payloadType": "application/vnd.in-toto+json", "signatures": []}


# --------------------------------------------------------------------------- directory


async def test_directory_put_then_find(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    assert isinstance(source, AttestationSource)
    assert await source.find(DIGEST) == []
    second = await source.put(DIGEST, "tests", b'{"b": 2}')
    first = await source.put(DIGEST, "build.json", b'{"a": 1}')
    assert first == str(tmp_path / f"sha256-{HEX}" / "build.json")
    assert second == str(tmp_path / f"sha256-{HEX}" / "tests.json")
    found = await source.find(DIGEST)
    assert found == [RawAttestation(first, b'{"a": 1}'), RawAttestation(second, b'{"b": 2}')]
    assert await source.find("sha256:" + "cd" * 32) == []
    await source.close()


async def test_directory_put_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    await source.put(DIGEST, "build", b"old")
    await source.put(DIGEST, "build", b"new")
    folder = tmp_path / f"sha256-{HEX}"
    assert sorted(p.name for p in folder.iterdir()) == ["build.json"]
    assert (folder / "build.json").read_bytes() == b"new"


async def test_directory_reads_only_json_files(tmp_path: Path) -> None:
    folder = tmp_path / f"sha256-{HEX}"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    (folder / "notes.txt").write_text("ignored")
    (folder / "sub.json").mkdir()
    assert [Path(r.source).name for r in await DirectorySource(tmp_path).find(DIGEST)] == ["a.json"]


@pytest.mark.parametrize("digest", ["sha256:../../etc", "sha512:" + "ab" * 64, HEX])
async def test_directory_refuses_digests_that_are_not_sha256(tmp_path: Path, digest: str) -> None:
    with pytest.raises(InputError, match="is not a digest"):
        await DirectorySource(tmp_path).find(digest)


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", ""])
async def test_directory_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="not a usable attestation name"):
        await DirectorySource(tmp_path).put(DIGEST, name, b"{}")


async def test_directory_write_failure_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot store attestation"):
        await DirectorySource(blocker).put(DIGEST, "build", b"{}")


# --------------------------------------------------------------------------- http


@dataclass
class Store:
    """A small attestation service: GET lists, POST stores; records what it was sent."""

    documents: dict[str, list[bytes]] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)
    answer: web.Response | None = None
    hang: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Store]]:
    store = Store()

    async def get(request: web.Request) -> web.StreamResponse:
        store.headers.append(dict(request.headers))
        digest = request.match_info["digest"]
        if digest == "sha256:" + "ee" * 32:
            await store.hang.wait()
        if store.answer is not None:
            return store.answer
        if digest not in store.documents:
            return web.json_response({"error": "none"}, status=404)
        documents = [json.loads(d) for d in store.documents[digest]]
        return web.json_response(documents[0] if len(documents) == 1 and digest.endswith("11") else documents)

    async def post(request: web.Request) -> web.Response:
        store.headers.append(dict(request.headers))
        digest = request.match_info["digest"]
        store.documents.setdefault(digest, []).append(await request.read())
        location = f"/attestations/{digest}/{request.query['name']}"
        return web.json_response({}, status=201, headers={"Location": location})

    app = web.Application()
    app.router.add_get("/attestations/{digest}", get)
    app.router.add_post("/attestations/{digest}", post)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/attestations/{{digest}}", store
    finally:
        store.hang.set()
        await runner.cleanup()


async def test_http_put_then_find_with_headers(served: tuple[str, Store]) -> None:
    url, store = served
    source = HttpSource(url, timeout=5, headers={"Authorization": "Bearer s3cret"})
    try:
        assert await source.find(DIGEST) == []
        location = await source.put(DIGEST, "build.json", json.dumps(ENVELOPE).encode())
        assert location == f"/attestations/{DIGEST}/build.json"
        await source.put(DIGEST, "tests.json", b'{"b": 2}')
        found = await source.find(DIGEST)
    finally:
        await source.close()
    assert [json.loads(r.data) for r in found] == [ENVELOPE, {"b": 2}]
    assert [r.source for r in found] == [url.format(digest=DIGEST) + "#0", url.format(digest=DIGEST) + "#1"]
    assert all(h.get("Authorization") == "Bearer s3cret" for h in store.headers)
    assert store.headers[1]["Content-Type"] == "application/json"


async def test_http_single_document_answer(served: tuple[str, Store]) -> None:
    url, store = served
    digest = "sha256:" + "11" * 32
    store.documents[digest] = [json.dumps(ENVELOPE).encode()]
    source = HttpSource(url)
    try:
        found = await source.find(digest)
    finally:
        await source.close()
    assert len(found) == 1
    assert json.loads(found[0].data) == ENVELOPE
    assert found[0].source == url.format(digest=digest)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (web.Response(status=500, text="boom"), "answered HTTP 500: boom"),
        (web.Response(status=200, text="<html>"), "answered non-JSON: <html>"),
        (web.json_response([1, 2]), "answered neither a document nor a list of documents"),
    ],
)
async def test_http_bad_answers_are_gate_errors(served: tuple[str, Store], answer: web.Response, message: str) -> None:
    url, store = served
    store.answer = answer
    source = HttpSource(url)
    try:
        with pytest.raises(GateError, match=message):
            await source.find(DIGEST)
    finally:
        await source.close()


async def test_http_timeout_is_a_gate_error(served: tuple[str, Store]) -> None:
    url, _ = served
    source = HttpSource(url, timeout=0.2)
    try:
        with pytest.raises(GateError, match=r"did not answer within 0\.2s"):
            await source.find("sha256:" + "ee" * 32)
    finally:
        await source.close()


async def test_http_unreachable_is_a_gate_error_and_a_store_error_for_put() -> None:
    async with httpx.AsyncClient() as client:
        source = HttpSource("http://127.0.0.1:9/{digest}", client=client)
        with pytest.raises(GateError, match="unreachable"):
            await source.find(DIGEST)
        with pytest.raises(StoreError, match="unreachable"):
            await source.put(DIGEST, "x", b"{}")
        await source.close()
        assert not client.is_closed, "a shared client is not closed by the source"


def test_http_url_template_with_bare_hex() -> None:
    source = HttpSource("https://store.example/v1/{hex}/attestations")
    assert source.url_for(DIGEST) == f"https://store.example/v1/{HEX}/attestations"


# --------------------------------------------------------------------------- settings


async def test_build_source_by_kind(tmp_path: Path) -> None:
    adapter: TypeAdapter[DirectorySourceSpec | HttpSourceSpec] = TypeAdapter(SourceSpec)
    directory = build_source(adapter.validate_python({"path": str(tmp_path)}))
    assert isinstance(directory, DirectorySource)
    assert directory.root == tmp_path
    http = build_source(
        adapter.validate_python({"kind": "http", "url": "http://127.0.0.1:1/{digest}", "timeout": "2s"})
    )
    assert isinstance(http, HttpSource)
    await http.close()
    with pytest.raises(ValidationError, match=r"'oci'.*expected tags: 'directory', 'http'"):
        adapter.validate_python({"kind": "oci", "path": "x"})
    with pytest.raises(ValidationError, match="url"):
        HttpSourceSpec(kind="http", url="http://store.example/no-placeholder")
