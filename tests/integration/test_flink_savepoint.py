"""Upgrade path: stop the pipeline with a savepoint, resume from it at another parallelism, and
lose nothing.

A third of a known stream goes in before the stop, a third after a resume, the rest after a
second resume; originals from the first parts must still be known to dedup after it (state
came back from the savepoint), and the final rows must equal the truth. The first job runs at
parallelism 1, the resumed one at 2, the last at 1 again (issue 17): the decide stages' keyed
state is redistributed by key group (max parallelism 120 in all), so each subtask resumes with
its shards' part of the index, the pending images and the open windows; the later parts' exact
and near copies of earlier originals find them.
The resumed job shares one slot group (``--decide_slot_group=``: 2 slots) so it fits beside the
stack's own pipeline (4 of the TaskManager's 6 slots at parallelism 2).

(Before issue 17 the first job used ``--near_bands=7`` and the resumed one re-banded the index
to 4 bands. Near shards are chosen by band layout, so a band change now needs ``make
flink-reset``: ``decide: near`` logs the band keys of another layout it finds.)
The first job also has no deletion branch (the topology before issue 15's DELETE): the
resumed ones add it, and the savepoint must still map.
"""

from __future__ import annotations

import asyncio

from flink_jobs import submit, testing
from flink_jobs.generator import plan, truth
from imgstream.adapters.cassandra import open_session
from imgstream.polling import until

WINDOW_MS = 60_000
#: Parallelism of each leg: the first job, the one resumed from its savepoint, and the one
#: resumed from that one's ("and back": key groups gathered again into one subtask).
LEGS = (1, 2, 1)
#: The jobs' out-of-orderness bound.
BOUND_MS = 1_000


async def test_stop_with_savepoint_and_resume_at_another_parallelism_and_back(stack_config, stack_env):
    bootstrap = stack_config.kafka.bootstrap_servers
    args = ["--checkpoint_interval_ms=2000", f"--out_of_orderness_ms={BOUND_MS}", f"--window_ms={WINDOW_MS}",
            "--allowed_lateness_ms=10000"]  # fmt: skip
    cluster, session = open_session(stack_config.cassandra)
    resumed: list[str] = []
    try:
        # the first job as before deletions existed (no deletion branch): the resumed ones add it,
        # and must still map the savepoint (new operators start empty)
        async with testing.pipeline_run(stack_env, bootstrap,
                                        [*args, f"--parallelism={LEGS[0]}", "--deleted_topic="]) as run:
            planned = testing.renamed(
                plan(seed=31, originals=60, exact_copies=22, near_copies=22, replays=6, malformed=4), f"sp{run.run_id}"
            )
            expected = truth(planned)
            cut = len(planned) // len(LEGS)
            parts = [planned[:cut], planned[cut:2 * cut], planned[2 * cut:]]
            select = session.prepare(testing.VERDICT_COLUMNS)
            for leg, part in enumerate(parts):
                # unreadable events are sent at their neighbours' time, not now (see log_times)
                await testing.produce(bootstrap, run.topic, [p.value for p in part], timestamps=testing.log_times(part))
                if leg == len(parts) - 1:
                    break
                ids = {p.image_id for p in part if p.image_id in expected.verdicts}
                # a part is decided once the watermark passes it: a heartbeat just before the next
                # part's first event moves it there in every partition (the stream is planned in
                # 2026-01, so heartbeats at the wall clock would make the later parts too late)
                await testing.close_part(bootstrap, run.topic, part, BOUND_MS)

                def all_rows(ids: set[str] = ids) -> bool:
                    return all(session.execute(select, (i,)).one() is not None for i in ids)

                await until(lambda: asyncio.to_thread(all_rows), f"part {leg + 1}'s rows", timeout=testing.DEADLINE_S,
                            interval=testing.CHECK_EVERY_S)
                location = await asyncio.to_thread(submit.stop_with_savepoint, run.job_name, stack_env)
                assert location.startswith("file:")
                job_args = [
                    f"--topic={run.topic}", f"--dlq_topic={run.dlq_topic}", f"--group_id=it-{run.run_id}",
                    f"--job_name={run.job_name}", "--startup_mode=earliest-offset", *args,
                    f"--parallelism={LEGS[leg + 1]}", "--decide_slot_group=",
                ]  # fmt: skip
                resumed.append(await asyncio.to_thread(submit.run, "pipeline", job_args, stack_env, location))
                assert resumed[-1] not in (run.job_id, *resumed[:-1])
            async with testing.heartbeats(bootstrap, run.topic):
                await testing.expect_verdicts(session, expected, "every image row after the resumes")
                await testing.expect_final_windows(session, expected, WINDOW_MS, "final windows")
            letters = await testing.read_committed(bootstrap, run.dlq_topic, expected.malformed + 1, deadline_s=20)
            assert len(letters) == expected.malformed
    finally:
        if resumed:  # the earlier jobs stopped with their savepoints
            await asyncio.to_thread(submit.cancel, resumed[-1], stack_env)
        cluster.shutdown()
