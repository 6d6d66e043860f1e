"""Upload -> gateway -> Kafka -> Flink -> Cassandra -> CDC -> PostgreSQL -> stats API, on the stack
``make up`` started: images uploaded through the gateway show up in the stats API (port 8090) with
the right status and counts, and the API's numbers equal the analytics views'.

The producer is synthetic (hidden from analysts): its own token reads its rows from the stats API,
and the SQL checks set the test-only switch ``imgstream.include_synthetic``."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from api.stats.ranges import ceil_to, floor_to
from api.stats.times import format_time
from imgstream.adapters.postgres import connect
from imgstream.config import StackConfig
from imgstream.domain.producers import synthetic
from imgstream.domain.tokens import KeyRing, keys_file_from_env
from imgstream.domain.windows import Interval
from imgstream.polling import until

#: Window (1 min) + the pipeline's event-time ticks + CDC delay, with room for a loaded 2-core box.
DEADLINE_S = 240.0


def unique_picture(seed: int) -> Image.Image:
    """Random 8x8 blocks scaled up: a picture no other test uploads (its perceptual hash is random)."""
    rnd = np.random.default_rng(seed)
    blocks = rnd.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((256, 256), Image.NEAREST)


def jpeg(picture: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()


def left(deadline: float) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value): the polls share one budget."""
    return deadline - time.monotonic()


async def test_uploads_show_up_in_the_stats_api(stack_env: dict[str, str], stack_config: StackConfig) -> None:
    gateway = stack_env.get("IMGSTREAM_GATEWAY_URL", "http://127.0.0.1:8080")
    api = stack_env.get("IMGSTREAM_STATS_URL", "http://127.0.0.1:8090")
    producer = synthetic(f"e2e-stats-{uuid.uuid4().hex[:8]}")
    ring = KeyRing.load(Path(keys_file_from_env(stack_env)))
    mine = {"Authorization": f"Bearer {ring.issue(producer, 'producer')}"}
    picture = unique_picture(uuid.uuid4().int % 2**32)
    original = jpeg(picture, 90)
    uploads = [original, original, jpeg(picture, 60)]  # first, exact copy, near copy (re-encoded)
    deadline = time.monotonic() + DEADLINE_S
    async with aiohttp.ClientSession() as session:
        for url in (gateway, api):
            async with session.get(f"{url}/readyz") as response:
                assert response.status == 200, f"{url} not ready (run `make up`): {await response.text()}"
        started = time.time()
        receipts = []
        for data in uploads:
            async with session.post(f"{gateway}/v1/images", data=data, headers=mine) as response:
                assert response.status == 201, await response.text()
                receipts.append(await response.json())
            await asyncio.sleep(1.1)  # distinct received_at: "first" is unambiguous
        ids = [r["image_id"] for r in receipts]

        async def image(image_id: str) -> dict[str, Any]:
            async with session.get(f"{api}/v1/images/{image_id}", headers=mine) as response:
                assert response.status == 200, await response.text()
                return await response.json()

        seen: list[str] = []

        async def decided() -> list[dict[str, Any]] | None:
            found = [await image(i) for i in ids]
            seen[:] = [f["status"] for f in found]
            return found if all(f["status"] != "pending" for f in found) else None

        first, exact, near = await until(
            decided, lambda: f"a verdict for every upload (statuses seen: {seen}; is the pipeline job running in the "
                             "Flink UI at :8081, and the CDC sink at :8083?)", timeout=left(deadline), interval=1.0)
        assert first["status"] == "accepted" and first["sha256"] == receipts[0]["sha256"]
        assert (exact["status"], exact["duplicate_kind"], exact["duplicate_of"], exact["distance"]) == (
            "duplicate", "exact", ids[0], 0)
        assert (near["status"], near["duplicate_kind"], near["duplicate_of"]) == ("duplicate", "near", ids[0])
        assert near["distance"] >= 0 and near["freshness"]["tables"]["images"]["newest_change_at"]

        span = {"from": format_time(floor_to(_utc(started - 60), Interval.MINUTE)),
                "to": format_time(ceil_to(_utc(time.time() + 60), Interval.MINUTE))}

        async def summary() -> dict[str, Any] | None:
            async with session.get(f"{api}/v1/stats/summary", params=span, headers=mine) as response:
                body = await response.json()
            return body if body.get("uploads") == 3 else None

        totals = await until(summary, "3 uploads in the summary", timeout=left(deadline), interval=1.0)
        assert (totals["accepted"], totals["duplicates"], totals["duplicates_exact"], totals["duplicates_near"],
                totals["rejected"]) == (1, 2, 1, 1, 0)
        assert totals["bytes"] == sum(len(d) for d in uploads) and totals["producer"] == producer

        async with session.get(f"{api}/v1/duplicates", params=span, headers=mine) as response:
            listing = await response.json()
        assert {d["image_id"]: d["duplicate_of"] for d in listing["duplicates"]} == {ids[1]: ids[0], ids[2]: ids[0]}
        async with session.get(f"{api}/v1/stats/uploads", headers=mine,
                               params={**span, "interval": "minute", "producer": producer}) as response:
            series = await response.json()
        assert sum(w["uploads"] for w in series["windows"]) == 3

    # the analysts' views say the same
    conn = await connect(str(stack_config.postgres.dsn))
    try:
        await conn.execute("SET imgstream.include_synthetic = on")
        row = await conn.fetchrow(
            "SELECT coalesce(sum(uploads), 0) AS uploads, coalesce(sum(bytes), 0) AS bytes, "
            "coalesce(sum(duplicates), 0) AS duplicates FROM analytics.upload_stats WHERE producer = $1", producer)
        assert (row["uploads"], row["bytes"], row["duplicates"]) == (3, totals["bytes"], 2)
        statuses = await conn.fetch("SELECT image_id, status FROM analytics.images WHERE producer = $1", producer)
        assert {r["image_id"]: r["status"] for r in statuses} == {ids[0]: "accepted", ids[1]: "duplicate",
                                                                  ids[2]: "duplicate"}
    finally:
        await conn.close()


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)
