"""Upgrade path: stop the pipeline with a savepoint, resume from it, and lose nothing.

Half of a known stream goes in before the stop, half after the resume; originals from the
first half must still be known to dedup after it (state came back from the savepoint), and the
final rows must equal the truth. The first job keeps its near-duplicate index in 7 narrow bands
(``--near_bands=7``, the layout of earlier versions), the resumed one in the default 4: it must
re-band the restored index, or the second half's near copies of first-half originals (7 of
them in this plan) would come out ``accepted``. The first job also has no deletion branch (the
topology before issue 15's DELETE): the resumed one adds it, and the savepoint must still map.
"""

from __future__ import annotations

import asyncio

from flink_jobs import submit, testing
from flink_jobs.generator import plan, truth
from imgstream.adapters.cassandra import open_session
from imgstream.polling import until

WINDOW_MS = 60_000
#: Band count of the first job's index: d + 1 bands, as before multi-index hashing.
OLD_BANDS = 7


async def test_stop_with_savepoint_and_resume(stack_config, stack_env):
    bootstrap = stack_config.kafka.bootstrap_servers
    args = ["--checkpoint_interval_ms=2000", "--out_of_orderness_ms=1000", f"--window_ms={WINDOW_MS}",
            "--allowed_lateness_ms=10000"]  # fmt: skip
    cluster, session = open_session(stack_config.cassandra)
    resumed = ""
    try:
        # the first job as before deletions existed (no deletion branch): the resumed one adds it,
        # and must still map the savepoint (new operators start empty)
        async with testing.pipeline_run(stack_env, bootstrap,
                                        [*args, f"--near_bands={OLD_BANDS}", "--deleted_topic="]) as run:
            planned = testing.renamed(
                plan(seed=31, originals=40, exact_copies=15, near_copies=15, replays=5, malformed=3), f"sp{run.run_id}"
            )
            expected = truth(planned)
            half = len(planned) // 2
            first_ids = {p.image_id for p in planned[:half] if p.image_id in expected.verdicts}
            select = session.prepare(testing.VERDICT_COLUMNS)
            await testing.produce(bootstrap, run.topic, [p.value for p in planned[:half]])
            # the first half is decided once the watermark passes it: wait for most of its rows
            def most_rows() -> bool:
                return sum(session.execute(select, (i,)).one() is not None for i in first_ids) >= len(first_ids) - 3

            await until(lambda: asyncio.to_thread(most_rows), "the first half's rows", timeout=testing.DEADLINE_S,
                        interval=testing.CHECK_EVERY_S)
            location = await asyncio.to_thread(submit.stop_with_savepoint, run.job_name, stack_env)
            assert location.startswith("file:")
            job_args = [
                f"--topic={run.topic}", f"--dlq_topic={run.dlq_topic}", f"--deleted_topic={run.deleted_topic}",
                f"--group_id=it-{run.run_id}", f"--job_name={run.job_name}", "--startup_mode=earliest-offset", *args,
            ]  # fmt: skip
            resumed = await asyncio.to_thread(submit.run, "pipeline", job_args, stack_env, location)
            assert resumed != run.job_id
            await testing.produce(bootstrap, run.topic, [p.value for p in planned[half:]])
            async with testing.heartbeats(bootstrap, run.topic):
                await testing.expect_verdicts(session, expected, "every image row after the resume")
                await testing.expect_final_windows(session, expected, WINDOW_MS, "final windows")
            letters = await testing.read_committed(bootstrap, run.dlq_topic, expected.malformed + 1, deadline_s=20)
            assert len(letters) == expected.malformed
    finally:
        if resumed:
            await asyncio.to_thread(submit.cancel, resumed, stack_env)
        cluster.shutdown()
