"""Helpers for tests and benchmarks that run the pipeline on the real stack.

An own job instance per run (own topics, consumer group, job name), bounded polls instead of
sleeps (:func:`imgstream.polling.until`), and Kafka helpers on :mod:`imgstream.adapters.kafka`.
A run's topics and producers are synthetic (:data:`imgstream.domain.producers.SYNTHETIC_PREFIX`):
its rows share the stack's tables but never the user's views, and are deleted after the run
(:mod:`imgstream.ops.synthetic`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import urllib.request
import uuid
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence

from imgstream.adapters.kafka import TopicSpec, delete_topics, ensure_topics, open_consumer, open_producer
from imgstream.config import KafkaConfig, StackConfig
from imgstream.ops.synthetic import lock_path, purge_stack, synthetic_session
from imgstream.domain.producers import SYNTHETIC_PREFIX, is_synthetic, synthetic
from imgstream.domain.timefmt import parse_time
from imgstream.polling import until

from flink_jobs import heartbeat, submit
from flink_jobs.generator import Planned

#: How long a test waits for the pipeline's results: a cold job start plus a few windows on a
#: loaded 2-core machine.
DEADLINE_S = 240.0
#: How often the results are read meanwhile (each check is a round of Cassandra queries).
CHECK_EVERY_S = 2.0

log = logging.getLogger(__name__)


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    *,
    per_second: float | None = None,
    timestamps: Sequence[int | None] | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send values (keyed by index) and flush; ``per_second`` paces the stream; ``timestamps``
    (epoch ms, ``None`` = now) set the record timestamps; ``on_sent(i)`` is told of each value
    handed to the producer. Returns the count."""
    sent = 0
    start = time.monotonic()
    worst = 0.0  # furthest behind the pace (s): a paced stream's event times assume it keeps up
    async with open_producer(KafkaConfig(bootstrap_servers=bootstrap), enable_idempotence=True) as producer:
        for value in values:
            timestamp = timestamps[sent] if timestamps is not None else None
            await producer.send(topic, value, key=str(sent).encode(), timestamp_ms=timestamp)
            if on_sent is not None:
                on_sent(sent)
            sent += 1
            if per_second:
                ahead = start + sent / per_second - time.monotonic()
                worst = max(worst, -ahead)
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing a generator, not waiting for a result
        await producer.flush()
    if worst > 0.5:
        log.warning("the paced stream fell %.2f s behind its pace (%d values at %s/s)", worst, sent, per_second)
    return sent


def log_times(planned: Sequence[Planned]) -> list[int | None]:
    """Kafka timestamps for a stream planned in the past: each event's own time, an unreadable
    one the time of the event before it. Sent at the wall clock instead, an unreadable event's
    event time (the Kafka timestamp: the clamp's fallback) would move its partition's watermark
    to now, and every later planned event would be too late."""
    out: list[int | None] = []
    last: int | None = None
    for p in planned:
        last = p.event_time or last
        out.append(last)
    return out


async def close_part(bootstrap: str, topic: str, part: Sequence[Planned], bound_ms: int) -> None:
    """Move every partition's watermark to just before the next planned event, so the whole of
    ``part`` is decided without heartbeats at wall-clock time (which would make a later part of
    a stream planned in the past too late): one heartbeat per partition at the part's last
    event time + one step - 1 ms + the out-of-orderness bound ``bound_ms``."""
    times = [p.event_time for p in part if p.event_time]
    step = times[-1] - times[-2] if len(times) > 1 else 1
    at = datetime.fromtimestamp((times[-1] + step - 1 + bound_ms) / 1000, tz=timezone.utc)
    async with open_producer(KafkaConfig(bootstrap_servers=bootstrap), linger_ms=0) as producer:
        await heartbeat.beat_once(producer, topic, sorted(await producer.partitions_for(topic)), "test", at=at)


