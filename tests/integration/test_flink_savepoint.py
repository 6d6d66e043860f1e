"""Upgrade path: stop the pipeline with a savepoint, resume from it at another parallelism, and
lose nothing.

Half of a known stream goes in before the stop, half after the resume; originals from the
first half must still be known to dedup after it (state came back from the savepoint), and the
final rows must equal the truth. The first job runs at parallelism 1, the resumed one at 2
(issue 17): the decide stages' keyed state is redistributed by key group (max parallelism 120
in both), so each subtask resumes with its shards' part of the index, the pending images and
the open windows; the second half's exact and near copies of first-half originals find them.
The resumed job shares one slot group (``--decide_slot_group=``: 2 slots) so it fits beside the
stack's own pipeline (4 of the TaskManager's 6 slots at parallelism 2).

(Before issue 17 the first job used ``--near_bands=7`` and the resumed one re-banded the index
to 4 bands. Near shards are chosen by band layout, so a band change now needs ``make
flink-reset``: ``decide: near`` logs the band keys of another layout it finds.)
"""

from __future__ import annotations

import asyncio

from flink_jobs import submit, testing
from flink_jobs.generator import plan, truth
from imgstream.adapters.cassandra import open_session
from imgstream.polling import until

WINDOW_MS = 60_000
#: Parallelism before the savepoint and after the resume.
BEFORE, AFTER = 1, 2


async def test_stop_with_savepoint_and_resume(stack_config, stack_env):
    bootstrap = stack_config.kafka.bootstrap_servers
    args = ["--checkpoint_interval_ms=2000", "--out_of_orderness_ms=1000", f"--window_ms={WINDOW_MS}",
            "--allowed_lateness_ms=10000"]  # fmt: skip
    cluster, session = open_session(stack_config.cassandra)
    resumed = ""
    try:
        async with testing.pipeline_run(stack_env, bootstrap, [*args, f"--parallelism={BEFORE}"]) as run:
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
                f"--topic={run.topic}", f"--dlq_topic={run.dlq_topic}", f"--group_id=it-{run.run_id}",
                f"--job_name={run.job_name}", "--startup_mode=earliest-offset", *args,
                f"--parallelism={AFTER}", "--decide_slot_group=",
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
