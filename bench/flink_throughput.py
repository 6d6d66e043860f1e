"""Throughput of the pipeline job vs a pass-through job, measured side by side in one run.

All jobs run on the local session cluster at ``--parallelism`` (default 1), reading the same pre-filled topic
in bounded mode (they stop at the offsets current at start). Two pass-throughs copy records
Kafka -> Kafka: one all in the JVM (Flink SQL), one through a Python identity map (the
JVM <-> Python bridge every PyFlink operator pays); the pipeline cleans, drops replays,
dedups (exact and near), aggregates windows and writes Cassandra. Reported: events/s of each
and the ratios, two ways: over the job's life (RUNNING -> FINISHED, start-up included: task
deployment, Python workers, Kafka transactions - seconds that dwarf a short JVM run) and
steady (events / time from the first output to the last: broker append times of the
pass-throughs' output, ``processed_at`` of the pipeline's images rows). Then the end-to-end
latency (received_at -> images row written) of a live paced stream, p50/p99, and the CPU per
event of every component while it was produced: a live stream's watermarks follow the wall
clock, so its ``decide`` stages take the steps a production job takes (a backlog's watermarks
jump seconds of event time at each emission). For each job of the throughput phase, the
CPU every stack component used while it ran, per event (``bench/cpu_budget.py``): on a machine
with few cores that, not the job alone, bounds the events/s. Under the table, the pipeline's
Python CPU split into its ``decide`` workers and the Cassandra writer's workers.

    .venv/bin/python bench/flink_throughput.py [--events=20000] [--live-seconds=30] [--live-rate=50] [--live-mix] [--parallelism=2]
        [--profile-workers=45]   # also: where the pipeline's Python workers spend their time (py-spy)

Slots: the pipeline at parallelism ``p`` takes ``2p`` task slots (the Cassandra writer, and
``decide``'s slot group, cleaning included), the pass-throughs ``p``. The local TaskManager has 6 and the stack's own
pipeline takes 4 at its parallelism 2, so a run at ``p > 1`` needs the stack's pipeline stopped first
(``python -m flink_jobs.submit savepoint``; ``make up`` resumes it), or ``--job-arg=--decide_slot_group=``
(one slot group: ``p`` slots, decide sharing the writer's Python workers). The bench checks the free
slots before it starts and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import timezone
from pathlib import Path
from typing import Sequence, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_budget import metered, report, used_between, writer_share  # noqa: E402
from bench.percentiles import describe  # noqa: E402
from bench.worker_profile import profile_pipeline  # noqa: E402
from bench import quiet  # noqa: E402
from flink_jobs import submit, testing  # noqa: E402
from flink_jobs.generator import plan  # noqa: E402
from imgstream.adapters.cassandra import open_session  # noqa: E402
from imgstream.adapters.kafka import TopicSpec, delete_topics, ensure_topics, open_consumer  # noqa: E402
from imgstream.config import KafkaConfig, StackConfig  # noqa: E402
from imgstream.domain.producers import synthetic  # noqa: E402
from imgstream.domain.timefmt import parse_time  # noqa: E402
from imgstream.polling import until  # noqa: E402


#: The stack's pid files (``local-stack/procs.py``): whose CPU the report counts.
RUN_DIR = Path(__file__).resolve().parent.parent / ".stack" / "run"


def task_times(job: dict) -> list[str]:
    """Per task (vertex) of a job's REST body: seconds busy / backpressured / idle over its life.

    Flink accumulates these per task, so they hold for the whole run (a one-second sample in the
    middle of a run mostly caught tasks between two bundles). The busiest task bounds the job,
    a backpressured one waits for the task after it.
    """
    lines = []
    for vertex in job["vertices"]:
        m = vertex.get("metrics", {})
        busy, pressed, idle = (m.get(f"accumulated-{k}-time", 0) / 1000 for k in ("busy", "backpressured", "idle"))
        lines.append(f"  busy {busy:6.1f}s  backpressured {pressed:6.1f}s  idle {idle:6.1f}s  {vertex['name'][:80]}")
    return lines


def task_traffic(job: dict, events: int) -> list[str]:
    """Per task (vertex) of a job's REST body: the records and bytes it sent on to other tasks
    over its life (Flink's ``write-records`` / ``write-bytes``; chained operators exchange nothing
    countable), and those bytes per event of ``events``. Every byte a Python operator sends is
    pickled in its worker and unpickled in the next: the near ops once weighed 2.3 KB an image."""
    lines = []
    for vertex in job["vertices"]:
        m = vertex.get("metrics", {})
        sent, records = m.get("write-bytes", 0), m.get("write-records", 0)
        if sent:
            lines.append(f"  out {records:>9,} records {sent / 1e6:8.1f} MB {sent / max(events, 1):7,.0f} B/event  "
                         f"{vertex['name'][:70]}")
    return lines


def checkpoint_sizes(job: dict, checkpoints: dict, details: dict | None, events: int) -> list[str]:
    """What the job's checkpoints cost (REST bodies of ``/jobs/<id>``, ``.../checkpoints`` and
    ``.../checkpoints/details/<latest completed>``): how many, how long, and the size of the
    last one, whole and per task, also per event of the run. With the ``hashmap`` backend every
    checkpoint is written whole, so that size is what each one writes once the input is in."""
    counts, summary = checkpoints["counts"], checkpoints.get("summary", {})
    duration = summary.get("end_to_end_duration", {})
    lines = [f"checkpoints: {counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed; end to end "
             f"avg {duration.get('avg', 0) / 1000:.1f}s, max {duration.get('max', 0) / 1000:.1f}s"]  # fmt: skip
    if not details:
        return lines
    names = {vertex["id"]: vertex["name"] for vertex in job["vertices"]}
    size = details["state_size"]
    lines.append(f"  last completed: {size / 1e6:.1f} MB of state ({size / max(events, 1):.0f} bytes per event), "
                 f"{details['checkpointed_size'] / 1e6:.1f} MB written")  # fmt: skip
    tasks = sorted(details["tasks"].items(), key=lambda item: -item[1]["state_size"])
    lines += [f"  {task['state_size'] / 1e6:8.1f} MB  {names.get(vertex, vertex)[:80]}"
              for vertex, task in tasks if task["state_size"]]
    return lines


async def timed_job(rest: str, job: str, args: list[str], env: dict[str, str], per_task: bool = False,
                    events: int = 0) -> float:
    """Submit a bounded job, wait for FINISHED, return seconds from RUNNING to FINISHED.
    With ``per_task``, print where each of its tasks spent the time (:func:`task_times`), what it
    sent on (:func:`task_traffic`) and what its checkpoints cost (:func:`checkpoint_sizes`, per event of ``events``)."""
    job_id = await asyncio.to_thread(submit.run, job, args, env)

    def ended() -> dict | None:
        body = testing.flink_get(rest, f"/jobs/{job_id}")
        return body if body["state"] in ("FINISHED", "FAILED", "CANCELED") else None

    body = await until(lambda: asyncio.to_thread(ended), f"{job} to finish", timeout=1800, interval=testing.CHECK_EVERY_S)
    if body["state"] != "FINISHED":
        raise SystemExit(f"{job} ended {body['state']}")
    failures = testing.flink_get(rest, f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
    if failures:  # RUNNING is then the last restart's: the figures are not comparable
        print(f"WARNING: {job} restarted {len(failures)}x; first: {failures[0]['exceptionName']}", flush=True)
    if per_task:
        print(f"{job}, time per task over its life:", *task_times(body), sep="\n", flush=True)
        print(f"{job}, what each task sent on:", *task_traffic(body, events), sep="\n", flush=True)
        checkpoints = testing.flink_get(rest, f"/jobs/{job_id}/checkpoints")
        last = (checkpoints.get("latest") or {}).get("completed")
        details = testing.flink_get(rest, f"/jobs/{job_id}/checkpoints/details/{last['id']}") if last else None
        print(*checkpoint_sizes(body, checkpoints, details, events), sep="\n", flush=True)
    stamps = body["timestamps"]
    return (stamps["FINISHED"] - stamps["RUNNING"]) / 1000


async def kafka_span(kafka: KafkaConfig, topic: str, partitions: int) -> float:
    """Seconds from the first to the last record appended to ``topic`` (LogAppendTime)."""
    from aiokafka import TopicPartition

    async with open_consumer(kafka) as consumer:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        starts, ends = await consumer.beginning_offsets(parts), await consumer.end_offsets(parts)
        stamps = []
        for tp in parts:
            for offset in (starts[tp], ends[tp] - 1) if ends[tp] > starts[tp] else ():
                consumer.seek(tp, offset)
                stamps.append((await consumer.getone(tp)).timestamp)
        return (max(stamps) - min(stamps)) / 1000


def cassandra_stamps(config: StackConfig, image_ids: list[str]) -> list[float]:
    """The ``processed_at`` of these images rows (seconds since the epoch), sorted."""
    from cassandra.concurrent import execute_concurrent_with_args

    cluster, session = open_session(config.cassandra)
    try:
        select = session.prepare("SELECT processed_at FROM images WHERE image_id = ?")
        results = execute_concurrent_with_args(session, select, [(i,) for i in image_ids], concurrency=64)
        rows = [r.result_or_exc.one() for r in results if r.success]
        return sorted(row.processed_at.replace(tzinfo=timezone.utc).timestamp() for row in rows if row is not None)
    finally:
        cluster.shutdown()


#: The share of a run's rows, from the first written, that bounds its steady state at each end:
#: CPU per event is also reported between these two moments, without the job's start-up (the
#: TaskManager's JIT compiling the new job's classes - 12-14 s of CPU in a 100k run, measured per
#: thread - Python workers importing their modules, opening sessions) or its draining end.
STEADY_SHARE = (0.2, 0.8)


def steady_window(stamps: list[float], share: tuple[float, float] = STEADY_SHARE) -> tuple[float, float, int]:
    """From sorted row stamps: the moments the first ``share[0]`` and ``share[1]`` of the rows
    were written, and how many rows were written between them."""
    if len(stamps) < 2:
        raise ValueError("a steady window needs at least two rows")
    lo, hi = (min(len(stamps) - 1, int(len(stamps) * s)) for s in share)
    return stamps[lo], stamps[hi], hi - lo


def slots_needed(parallelism: int, extra: list[str]) -> int:
    """Task slots the pipeline job takes: one per subtask per slot group (see the module doc)."""
    shared = any(arg.startswith("--decide_slot_group=") and arg.endswith("=") for arg in extra)
    return parallelism if shared else 2 * parallelism


def check_slots(rest: str, parallelism: int, extra: list[str]) -> None:
    """Refuse to start when the cluster cannot run the pipeline job (it would wait for slots)."""
    free, needed = testing.flink_get(rest, "/overview")["slots-available"], slots_needed(parallelism, extra)
    if free < needed:
        raise SystemExit(f"the pipeline at parallelism {parallelism} needs {needed} free task slots, the cluster has "
                         f"{free}: stop the stack's pipeline first (python -m flink_jobs.submit savepoint; make up "
                         "resumes it) or pass --job-arg=--decide_slot_group=")


class Mix(TypedDict):
    """Counts of each kind of event for the generator (``flink_jobs.generator.plan``)."""

    originals: int
    exact_copies: int
    near_copies: int
    replays: int
    malformed: int


def mix(n: int, new_only: bool = False) -> Mix:
    """The generator's counts for ``n`` events: 70 % originals, 10 % exact and 10 % near copies,
    5 % replays and 5 % malformed events (the throughput phase's mix), or new images only."""
    if new_only:
        return Mix(originals=n, exact_copies=0, near_copies=0, replays=0, malformed=0)
    return Mix(originals=int(n * 0.7), exact_copies=n // 10, near_copies=n // 10, replays=n // 20, malformed=n // 20)


async def throughput(config: StackConfig, env: dict[str, str], events: int, extra: list[str],
                     parallelism: int = 1, profile_s: int = 0) -> None:
    bootstrap, rest = config.kafka.bootstrap_servers, config.flink_rest
    check_slots(rest, parallelism, extra)
    run = uuid.uuid4().hex[:8]
    # synthetic topic names: an unreadable event there is attributed to `synthetic-unknown`
    source, sink, dlq = synthetic(f"bench-in-{run}"), synthetic(f"bench-out-{run}"), synthetic(f"bench-dlq-{run}")
    appended = {"message.timestamp.type": "LogAppendTime"}  # output spans from broker clocks
    await ensure_topics(config.kafka, [TopicSpec(source, 2), TopicSpec(f"{sink}-jvm", 2, configs=appended),
                                       TopicSpec(f"{sink}-python", 2, configs=appended), TopicSpec(dlq, 1)])
    try:
        n = max(events, 100)
        planned = testing.renamed(
            plan(seed=1, **mix(n), step_ms=10, start_ms=int(time.time() * 1000) - 2 * n * 10),
            f"bench{run}",
        )  # fmt: skip
        t0 = time.monotonic()
        sent = await testing.produce(bootstrap, source, [p.value for p in planned], timestamps=[p.sent_at for p in planned])
        print(f"produced {sent} events in {time.monotonic() - t0:.1f}s", flush=True)
        common = [f"--topic={source}", "--startup_mode=earliest-offset", "--bounded=1", f"--parallelism={parallelism}"]
        timings, cpu, timelines = {}, {}, {}
        jobs = {
            label: ("passthrough", [*common, f"--sink_topic={sink}-{label}", f"--python={python}",
                                    f"--job_name=bench-{label}-{run}", f"--group_id=bench-{label}-{run}"], False)
            for label, python in (("jvm", "0"), ("python", "1"))
        }  # fmt: skip
        # --deleted_topic= : no deletion branch (the stack's deletions are not this run's)
        jobs["pipeline"] = ("pipeline", [*common, f"--dlq_topic={dlq}", "--deleted_topic=", f"--job_name=bench-pipeline-{run}",
                                         f"--group_id=bench-pipeline-{run}", "--checkpoint_interval_ms=10000", *extra], True)  # fmt: skip
        profiled: asyncio.Task[list[str]] | None = None
        for label, (job, args, per_task) in jobs.items():
            async with metered(RUN_DIR, writer_port=config.cassandra.port) as meter:
                if label == "pipeline" and profile_s:
                    profiled = asyncio.create_task(profile_pipeline(RUN_DIR, profile_s))
                timings[label] = await timed_job(rest, job, args, env, per_task=per_task, events=sent)
            cpu[label] = (sent, meter.used())
            timelines[label] = meter.timeline
        spans = {label: await kafka_span(config.kafka, f"{sink}-{label}", 2) for label in ("jvm", "python")}
        ids = sorted({p.image_id for p in planned if p.image_id})
        stamps = await asyncio.to_thread(cassandra_stamps, config, ids)
        spans["pipeline"] = stamps[-1] - stamps[0]
        print(f"pipeline wrote {len(stamps)} images rows for {len(ids)} distinct planned ids")
        start, end, between = steady_window(stamps)
        # rows stand for events: replays and exact copies of one id write no row of their own
        cpu[f"pipeline, rows {STEADY_SHARE[0]:.0%}-{STEADY_SHARE[1]:.0%}"] = (
            round(between * sent / len(stamps)), used_between(timelines["pipeline"], start, end))
        names = {"jvm": "pass-through, JVM only (Flink SQL, Kafka->Kafka)", "python": "pass-through via a Python identity map",
                 "pipeline": "pipeline (clean+dedup+windows+Cassandra)"}  # fmt: skip
        life = {label: sent / t for label, t in timings.items()}
        steady = {label: sent / max(span, 1e-3) for label, span in spans.items()}
        for label, name in names.items():
            print(f"{name:50s} {sent} events: life {timings[label]:6.1f}s = {life[label]:7,.0f}/s   "
                  f"steady {spans[label]:6.1f}s = {steady[label]:7,.0f}/s")  # fmt: skip
        for base in ("jvm", "python"):
            print(f"ratio pipeline / {base:6s} pass-through: life {life['pipeline'] / life[base]:.3f}   "
                  f"steady {steady['pipeline'] / steady[base]:.3f}")  # fmt: skip
        print("CPU while each job ran (submission to FINISHED), by stack component; last, the pipeline's steady state\n"
              "(between the moments 20 % and 80 % of its rows were written: no start-up, no draining end):",
              *report(cpu), *writer_share(cpu), sep="\n")
        print(f"(this machine has {os.cpu_count()} cores: total ms/event T bounds a run at {os.cpu_count()} * 1000 / T events/s;"
              " the CDC chain keeps working through its backlog after the pipeline finishes)")  # fmt: skip
        if profiled is not None:
            print("(the pipeline's figures above are slowed by the profiler: py-spy pauses each worker per sample)",
                  *await profiled, sep="\n")  # fmt: skip
    finally:
        await delete_topics(config.kafka, [source, f"{sink}-jvm", f"{sink}-python", dlq])


async def latency(config: StackConfig, env: dict[str, str], seconds: int, rate: int, parallelism: int = 1,
                  extra: Sequence[str] = (), new_only: bool = True) -> None:
    """A pipeline fed ``rate`` events a second for ``seconds``, event time = now: the latency
    received_at -> images row, and the CPU per event of every component while the images were
    produced (a live stream, where the backlog of :func:`throughput` is not: its watermarks follow
    the wall clock, so the steps per second of the ``decide`` stages are a live job's). The stream
    is new images only (``new_only``), or the throughput phase's mix."""
    bootstrap = config.kafka.bootstrap_servers
    args = ["--checkpoint_interval_ms=10000", f"--parallelism={parallelism}", *extra]
    async with testing.pipeline_run(env, bootstrap, args) as run, testing.heartbeats(bootstrap, run.topic):
        def checkpointed() -> bool:
            return testing.flink_get(config.flink_rest, f"/jobs/{run.job_id}/checkpoints")["counts"]["completed"] >= 1

        await until(lambda: asyncio.to_thread(checkpointed), "the latency job to run", timeout=testing.DEADLINE_S,
                    interval=testing.CHECK_EVERY_S)
        planned = testing.renamed(
            plan(seed=2, **mix(seconds * rate, new_only), start_ms=int(time.time() * 1000) + 200, step_ms=1000 // rate),
            f"bench{run.run_id}",
        )  # fmt: skip: own producers and ids per run (a seeded plan repeats its ids)
        async with metered(RUN_DIR, writer_port=config.cassandra.port) as meter:
            start = time.time()
            await testing.produce(bootstrap, run.topic, [p.value for p in planned], per_second=rate)
            end = time.time()
        # the second half alone too: a job's first minute has its JVM compiling the new job's classes
        count, half = len(planned), (start + end) / 2
        kind = "new images" if new_only else "the bench's mix"
        cpu = {f"pipeline live, {rate}/s {kind}": (count, used_between(meter.timeline, start, end)),
               f"pipeline live, {rate}/s, second half": (count // 2, used_between(meter.timeline, half, end))}
        cluster, session = open_session(config.cassandra)
        select = session.prepare("SELECT received_at, processed_at FROM images WHERE image_id = ?")
        ids = sorted({p.image_id for p in planned if p.image_id})  # replays share an id, malformed have none
        def written() -> list | None:
            rows = [session.execute(select, (i,)).one() for i in ids]
            return rows if all(rows) else None

        try:
            rows = await until(lambda: asyncio.to_thread(written), "all latency rows", timeout=300,
                               interval=testing.CHECK_EVERY_S)
        finally:
            cluster.shutdown()
        delays = [(r.processed_at - r.received_at).total_seconds() for r in rows]
        print(f"latency received_at -> images row, {count} events at {rate}/s: {describe(delays, (0.5, 0.99))} "
              "(includes the out-of-orderness bound: a verdict waits for the watermark)")  # fmt: skip
        print("CPU while the images were produced, by stack component:", *report(cpu), *writer_share(cpu), sep="\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="0 skips the throughput phase")
    parser.add_argument("--live-seconds", type=int, default=30)
    parser.add_argument("--live-rate", type=int, default=50)
    parser.add_argument("--live-mix", action="store_true",
                        help="the live stream in the throughput phase's mix (copies, replays, malformed), not new images only")
    parser.add_argument("--job-arg", action="append", default=[], help="extra --key=value for the pipeline job")
    parser.add_argument("--parallelism", type=int, default=1, help="of every job (the pipeline takes 2x in slots)")
    parser.add_argument("--profile-workers", type=int, default=0, metavar="SECONDS",
                        help="py-spy the pipeline's Python workers this long and print where their time goes "
                             "(slows the pipeline's run; bench/worker_profile.py)")
    quiet.add_arguments(parser)
    args = parser.parse_args()
    quiet.wait_as_told(args)
    env = submit.stack_env()
    config = StackConfig.from_env(env)
    # every producer is synthetic; their rows are purged when the run ends (or at the next start)
    with testing.synthetic_run(env, "flink_throughput"):
        if args.events > 0:
            asyncio.run(throughput(config, env, args.events, args.job_arg, args.parallelism, args.profile_workers))
        if args.live_seconds > 0:
            asyncio.run(latency(config, env, args.live_seconds, args.live_rate, args.parallelism, args.job_arg,
                                not args.live_mix))


if __name__ == "__main__":
    main()
