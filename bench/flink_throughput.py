"""Throughput of the pipeline job vs a pass-through job, measured side by side in one run.

All jobs run on the local session cluster, parallelism 1, reading the same pre-filled topic
in bounded mode (they stop at the offsets current at start). Two pass-throughs copy records
Kafka -> Kafka: one all in the JVM (Flink SQL), one through a Python identity map (the
JVM <-> Python bridge every PyFlink operator pays); the pipeline cleans, drops replays,
dedups (exact and near), aggregates windows and writes Cassandra. Reported: events/s of each
(job RUNNING -> FINISHED, so start-up is included and N should be large) and the ratios; then
the end-to-end latency (received_at -> images row written) of a live paced stream, p50/p99.

    .venv/bin/python bench/flink_throughput.py [--events=20000] [--live-seconds=30] [--live-rate=50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flink_jobs import submit, testing  # noqa: E402
from flink_jobs.generator import plan  # noqa: E402
from imgstream.config import StackConfig  # noqa: E402
from imgstream.events import parse_time  # noqa: E402


def _get(rest: str, path: str) -> dict:
    with urllib.request.urlopen(f"{rest}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def busy_report(rest: str, job_id: str) -> list[str]:
    """Per vertex: share of time busy / backpressured (what bounds the job)."""
    lines = []
    for vertex in _get(rest, f"/jobs/{job_id}")["vertices"]:
        base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics?get=busyTimeMsPerSecond,backPressuredTimeMsPerSecond"
        metrics = {m["id"]: m.get("max", 0) for m in _get(rest, base)}
        lines.append(f"  busy {metrics.get('busyTimeMsPerSecond', 0) / 10:5.1f}%  backpressured "
                     f"{metrics.get('backPressuredTimeMsPerSecond', 0) / 10:5.1f}%  {vertex['name'][:90]}")  # fmt: skip
    return lines


async def timed_job(rest: str, job: str, args: list[str], env: dict[str, str], sample_after_s: float = 0) -> float:
    """Submit a bounded job, wait for FINISHED, return seconds from RUNNING to FINISHED.
    With ``sample_after_s``, print where the time goes once the job has run that long."""
    job_id = await asyncio.to_thread(submit.run, job, args, env)
    if sample_after_s:
        await asyncio.sleep(sample_after_s)  # let it reach a steady state before sampling
        if _get(rest, f"/jobs/{job_id}")["state"] == "RUNNING":
            print(f"{job} after {sample_after_s:.0f}s:", *busy_report(rest, job_id), sep="\n", flush=True)
    def ended() -> dict | None:
        body = _get(rest, f"/jobs/{job_id}")
        return body if body["state"] in ("FINISHED", "FAILED", "CANCELED") else None

    body = await testing.poll(ended, f"{job} to finish", deadline_s=1800)
    if body["state"] != "FINISHED":
        raise SystemExit(f"{job} ended {body['state']}")
    stamps = body["timestamps"]
    return (stamps["FINISHED"] - stamps["RUNNING"]) / 1000


async def throughput(config: StackConfig, env: dict[str, str], events: int, extra: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    bootstrap, rest = config.kafka.bootstrap_servers, config.flink_rest
    run = uuid.uuid4().hex[:8]
    source, sink, dlq = f"bench-in-{run}", f"bench-out-{run}", f"bench-dlq-{run}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(source, 2, 1), NewTopic(f"{sink}-jvm", 2, 1), NewTopic(f"{sink}-python", 2, 1), NewTopic(dlq, 1, 1)])
    try:
        n = max(events, 100)
        planned = testing.renamed(
            plan(seed=1, originals=int(n * 0.7), exact_copies=n // 10, near_copies=n // 10, replays=n // 20,
                 malformed=n // 20, step_ms=10,
                 start_ms=int(time.time() * 1000) - 2 * n * 10),
            f"bench{run}",
        )  # fmt: skip
        t0 = time.monotonic()
        sent = await testing.produce(bootstrap, source, [p.value for p in planned], timestamps=[p.sent_at for p in planned])
        print(f"produced {sent} events in {time.monotonic() - t0:.1f}s", flush=True)
        common = [f"--topic={source}", "--startup_mode=earliest-offset", "--bounded=1", "--parallelism=1"]
        timings = {}
        for label, python in (("jvm", "0"), ("python", "1")):
            timings[label] = await timed_job(rest, "passthrough", [*common, f"--sink_topic={sink}-{label}", f"--python={python}",
                                                                   f"--job_name=bench-{label}-{run}", f"--group_id=bench-{label}-{run}"], env)  # fmt: skip
        t_pipe = await timed_job(rest, "pipeline", [*common, f"--dlq_topic={dlq}", f"--job_name=bench-pipeline-{run}",
                                                      f"--group_id=bench-pipeline-{run}", "--checkpoint_interval_ms=10000", *extra], env,
                                 sample_after_s=60)  # fmt: skip
        r_jvm, r_py, r_pipe = sent / timings["jvm"], sent / timings["python"], sent / t_pipe
        print(f"pass-through, JVM only (Flink SQL, Kafka->Kafka): {sent} events in {timings['jvm']:.1f}s = {r_jvm:,.0f} events/s")
        print(f"pass-through via a Python identity map:          {sent} events in {timings['python']:.1f}s = {r_py:,.0f} events/s")
        print(f"pipeline (clean+dedup+windows+Cassandra):         {sent} events in {t_pipe:.1f}s = {r_pipe:,.0f} events/s")
        print(f"ratio pipeline / JVM pass-through    = {r_pipe / r_jvm:.3f}")
        print(f"ratio pipeline / Python pass-through = {r_pipe / r_py:.3f}")
    finally:
        await admin.delete_topics([source, f"{sink}-jvm", f"{sink}-python", dlq])
        await admin.close()


async def latency(config: StackConfig, env: dict[str, str], seconds: int, rate: int) -> None:
    from cassandra.cluster import Cluster

    bootstrap = config.kafka.bootstrap_servers
    args = ["--checkpoint_interval_ms=10000"]
    async with testing.pipeline_run(env, bootstrap, args) as run, testing.heartbeats(bootstrap, run.topic):
        await testing.poll(lambda: _get(config.flink_rest, f"/jobs/{run.job_id}/checkpoints")["counts"]["completed"] >= 1,
                           "the latency job to run")  # fmt: skip
        count = seconds * rate
        planned = plan(seed=2, originals=count, exact_copies=0, near_copies=0, replays=0, malformed=0,
                       start_ms=int(time.time() * 1000) + 200, step_ms=1000 // rate)  # fmt: skip
        await testing.produce(bootstrap, run.topic, [p.value for p in planned], per_second=rate)
        cluster = Cluster(list(config.cassandra.hosts), port=config.cassandra.port)
        session = cluster.connect(config.cassandra.keyspace)
        select = session.prepare("SELECT received_at, processed_at FROM images WHERE image_id = ?")
        ids = [p.image_id for p in planned]
        def written() -> list | None:
            rows = [session.execute(select, (i,)).one() for i in ids]
            return rows if all(rows) else None

        try:
            rows = await testing.poll(written, "all latency rows", deadline_s=300)
        finally:
            cluster.shutdown()
        delays = sorted((r.processed_at - r.received_at).total_seconds() for r in rows)
        p50 = statistics.median(delays)
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print(f"latency received_at -> images row, {count} events at {rate}/s: p50 {p50:.2f}s  p99 {p99:.2f}s "
              "(includes the out-of-orderness bound: a verdict waits for the watermark)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--live-seconds", type=int, default=30)
    parser.add_argument("--live-rate", type=int, default=50)
    parser.add_argument("--job-arg", action="append", default=[], help="extra --key=value for the pipeline job")
    args = parser.parse_args()
    env = submit.stack_env()
    config = StackConfig.from_env(env)
    asyncio.run(throughput(config, env, args.events, args.job_arg))
    if args.live_seconds > 0:
        asyncio.run(latency(config, env, args.live_seconds, args.live_rate))


if __name__ == "__main__":
    main()
