"""What every batch job shares: the Spark session, per-process clients on executors, progress
lines, the JSON summary, Cassandra token-range scans and the upload topic as Spark rows.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Final, Iterable, Iterator, Mapping, Sequence

from imgstream.adapters.s3_sync import SyncObjectStore
from imgstream.config import CassandraConfig, KafkaConfig, S3Config

#: Murmur3 token range of Cassandra's default partitioner.
MIN_TOKEN: Final = -(2**63)
MAX_TOKEN: Final = 2**63 - 1
#: Token-range slices per scan: enough for every executor core to get several, few enough that
#: each slice is one cheap paged query.
SCAN_SLICES: Final = 16


def run_id(job: str) -> str:
    """A sortable, unique id for one run of ``job``."""
    return f"{job}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def spark_session(app: str, master: str | None = None) -> Any:
    """The job's SparkSession (master from ``spark-submit`` unless given)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(f"imgstream-{app}")
    if master:
        builder = builder.master(master)
    spark = builder.config("spark.ui.showConsoleProgress", "false").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


# --- per-process clients on executors -------------------------------------------------------------

_CLIENTS: dict[Any, Any] = {}
_LOCK = threading.Lock()


def s3(cfg: S3Config) -> SyncObjectStore:
    """One S3 client per Python worker process (workers are reused across tasks)."""
    with _LOCK:
        key = ("s3", cfg)
        if key not in _CLIENTS:
            _CLIENTS[key] = SyncObjectStore(cfg)
        client: SyncObjectStore = _CLIENTS[key]
        return client


def cassandra(cfg: CassandraConfig) -> Any:
    """One Cassandra session per Python worker process, shut down at exit."""
    from imgstream.adapters.cassandra import open_session

    with _LOCK:
        key = ("cassandra", cfg)
        if key not in _CLIENTS:
            cluster, session = open_session(cfg)
            atexit.register(cluster.shutdown)
            _CLIENTS[key] = session
        return _CLIENTS[key]


_PREPARED: dict[tuple[int, str], Any] = {}


def prepared(session: Any, cql: str) -> Any:
    """A cached prepared statement of ``session``."""
    key = (id(session), cql)
    if key not in _PREPARED:
        _PREPARED[key] = session.prepare(cql)
    return _PREPARED[key]


# --- Cassandra scans ------------------------------------------------------------------------------


def token_slices(n: int = SCAN_SLICES) -> list[tuple[int, int]]:
    """``n`` contiguous (start, end] slices covering the whole ring (the first includes MIN)."""
    step = (MAX_TOKEN - MIN_TOKEN) // n
    bounds = [MIN_TOKEN + i * step for i in range(n)] + [MAX_TOKEN]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


def scan_table(cfg: CassandraConfig, table: str, key: str, columns: Sequence[str],
               slices: Iterable[tuple[int, int]]) -> Iterator[dict[str, Any]]:
    """Rows of ``table`` whose partition-key token falls in ``slices`` (run on executors)."""
    session = cassandra(cfg)
    cols = ", ".join(columns)
    first = prepared(session, f"SELECT {cols} FROM {table} WHERE token({key}) >= ? AND token({key}) <= ?")
    rest = prepared(session, f"SELECT {cols} FROM {table} WHERE token({key}) > ? AND token({key}) <= ?")
    for lo, hi in slices:
        statement = first if lo == MIN_TOKEN else rest
        statement.fetch_size = 1000
        for row in session.execute(statement, (lo, hi), timeout=60):
            yield row._asdict()


def scan_rdd(spark: Any, cfg: CassandraConfig, table: str, key: str, columns: Sequence[str]) -> Any:
    """An RDD of ``table``'s rows (dicts), read in token-range slices spread over the executors."""
    slices = token_slices()
    return spark.sparkContext.parallelize(slices, len(slices)).mapPartitions(
        lambda part: scan_table(cfg, table, key, columns, part))


# --- the upload topic -----------------------------------------------------------------------------


def topic_ends(cfg: KafkaConfig, topic: str) -> dict[int, int]:
    """partition -> log end offset, for every partition of ``topic`` (driver side)."""
    from imgstream.adapters.kafka import end_offsets

    return asyncio.run(end_offsets(cfg, topic))


def read_topic(spark: Any, cfg: KafkaConfig, topic: str, start: Mapping[int, int], end: Mapping[int, int]) -> Any:
    """The records of ``topic`` in [start, end) per partition, with Spark's Kafka source (a bounded
    batch read: exactly those offsets, whatever arrives meanwhile). Missing starts = earliest."""
    starting = {topic: {str(p): int(start.get(p, -2)) for p in end}}
    ending = {topic: {str(p): int(o) for p, o in end.items()}}
    return (spark.read.format("kafka")
            .option("kafka.bootstrap.servers", cfg.bootstrap_servers)
            .option("subscribe", topic)
            .option("startingOffsets", json.dumps(starting))
            .option("endingOffsets", json.dumps(ending))
            .option("failOnDataLoss", "false")
            .load()
            .select("partition", "offset", "timestamp", "value"))


@dataclass(frozen=True, slots=True)
class Upload:
    """What the batch jobs need of one ``image.uploaded`` event."""

    image_id: str
    producer: str
    sha256: str
    storage_key: str
    received_at: str
    partition: int
    offset: int


def parse_uploads(rows: Iterable[Any], topic: str) -> Iterator[Upload]:
    """Valid uploads among raw topic rows; heartbeats and malformed values are skipped (the
    pipeline dead-letters the latter; they reference no object)."""
    from imgstream.domain.cleaning import Cleaned, Source, clean

    for row in rows:
        result = clean(bytes(row["value"]) if row["value"] is not None else None,
                       Source(topic=topic, partition=row["partition"], offset=row["offset"]))
        if isinstance(result, Cleaned):
            e = result.event
            yield Upload(e.image_id, e.producer, e.sha256, e.storage_key, e.received_at,
                         row["partition"], row["offset"])


# --- progress and summary -------------------------------------------------------------------------


@dataclass
class Progress:
    """Prints a progress line every ``interval`` seconds while a job runs (a daemon thread):
    elapsed time, the job's phase, Spark's active stages and their task counts."""

    job: str
    spark: Any
    interval: float
    phase: str = "starting"
    counters: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: float = field(default_factory=time.monotonic)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        print(f"[{self.job}] Spark UI: {self.spark.sparkContext.uiWebUrl or 'disabled'}", flush=True)
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:  # no progress line may follow the summary
            self._thread.join(timeout=5)

    def line(self) -> str:
        tracker = self.spark.sparkContext.statusTracker()
        stages = []
        for stage_id in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage_id)
            if info is not None:
                stages.append(f"stage {stage_id} {info.numCompletedTasks}/{info.numTasks} tasks")
        counters = " ".join(f"{k}={v}" for k, v in self.counters.items())
        return (f"[{self.job}] {time.monotonic() - self._started:6.1f}s {self.phase}"
                f"{'; ' + ', '.join(stages) if stages else ''}{'; ' + counters if counters else ''}")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                print(self.line(), flush=True)
            except Exception as exc:  # the reporter must never kill a job; say why it is quiet
                print(f"[{self.job}] progress unavailable: {exc}", flush=True)


def emit_summary(summary: Mapping[str, Any]) -> None:
    """The last line on stdout: the job's JSON summary."""
    sys.stdout.flush()
    print(json.dumps(summary, sort_keys=False, default=str), flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    return fn(), round(time.monotonic() - started, 3)
