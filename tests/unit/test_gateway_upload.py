"""Raw-body uploads on fakes: receipts, events, storage, idempotency, failures of S3 and Kafka."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from imgstream.domain.events import image_id_for
from imgstream.domain.storage_layout import image_key
from tests.fixtures import images as fx
from tests.fixtures.gateway import Harness, gateway_factory, gw  # noqa: F401  (fixtures)

RECEIPT_FIELDS = {"image_id", "sha256", "size", "content_type", "width", "height", "storage_key", "status",
                  "received_at"}


@pytest.mark.parametrize("name", sorted(fx.real_images()))
async def test_raw_upload_returns_receipt_stores_bytes_and_publishes_event(gw: Harness, name: str) -> None:
    data, content_type = fx.real_images()[name]
    response = await gw.upload(data)
    assert response.status == 201, await response.text()
    receipt = await response.json()
    assert RECEIPT_FIELDS <= set(receipt)
    sha = hashlib.sha256(data).hexdigest()
    assert receipt["status"] == "stored"
    assert (receipt["sha256"], receipt["size"], receipt["content_type"]) == (sha, len(data), content_type)
    assert receipt["storage_key"] == image_key(sha) == f"sha256/{sha[:2]}/{sha[2:4]}/{sha}"
    assert receipt["received_at"] == "2026-11-26T12:00:00.123Z"
    assert gw.store.objects[receipt["storage_key"]][0] == data
    assert gw.store.objects[receipt["storage_key"]][1].content_type == content_type

    (event,) = gw.events()  # validated against the JSON Schema
    for field in ("image_id", "sha256", "size", "content_type", "width", "height", "storage_key", "received_at",
                  "phash", "producer"):
        assert event[field] == receipt[field], field
    assert event["producer"] == "alice" and event["gateway"] == "test-gateway"
    (record,) = gw.publisher.records
    assert record.key == receipt["image_id"].encode()
    assert (record.partition, record.offset) == (receipt["partition"], receipt["offset"])
    assert dict(record.headers)["event_type"] == b"image.uploaded"


async def test_declared_type_is_ignored_the_bytes_decide(gw: Harness) -> None:
    response = await gw.upload(fx.real("camera.png"), **{"Content-Type": "image/jpeg"})
    assert (await response.json())["content_type"] == "image/png"
    response = await gw.upload(fx.text_named_jpg(), **{"Content-Type": "image/jpeg"})
    assert response.status == 415


@pytest.mark.parametrize("name", ["truncated.jpg", "bomb.png", "polyglot.jpg", "script.svg", "empty.jpg"])
async def test_rejected_upload_leaves_no_object_and_no_event(gw: Harness, name: str) -> None:
    factory, status, code = fx.HOSTILE[name]
    response = await gw.upload(factory())
    assert response.status == status
    assert (await response.json())["error"]["code"] == code
    assert gw.store.objects == {}
    assert gw.publisher.records == []


async def test_concurrent_uploads_of_the_same_bytes(gw: Harness) -> None:
    data = fx.unique_jpeg("same-bytes")
    responses = await asyncio.gather(*(gw.upload(data) for _ in range(8)))
    receipts = [await r.json() for r in responses]
    assert [r.status for r in responses] == [201] * 8
    assert len({r["storage_key"] for r in receipts}) == 1
    assert len({r["image_id"] for r in receipts}) == 8  # eight uploads, each counted by the stream
    assert len(gw.store.objects) == 1  # stored once: content addressing
    assert sorted(e["image_id"] for e in gw.events()) == sorted(r["image_id"] for r in receipts)


async def test_idempotent_retry_gets_the_same_receipt_and_no_second_event(gw: Harness) -> None:
    data = fx.unique_jpeg("idem")
    first = await gw.upload(data, **{"Idempotency-Key": "order-42"})
    second = await gw.upload(data, **{"Idempotency-Key": "order-42"})
    assert (first.status, second.status) == (201, 201)
    assert await first.json() == await second.json()
    assert "Idempotent-Replayed" not in first.headers and second.headers["Idempotent-Replayed"] == "true"
    assert (await first.json())["image_id"] == image_id_for("alice", "order-42")
    assert len(gw.events()) == 1
    assert gw.metric("imgstream_gateway_images_total", outcome="replayed") == 1


async def test_idempotency_key_reused_for_other_bytes_is_refused(gw: Harness) -> None:
    await gw.upload(fx.unique_jpeg("a"), **{"Idempotency-Key": "k1"})
    response = await gw.upload(fx.unique_jpeg("b"), **{"Idempotency-Key": "k1"})
    assert response.status == 409
    assert (await response.json())["error"]["reason"] == "idempotency_key_reused"
    assert len(gw.events()) == 1


async def test_idempotency_keys_belong_to_their_producer(gw: Harness) -> None:
    data = fx.unique_jpeg("shared")
    a = await (await gw.upload(data, "alice", **{"Idempotency-Key": "k"})).json()
    b = await (await gw.upload(data, "bob", **{"Idempotency-Key": "k"})).json()
    assert a["image_id"] != b["image_id"]
    assert len(gw.events()) == 2


async def test_object_store_down_is_503_and_publishes_nothing(gw: Harness) -> None:
    gw.store.unavailable = True
    response = await gw.upload(fx.real("rocket.jpg"))
    assert response.status == 503
    assert 1 <= int(response.headers["Retry-After"]) <= 5
    error = (await response.json())["error"]
    assert error["code"] == "unavailable"
    assert "injected" not in error["message"] and "dependency" not in error  # the inside stays in the log
    assert gw.publisher.records == []


async def test_retry_after_of_503s_is_spread_not_constant(gw: Harness) -> None:
    gw.store.unavailable = True
    delays = {int((await gw.upload(fx.real("rocket.jpg"))).headers["Retry-After"]) for _ in range(30)}
    assert len(delays) > 1 and delays <= set(range(1, 6))


async def test_same_key_different_bytes_at_once_one_wins_the_other_conflicts(gw: Harness) -> None:
    for attempt in range(5):
        key = f"race-{attempt}"
        a, b = await asyncio.gather(gw.upload(fx.unique_jpeg(f"race-a-{attempt}"), **{"Idempotency-Key": key}),
                                    gw.upload(fx.unique_jpeg(f"race-b-{attempt}"), **{"Idempotency-Key": key}))
        assert sorted([a.status, b.status]) == [201, 409], (a.status, b.status)
        loser = a if a.status == 409 else b
        assert (await loser.json())["error"]["reason"] == "idempotency_key_reused"
    assert len(gw.events()) == 5  # one event per key: the stream never sees the loser's bytes


async def test_same_key_same_bytes_at_once_get_one_receipt_and_one_event(gw: Harness) -> None:
    data = fx.unique_jpeg("twin")
    responses = await asyncio.gather(*(gw.upload(data, **{"Idempotency-Key": "twin"}) for _ in range(4)))
    assert [r.status for r in responses] == [201] * 4
    receipts = [await r.json() for r in responses]
    assert all(r == receipts[0] for r in receipts)
    assert len(gw.events()) == 1


async def test_a_refused_body_leaves_its_key_free_for_the_corrected_upload(gw: Harness) -> None:
    data = fx.unique_jpeg("fixed")
    refused = await gw.upload(data[: len(data) // 2], **{"Idempotency-Key": "fix-me"})
    assert refused.status == 422
    fixed = await gw.upload(data, **{"Idempotency-Key": "fix-me"})
    assert fixed.status == 201, await fixed.text()


async def test_503_after_the_store_returns_a_key_whose_retry_counts_once(gw: Harness) -> None:
    """A lost Kafka acknowledgement: the record was appended, yet the publish raised. The 503
    names a server-made key; the retry with it publishes under the same image_id."""
    data = fx.unique_jpeg("lost-ack")
    real_publish = gw.publisher.publish

    async def appended_then_timed_out(*args, **kwargs):
        await real_publish(*args, **kwargs)
        from imgstream.domain.errors import Unavailable

        raise Unavailable("KafkaTimeoutError at 10.0.0.7:9092 (injected)")

    gw.publisher.publish = appended_then_timed_out  # type: ignore[method-assign]
    failed = await gw.upload(data)
    gw.publisher.publish = real_publish  # type: ignore[method-assign]
    assert failed.status == 503
    error = (await failed.json())["error"]
    key = error["idempotency_key"]
    assert failed.headers["Idempotency-Key"] == key and "10.0.0.7" not in error["message"]
    assert 1 <= int(failed.headers["Retry-After"]) <= 5

    other = await gw.upload(fx.unique_jpeg("not-the-same"), **{"Idempotency-Key": key})
    assert other.status == 409  # the key now stands for the stored bytes
    retried = await gw.upload(data, **{"Idempotency-Key": key})
    assert retried.status == 201, await retried.text()
    assert (await retried.json())["image_id"] == image_id_for("alice", key)
    assert {e["image_id"] for e in gw.events()} == {image_id_for("alice", key)}  # the stream counts one image
    again = await gw.upload(data, **{"Idempotency-Key": key})
    assert again.headers["Idempotent-Replayed"] == "true" and len(gw.events()) == 2


async def test_every_upload_503_carries_a_key_to_retry_with(gw: Harness) -> None:
    gw.publisher.fail_publishes = 1
    keyless = await gw.upload(fx.unique_jpeg("keyless"))
    assert keyless.status == 503 and keyless.headers["Idempotency-Key"].startswith("gw-")
    gw.publisher.fail_publishes = 1
    keyed = await gw.upload(fx.unique_jpeg("keyed"), **{"Idempotency-Key": "mine"})
    assert keyed.status == 503 and keyed.headers["Idempotency-Key"] == "mine"
    assert (await keyed.json())["error"]["idempotency_key"] == "mine"
    gw.store.unavailable = True
    parts = await gw.upload_parts([("file", "a.jpg", fx.unique_jpeg("part"))])
    gw.store.unavailable = False
    result = (await parts.json())["results"][0]
    assert result["http_status"] == 503 and result["error"]["idempotency_key"].startswith("gw-")


async def test_kafka_down_after_store_leaves_an_orphan_then_retry_publishes_once(gw: Harness) -> None:
    data = fx.unique_jpeg("kafka-down")
    gw.publisher.fail_publishes = 1
    failed = await gw.upload(data, **{"Idempotency-Key": "retry-me"})
    assert failed.status == 503
    # durable first: an orphan object (and the key's claim), never an event without bytes
    assert sum(k.startswith("sha256/") for k in gw.store.objects) == 1
    assert gw.publisher.records == []
    retried = await gw.upload(data, **{"Idempotency-Key": "retry-me"})
    assert retried.status == 201
    assert [e["image_id"] for e in gw.events()] == [image_id_for("alice", "retry-me")]


async def test_receipt_store_failure_does_not_fail_a_stored_upload(gw: Harness) -> None:
    original_put = gw.store.put
    calls = []

    async def put(key: str, *args, **kwargs):
        calls.append(key)
        if key.startswith("receipts/"):
            from imgstream.domain.errors import Unavailable

            raise Unavailable("receipt write failed")
        return await original_put(key, *args, **kwargs)

    gw.store.put = put  # type: ignore[method-assign]
    response = await gw.upload(fx.unique_jpeg("r"), **{"Idempotency-Key": "k"})
    assert response.status == 201
    assert len(gw.events()) == 1 and any(k.startswith("receipts/") for k in calls)


async def test_large_body_spools_to_disk_and_known_bytes_are_not_resent(gateway_factory, monkeypatch) -> None:
    from api.gateway import ingest

    monkeypatch.setattr(ingest, "HEAD_BEFORE_PUT_BYTES", 2 * 1024 * 1024)  # as if the body were multipart-sized
    gw = await gateway_factory(spool_memory_bytes=64 * 1024)
    data = fx.sized_jpeg(2_500_000)
    assert len(data) > 2 * 1024 * 1024
    first = await gw.upload(data)
    assert first.status == 201, await first.text()
    key = (await first.json())["storage_key"]
    assert gw.store.objects[key][0] == data
    second = await gw.upload(data)
    assert second.status == 201
    assert gw.store.put_calls == 1  # HEAD found the same bytes: not sent twice
    assert len(gw.events()) == 2


async def test_unique_bodies_below_the_multipart_size_take_one_store_round_trip(gateway_factory) -> None:
    gw = await gateway_factory(spool_memory_bytes=64 * 1024)
    heads = []
    real_head = gw.store.head

    async def head(key):
        heads.append(key)
        return await real_head(key)

    gw.store.head = head  # type: ignore[method-assign]
    response = await gw.upload(fx.sized_jpeg(2_500_000))
    assert response.status == 201 and heads == [] and gw.store.put_calls == 1


async def test_receipt_is_json_with_only_documented_types(gw: Harness) -> None:
    receipt = await (await gw.upload(fx.real("rocket.jpg"))).json()
    assert json.loads(json.dumps(receipt)) == receipt
    assert isinstance(receipt["width"], int) and isinstance(receipt["size"], int)