async def read_committed(bootstrap: str, topic: str, expected: int, deadline_s: float = 240) -> list[dict[str, Any]]:
    """Read a topic from the start (committed transactions only) until ``expected`` records or
    ``deadline_s`` passed; returns what was read (a caller may wait out the deadline on purpose, to
    show that no more than ``expected - 1`` records come)."""
    got: list[dict[str, Any]] = []
    async with open_consumer(KafkaConfig(bootstrap_servers=bootstrap), topic) as consumer:
        deadline = time.monotonic() + deadline_s
        while len(got) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=2000)
            got.extend(json.loads(r.value) for records in batch.values() for r in records)
    return got


@contextmanager
def synthetic_run(env: Mapping[str, str], what: str) -> Iterator[None]:
    """Bracket a test session or a benchmark that writes synthetic data to the stack: leftovers
    of an interrupted earlier run are purged at the start, this run's rows at the end, each
    only when no other run is in progress (:func:`imgstream.ops.synthetic.synthetic_session`).
    Not for use inside a running event loop (the purge runs its own)."""
    config = StackConfig.from_env(env)
    stack_dir = Path(env.get("IMGSTREAM_STACK_DIR") or env.get("IMGSTREAM_STATE_DIR")
                     or Path(__file__).resolve().parents[1] / ".stack")

    def clean(when: str) -> None:
        report = asyncio.run(purge_stack(config))
        print(f"[{what}] synthetic data purged at the {when}: {report}", file=sys.stderr, flush=True)

    with synthetic_session(lock_path(stack_dir), clean):
        yield


class PlanClock:
    """Event time as far as a paced plan has been sent: the plan clock (``Planned.sent_at``) of
    the last value handed to the producer, and once the plan is all sent, that plus the wall
    time since. Heartbeats on this clock never pass a planned event still to come, however far
    the sender falls behind its pace on a loaded machine; wall-clock heartbeats would, and make
    it a late event that is decided out of the truth's order."""

    def __init__(self, planned: Sequence[Planned]) -> None:
        self._times = [p.sent_at for p in planned]
        self._last = next((t for t in self._times if t is not None), None)
        self._ended_at: float | None = None

    def sent(self, index: int) -> None:
        """``produce``'s ``on_sent``: value ``index`` of the plan is on its way."""
        if self._times[index] is not None:
            self._last = self._times[index]
        if index == len(self._times) - 1:
            self._ended_at = time.monotonic()

    def now(self) -> datetime:
        """The time a heartbeat may carry now."""
        base = self._last if self._last is not None else int(time.time() * 1000)
        if self._ended_at is not None:
            base += int((time.monotonic() - self._ended_at) * 1000)
        return datetime.fromtimestamp(base / 1000, tz=timezone.utc)


@asynccontextmanager
async def heartbeats(bootstrap: str, topic: str, interval_ms: int = heartbeat.DEFAULT_INTERVAL_MS,
                     clock: Callable[[], datetime] | None = None) -> AsyncIterator[None]:  # fmt: skip
    """Run heartbeats into ``topic`` for the duration of the block (what the stack's heartbeat
    process does for ``images.uploaded``), at the wall clock or at ``clock`` (:class:`PlanClock`)."""
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat.run(KafkaConfig(bootstrap_servers=bootstrap), topic, interval_ms, stop,
                                             origin="test", clock=clock))
    try:
        yield
    finally:
        stop.set()
        await task


@dataclass(frozen=True)
class PipelineRun:
    run_id: str
    topic: str
    dlq_topic: str
    job_id: str
    job_name: str
    deleted_topic: str = ""


