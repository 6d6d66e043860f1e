"""The crash matrix (issue 16): for each component, a known stream of uploads with exact and near
duplicates flows through the real gateway, the component is SIGKILLed mid-stream (with its
process group), ``stackctl up`` brings it back, and in the end ``images``, ``duplicates`` and
``upload_stats`` in Cassandra *and* PostgreSQL, and the stats API's totals, equal the truth of
what reached Kafka (the reference deduplicator over the producer's events in the upload topic).
Then the batch ``reconcile`` job, scoped to the run's producers, must find S3, the upload topic,
Cassandra and PostgreSQL in agreement.

DESTRUCTIVE: it kills components of the running stack one after another. Run it alone, on a
stack nobody else uses: ``make chaos`` (``CHAOS_VICTIMS=kafka,gateway`` picks some). It takes
about half an hour: each kill waits for the stream to be fully decided before the next, and the
final windows close only after the pipeline's allowed lateness (5 min). The matrix is printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flink_jobs import testing
from flink_jobs.config import PipelineConfig
from imgstream.adapters.cassandra import open_session
from imgstream.adapters.postgres import connect
from imgstream.domain.tokens import KeyRing, keys_file_from_env
from imgstream.polling import until
from tests.fixtures import chaos
from tests.fixtures.batch_env import job_env, run_job
from imgstream.domain.producers import synthetic

pytestmark = pytest.mark.slow

VICTIMS = ("flink-taskmanager", "flink-jobmanager", "kafka", "cassandra", "connect", "cassandra-cdc", "gateway",
           "stats-api", "postgres")
#: The stream per victim: 120 uploads (60 originals, 30 exact and 30 near copies) at 4/s, ~30 s.
ORIGINALS, EXACT, NEAR = 60, 30, 30
#: The kill lands once this many uploads have receipts (a third of the stream).
KILL_AFTER = 40
#: Until a stream's images are all decided (a restarted Cassandra or JobManager plus a backlog).
DECIDED_DEADLINE_S = 600
#: Until the last windows are final: the pipeline's allowed lateness (5 min) after the window
#: end, plus the window and CDC; counted from the end of the last stream.
FINAL_DEADLINE_S = 900


@dataclass
class Row:
    victim: str
    producer: str
    start: dict[int, int]
    stream: chaos.Stream
    killed_at: int = 0
    recovered_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    truth: Any = None


#: The control row: the same stream and checks, nothing killed (``CHAOS_VICTIMS=none`` runs only
#: it, which kills and restarts nothing: a dry run of the matrix on a shared stack).
CONTROL = "none"


def _victims() -> list[str]:
    chosen = [v.strip() for v in os.environ.get("CHAOS_VICTIMS", "").split(",") if v.strip()]
    unknown = set(chosen) - set(VICTIMS) - {CONTROL}
    assert not unknown, f"CHAOS_VICTIMS names unknown components {unknown}; known: {VICTIMS}"
    return chosen or list(VICTIMS)


def _job_restored(rest: str, name: str) -> bool | None:
    """Whether the running job ``name`` was restored from a checkpoint/savepoint (None: not running)."""
    with urllib.request.urlopen(f"{rest}/jobs/overview", timeout=10) as resp:
        jobs = [j for j in json.loads(resp.read())["jobs"] if j["name"] == name and j["state"] == "RUNNING"]
    if not jobs:
        return None
    with urllib.request.urlopen(f"{rest}/jobs/{jobs[0]['jid']}/checkpoints", timeout=10) as resp:
        return json.loads(resp.read())["latest"]["restored"] is not None


async def _crash(row: Row, repo_root: Path) -> None:
    """Run ``row``'s stream, kill its victim mid-stream, bring the stack back, finish the stream."""
    sending = asyncio.create_task(row.stream.run())
    await until(lambda: asyncio.to_thread(lambda: len(row.stream.receipts) >= KILL_AFTER or sending.done()),
                f"{KILL_AFTER} uploads before killing {row.victim}", timeout=120, interval=0.2)
    if sending.done():
        sending.result()
        row.problems.append("the stream ended before the kill")
        return
    row.killed_at = len(row.stream.receipts)
    if row.victim == CONTROL:
        await sending
        return
    t0 = time.monotonic()
    await asyncio.to_thread(chaos.kill_component, repo_root, row.victim)
    up = await asyncio.to_thread(chaos.stackctl, repo_root, "up")
    row.recovered_s = time.monotonic() - t0
    if up.returncode != 0:
        row.problems.append(f"stackctl up failed: {up.stdout[-1500:]}")
    elif f"started  {row.victim}" not in up.stdout:
        row.problems.append(f"stackctl up did not restart {row.victim}")
    try:
        await sending
    except AssertionError as exc:
        row.problems.append(f"stream: {exc}")


