"""Resumable uploads with the stock tuspy client against gateway processes on the real stack
(s3proxy multipart uploads, Kafka): an upload stopped at 40 % on one gateway is finished on
another, with one receipt and one event; abandoned uploads expire and their parts are aborted."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest_asyncio
from tusclient import client as tus_client
from tusclient.uploader import Uploader

from imgstream.adapters.kafka import end_offsets, read_between
from imgstream.adapters.s3 import S3ObjectStore
from imgstream.config import StackConfig
from imgstream.domain.producers import synthetic
from imgstream.domain.storage_layout import image_key
from tests.fixtures import images as fx
from tests.fixtures.services import RunningService, running_service
from tests.fixtures.stack import it_bucket, it_topic  # noqa: F401  (fixtures)

PRODUCER = synthetic("tus-producer")
CHUNK = 1024 * 1024


class Sha256Uploader(Uploader):
    """tuspy's uploader with Upload-Checksum in sha256 (its default is sha1)."""

    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


@pytest_asyncio.fixture
async def two_gateways(stack_env: dict[str, str], it_bucket: StackConfig, it_topic: str,
                       tmp_path: Path) -> AsyncIterator[tuple[RunningService, RunningService]]:
    env = {**stack_env, "IMGSTREAM_GATEWAY_TOPIC": it_topic, "IMGSTREAM_S3_BUCKET": it_bucket.s3.bucket,
           "IMGSTREAM_GATEWAY_PRESTOP_DELAY": "0", "IMGSTREAM_GATEWAY_UPLOAD_EXPIRY": "4",
           "IMGSTREAM_GATEWAY_UPLOAD_SWEEP_INTERVAL": "1"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_service("api.gateway", "IMGSTREAM_GATEWAY_PORT", env, tmp_path / "a",
                               ready_path="/readyz", timeout=90) as a:
        shutil.copy(a.keys, tmp_path / "b" / "token-keys.json")  # one key file for both replicas
        async with running_service("api.gateway", "IMGSTREAM_GATEWAY_PORT", env, tmp_path / "b",
                                   ready_path="/readyz", timeout=90) as b:
            yield a, b


def _uploader(gw: RunningService, data: bytes, cls: type[Uploader] = Uploader, **kwargs: object) -> Uploader:
    client = tus_client.TusClient(f"{gw.url}/v1/uploads/", headers=gw.auth(PRODUCER, "producer"))
    return cls(client=client, file_stream=io.BytesIO(data), chunk_size=CHUNK, **kwargs)


async def _open_parts(store: S3ObjectStore) -> list[str]:
    answer = await store.client.list_multipart_uploads(Bucket=store.bucket, Prefix="uploads/")
    return [u["Key"] for u in answer.get("Uploads", [])]


async def test_stopped_at_40_percent_finished_on_another_gateway_once(
        two_gateways: tuple[RunningService, RunningService], it_bucket: StackConfig, it_topic: str) -> None:
    a, b = two_gateways
    data = fx.padded_jpeg(6_500_000, "tus-resume")
    start = await end_offsets(it_bucket.kafka, it_topic)

    first = _uploader(a, data, Sha256Uploader, upload_checksum=True,
                      metadata={"filename": "resume.jpg", "idempotency_key": "tus-it-1"})
    await asyncio.to_thread(first.upload, int(len(data) * 0.4))
    assert first.offset == int(len(data) * 0.4)  # stopped there: 40 %
    url = first.url.replace(a.url, b.url)  # same upload, the other replica

    second = _uploader(b, data, Sha256Uploader, upload_checksum=True, url=url)
    assert second.offset == first.offset  # HEAD on the other gateway sees the stored bytes
    await asyncio.to_thread(second.upload)
    receipt = json.loads(second.request.response_content)
    assert receipt["sha256"] == hashlib.sha256(data).hexdigest() and receipt["size"] == len(data)

    store = S3ObjectStore(it_bucket.s3)
    await store.start()
    try:
        assert await store.get(image_key(receipt["sha256"])) == data
        assert await _open_parts(store) == []
        records = await read_between(it_bucket.kafka, it_topic, start, timeout=30)
        assert [json.loads(r.value)["image_id"] for r in records] == [receipt["image_id"]]
        # The answer to the final PATCH was lost: the client asks again and gets the same receipt.
        async with aiohttp.ClientSession(headers=a.auth(PRODUCER, "producer")) as session:
            async with session.get(url.replace(b.url, a.url)) as status:
                assert (await status.json())["receipt"] == receipt
        assert len(await read_between(it_bucket.kafka, it_topic, start, timeout=5)) == 1
    finally:
        await store.close()


async def test_declared_sha256_completes_at_creation_for_its_own_producer(
        two_gateways: tuple[RunningService, RunningService], it_bucket: StackConfig) -> None:
    a, b = two_gateways
    data = fx.padded_jpeg(300_000, "tus-dedup")
    await asyncio.to_thread(_uploader(a, data).upload)
    again = _uploader(b, data, metadata={"sha256": hashlib.sha256(data).hexdigest()}, retries=1, retry_delay=0)
    await asyncio.to_thread(again.upload)
    assert again.get_offset() == len(data)


async def test_abandoned_upload_expires_and_its_parts_are_aborted(
        two_gateways: tuple[RunningService, RunningService], it_bucket: StackConfig) -> None:
    a, _ = two_gateways
    data = fx.padded_jpeg(6_500_000, "tus-abandoned")
    abandoned = _uploader(a, data)
    await asyncio.to_thread(abandoned.upload, 5_500_000)  # one whole part is in the store
    store = S3ObjectStore(it_bucket.s3)
    await store.start()
    try:
        assert len(await _open_parts(store)) == 1
        deadline = time.monotonic() + 60
        while await _open_parts(store):  # expiry 4 s, swept every ~1 s
            assert time.monotonic() < deadline, "parts of the abandoned upload still open"
            await asyncio.sleep(0.5)
        assert [o.key async for o in store.list("uploads/")] == []
        async with aiohttp.ClientSession() as session:
            async with session.head(abandoned.url, headers={**a.auth(PRODUCER, "producer"),
                                                            "Tus-Resumable": "1.0.0"}) as gone:
                assert gone.status == 404
    finally:
        await store.close()


async def test_a_patch_broken_off_keeps_what_arrived(two_gateways: tuple[RunningService, RunningService]) -> None:
    """The link drops in the middle of a PATCH: the gateway keeps the bytes it received (whole
    parts plus the tail), and the client resumes from the offset HEAD reports."""
    a, b = two_gateways
    data = fx.padded_jpeg(6_500_000, "tus-broken")
    creator = _uploader(a, data)
    url = await asyncio.to_thread(creator.create_url)
    path = url.split(a.url, 1)[1]
    host, port = a.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"PATCH {path} HTTP/1.1", f"Host: {host}:{port}", "Tus-Resumable: 1.0.0", "Upload-Offset: 0",
             "Content-Type: application/offset+octet-stream", f"Content-Length: {len(data)}",
             f"Authorization: Bearer {a.token(PRODUCER, 'producer')}"]
    sent = 5_800_000  # one whole 5 MiB part and a tail
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data[:sent])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    resumed = _uploader(b, data, url=url.replace(a.url, b.url), retries=3, retry_delay=0.2)
    deadline = time.monotonic() + 30
    while (offset := resumed.get_offset()) == 0:  # committed once the gateway saw the link drop
        assert time.monotonic() < deadline, "nothing of the broken PATCH was kept"
        await asyncio.sleep(0.1)
    assert 5 * 1024 * 1024 < offset <= sent  # a whole part and a tail: what reached the gateway
    resumed.offset = offset
    await asyncio.to_thread(resumed.upload)
    receipt = json.loads(resumed.request.response_content)
    assert receipt["sha256"] == hashlib.sha256(data).hexdigest()