@asynccontextmanager
async def pipeline_run(
    env: Mapping[str, str], bootstrap: str, args: Sequence[str] = (), partitions: int = 2
) -> AsyncIterator[PipelineRun]:
    """Create topics, submit a pipeline instance reading them, cancel and clean up after."""
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    run_id = uuid.uuid4().hex[:8]
    # synthetic topic names: an unreadable event there is attributed to `synthetic-unknown`
    topic, dlq, name = synthetic(f"uploads-{run_id}"), synthetic(f"dlq-{run_id}"), f"it-pipeline-{run_id}"
    deleted = synthetic(f"deleted-{run_id}")  # never the stack's images.deleted
    await ensure_topics(kafka, [TopicSpec(topic, partitions), TopicSpec(dlq, 1), TopicSpec(deleted, 1)])
    job_id = ""
    try:
        job_args = [
            f"--topic={topic}", f"--dlq_topic={dlq}", f"--deleted_topic={deleted}", f"--group_id=it-{run_id}",
            f"--job_name={name}", "--startup_mode=earliest-offset", *args,
        ]  # fmt: skip
        job_id = await asyncio.to_thread(submit.run, "pipeline", job_args, env)
        yield PipelineRun(run_id, topic, dlq, job_id, name, deleted)
    finally:
        if job_id:
            await asyncio.to_thread(submit.cancel, job_id, env)
        await delete_topics(kafka, [topic, dlq, deleted])


def window_start_of(received_at: str, window_ms: int) -> datetime:
    """UTC start of the window holding an ISO timestamp (as Cassandra returns timestamps)."""
    ms = int(parse_time(received_at).timestamp() * 1000)
    return datetime.fromtimestamp((ms - ms % window_ms) / 1000, tz=timezone.utc)


def run_producer(prefix: str, name: str) -> str:
    """The synthetic producer ``name`` of the run ``prefix``: ``synthetic-<prefix>-<name>``
    (either may already carry the synthetic prefix)."""
    def bare(text: str) -> str:
        return text[len(SYNTHETIC_PREFIX):] if is_synthetic(text) else text

    return synthetic(f"{bare(prefix)}-{bare(name)}")


def renamed(planned: Sequence[Planned], prefix: str) -> list[Planned]:
    """The plan with every producer renamed to :func:`run_producer` and every image id replaced
    by one derived from ``prefix``, so one run's rows are its own (seeded plans repeat their
    ids, and a check for "rows written" must not be met by an earlier run's rows). Malformed
    events that name a producer are renamed too; their bytes are otherwise kept."""
    out = []
    for p in planned:
        if p.kind == "malformed" or p.image_id is None:
            try:
                bad = json.loads(p.value)
            except ValueError:
                bad = None
            if isinstance(bad, dict) and isinstance(bad.get("producer"), str):
                bad["producer"] = run_producer(prefix, bad["producer"])
                p = replace(p, value=json.dumps(bad).encode())
            out.append(p)
            continue
        image_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}/{p.image_id}"))
        event = json.loads(p.value)
        event["producer"] = run_producer(prefix, event["producer"])
        event["image_id"] = image_id
        out.append(replace(p, value=json.dumps(event).encode(), image_id=image_id))
    return out


VERDICT_COLUMNS = "SELECT image_id, status, duplicate_of, duplicate_kind, distance FROM images WHERE image_id = ?"


async def expect_verdicts(session: Any, expected: Any, what: str, deadline_s: float = DEADLINE_S) -> list[Any]:
    """Poll until every image of ``expected`` (a generator ``Truth``) has an ``images`` row, then
    assert each row's verdict equals the truth; returns the rows."""
    from cassandra import DriverException
    from cassandra.cluster import NoHostAvailable

    ids = list(expected.verdicts)

    def all_rows() -> list[Any] | None:
        # Prepared in the poll: after a Cassandra restart the driver needs a moment to reconnect,
        # and a prepare or read that fails meanwhile means "not yet", not a failed check.
        try:
            select = session.prepare(VERDICT_COLUMNS)
            rows = [session.execute(select, (i,)).one() for i in ids]
        except (NoHostAvailable, DriverException):
            return None
        return rows if all(rows) else None

    rows = await until(lambda: asyncio.to_thread(all_rows), what, timeout=deadline_s, interval=CHECK_EVERY_S)
    wrong = [row for row in rows if _verdict_of(row) != _verdict_of(expected.verdicts[row.image_id])]
    if wrong:
        details = await asyncio.to_thread(describe_mismatches, session, expected, wrong)
        raise AssertionError(f"{len(wrong)} of {len(rows)} verdicts differ from the truth:\n{details}")
    return rows


