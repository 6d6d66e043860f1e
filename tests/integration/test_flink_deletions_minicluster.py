"""The pipeline's deletion branch as ``build(...)`` wires it, in a local PyFlink mini-cluster (the
Python worker runs in this process, on this checkout's code), against the stack's real Cassandra:
the owner's image becomes ``deleted`` by a partial update, a duplicate changes nothing, a forged
deletion (another producer) and an unknown id write nothing, a bad value is a dead letter."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from imgstream.adapters.cassandra import open_session
from imgstream.config import StackConfig
from imgstream.domain.events import ImageDeleted
from imgstream.domain.producers import synthetic
from tests.unit.test_flink_pipeline import host_process_restored  # the loopback worker's env/cwd undone

pytestmark = pytest.mark.slow


def test_deletion_branch_on_real_cassandra(stack_config: StackConfig) -> None:
    from pyflink.common import Row, Types, WatermarkStrategy
    from pyflink.common import Duration
    from pyflink.common.watermark_strategy import TimestampAssigner

    from flink_jobs.config import PipelineConfig
    from flink_jobs.pipeline import build, environment, records_from_stream
    from imgstream.domain.cleaning import heartbeat_value
    from imgstream.domain.timefmt import from_millis

    nonce = uuid.uuid4().hex[:8]
    alice, bob = synthetic(f"mc-del-a-{nonce}"), synthetic(f"mc-del-b-{nonce}")
    mine, theirs, unknown = (str(uuid.uuid4()) for _ in range(3))
    cluster, session = open_session(stack_config.cassandra)
    insert = session.prepare("INSERT INTO images (image_id, producer, status, sha256, size, storage_key, processed_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)")
    now = datetime.now(timezone.utc)
    for image_id, producer in ((mine, alice), (theirs, bob)):
        session.execute(insert, (image_id, producer, "accepted", "ab" * 32, 1234, "sha256/ab/ab/" + "ab" * 32, now))
    try:
        def deletion(image_id: str, producer: str) -> str:
            return ImageDeleted(image_id=image_id, producer=producer, requested_at="2026-12-04T12:00:00.000Z",
                                gateway="mc").to_json().decode()

        values = [deletion(mine, alice), deletion(mine, alice), deletion(theirs, alice), deletion(unknown, alice),
                  "not json"]

        class FromField(TimestampAssigner):
            def extract_timestamp(self, value, record_timestamp):  # type: ignore[no-untyped-def]
                return value[4]

        with host_process_restored():
            config = PipelineConfig(cassandra=stack_config.cassandra, deleted_topic="mc-deletions",
                                    checkpoint_interval_ms=60_000, parallelism=1)
            env, t_env = environment(config, jars=[], extra={"python.operator-chaining.enabled": "false"})
            raw_type = Types.ROW_NAMED(
                ["value", "topic", "partition", "offset", "ts"],
                [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(), Types.LONG()])
            ts = 1_700_000_000_000
            raw = env.from_collection([Row(heartbeat_value(from_millis(ts)), "mc-uploads", 0, 0, ts)],
                                      type_info=raw_type).assign_timestamps_and_watermarks(
                WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(1000))
                .with_timestamp_assigner(FromField()))
            deletions = env.from_collection(values, type_info=Types.STRING())
            streams = build(env, t_env, records_from_stream(t_env, raw, config), config, write=True,
                            deletions=deletions)
            assert streams.deletion_dead_letters is not None
            with streams.deletion_dead_letters.execute_and_collect() as results:
                letters = [json.loads(r) for r in results]

        assert len(letters) == 1 and letters[0]["topic"] == "mc-deletions" and letters[0]["reason"] == "not_json"
        rows = {r.image_id: r for r in (session.execute(
            "SELECT image_id, producer, status, sha256, size, storage_key FROM images WHERE image_id = %s", (i,)).one()
            for i in (mine, theirs, unknown)) if r is not None}
        assert rows[mine].status == "deleted"
        # a partial update: the rest of the row as it was
        assert (rows[mine].producer, rows[mine].sha256, rows[mine].size) == (alice, "ab" * 32, 1234)
        assert rows[theirs].status == "accepted"  # another producer's deletion changed nothing
        assert unknown not in rows  # no row made up for an unknown id
    finally:
        for image_id in (mine, theirs, unknown):
            session.execute("DELETE FROM images WHERE image_id = %s", (image_id,))
        cluster.shutdown()
