"""The stack's own gateway (started by ``make up``) end to end: upload -> object in the stack's
bucket -> event on ``images.uploaded``, and nothing for rejected files."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp

from imgstream.domain import events
from imgstream.adapters.kafka import end_offsets, read_between
from imgstream.adapters.s3 import S3ObjectStore
from imgstream.config import StackConfig
from imgstream.domain.events import TOPIC_UPLOADED
from imgstream.domain.producers import synthetic
from imgstream.domain.tokens import KeyRing, keys_file_from_env
from tests.fixtures import images as fx


async def test_stack_gateway_stores_and_announces_uploads(stack_env: dict[str, str],
                                                          stack_config: StackConfig) -> None:
    url = stack_env.get("IMGSTREAM_GATEWAY_URL", "http://127.0.0.1:8080")
    producer = synthetic(f"e2e-gw-{uuid.uuid4().hex[:8]}")
    token = KeyRing.load(Path(keys_file_from_env(stack_env))).issue(producer, "producer")
    headers = {"Authorization": f"Bearer {token}"}
    start = await end_offsets(stack_config.kafka, TOPIC_UPLOADED)
    good = [fx.unique_jpeg(f"{producer}-{i}") for i in range(3)]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as response:
            assert response.status == 200, await response.text()
        receipts = []
        for data in good:
            async with session.post(f"{url}/v1/images", data=data, headers=headers) as response:
                assert response.status == 201, await response.text()
                receipts.append(await response.json())
        for factory in (fx.truncated_jpeg, fx.png_bomb, fx.svg_with_script, fx.jpeg_html_polyglot):
            async with session.post(f"{url}/v1/images", data=factory(), headers=headers) as response:
                assert response.status in (415, 422)

    wanted = {r["image_id"] for r in receipts}
    records = await read_between(
        stack_config.kafka, TOPIC_UPLOADED, start, timeout=60,
        until=lambda rs: wanted <= {json.loads(r.value).get("image_id") for r in rs})
    mine = [events.validate(json.loads(r.value)) for r in records if json.loads(r.value).get("producer") == producer]
    assert sorted(e["image_id"] for e in mine) == sorted(wanted)  # one per stored upload, none for rejects

    store = S3ObjectStore(stack_config.s3)
    await store.start()
    try:
        for receipt, data in zip(receipts, good):
            assert await store.get(receipt["storage_key"]) == data
    finally:
        await store.close()
