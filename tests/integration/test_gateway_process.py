"""``python -m api.gateway`` as a process on the real stack: config from env, readiness, JSON logs,
key rotation without restart, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest_asyncio

from imgstream.config import StackConfig
from imgstream.domain.tokens import KeyRing
from imgstream.polling import until
from tests.fixtures import images as fx
from tests.fixtures.services import RunningService, running_service
from tests.fixtures.stack import it_bucket, it_topic  # noqa: F401  (fixtures)
from imgstream.domain.producers import synthetic

PRODUCER = synthetic("proc-producer")


async def received_bytes(session: aiohttp.ClientSession, url: str) -> float:
    """The gateway's count of image bytes read from request bodies (its /metrics)."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("imgstream_gateway_received_bytes_total "))


@pytest_asyncio.fixture
async def gateway_process(stack_env: dict[str, str], it_bucket: StackConfig, it_topic: str,
                          tmp_path: Path) -> AsyncIterator[RunningService]:
    env = {**stack_env, "IMGSTREAM_GATEWAY_TOPIC": it_topic, "IMGSTREAM_S3_BUCKET": it_bucket.s3.bucket,
           "IMGSTREAM_GATEWAY_SHUTDOWN_TIMEOUT": "20"}
    async with running_service("api.gateway", "IMGSTREAM_GATEWAY_PORT", env, tmp_path, ready_path="/readyz",
                               timeout=90) as gateway:
        yield gateway


async def test_upload_rotation_and_graceful_stop(gateway_process: RunningService) -> None:
    gw = gateway_process
    async with aiohttp.ClientSession() as session:
        old_token = gw.token(PRODUCER, "producer")
        async with session.post(f"{gw.url}/v1/images", data=fx.real("rocket.jpg"),
                                headers={"Authorization": f"Bearer {old_token}"}) as response:
            assert response.status == 201, await response.text()

        # Rotate the key file behind the running gateway: new tokens work without a restart,
        # old ones keep working until their key is retired.
        ring = KeyRing.load(gw.keys).rotated()
        ring.save(gw.keys)
        new_token = ring.issue(PRODUCER, "producer")

        async def new_key_accepted() -> bool:
            async with session.post(f"{gw.url}/v1/images", data=fx.unique_jpeg("rotated"),
                                    headers={"Authorization": f"Bearer {new_token}"}) as response:
                assert response.status in (201, 401), await response.text()
                return response.status == 201

        await until(new_key_accepted, "the gateway to accept a token of the rotated key", timeout=10, interval=0.3)
        async with session.post(f"{gw.url}/v1/images", data=fx.unique_jpeg("old-still-ok"),
                                headers={"Authorization": f"Bearer {old_token}"}) as response:
            assert response.status == 201

        # SIGTERM with an upload in flight: the upload still completes, then the process exits 0.
        big = fx.sized_jpeg(5 * 1024 * 1024)

        async def slow_body() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 256 * 1024):
                yield big[i : i + 256 * 1024]
                await asyncio.sleep(0.05)

        before = await received_bytes(session, gw.url)
        upload = asyncio.create_task(session.post(f"{gw.url}/v1/images", data=slow_body(),
                                                  headers={"Authorization": f"Bearer {new_token}"}))

        async def upload_arriving() -> bool:
            return await received_bytes(session, gw.url) > before

        await until(upload_arriving, "the gateway to read the first bytes of the slow upload", timeout=10,
                    interval=0.02)
        assert not upload.done(), "the upload must still be in flight when SIGTERM arrives"
        gw.proc.send_signal(signal.SIGTERM)
        response = await upload
        assert response.status == 201, await response.text()
        assert (await response.json())["size"] == len(big)
    assert await asyncio.to_thread(gw.proc.wait, 30) == 0

    lines = [json.loads(line) for line in gw.log.read_text().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert "listening" in messages and "signal received: draining" in messages and messages[-1] == "stopped"
    stored = [line for line in lines if line["msg"] == "image stored"]
    assert len(stored) == 4 and all(line["producer"] == PRODUCER for line in stored)
