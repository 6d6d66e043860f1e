"""Deleting through the real DELETE, then collecting with the real GC: a gateway process -> Kafka ->
a pipeline job on the Flink session cluster -> Cassandra -> ``gc --apply --grace 0s`` (spark-submit).

Two producers upload the same bytes (one object, content addressing). One deletes: GC keeps the
object, the other still uses it. The other deletes too: the next GC run quarantines it, the one
after re-checks and deletes it. Everything runs in an isolated world (a bucket, upload and
deletion topics, and a keyspace of its own; the gateway and the pipeline job are this test's
own instances of the code under test), so a GC with no grace collects nothing of the stack's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from flink_jobs import testing
from imgstream.domain.storage_layout import image_key, quarantine_key
from imgstream.polling import until
from imgstream.domain.producers import synthetic
from tests.fixtures import images as fx
from tests.fixtures.batch_env import World, world  # noqa: F401  (fixture)
from tests.fixtures.services import RunningService, running_service
from tests.fixtures.stack import it_bucket, it_topic  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow
#: The pipeline decides an upload (or applies a deletion) within seconds once it runs; a job
#: just submitted to a busy session cluster takes a while to start.
ROW_DEADLINE_S = 240


@dataclasses.dataclass
class Deployment:
    world: World
    gateway: RunningService
    run: testing.PipelineRun


@pytest.fixture
async def deployment(world: World, stack_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Deployment]:  # noqa: F811
    keyspace = world.config.cassandra.keyspace
    bootstrap = world.config.kafka.bootstrap_servers
    env = {**stack_env, "IMGSTREAM_CASSANDRA_KEYSPACE": keyspace}  # the job writes the world's tables
    args = ["--checkpoint_interval_ms=2000", "--out_of_orderness_ms=1000", f"--topic={world.topic}"]
    async with testing.pipeline_run(env, bootstrap, args) as run:
        gateway_env = {**env, "IMGSTREAM_GATEWAY_TOPIC": world.topic, "IMGSTREAM_S3_BUCKET": world.config.s3.bucket,
                       "IMGSTREAM_GATEWAY_DELETED_TOPIC": run.deleted_topic, "IMGSTREAM_GATEWAY_PRESTOP_DELAY": "0"}
        async with running_service("api.gateway", "IMGSTREAM_GATEWAY_PORT", gateway_env, tmp_path,
                                   ready_path="/readyz", timeout=90) as gateway:
            async with testing.heartbeats(bootstrap, world.topic):  # event time moves: uploads get decided
                yield Deployment(world, gateway, run)


async def _upload(gw: RunningService, producer: str, body: bytes) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/v1/images", data=body, headers=gw.auth(producer, "producer")) as response:
            assert response.status == 201, await response.text()
            return dict(await response.json())


async def _delete(gw: RunningService, producer: str, image_id: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.delete(f"{gw.url}/v1/images/{image_id}", headers=gw.auth(producer, "producer")) as response:
            body = await response.read()
            return response.status, body


def _status(world: World, image_id: str) -> str | None:
    row = world.session.execute("SELECT status FROM images WHERE image_id = %s", (image_id,)).one()
    return None if row is None else row.status


async def _wait_status(world: World, image_id: str, wanted: set[str], what: str) -> str:
    async def check() -> str | None:
        status = await asyncio.to_thread(_status, world, image_id)
        return status if status in wanted else None

    return await until(check, what, timeout=ROW_DEADLINE_S, interval=1.0)


async def test_gc_keeps_shared_bytes_until_the_last_owner_deleted(deployment: Deployment) -> None:
    world, gw = deployment.world, deployment.gateway
    nonce = deployment.run.run_id
    alice, bob, mallory = (synthetic(f"gcdel-{n}-{nonce}") for n in ("alice", "bob", "mallory"))
    shared = fx.unique_jpeg(f"gc-delete-e2e-{nonce}")
    a = await _upload(gw, alice, shared)
    b = await _upload(gw, bob, shared)
    assert a["sha256"] == b["sha256"] and a["storage_key"] == b["storage_key"] == image_key(a["sha256"])
    key = a["storage_key"]
    await _wait_status(world, a["image_id"], {"accepted", "duplicate"}, "alice's upload decided")
    await _wait_status(world, b["image_id"], {"accepted", "duplicate"}, "bob's upload decided")

    # someone else's image answers like an unknown one, and changes nothing
    assert (await _delete(gw, mallory, a["image_id"]))[0] == 404
    assert (await _delete(gw, alice, "not-an-id"))[0] == 400

    # bob deletes his: the bytes stay, alice still uses them
    assert await _delete(gw, bob, b["image_id"]) == (204, b"")
    await _wait_status(world, b["image_id"], {"deleted"}, "bob's deletion applied by the pipeline")
    assert _status(world, a["image_id"]) in ("accepted", "duplicate")
    kept = (await asyncio.to_thread(world.run, "gc", "--apply", "--grace", "0s"))
    assert kept.status == 0, kept.stderr[-3000:]
    assert kept.summary["quarantined"] == 0 and kept.summary["failed"] == 0
    assert world.store.head(key) is not None

    # alice deletes hers (twice: the second is the same 204, nothing more happens)
    assert await _delete(gw, alice, a["image_id"]) == (204, b"")
    await _wait_status(world, a["image_id"], {"deleted"}, "alice's deletion applied by the pipeline")
    assert await _delete(gw, alice, a["image_id"]) == (204, b"")
    assert _status(world, a["image_id"]) == "deleted"

    # the next run quarantines the bytes (no live image references them) ...
    first = (await asyncio.to_thread(world.run, "gc", "--apply", "--grace", "0s"))
    assert first.status == 0, first.stderr[-3000:]
    assert first.summary["quarantined"] == 1 and first.summary["reasons"] == {"deleted_image": 1}
    assert world.store.head(key) is None and world.store.head(quarantine_key(key)) is not None
    # ... and the one after re-checks and deletes them
    second = (await asyncio.to_thread(world.run, "gc", "--apply", "--grace", "0s"))
    assert second.status == 0, second.stderr[-3000:]
    assert second.summary["deleted"] == 1
    assert world.store.head(quarantine_key(key)) is None and world.store.head(key) is None
    actions = {(r.action, r.storage_key) for r in world.rows("gc_log")}
    assert ("quarantine", key) in actions and ("delete", key) in actions

    # a deletion is not an un-upload: both uploads still count in their window (once it fired)
    def counted() -> list[Any] | None:
        rows = [r for r in world.rows("upload_stats") if r.producer in (alice, bob)]
        return rows if sum(r.uploads for r in rows) == 2 else None

    rows = await until(lambda: asyncio.to_thread(counted), "both uploads counted in their window",
                       timeout=ROW_DEADLINE_S, interval=2.0)
    assert {r.producer for r in rows} == {alice, bob} and sum(r.duplicates for r in rows) == 1
