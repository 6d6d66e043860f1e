"""``python -m api.stats`` as a process on the real PostgreSQL: config from the environment only,
health and readiness, JSON logs, token keys rotated without a restart, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest_asyncio

from api.common.process import free_port
from imgstream.domain.tokens import KeyRing
from tests.fixtures.services import REPO, RunningService, running_service


@pytest_asyncio.fixture
async def stats_process(stack_env: dict[str, str], tmp_path: Path) -> AsyncIterator[RunningService]:
    async with running_service("api.stats", "IMGSTREAM_STATS_PORT", {**stack_env, "IMGSTREAM_STATS_POOL_MAX": "3"},
                               tmp_path) as stats:
        yield stats


async def _pause() -> None:
    await asyncio.sleep(0.2)  # between polls of a deadline loop


async def test_process_serves_rotates_keys_and_stops_gracefully(stats_process: RunningService) -> None:
    p = stats_process
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{p.url}/readyz") as response:
            assert response.status == 200, await response.text()
        headers = p.auth("it-proc-analyst", "analyst")
        async with session.get(f"{p.url}/v1/stats/summary", headers=headers) as response:
            assert response.status == 200
            body = await response.json()
            assert "freshness" in body and response.headers["X-Request-Id"]
        async with session.get(f"{p.url}/v1/stats/summary", params={"from": "nope"}, headers=headers) as response:
            assert response.status == 400
        # rotate: a token of the new key works without a restart, the old key's still works
        old = headers
        KeyRing.load(p.keys).rotated().save(p.keys)
        new = p.auth("it-proc-analyst", "analyst")
        deadline = time.monotonic() + 10
        while True:
            async with session.get(f"{p.url}/v1/freshness", headers=new) as response:
                if response.status == 200:
                    break
            assert time.monotonic() < deadline, "rotated key not picked up"
            await _pause()
        async with session.get(f"{p.url}/v1/freshness", headers=old) as response:
            assert response.status == 200
        async with session.get(f"{p.url}/metrics") as response:
            assert 'route="/v1/stats/summary",status="200"' in await response.text()
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(20) == 0
    lines = [json.loads(line) for line in p.log.read_text().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert "listening" in messages and "stopped" in messages
    requests = [line for line in lines if line["msg"] == "request"]
    assert {r["status"] for r in requests} >= {200, 400}
    assert all("Bearer" not in json.dumps(r) for r in lines)


async def test_process_exits_with_a_clear_error_when_postgres_is_unreachable(stack_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    env = {**os.environ, **stack_env, "IMGSTREAM_STATS_PORT": str(free_port()),
           "IMGSTREAM_TOKEN_KEYS_FILE": str(tmp_path / "keys.json"), "PYTHONPATH": str(REPO),
           "IMGSTREAM_STATS_PG_DSN": f"postgresql://imgstream@127.0.0.1:{free_port()}/imgstream",
           "IMGSTREAM_STATS_STARTUP_TIMEOUT": "2", "IMGSTREAM_STATS_CONNECT_TIMEOUT": "1"}
    out = subprocess.run([sys.executable, "-m", "api.stats"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    last = json.loads(out.stderr.strip().splitlines()[-1])
    assert last["level"] == "ERROR" and "PostgreSQL" in last["msg"]
