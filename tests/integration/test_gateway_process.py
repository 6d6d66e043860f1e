"""``python -m api.gateway`` as a process on the real stack: config from env, readiness, JSON logs,
key rotation without restart, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest_asyncio

from imgstream.config import StackConfig
from imgstream.tokens import KeyRing, ensure_key_file
from tests.fixtures import images as fx
from tests.fixtures.stack import it_bucket, it_topic  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, keys: Path) -> None:
        self.proc, self.url, self.keys = proc, url, keys

    def token(self, producer: str = "proc-producer") -> str:
        return KeyRing.load(self.keys).issue(producer, "producer")


@pytest_asyncio.fixture
async def gateway_process(stack_env: dict[str, str], it_bucket: StackConfig, it_topic: str,
                          tmp_path: Path) -> AsyncIterator[Process]:
    port = free_port()
    keys = tmp_path / "token-keys.json"
    ensure_key_file(keys)
    env = {**os.environ, **stack_env, "IMGSTREAM_GATEWAY_PORT": str(port), "IMGSTREAM_GATEWAY_TOPIC": it_topic,
           "IMGSTREAM_S3_BUCKET": it_bucket.s3.bucket, "IMGSTREAM_TOKEN_KEYS_FILE": str(keys),
           "IMGSTREAM_GATEWAY_SHUTDOWN_TIMEOUT": "20", "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "api.gateway"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "gateway not ready in 90 s"
            await asyncio.sleep(0.2)
    try:
        yield Process(proc, url, keys)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


async def test_upload_rotation_and_graceful_stop(gateway_process: Process, tmp_path: Path) -> None:
    gw = gateway_process
    async with aiohttp.ClientSession() as session:
        old_token = gw.token()
        async with session.post(f"{gw.url}/v1/images", data=fx.real("rocket.jpg"),
                                headers={"Authorization": f"Bearer {old_token}"}) as response:
            assert response.status == 201, await response.text()

        # Rotate the key file behind the running gateway: new tokens work without a restart,
        # old ones keep working until their key is retired.
        ring = KeyRing.load(gw.keys).rotated()
        ring.save(gw.keys)
        new_token = ring.issue("proc-producer", "producer")
        deadline = time.monotonic() + 10
        while True:
            async with session.post(f"{gw.url}/v1/images", data=fx.unique_jpeg("rotated"),
                                    headers={"Authorization": f"Bearer {new_token}"}) as response:
                if response.status == 201:
                    break
                assert response.status == 401 and time.monotonic() < deadline
            await asyncio.sleep(0.3)
        async with session.post(f"{gw.url}/v1/images", data=fx.unique_jpeg("old-still-ok"),
                                headers={"Authorization": f"Bearer {old_token}"}) as response:
            assert response.status == 201

        # SIGTERM with an upload in flight: the upload still completes, then the process exits 0.
        big = fx.sized_jpeg(5 * 1024 * 1024)

        async def slow_body() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 256 * 1024):
                yield big[i : i + 256 * 1024]
                await asyncio.sleep(0.05)

        upload = asyncio.create_task(session.post(f"{gw.url}/v1/images", data=slow_body(),
                                                  headers={"Authorization": f"Bearer {new_token}"}))
        await asyncio.sleep(0.3)
        gw.proc.send_signal(signal.SIGTERM)
        response = await upload
        assert response.status == 201, await response.text()
        assert (await response.json())["size"] == len(big)
    assert await asyncio.to_thread(gw.proc.wait, 30) == 0

    lines = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert "listening" in messages and "signal received: draining" in messages and messages[-1] == "stopped"
    stored = [line for line in lines if line["msg"] == "image stored"]
    assert len(stored) == 4 and all(line["producer"] == "proc-producer" for line in stored)