async def test_crash_matrix(stack_env, stack_config, repo_root):
    gateway = stack_env.get("IMGSTREAM_GATEWAY_URL", "http://127.0.0.1:8080")
    api = stack_env.get("IMGSTREAM_STATS_URL", "http://127.0.0.1:8090")
    rest = stack_config.flink_rest
    window_ms = PipelineConfig().window_ms
    pipeline = PipelineConfig().job_name
    victims = _victims()
    if set(victims) != {CONTROL}:
        # everything up, and the running pipeline recorded as the one to resume after a crash
        up = await asyncio.to_thread(chaos.stackctl, repo_root, "up")
        assert up.returncode == 0, up.stdout[-3000:]
    ring = KeyRing.load(Path(keys_file_from_env(stack_env)))
    run_id = uuid.uuid4().hex[:6]
    rows: list[Row] = []
    cluster, session = open_session(stack_config.cassandra)
    try:
        for n, victim in enumerate(victims):
            producer = synthetic(f"chaos-{run_id}-{victim}")
            stream = chaos.Stream(gateway, ring.issue(producer, "producer"),
                                  chaos.stream_bodies(int(run_id, 16) + n, ORIGINALS, EXACT, NEAR))
            row = Row(victim, producer, await chaos.topic_offsets(stack_config), stream)
            rows.append(row)
            await _crash(row, repo_root)
            if victim == "flink-jobmanager":  # a new job: it must have started from the old one's state
                restored = await until(lambda: asyncio.to_thread(lambda: (_job_restored(rest, pipeline),)
                                                                 if _job_restored(rest, pipeline) is not None else None),
                                       "the pipeline running again", timeout=300, interval=2)
                if not restored[0]:
                    row.problems.append("the pipeline was not restored from a checkpoint after the JobManager crash")
            # decided before the next kill: each row's numbers are its own victim's
            row.truth = await chaos.log_truth(stack_config, producer, row.start)
            try:
                await testing.expect_verdicts(session, row.truth, f"{victim}: decided", deadline_s=DECIDED_DEADLINE_S)
            except AssertionError as exc:
                row.problems.append(f"not decided: {str(exc)[:300]}")

        pg = await connect(str(stack_config.postgres.dsn))
        try:
            for row in rows:
                row.problems += await chaos.check_cassandra(session, row.truth, row.producer, window_ms, FINAL_DEADLINE_S)
                row.problems += await chaos.check_postgres(pg, row.truth, row.producer, window_ms, FINAL_DEADLINE_S)
                row.problems += await chaos.check_stats_api(api, row.stream.token, row.truth, window_ms, 120)
        finally:
            await pg.close()
    finally:
        cluster.shutdown()
    # the batch reconcile job as a second oracle: S3 vs the upload topic vs Cassandra vs PostgreSQL,
    # over this run's producers only (the stack holds other runs' data)
    prefix = synthetic(f"chaos-{run_id}-")
    check = await asyncio.to_thread(run_job, job_env(stack_env), "reconcile", "--grace", "0s",
                                    "--producer-prefix", prefix)
    summary = check.summary

    lines = [f"{'victim':<18} {'uploads':>7} {'decided':>7} {'dups':>5} {'killed@':>7} {'retries':>7} "
             f"{'up (s)':>7}  result"]
    for row in rows:
        truth = row.truth
        dups = sum(1 for v in truth.verdicts.values() if v.status == "duplicate") if truth else 0
        lines.append(f"{row.victim:<18} {len(row.stream.receipts):>7} {len(truth.verdicts) if truth else 0:>7} "
                     f"{dups:>5} {row.killed_at:>7} {row.stream.retries:>7} {row.recovered_s:>7.0f}  "
                     f"{'exact' if not row.problems else 'WRONG: ' + ' | '.join(row.problems)[:400]}")
    lines.append(f"reconcile job over {prefix}*: {summary['counts']} -> "
                 + ("agree" if summary["agree"] else f"DISAGREE {summary['disagreements']} {summary['lists']}"[:600]))
    print("\ncrash matrix (Cassandra, PostgreSQL and the stats API against the truth of the upload topic)\n"
          + "\n".join(lines))
    assert all(not row.problems for row in rows), "\n".join(lines)
    expected_images = sum(len(row.truth.verdicts) for row in rows if row.truth)
    assert check.status == 0 and summary["counts"]["rows"] == expected_images, "\n".join(lines)
