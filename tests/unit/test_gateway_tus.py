"""Resumable uploads (tus 1.0 under /v1/uploads/) on fakes: creation, PATCH, checksum, termination,
expiration, the declared-sha256 shortcut, and the same checks, receipts and events as POST."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from api.gateway.app import GATEWAY, create_app, server_options
from api.gateway.config import GatewayConfig
from imgstream.adapters.s3 import MemoryObjectStore
from imgstream.domain.storage_layout import image_key
from imgstream.domain.tokens import KeyRing
from tests.fixtures import images as fx
from tests.fixtures.gateway import DurableFirstPublisher, Harness, gateway_factory, gw  # noqa: F401

TUS = {"Tus-Resumable": "1.0.0"}
BIG = fx.padded_jpeg(6_000_000)  # over one 5 MiB part: two parts


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def create(gw: Harness, length: int, producer: str = "alice", **headers: str) -> Any:
    return await gw.client.post("/v1/uploads/", headers={**gw.auth(producer), **TUS, "Upload-Length": str(length),
                                                         **headers})


async def patch(gw: Harness, location: str, offset: int, data: bytes, producer: str = "alice",
                **headers: str) -> Any:
    return await gw.client.patch(location, data=data, headers={
        **gw.auth(producer), **TUS, "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream", **headers})


async def head(gw: Harness, location: str, producer: str = "alice") -> Any:
    return await gw.client.head(location, headers={**gw.auth(producer), **TUS})


async def upload_in_chunks(gw: Harness, data: bytes, chunk: int, **headers: str) -> Any:
    created = await create(gw, len(data), **headers)
    assert created.status == 201, await created.text()
    location = created.headers["Location"]
    offset = 0
    while offset < len(data):
        response = await patch(gw, location, offset, data[offset:offset + chunk])
        assert response.status in (200, 204), await response.text()
        offset = int(response.headers["Upload-Offset"])
    return response, location


def open_multiparts(gw: Harness) -> dict:
    return gw.client.server.app[GATEWAY].uploads.parts.uploads


async def test_options_announces_the_protocol(gw: Harness) -> None:
    response = await gw.client.options("/v1/uploads/")
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "checksum", "termination", "expiration"}
    assert "sha256" in response.headers["Tus-Checksum-Algorithm"]
    assert int(response.headers["Tus-Max-Size"]) == gw.config.max_upload_bytes


async def test_chunked_upload_ends_with_the_receipt_and_one_event(gw: Harness) -> None:
    final, location = await upload_in_chunks(gw, BIG, 1_500_000)
    assert final.status == 200
    receipt = await final.json()
    assert receipt["sha256"] == hashlib.sha256(BIG).hexdigest() and receipt["size"] == len(BIG)
    assert receipt["status"] == "stored" and receipt["content_type"] == "image/jpeg"
    assert gw.store.objects[image_key(receipt["sha256"])][0] == BIG
    assert [e["image_id"] for e in gw.events()] == [receipt["image_id"]]
    assert open_multiparts(gw) == {}  # joined, nothing left open
    assert not any(k.endswith("/data") or "/tail-" in k for k in gw.store.objects)
    again = await patch(gw, location, len(BIG), b"")  # the answer to the last PATCH was lost
    assert again.status == 200 and await again.json() == receipt and len(gw.events()) == 1
    status = await gw.client.get(location, headers=gw.auth())
    assert (await status.json())["receipt"] == receipt


async def test_creation_with_upload_in_one_request(gw: Harness) -> None:
    data = fx.real("rocket.jpg")
    response = await gw.client.post("/v1/uploads/", data=data, headers={
        **gw.auth(), **TUS, "Upload-Length": str(len(data)), "Content-Type": "application/offset+octet-stream",
        "Upload-Metadata": meta(filename="rocket.jpg", idempotency_key="tus-one")})
    assert response.status == 201, await response.text()
    assert response.headers["Upload-Offset"] == str(len(data)) and "Location" in response.headers
    assert (await response.json())["size"] == len(data)
    assert [e["idempotency_key"] for e in gw.events()] == ["tus-one"]


async def test_head_offset_and_resume_after_a_partial_patch(gw: Harness) -> None:
    created = await create(gw, len(BIG), **{"Upload-Metadata": meta(filename="big.jpg")})
    location = created.headers["Location"]
    assert (await patch(gw, location, 0, BIG[:2_000_000])).status == 204
    state = await head(gw, location)
    assert state.status == 200 and state.headers["Upload-Offset"] == "2000000"
    assert state.headers["Upload-Length"] == str(len(BIG)) and state.headers["Cache-Control"] == "no-store"
    assert state.headers["Upload-Metadata"] == meta(filename="big.jpg") and "Upload-Expires" in state.headers
    stale = await patch(gw, location, 0, BIG[:10])
    assert stale.status == 409 and (await stale.json())["error"]["reason"] == "offset_mismatch"
    done = await patch(gw, location, 2_000_000, BIG[2_000_000:])
    assert done.status == 200 and len(gw.events()) == 1


async def test_checksum_sha256_and_sha1_mismatch_is_460_and_keeps_the_offset(gw: Harness) -> None:
    created = await create(gw, len(BIG))
    location = created.headers["Location"]
    chunk = BIG[:1_000_000]
    wrong = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    refused = await patch(gw, location, 0, chunk, **{"Upload-Checksum": wrong})
    assert refused.status == 460 and (await refused.json())["error"]["code"] == "checksum_mismatch"
    assert (await head(gw, location)).headers["Upload-Offset"] == "0"
    right = "sha256 " + base64.b64encode(hashlib.sha256(chunk).digest()).decode()
    assert (await patch(gw, location, 0, chunk, **{"Upload-Checksum": right})).status == 204
    sha1 = "sha1 " + base64.b64encode(hashlib.sha1(BIG[1_000_000:]).digest()).decode()
    assert (await patch(gw, location, 1_000_000, BIG[1_000_000:], **{"Upload-Checksum": sha1})).status == 200
    fresh = (await create(gw, 10)).headers["Location"]
    unknown = await patch(gw, fresh, 0, b"\xff\xd8" * 5, **{"Upload-Checksum": "md5 AAAA"})
    assert unknown.status == 400 and (await unknown.json())["error"]["field"] == "Upload-Checksum"


async def test_termination_aborts_the_parts(gw: Harness) -> None:
    created = await create(gw, len(BIG))
    location = created.headers["Location"]
    await patch(gw, location, 0, BIG[:5_500_000])
    assert len(open_multiparts(gw)) == 1
    deleted = await gw.client.delete(location, headers={**gw.auth(), **TUS})
    assert deleted.status == 204
    assert open_multiparts(gw) == {} and not any(k.startswith("uploads/") for k in gw.store.objects)
    assert (await head(gw, location)).status == 404


async def test_expired_uploads_are_404_and_the_sweep_aborts_their_parts() -> None:
    now = [datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc)]
    config = GatewayConfig(upload_expiry=60, upload_sweep_interval=0)
    store = MemoryObjectStore()
    ring = KeyRing.generate()
    app = create_app(config, store, DurableFirstPublisher(store), ring, clock=lambda: now[0])
    async with TestClient(TestServer(app, **server_options(config))) as client:
        auth = {"Authorization": f"Bearer {ring.issue('alice', 'producer')}", **TUS}
        created = await client.post("/v1/uploads/", headers={**auth, "Upload-Length": str(len(BIG))})
        location = created.headers["Location"]
        await client.patch(location, data=BIG[:5_500_000], headers={
            **auth, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
        uploads = app[GATEWAY].uploads
        assert await uploads.sweep() == 0 and len(uploads.parts.uploads) == 1
        now[0] += timedelta(seconds=61)
        assert (await client.head(location, headers=auth)).status == 404
        assert await uploads.sweep() == 1
        assert uploads.parts.uploads == {} and not any(k.startswith("uploads/") for k in store.objects)


async def test_declared_sha256_of_own_content_completes_at_creation_others_must_send(gw: Harness) -> None:
    data = fx.unique_jpeg("dedup-me")
    digest = hashlib.sha256(data).hexdigest()
    first, _ = await upload_in_chunks(gw, data, 10_000)
    first_receipt = await first.json()
    again = await create(gw, len(data), **{"Upload-Metadata": meta(sha256=digest)})
    assert again.status == 201 and again.headers["Upload-Offset"] == str(len(data))
    receipt = await again.json()
    assert receipt["sha256"] == digest and receipt["image_id"] != first_receipt["image_id"]
    assert receipt["storage_key"] == first_receipt["storage_key"] and receipt["phash"] == first_receipt["phash"]
    assert len(gw.events()) == 2  # a second upload of the same content, counted as such
    other = await create(gw, len(data), "bob", **{"Upload-Metadata": meta(sha256=digest)})
    assert other.status == 201 and other.headers["Upload-Offset"] == "0"  # bob must send the bytes
    assert other.content_length in (None, 0) and len(gw.events()) == 2
    lie = await create(gw, len(data), **{"Upload-Metadata": meta(sha256="0" * 64)})
    refused = await patch(gw, lie.headers["Location"], 0, data)
    assert refused.status == 400 and len(gw.events()) == 2  # the bytes must match a declared sha256


async def test_hostile_bodies_get_the_same_answers_as_a_post(gw: Harness) -> None:
    svg = fx.svg_with_script()
    created = await create(gw, len(svg))
    refused = await patch(gw, created.headers["Location"], 0, svg)
    assert refused.status == 415
    bomb = fx.png_bomb()
    created = await create(gw, len(bomb))
    location = created.headers["Location"]
    bombed = await patch(gw, location, 0, bomb)
    assert bombed.status == 422 and (await bombed.json())["error"]["code"] == "image_too_large"
    assert (await head(gw, location)).status == 404  # a refused upload is gone
    assert gw.publisher.records == [] and not any(k.startswith(("sha256/", "uploads/")) for k in gw.store.objects)
    assert open_multiparts(gw) == {}


async def test_limits_auth_and_protocol_version(gw: Harness) -> None:
    too_big = await create(gw, gw.config.max_upload_bytes + 1)
    assert too_big.status == 413
    assert (await create(gw, 0)).status == 400
    no_version = await gw.client.post("/v1/uploads/", headers={**gw.auth(), "Upload-Length": "10"})
    assert no_version.status == 412 and no_version.headers["Tus-Version"] == "1.0.0"
    anonymous = await gw.client.post("/v1/uploads/", headers={**TUS, "Upload-Length": "10"})
    assert anonymous.status == 401
    created = await create(gw, 100)
    location = created.headers["Location"]
    assert (await head(gw, location, "bob")).status == 404  # another producer's upload does not exist
    assert (await patch(gw, location, 0, b"x" * 10, "bob")).status == 404
    wrong_type = await gw.client.patch(location, data=b"x", headers={
        **gw.auth(), **TUS, "Upload-Offset": "0", "Content-Type": "image/jpeg"})
    assert wrong_type.status == 415
    over = await patch(gw, location, 0, b"x" * 101)
    assert over.status == 413
    assert (await gw.client.head("/v1/uploads/not-an-id", headers={**gw.auth(), **TUS})).status == 404



async def test_kafka_down_at_the_last_patch_then_the_retry_finishes_it_once(gw: Harness) -> None:
    created = await create(gw, len(BIG))
    location = created.headers["Location"]
    assert (await patch(gw, location, 0, BIG[:3_000_000])).status == 204
    gw.publisher.fail_publishes = 1
    failed = await patch(gw, location, 3_000_000, BIG[3_000_000:])
    assert failed.status == 503 and "idempotency_key" in (await failed.json())["error"]
    assert (await head(gw, location)).headers["Upload-Offset"] == str(len(BIG))  # the bytes are kept
    retried = await patch(gw, location, len(BIG), b"")
    assert retried.status == 200, await retried.text()
    assert [e["image_id"] for e in gw.events()] == [(await retried.json())["image_id"]]
