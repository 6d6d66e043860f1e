"""The sink's replay clean-up against the real Cassandra (issue 16, item 4): a replay that
decides an image differently deletes the duplicates and late_events rows of its old verdict."""

from __future__ import annotations

import uuid

from flink_jobs.cassandra_sink import CassandraWriter, superseded_writes
from flink_jobs.functions import step_writes
from imgstream.config import StackConfig
from imgstream.domain.windows import from_millis, window_start
from imgstream.domain.producers import synthetic

W = 60_000
T = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window no live producer writes


def _verdict(image_id, producer, ts, status="accepted", duplicate_of=None, lateness="on_time"):
    return {
        "image_id": image_id, "producer": producer, "sha256": "cd" * 32, "phash": "0" * 16, "size": 10,
        "content_type": "image/png", "event_time": ts, "received_at": None, "status": status,
        "duplicate_of": duplicate_of, "duplicate_kind": "exact" if duplicate_of else None,
        "distance": 0 if duplicate_of else None, "lateness": lateness, "watermark": ts + 10**6,
        "topic": "images.uploaded", "partition": 0, "offset": 0,
    }  # fmt: skip


def test_a_replayed_verdict_removes_the_rows_of_the_old_one(stack_config: StackConfig) -> None:
    producer = synthetic(f"it-replay-{uuid.uuid4().hex[:8]}")
    o, late, e = (str(uuid.uuid4()) for _ in range(3))
    writer = CassandraWriter(stack_config.cassandra)
    writer.open()
    try:
        session = writer._session
        first = [_verdict(o, producer, T + 2_000), _verdict(late, producer, T + 1_000, "duplicate", o, "late"),
                 _verdict(e, producer, T + 1_500, lateness="too_late")]  # fmt: skip
        writer.write(step_writes({"verdicts": first, "windows": []}, W))
        window = from_millis(window_start(T + 1_500, W))
        select_late = "SELECT image_id FROM late_events WHERE window_start = %s AND image_id = %s"
        select_pairs = "SELECT duplicate_of, image_id FROM duplicates WHERE duplicate_of = %s"
        assert len(list(session.execute(select_late, (window, e)))) == 1
        assert [(r.duplicate_of, r.image_id) for r in session.execute(select_pairs, (o,))] == [(o, late)]
        replay = [_verdict(late, producer, T + 1_000), _verdict(e, producer, T + 1_500),
                  _verdict(o, producer, T + 2_000, "duplicate", late)]  # fmt: skip
        previous = writer.previous([v["image_id"] for v in replay])
        assert previous[late] == {"producer": producer, "status": "duplicate", "duplicate_of": o, "lateness": "late"}
        assert previous[e]["lateness"] == "too_late"
        deletes = [w for v in replay for w in superseded_writes(v, previous.get(v["image_id"]), W)]
        writer.write(deletes + step_writes({"verdicts": replay, "windows": []}, W))

        pairs = {(r.duplicate_of, r.image_id) for oid in (o, late) for r in session.execute(select_pairs, (oid,))}
        assert pairs == {(late, o)}
        late_rows = list(session.execute(select_late, (window, e)))
        assert late_rows == []
    finally:
        writer.close()
