"""Fault test: kill -9 the Flink TaskManager while a known stream flows through the pipeline.

After the stack restarts the TaskManager and the job recovers from its last checkpoint, the
final Cassandra rows must equal the known truth: every verdict, every window count, every
dead letter exactly once - nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from flink_jobs import testing
from flink_jobs.generator import plan, truth
from imgstream.adapters.cassandra import open_session
from imgstream.polling import until

pytestmark = pytest.mark.slow

WINDOW_MS = 60_000
#: The job's parallelism (issue 17: the sharded decide stages restore their key groups onto
#: 2 subtasks each); one slot group, so its 2 slots fit beside the stack's own pipeline.
PARALLELISM = 2


def _start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def kill_taskmanager(repo_root) -> int:
    """SIGKILL the TaskManager the stack started (by its pid file, after checking it is that
    process) with its whole process group - the JVM and its Python workers, as a crashed node
    loses them all. Killing the JVM alone left its workers running, orphaned, after the test."""
    pid_text, ticks_text = (repo_root / ".stack" / "run" / "flink-taskmanager.pid").read_text().split()
    pid = int(pid_text)
    assert _start_ticks(pid) == int(ticks_text), "pid file does not match the running TaskManager"
    os.killpg(pid, signal.SIGKILL)  # the stack starts it in its own session: the group is its own
    return pid


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (zombies excluded)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def completed_checkpoints(rest: str, job_id: str) -> int:
    return int(testing.flink_get(rest, f"/jobs/{job_id}/checkpoints")["counts"]["completed"])


def noticed_the_loss(rest: str, job_id: str) -> bool:
    """The cluster noticed the killed TaskManager: the job is restarting, or no TaskManager is
    registered any more (the stack has one). The job's state alone is a race: with the 1 s
    restart backoff it is RESTARTING for about a second, then RUNNING again (waiting for slots),
    and a poll on a loaded machine missed that window on a fresh stack."""
    if testing.flink_get(rest, f"/jobs/{job_id}")["state"] in ("RESTARTING", "CREATED", "INITIALIZING"):
        return True
    return int(testing.flink_get(rest, "/overview")["taskmanagers"]) == 0


async def test_taskmanager_kill_loses_and_double_counts_nothing(stack_config, stack_env, repo_root):
    bootstrap, rest = stack_config.kafka.bootstrap_servers, stack_config.flink_rest
    args = [
        "--checkpoint_interval_ms=2000", "--out_of_orderness_ms=2000",
        "--allowed_lateness_ms=20000", f"--window_ms={WINDOW_MS}",
        f"--parallelism={PARALLELISM}", "--decide_slot_group=",
    ]  # fmt: skip
    cluster, session = open_session(stack_config.cassandra)
    try:
        async with testing.pipeline_run(stack_env, bootstrap, args) as run, contextlib.AsyncExitStack() as stack:
            await until(lambda: asyncio.to_thread(lambda: completed_checkpoints(rest, run.job_id) >= 1),
                        "the job to run and checkpoint", timeout=testing.DEADLINE_S, interval=testing.CHECK_EVERY_S)
            vertices = testing.vertex_parallelism(rest, run.job_id)
            decide = {name: p for name, p in vertices.items() if "decide" in name}
            assert decide and set(decide.values()) == {PARALLELISM}, vertices
            # event time tracks the send time (8/s), a little ahead, as the gateway's would; the
            # heartbeats flowing alongside follow the plan's clock, so however far the sender
            # falls behind on a loaded machine, no planned event is ever late: every verdict is
            # decided in the truth's order, before the kill and after the recovery
            now_ms = int(time.time() * 1000)
            planned = testing.renamed(
                plan(seed=23, originals=240, exact_copies=60, near_copies=60, replays=30, malformed=15,
                     start_ms=now_ms + 500, step_ms=125),
                f"ft{run.run_id}",
            )  # fmt: skip
            expected = truth(planned)
            clock = testing.PlanClock(planned)
            await stack.enter_async_context(testing.heartbeats(bootstrap, run.topic, clock=clock.now))
            ids = list(expected.verdicts)
            select = session.prepare(testing.VERDICT_COLUMNS)

            def written() -> int:
                return sum(1 for i in ids if session.execute(select, (i,)).one() is not None)

            # ~50 s of stream; the kill comes once part of it is written
            sending = asyncio.create_task(testing.produce(bootstrap, run.topic, [p.value for p in planned], per_second=8,
                                                          on_sent=clock.sent))
            await until(lambda: asyncio.to_thread(lambda: written() >= 40), "some written rows",
                        timeout=testing.DEADLINE_S, interval=0.5)
            assert not sending.done(), "the stream must still be flowing when the TaskManager dies"
            killed = kill_taskmanager(repo_root)
            await until(lambda: asyncio.to_thread(lambda: not group_members(killed)),
                        "the TaskManager and its Python workers to be gone", timeout=30, interval=0.5)
            await until(lambda: asyncio.to_thread(noticed_the_loss, rest, run.job_id),
                        "the job to notice the lost TaskManager", timeout=120, interval=0.5)
            restart = await asyncio.to_thread(
                subprocess.run, [sys.executable, str(repo_root / "local-stack" / "stackctl.py"), "up", "flink-taskmanager"],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            why = [line for line in restart.stdout.splitlines() if "ERROR" in line]  # the reason, above the log tail
            assert restart.returncode == 0, "\n".join(why) + "\n" + restart.stdout[-2000:] + restart.stderr[-2000:]
            await sending

            await testing.expect_verdicts(session, expected, "every image row after recovery", deadline_s=420)
            await testing.expect_final_windows(session, expected, WINDOW_MS, "all windows final after recovery", deadline_s=420)
            restored = testing.flink_get(rest, f"/jobs/{run.job_id}/checkpoints")["latest"]["restored"]
            assert restored is not None, "the job must have recovered from a checkpoint"
            letters = await testing.read_committed(bootstrap, run.dlq_topic, expected.malformed + 1, deadline_s=30)
            assert len(letters) == expected.malformed  # exactly once: none lost, none repeated
    finally:
        cluster.shutdown()
