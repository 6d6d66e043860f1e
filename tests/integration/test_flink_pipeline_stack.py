"""The pipeline job on the real stack: Kafka in, Cassandra + dead-letter topic out.

Submits its own instance of the job (own topics, consumer group, job name and producers, so
it neither disturbs nor is disturbed by the stack's job), feeds a generated stream with known
truth, and checks the Cassandra rows: verdicts and duplicate links, exact counts per window,
dead letters, late events (updating their window) and too-late events (in late_events).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from flink_jobs import testing
from flink_jobs.generator import plan, truth
from imgstream.adapters.cassandra import open_session
from imgstream.domain.events import ImageUploaded
from imgstream.domain.timefmt import format_time
from imgstream.polling import until
from imgstream.domain.producers import synthetic

WINDOW_MS = 60_000
LATENESS_MS = 30_000


def window_start_of(received_at: str) -> datetime:
    return testing.window_start_of(received_at, WINDOW_MS)


@pytest.fixture
async def pipeline_job(stack_config, stack_env):
    args = [
        "--checkpoint_interval_ms=2000", "--out_of_orderness_ms=1000",
        f"--allowed_lateness_ms={LATENESS_MS}", f"--window_ms={WINDOW_MS}",
    ]  # fmt: skip
    async with testing.pipeline_run(stack_env, stack_config.kafka.bootstrap_servers, args) as run:
        yield run.topic, run.dlq_topic, run.run_id


async def test_pipeline_on_the_stack(stack_config, pipeline_job):
    topic, dlq, run_id = pipeline_job
    bootstrap = stack_config.kafka.bootstrap_servers
    prefix = synthetic(f"it{run_id}")
    planned = testing.renamed(plan(seed=5, originals=40, exact_copies=12, near_copies=12, replays=6, malformed=5), prefix)
    expected = truth(planned)
    await testing.produce(bootstrap, topic, [p.value for p in planned])

    cluster, session = open_session(stack_config.cassandra)
    beating = testing.heartbeats(bootstrap, topic)
    await beating.__aenter__()
    try:
        # 1. every image gets exactly its reference verdict
        await testing.expect_verdicts(session, expected, "an images row for every generated upload")

        # 2. duplicate links are queryable by original
        dup = next(v for v in expected.verdicts.values() if v.status == "duplicate")
        linked = session.execute("SELECT image_id FROM duplicates WHERE duplicate_of = %s", (dup.duplicate_of,))
        assert dup.image_id in {r.image_id for r in linked}

        # 3. exact counts per final window (producers of this run only)
        await testing.expect_final_windows(session, expected, WINDOW_MS, "all windows final (heartbeats advance event time)")

        # 4. malformed events are in the dead-letter topic, with their reason
        letters = await testing.read_committed(bootstrap, dlq, expected.malformed)
        assert len(letters) == expected.malformed
        assert all(letter["reason"] and letter["topic"] == topic for letter in letters)

        # 5. lateness. Heartbeats keep the watermark ~2-3 s behind wall clock (the 1.5 s bound, the
        #    500 ms heartbeats and watermarks, decide's 1 s grid; step 3 saw final
        #    windows). Wait for a point early in a minute, so the previous minute has fired but
        #    is not final yet (allowed lateness 30 s), then send:
        #    A: behind the watermark, window not fired yet -> counted in its on-time version;
        #    B: in the previous, fired window -> late updates (new revisions);
        #    C: two hours old, window final -> late_events only.
        async def early_in_a_minute() -> bool:
            return 8 <= datetime.now(timezone.utc).second <= 15

        await until(early_in_a_minute, "an early second of a minute", timeout=70, interval=0.5)
        now = datetime.now(timezone.utc)
        minute = now.replace(second=0, microsecond=0)

        def event(producer: str, at: datetime) -> ImageUploaded:
            sha = uuid.uuid4().hex * 2
            return ImageUploaded(
                image_id=str(uuid.uuid4()), producer=producer, sha256=sha, phash=uuid.uuid4().hex[:16], size=100,
                content_type="image/png", width=1, height=1, storage_key=f"k/{sha}", received_at=format_time(at),
            )  # fmt: skip

        group_a = [event(f"{prefix}-a", now - timedelta(seconds=7)) for _ in range(2)]
        group_b = [event(f"{prefix}-b", minute - timedelta(seconds=2)) for _ in range(3)]
        group_c = [event(f"{prefix}-c", now - timedelta(hours=2))]
        await testing.produce(bootstrap, topic, [e.to_json() for e in group_a + group_b + group_c])

        def final_row(group):
            def check():
                row = session.execute(
                    "SELECT * FROM upload_stats WHERE window_start = %s AND producer = %s AND content_type = 'image/png'",
                    (window_start_of(group[0].received_at), group[0].producer),
                ).one()
                return row if row is not None and row.final else None

            return check

        row_b = await until(lambda: asyncio.to_thread(final_row(group_b)), "the late updates' window to be final",
                            timeout=testing.DEADLINE_S, interval=testing.CHECK_EVERY_S)
        # three late updates (revisions 2-4; the window's on-time version was empty), then final
        assert (row_b.uploads, row_b.late_events, row_b.revision) == (3, 3, 5)
        row_a = await until(lambda: asyncio.to_thread(final_row(group_a)), "the current window to be final",
                            timeout=150, interval=testing.CHECK_EVERY_S)
        assert (row_a.uploads, row_a.late_events, row_a.revision) == (2, 0, 2)
        select = session.prepare("SELECT lateness FROM images WHERE image_id = ?")
        lateness = {e.image_id: session.execute(select, (e.image_id,)).one().lateness for e in group_a + group_b + group_c}
        assert {lateness[e.image_id] for e in group_a + group_b} == {"late"}
        assert lateness[group_c[0].image_id] == "too_late"
        listed = session.execute(
            "SELECT image_id, behind_ms FROM late_events WHERE window_start = %s",
            (window_start_of(group_c[0].received_at),),
        )
        behind = {r.image_id: r.behind_ms for r in listed}
        assert behind[group_c[0].image_id] > 2 * 3600 * 1000 - 60_000
        # a too-late event never changes (or creates) a final window row
        assert session.execute(
            "SELECT * FROM upload_stats WHERE window_start = %s AND producer = %s AND content_type = 'image/png'",
            (window_start_of(group_c[0].received_at), group_c[0].producer),
        ).one() is None
    finally:
        await beating.__aexit__(None, None, None)
        cluster.shutdown()
