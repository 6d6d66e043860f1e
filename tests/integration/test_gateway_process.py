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
           "IMGSTREAM_GATEWAY_SHUTDOWN_TIMEOUT": "20", "IMGSTREAM_GATEWAY_PRESTOP_DELAY": "3",
           # more decode workers than this machine's two cores, as on a big node: the decode
           # memory budget, not the pool size, must keep the process's memory bounded
           "IMGSTREAM_GATEWAY_WORKERS": "4"}
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
        # Pre-stop: readiness fails at once, yet new uploads are still served for the delay.
        async def draining() -> bool:
            async with session.get(f"{gw.url}/readyz") as ready:
                return ready.status == 503 and (await ready.json())["status"] == "draining"

        await until(draining, "readiness to fail after SIGTERM", timeout=2, interval=0.05)
        async with session.post(f"{gw.url}/v1/images", data=fx.unique_jpeg("during-prestop"),
                                headers={"Authorization": f"Bearer {new_token}"}) as during:
            assert during.status == 201
        response = await upload
        assert response.status == 201, await response.text()
        assert (await response.json())["size"] == len(big)
    assert await asyncio.to_thread(gw.proc.wait, 30) == 0

    lines = [json.loads(line) for line in gw.log.read_text().splitlines() if line.startswith("{")]
    # the gateway's own lines: the Cassandra driver may still log at interpreter exit (its event
    # loop thread joined with a 1 s timeout, "could not be joined" on a busy machine)
    messages = [line["msg"] for line in lines if not line.get("logger", "").startswith("cassandra")]
    assert "listening" in messages and "signal received: draining" in messages and messages[-1] == "stopped"
    stored = [line for line in lines if line["msg"] == "image stored"]
    assert len(stored) == 5 and all(line["producer"] == PRODUCER for line in stored)


def _wide_16_bit_png(seed: int) -> bytes:
    """A ~100 KB PNG of 10,000 x 5,000 16-bit samples (50 MP, at the pixel limit)."""
    import io

    import numpy as np
    from PIL import Image

    row = (np.arange(10_000, dtype=np.uint16) * 6 + seed).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(row[None, :].repeat(5_000, axis=0)).save(out, format="PNG")
    return out.getvalue()


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


async def test_50_megapixel_16_bit_pngs_leave_the_gateway_under_600_mb(gateway_process: RunningService) -> None:
    """Decompression-sized work from a tiny body: three at once, on a process with the default
    worker pool. The decode budget lets one such decode run at a time; the peak RSS of the whole
    gateway process (VmHWM) stays under 600 MB."""
    gw = gateway_process
    bodies = [_wide_16_bit_png(seed) for seed in range(3)]
    async with aiohttp.ClientSession(headers=gw.auth(PRODUCER, "producer")) as session:

        async def upload(body: bytes) -> tuple[int, dict]:
            async with session.post(f"{gw.url}/v1/images", data=body) as response:
                return response.status, await response.json()

        answers = await asyncio.gather(*(upload(body) for body in bodies))
    assert [status for status, _ in answers] == [201] * 3, answers
    assert {(a["width"], a["height"]) for _, a in answers} == {(10_000, 5_000)}
    peak = _peak_rss_mb(gw.proc.pid)
    print(f"gateway peak RSS {peak:.0f} MB")
    assert peak < 600, f"gateway peak RSS {peak:.0f} MB"
