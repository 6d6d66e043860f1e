"""Upload real images through the stack's gateway -> Flink -> Cassandra, then the derivatives job
(spark-submit local[2]) over the real upload topic: objects decode at the right size, format and
orientation, rows reach PostgreSQL's analytics.derivatives by CDC, and a second run redoes nothing."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from PIL import Image

from imgstream.adapters.cassandra import open_session
from imgstream.adapters.s3_sync import SyncObjectStore
from imgstream.config import StackConfig
from imgstream.domain.derivatives import DEFAULT_LADDER, fit, source_size
from imgstream.domain.tokens import KeyRing, keys_file_from_env
from tests.fixtures import derivative_images as dfx
from tests.fixtures import images as fx
from tests.fixtures.batch_env import job_env, run_job

pytestmark = pytest.mark.slow
FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
#: The pipeline decides an upload within seconds; a restarting stack may take a minute.
ROW_DEADLINE_S = 180
CDC_DEADLINE_S = 120

#: What the stats API's GET /v1/images/{id} needs for its "derivatives" field (docs/batch.md).
DERIVATIVES_OF_IMAGE = """
SELECT d.preset, d.format, d.width, d.height, d.size, d.storage_key
FROM analytics.images i JOIN analytics.derivatives d ON d.sha256 = i.sha256
WHERE i.image_id = $1 ORDER BY d.ladder, d.preset, d.format
"""


async def _upload(url: str, token: str, bodies: list[bytes]) -> list[dict[str, Any]]:
    receipts = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(f"{url}/v1/images", data=body,
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 201, await response.text()
                receipts.append(await response.json())
    return receipts


async def _pg_rows(dsn: str, image_id: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(DERIVATIVES_OF_IMAGE, image_id))
    finally:
        await conn.close()


def test_gateway_uploads_get_their_derivatives(stack_env: dict[str, str], stack_config: StackConfig) -> None:
    url = stack_env.get("IMGSTREAM_GATEWAY_URL", "http://127.0.0.1:8080")
    keys = KeyRing.load(Path(keys_file_from_env(stack_env)))
    nonce = uuid.uuid4().hex[:8]
    bodies = {"rotated.jpg": dfx.exif_rotated_jpeg(6), "photo.png": fx.real("astronaut.png"),
              "unique.jpg": fx.unique_jpeg(f"batch-e2e-{nonce}")}
    alice = asyncio.run(_upload(url, keys.issue(f"batch-a-{nonce}", "producer"), list(bodies.values())))
    # Another producer uploads the same bytes: an exact duplicate, whose derivatives are shared.
    (bob,) = asyncio.run(_upload(url, keys.issue(f"batch-b-{nonce}", "producer"), [bodies["unique.jpg"]]))
    assert bob["sha256"] == alice[2]["sha256"]
    ids = [r["image_id"] for r in alice] + [bob["image_id"]]

    cluster, session = open_session(stack_config.cassandra)
    try:
        deadline = time.monotonic() + ROW_DEADLINE_S
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline and len(statuses) < len(ids):
            for image_id in ids:
                row = session.execute("SELECT status FROM images WHERE image_id = %s", (image_id,)).one()
                if row is not None:
                    statuses[image_id] = row.status
            time.sleep(1)
        assert len(statuses) == len(ids), f"pipeline wrote {statuses} of {ids}"

        env = job_env(stack_env)
        first = run_job(env, "derivatives")
        assert first.status == 0, first.stderr[-3000:]
        assert first.summary["failed"] == 0 or all(
            f["sha256"] not in {r["sha256"] for r in alice} for f in first.summary["failures"])

        store = SyncObjectStore(stack_config.s3)
        made: dict[str, dict[tuple[str, str], Any]] = {}
        for name, receipt in zip(bodies, alice):
            rows = list(session.execute("SELECT * FROM derivatives WHERE sha256 = %s AND ladder = %s",
                                        (receipt["sha256"], DEFAULT_LADDER.version)))
            made[name] = {(r.preset, r.format): r for r in rows}
            assert sorted(made[name]) == sorted(DEFAULT_LADDER.outputs()), name
            src = source_size(bodies[name])
            for (preset, fmt), r in made[name].items():
                data = store.get(r.storage_key)
                assert data is not None and len(data) == r.size
                image = Image.open(io.BytesIO(data))
                image.load()
                assert image.format == FORMATS[fmt]
                assert image.size == (r.width, r.height) == fit(*src, DEFAULT_LADDER.preset(preset).max_edge)
        thumb = made["rotated.jpg"][("thumb", "webp")]
        assert thumb.height == 256 and thumb.width < 256  # stored landscape, displayed portrait

        second = run_job(env, "derivatives")
        assert second.status == 0
        for name, receipt in zip(bodies, alice):  # nothing of ours was made again
            rows = session.execute("SELECT preset, format, run_id FROM derivatives WHERE sha256 = %s",
                                   (receipt["sha256"],))
            assert {(r.preset, r.format): r.run_id for r in rows} == \
                {k: v.run_id for k, v in made[name].items()}
    finally:
        cluster.shutdown()

    # CDC carries the rows to PostgreSQL: the stats API's query lists them for both producers' images.
    deadline = time.monotonic() + CDC_DEADLINE_S
    pg: list[Any] = []
    while time.monotonic() < deadline:
        pg = asyncio.run(_pg_rows(str(stack_config.postgres.dsn), bob["image_id"]))
        if len(pg) == len(DEFAULT_LADDER.outputs()):
            break
        time.sleep(1)
    assert sorted((r["preset"], r["format"]) for r in pg) == sorted(DEFAULT_LADDER.outputs())
    assert all(r["width"] > 0 and r["size"] > 0 and r["storage_key"].startswith("derived/") for r in pg)