def _verdict_of(row: Any) -> tuple[Any, ...]:
    return (row.status, row.duplicate_of, row.duplicate_kind, row.distance)


#: What a mismatch report shows of an ``images`` row besides the verdict.
_ROW_DETAIL = ("SELECT image_id, status, duplicate_of, duplicate_kind, distance, lateness, received_at, "
               "source_partition, source_offset, processed_at FROM images WHERE image_id = ?")


def describe_mismatches(session: Any, expected: Any, wrong: Sequence[Any]) -> str:
    """One line per wrong verdict: what was stored (with its lateness, event time and Kafka
    coordinates) and what the truth says - enough to tell an order change from a lost state."""
    select = session.prepare(_ROW_DETAIL)
    lines = []
    for row in wrong:
        got = session.execute(select, (row.image_id,)).one()
        want = expected.verdicts[row.image_id]
        lines.append(
            f"  {row.image_id}: stored {_verdict_of(row)} lateness={got.lateness} received_at={got.received_at} "
            f"at {got.source_partition}/{got.source_offset} processed_at={got.processed_at}; "
            f"truth {_verdict_of(want)}"
        )
    return "\n".join(lines)


async def expect_final_windows(session: Any, expected: Any, window_ms: int, what: str,
                               deadline_s: float = DEADLINE_S) -> None:
    """Poll until every window of ``expected`` is final, then assert its counts equal the truth."""
    truth_windows = expected.windows(window_ms)
    final = await until(lambda: asyncio.to_thread(final_windows, session, truth_windows), what, timeout=deadline_s,
                        interval=CHECK_EVERY_S)
    for key, stats in truth_windows.items():
        got = {k: getattr(final[key], k) for k in stats}
        assert got == stats, f"window {key}: {got} != truth {stats}"


def final_windows(session: Any, keys: Iterable[tuple[int, str, str]]) -> dict[tuple[int, str, str], Any] | None:
    """The final upload_stats rows for ``keys`` (window_start ms, producer, content type), or None."""
    from cassandra import DriverException
    from cassandra.cluster import NoHostAvailable

    found = {}
    for start, producer, content_type in keys:
        try:
            row = session.execute(
                "SELECT * FROM upload_stats WHERE window_start = %s AND producer = %s AND content_type = %s",
                (datetime.fromtimestamp(start / 1000, tz=timezone.utc), producer, content_type),
            ).one()
        except (NoHostAvailable, DriverException):
            return None  # Cassandra restarting: not yet
        if row is None or not row.final:
            return None
        found[(start, producer, content_type)] = row
    return found


async def gather(*aws: Awaitable[Any]) -> list[Any]:
    return list(await asyncio.gather(*aws))


def flink_get(rest: str, path: str) -> Any:
    """GET ``path`` (``/jobs/<id>``, ...) of the Flink REST API at ``rest``, as JSON."""
    with urllib.request.urlopen(f"{rest.rstrip('/')}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def vertex_parallelism(rest: str, job_id: str) -> dict[str, int]:
    """``{vertex name: parallelism}`` of a job, as its graph in the web UI shows it."""
    return {v["name"]: int(v["parallelism"]) for v in flink_get(rest, f"/jobs/{job_id}")["vertices"]}


def sql_batch_environment() -> Any:
    """A batch ``TableEnvironment`` that runs the source's SQL as the job does: UTC, one slot, the
    ops jar loaded and the job's SQL functions registered (:func:`flink_jobs.pipeline.register_sql_functions`).
    For tests and benches that run that SQL without a stack."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from flink_jobs.config import ops_jar
    from flink_jobs.pipeline import register_sql_functions

    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    config = t_env.get_config()
    config.set("table.local-time-zone", "UTC")
    config.set("parallelism.default", "1")
    config.set("pipeline.jars", ops_jar())
    register_sql_functions(t_env)
    return t_env
