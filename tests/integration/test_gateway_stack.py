"""The gateway app on the real S3 server and the real Kafka (its own bucket and topic).

Proves against real services: an event for every stored upload and none for a rejected one, the
object readable before its event, concurrent uploads of the same bytes, idempotent retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from typing import Any, AsyncIterator

import pytest_asyncio
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from api.gateway.app import create_app, server_options
from api.gateway.config import GatewayConfig
from imgstream.domain import events
from imgstream.adapters.kafka import KafkaEventPublisher, end_offsets, read_between
from imgstream.adapters.s3 import S3ObjectStore
from imgstream.config import StackConfig
from imgstream.domain.events import image_id_for
from imgstream.domain.storage_layout import receipt_key
from imgstream.domain.tokens import KeyRing
from tests.fixtures import images as fx
from tests.fixtures.stack import it_bucket, it_topic  # noqa: F401  (fixtures)
from imgstream.domain.producers import synthetic


@dataclasses.dataclass
class Live:
    client: TestClient
    store: S3ObjectStore
    config: GatewayConfig
    stack: StackConfig
    start: dict[int, int]
    ring: KeyRing

    def auth(self, producer: str = synthetic("it-producer"), **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ring.issue(producer, 'producer')}", **headers}

    async def events(self, expected: int | None = None) -> list[dict[str, Any]]:
        """Every event published since the test started (validated against the schema)."""
        records = await read_between(self.stack.kafka, self.config.topic, self.start, timeout=30)
        decoded = []
        for record in records:
            event = events.validate(json.loads(record.value))
            assert record.key == event["image_id"].encode()
            decoded.append(event)
        return decoded


@pytest_asyncio.fixture
async def live(it_bucket: StackConfig, it_topic: str) -> AsyncIterator[Live]:
    config = GatewayConfig(s3=it_bucket.s3, kafka=it_bucket.kafka, topic=it_topic, gateway_id="it-gateway",
                           inspect_workers=2)
    store = S3ObjectStore(config.s3, payload_signing=False, send_sha256_checksum=True)
    publisher = KafkaEventPublisher(config.kafka, client_id="it-gateway")
    ring = KeyRing.generate()
    start = await end_offsets(config.kafka, it_topic)
    client = TestClient(TestServer(create_app(config, store, publisher, ring), **server_options(config)))
    await client.start_server()
    try:
        yield Live(client, store, config, it_bucket, start, ring)
    finally:
        await client.close()


async def test_real_images_are_stored_then_announced(live: Live) -> None:
    receipts = []
    for name, (data, content_type) in sorted(fx.real_images().items()):
        response = await live.client.post("/v1/images", data=data, headers=live.auth())
        assert response.status == 201, (name, await response.text())
        receipt = await response.json()
        assert receipt["content_type"] == content_type
        assert await live.store.get(receipt["storage_key"]) == data  # the bytes, exactly
        receipts.append(receipt)
    published = await live.events()
    assert sorted(e["image_id"] for e in published) == sorted(r["image_id"] for r in receipts)
    by_id = {e["image_id"]: e for e in published}
    for receipt in receipts:
        event = by_id[receipt["image_id"]]
        assert event["sha256"] == receipt["sha256"] and event["storage_key"] == receipt["storage_key"]
        assert event["phash"] == receipt["phash"] and event["gateway"] == "it-gateway"


async def test_event_for_every_stored_upload_and_none_for_rejected(live: Live) -> None:
    hostile = {name: factory() for name, (factory, _, _) in fx.HOSTILE.items()}
    for name, data in hostile.items():
        response = await live.client.post("/v1/images", data=data, headers=live.auth())
        assert response.status in (400, 413, 415, 422), name
    form = FormData()
    good = {"a.jpg": fx.unique_jpeg("it-a"), "b.png": fx.real("camera.png")}
    for filename, data in [("a.jpg", good["a.jpg"]), ("bomb.png", fx.png_bomb()), ("b.png", good["b.png"]),
                           ("evil.svg", fx.svg_with_script()), ("cut.jpg", fx.truncated_jpeg())]:
        form.add_field("file", data, filename=filename, content_type="image/jpeg")
    response = await live.client.post("/v1/images", data=form, headers=live.auth())
    results = (await response.json())["results"]
    assert [r["status"] for r in results] == ["stored", "error", "stored", "error", "error"]
    published = await live.events()
    assert sorted(e["image_id"] for e in published) == sorted(r["image_id"] for r in results if r["status"] == "stored")
    stored = sorted([o.key async for o in live.store.list("sha256/")])
    assert stored == sorted({"sha256/%s/%s/%s" % (h[:2], h[2:4], h)
                             for h in (hashlib.sha256(d).hexdigest() for d in good.values())})


async def test_concurrent_uploads_of_the_same_bytes(live: Live) -> None:
    data = fx.unique_jpeg("it-concurrent")
    responses = await asyncio.gather(*(live.client.post("/v1/images", data=data, headers=live.auth())
                                       for _ in range(6)))
    receipts = [await r.json() for r in responses]
    assert {r.status for r in responses} == {201}
    assert len({r["storage_key"] for r in receipts}) == 1
    assert [o.key async for o in live.store.list("sha256/")] == [receipts[0]["storage_key"]]
    published = await live.events()
    assert sorted(e["image_id"] for e in published) == sorted(r["image_id"] for r in receipts)


async def test_idempotent_retries_publish_once(live: Live) -> None:
    data = fx.unique_jpeg("it-idempotent")
    answers = []
    for _ in range(3):
        response = await live.client.post("/v1/images", data=data, headers=live.auth(**{"Idempotency-Key": "it-key"}))
        assert response.status == 201
        answers.append(await response.json())
    assert answers[0] == answers[1] == answers[2]
    image_id = image_id_for(synthetic("it-producer"), "it-key")
    assert answers[0]["image_id"] == image_id
    assert await live.store.head(receipt_key(synthetic("it-producer"), image_id)) is not None
    assert [e["image_id"] for e in await live.events()] == [image_id]


async def test_large_image_through_the_gateway(live: Live) -> None:
    data = fx.sized_jpeg(5 * 1024 * 1024)
    response = await live.client.post("/v1/images", data=data, headers=live.auth())
    assert response.status == 201, await response.text()
    receipt = await response.json()
    assert await live.store.get(receipt["storage_key"]) == data
    assert [e["size"] for e in await live.events()] == [len(data)]


async def test_readyz_sees_the_real_dependencies(live: Live) -> None:
    response = await live.client.get("/readyz")
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "ready"
    verbose = await live.client.get("/readyz?deps=1")
    assert {k: v for k, v in (await verbose.json())["checks"].items() if k in ("s3", "kafka")} == {"s3": "ok", "kafka": "ok"}


async def test_one_key_two_bodies_at_once_exactly_one_is_stored(live: Live) -> None:
    """The idempotency claim is a conditional create on the real S3 server: of concurrent
    uploads with one key and different bytes exactly one gets 201, every other one 409."""
    statuses = []
    for attempt in range(3):
        key = f"it-race-{attempt}"
        responses = await asyncio.gather(*(live.client.post("/v1/images", data=fx.unique_jpeg(f"it-race-{attempt}-{i}"),
                                                            headers=live.auth(**{"Idempotency-Key": key}))
                                           for i in range(4)))
        statuses.append(sorted(r.status for r in responses))
    assert statuses == [[201, 409, 409, 409]] * 3
    published = await live.events()
    expected = sorted(image_id_for(synthetic("it-producer"), f"it-race-{i}") for i in range(3))
    assert sorted(e["image_id"] for e in published) == expected
