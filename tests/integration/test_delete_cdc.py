"""A deletion on the real stack: DELETE on a gateway process -> images.deleted -> the pipeline
(its own job instance and topics, the stack's keyspace) -> Cassandra ``images.status`` ->
CDC -> PostgreSQL ``analytics.images``. The status changes and nothing else (a partial update);
a duplicated deletion event changes nothing more (not even the row's write time)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from flink_jobs import testing
from imgstream.adapters.cassandra import open_session
from imgstream.adapters.kafka import open_producer
from imgstream.adapters.postgres import connect
from imgstream.config import StackConfig
from imgstream.domain.events import ImageDeleted
from imgstream.domain.producers import synthetic
from imgstream.polling import until
from tests.fixtures import images as fx
from tests.fixtures.services import RunningService, running_service
from tests.fixtures.stack import it_bucket  # noqa: F401  (fixture)

#: Upload -> decided row, and row change -> PostgreSQL, each within this on a loaded stack.
DEADLINE_S = 240
ROW = "SELECT status, producer, sha256, size, storage_key, writetime(status) AS written FROM images WHERE image_id = %s"
PG_ROW = "SELECT status, producer, sha256, size, storage_key FROM analytics.images WHERE image_id = $1"


@pytest.fixture
async def deleting_stack(stack_env: dict[str, str], stack_config: StackConfig, it_bucket: StackConfig,  # noqa: F811
                         tmp_path: Path) -> AsyncIterator[tuple[RunningService, testing.PipelineRun]]:
    bootstrap = stack_config.kafka.bootstrap_servers
    args = ["--checkpoint_interval_ms=2000", "--out_of_orderness_ms=1000"]
    async with testing.pipeline_run(stack_env, bootstrap, args) as run:
        env = {**stack_env, "IMGSTREAM_GATEWAY_TOPIC": run.topic, "IMGSTREAM_GATEWAY_DELETED_TOPIC": run.deleted_topic,
               "IMGSTREAM_S3_BUCKET": it_bucket.s3.bucket, "IMGSTREAM_GATEWAY_PRESTOP_DELAY": "0"}
        async with running_service("api.gateway", "IMGSTREAM_GATEWAY_PORT", env, tmp_path, ready_path="/readyz",
                                   timeout=90) as gateway:
            async with testing.heartbeats(bootstrap, run.topic):
                yield gateway, run


async def _pg(dsn: str, image_id: str) -> Any:
    conn = await connect(dsn)
    try:
        await conn.execute("SET imgstream.include_synthetic = on")
        return await conn.fetchrow(PG_ROW, image_id)
    finally:
        await conn.close()


async def test_a_deletion_reaches_postgres_and_a_duplicate_changes_nothing(
        deleting_stack: tuple[RunningService, testing.PipelineRun], stack_config: StackConfig) -> None:
    gateway, run = deleting_stack
    producer = synthetic(f"del-cdc-{run.run_id}")
    auth = gateway.auth(producer, "producer")
    async with aiohttp.ClientSession() as http:
        receipts = []
        for nonce in ("one", "marker"):
            async with http.post(f"{gateway.url}/v1/images", data=fx.unique_jpeg(f"{run.run_id}-{nonce}"),
                                 headers=auth) as response:
                assert response.status == 201, await response.text()
                receipts.append(await response.json())
    image, marker = receipts[0]["image_id"], receipts[1]["image_id"]
    cluster, session = open_session(stack_config.cassandra)
    dsn = str(stack_config.postgres.dsn)
    try:
        def row(image_id: str) -> Any:
            return session.execute(ROW, (image_id,)).one()

        async def status_is(image_id: str, *wanted: str) -> Any:
            found = await asyncio.to_thread(row, image_id)
            return found if found is not None and found.status in wanted else None

        # both are cut from one photo: the marker may be decided a near duplicate of the first
        for i in (image, marker):
            await until(lambda i=i: status_is(i, "accepted", "duplicate"), f"{i} decided", timeout=DEADLINE_S,
                        interval=1.0)
        before = await until(lambda: _pg(dsn, image), "the accepted row in PostgreSQL", timeout=DEADLINE_S,
                             interval=1.0)
        assert before["status"] in ("accepted", "duplicate")

        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{gateway.url}/v1/images/{image}", headers=auth) as response:
                assert response.status == 204
        deleted = await until(lambda: status_is(image, "deleted"), "the deletion applied", timeout=DEADLINE_S,
                              interval=1.0)

        async def pg_deleted() -> Any:
            found = await _pg(dsn, image)
            return found if found is not None and found["status"] == "deleted" else None

        after = await until(pg_deleted, "the deletion in analytics.images", timeout=DEADLINE_S, interval=1.0)
        # a partial update: every other column as the upload wrote it
        assert {k: after[k] for k in ("producer", "sha256", "size", "storage_key")} == \
            {k: before[k] for k in ("producer", "sha256", "size", "storage_key")}

        # the same deletion again (a replay, a duplicate publish), then the marker's deletion:
        # one partition, one operator, so once the marker is applied the duplicate was handled
        duplicate = ImageDeleted(image_id=image, producer=producer, requested_at="2026-12-04T00:00:00.000Z")
        forged = ImageDeleted(image_id=marker, producer=synthetic(f"del-cdc-other-{run.run_id}"),
                              requested_at="2026-12-04T00:00:00.000Z")
        async with open_producer(stack_config.kafka) as kafka:
            for event in (duplicate, forged, duplicate):
                await kafka.send_and_wait(run.deleted_topic, value=event.to_json(), key=event.image_id.encode())
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{gateway.url}/v1/images/{marker}", headers=auth) as response:
                assert response.status == 204
        await until(lambda: status_is(marker, "deleted"), "the marker's deletion applied", timeout=DEADLINE_S,
                    interval=1.0)
        again = await asyncio.to_thread(row, image)
        assert again.status == "deleted" and again.written == deleted.written  # not written again
        # a second DELETE of a deleted image: 204, and still nothing written
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{gateway.url}/v1/images/{image}", headers=auth) as response:
                assert response.status == 204
            async with http.delete(f"{gateway.url}/v1/images/{uuid.uuid4()}", headers=auth) as response:
                assert response.status == 404
        assert (await asyncio.to_thread(row, image)).written == deleted.written
    finally:
        cluster.shutdown()
