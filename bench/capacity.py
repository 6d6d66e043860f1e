"""Capacity model of the production shape: from per-core costs measured on the local stack to
replica counts, Kafka partitions, Flink slots and a monthly bill at the design load.

    .venv/bin/python bench/capacity.py                       # 1,000 uploads/s, the default mix
    .venv/bin/python bench/capacity.py --uploads 2500 --large-share 0.02 --stats-rps 400
    .venv/bin/python bench/capacity.py --json                # the plan as JSON (tests, docs)

Every input is in :data:`MEASURED` (with the doc and run it comes from) or :data:`PRICES`
(list prices, to refresh); new measurements update the table by editing one line. The figures
come from a 2-core machine shared with the whole stack, so they are pessimistic per core: a
dedicated core does at least as well. docs/deploy.md prints this script's output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Mapping

#: Per-unit costs measured here. (value, unit, where it was measured)
MEASURED: Mapping[str, tuple[float, str, str]] = {
    "gateway_cpu_ms_small": (7.8, "CPU ms per 50 KB upload, gateway process",
                             "docs/gateway.md, bench/gateway_vs_raw.py 26 Nov 2026"),
    "gateway_cpu_ms_large": (112.0, "CPU ms per 4.9 MB upload, gateway process", "docs/gateway.md, same run"),
    "pipeline_cpu_ms": (0.61, "CPU ms per event, Flink TaskManager JVM 0.23 + Python workers 0.37 (sharded job, p=2, "
                              "decide: near in the JVM; steady state: rows 20-80 %, no start-up JIT)",
                        "docs/flink-jobs.md, decide: near in the JVM (2026-12-06, tenth session): median of five 100k runs"),
    "jobmanager_cpu_ms": (0.10, "CPU ms per event, Flink JobManager", "docs/flink-jobs.md, CPU table"),
    "subtask_events_per_s": (990.0, "events/s one subtask of the busiest stage (decide: exact) sustains fully busy: "
                             "100k events in 100.7 busy subtask-seconds at p=2",
                             "docs/flink-jobs.md, Garbage collection (2026-12-05), round 1"),
    "store_cpu_ms": (0.50, "CPU ms per event in Cassandra (RF 1, commit-log CDC)", "docs/flink-jobs.md, CPU table"),
    "cdc_cpu_ms": (0.93, "CPU ms per event, CDC agent + Kafka Connect + PostgreSQL", "docs/flink-jobs.md, CPU table"),
    "kafka_cpu_ms": (0.36, "CPU ms per event, Kafka broker (upload, DLQ, CDC topics)", "docs/flink-jobs.md, CPU table"),
    "sink_rows_per_task_s": (1269.0, "rows/s one JDBC sink task drains", "docs/cdc.md, backlog drain"),
    "stats_cpu_ms": (1.73, "server CPU ms per stats request, the mix below", "docs/stats-api.md, bench table"),
    "index_state_bytes": (594.0, "bytes of Flink state per event held in the dedup index (the hashmap "
                                 "backend's checkpoint: written whole at each one)",
                          "bench/flink_throughput.py's last checkpoint, 100k events at p=2, decide: near in the JVM "
                          "(644 with it in Python: docs/flink-jobs.md, State size and checkpoints)"),
    "index_worker_bytes": (2400.0, "bytes of Python worker memory per event held (the decide workers' "
                                   "resident growth: mirrors, PyFlink's caches; ~240 MB over 100k events). Measured "
                                   "with the near index in Python; in the JVM its share is heap (index_heap_bytes counts it "
                                   "too): not re-measured, so an overestimate",
                           "docs/flink-jobs.md, same section: before the interned names (offline -16 % on the near index)"),
    "index_heap_bytes": (1860.0, "bytes of TaskManager heap per event held (live heap after a full collection, "
                                 "jcmd GC.class_histogram: 105.7 MB more at 56,700 images than before the job; "
                                 "every operator's state on the hashmap backend - the near index's Java objects, the "
                                 "exact index's and pending entries' pickled values - and in-flight buffers)",
                         "docs/flink-jobs.md, Measured again (2026-12-06, eleventh session): one 100k run at p=2"),
    "near_state_share": (0.52, "share of the index state in decide: near (30.9 of 59.4 MB)",
                         "bench/flink_throughput.py's last checkpoint, as index_state_bytes"),
}
#: Stats request mix behind stats_cpu_ms: 50 % image by id (1.02 ms), 20 % minute series (1.74),
#: 10 % duplicates page (2.87), 10 % summary (2.16), 10 % hourly by producer (3.71).

#: On-demand list prices, eu-west-1, USD (late 2025 list; not re-checked from this machine: refresh).
PRICES: Mapping[str, float] = {
    "vcpu_hour": 0.0504,            # m7i: $0.2016/h for 4 vCPU + 16 GiB, priced per vCPU
    "eks_cluster_hour": 0.10,
    "scylla_node_hour": 0.75,       # i4i.2xlarge: 8 vCPU, 64 GiB, 1.875 TB NVMe
    "msk_broker_hour": 0.21,        # kafka.m7g.large
    "msk_storage_gb_month": 0.11,
    "rds_hour": 1.02,               # db.r7g.xlarge Multi-AZ PostgreSQL
    "rds_storage_gb_month": 0.264,  # gp3 Multi-AZ
    "s3_gb_month": 0.023,
    "s3_put_per_1000": 0.005,
    "alb_hour": 0.0252,
    "alb_lcu_hour": 0.008,          # 1 LCU = 1 GB/h processed (EC2/IP targets), the binding dimension here
    "emr_vcpu_hour": 0.052624,
    "emr_gb_hour": 0.0057785,
}
HOURS_PER_MONTH = 730
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600

#: Pods run at this share of their measured capacity (headroom for bursts, GC, uneven balancing).
TARGET_UTILISATION = 0.65
#: Flink's autoscaler target (job.autoscaler.target.utilization in the FlinkDeployment).
FLINK_TARGET_UTILISATION = 0.6
#: Growth the upload topic's partitions allow before repartitioning (partitions cap parallelism).
PARTITION_HEADROOM = 8
#: Partition counts that keep every parallelism up to them a divisor of pipeline.max-parallelism (120).
NICE_PARTITIONS = (3, 4, 6, 12, 24, 60, 120)
GATEWAY_POD_CORES = 2
STATS_POD_CORES = 1
TM_CORES = 2
TM_SLOTS = 2
SMALL_BYTES, LARGE_BYTES = 50_000, 4_900_000
#: CDC rows per upload event: its images row, ~10 % duplicate rows, minute-window revisions (small).
ROWS_PER_EVENT = 1.15
#: Bytes per image metadata row (Scylla and PostgreSQL, before replication/indexes).
ROW_BYTES = 600
#: How long the dedup index holds an image: the near and exact TTLs (``DEFAULT_NEAR_TTL_MS``,
#: ``DEFAULT_EXACT_TTL_MS`` in imgstream/domain/dedup.py; a test keeps them equal).
INDEX_RETENTION_S = 7 * 86_400
#: Keys of ``decide: near`` at the default layout: 4 bands x 2**near_split_bits (1). Subtasks
#: beyond them idle, so each near shard's part of the index must fit one subtask.
NEAR_SHARDS = 8
#: What a TaskManager pod (6 GiB, k8s/base/flink-pipeline) leaves for the index, heap state and
#: its two workers' mirrors together: ~1.5 GiB go to Flink's framework, network and metaspace
#: memory and ~0.25 GiB to each worker before it holds any state.
TM_INDEX_GB = 4.0


@dataclass
class Plan:
    """What 1 load needs, and what it costs per month."""

    uploads_per_s: float
    large_share: float
    stats_rps: float
    gateway_cores: float
    gateway_pods: int
    gateway_in_flight_target: int
    gateway_bytes_target: int
    stats_pods: int
    stats_rps_target: int
    partitions: int
    parallelism: int
    tm_slots: int
    taskmanagers: int
    connect_workers: int
    sink_tasks: int
    scylla_nodes: int
    scylla_cores_used: float
    ingest_mb_per_s: float
    s3_tb_per_month: float
    metadata_rows_per_month: float
    metadata_tb_per_month: float
    index_events: float
    index_state_gb: float
    index_heap_gb: float
    index_worker_gb: float
    near_shard_gb: float
    taskmanagers_for_index: int
    monthly_usd: dict[str, float]

    @property
    def monthly_total(self) -> float:
        return round(sum(self.monthly_usd.values()), 0)


def _m(key: str) -> float:
    return MEASURED[key][0]


def plan(uploads_per_s: float = 1000.0, large_share: float = 0.1, stats_rps: float = 200.0,
         p95_latency_s: float = 0.9) -> Plan:
    """The formulas. ``large_share`` of uploads are ~5 MB, the rest ~50 KB; ``p95_latency_s`` is
    an upload's time in the gateway under load (docs/gateway.md: ~0.09 s small, ~0.9 s large)."""
    cpu_ms = (1 - large_share) * _m("gateway_cpu_ms_small") + large_share * _m("gateway_cpu_ms_large")
    gateway_cores = uploads_per_s * cpu_ms / 1000
    gateway_pods = max(3, math.ceil(gateway_cores / (GATEWAY_POD_CORES * TARGET_UTILISATION)))
    # KEDA targets per pod: what one pod carries at the target utilisation. In flight = rate x time
    # in the gateway (Little's law); bytes/s = rate x mean size.
    per_pod_rate = GATEWAY_POD_CORES * TARGET_UTILISATION * 1000 / cpu_ms
    mean_latency = (1 - large_share) * 0.09 + large_share * p95_latency_s
    mean_bytes = (1 - large_share) * SMALL_BYTES + large_share * LARGE_BYTES
    in_flight_target = max(4, round(per_pod_rate * mean_latency))
    # Bytes: what a pod's cores can inspect when uploads are all large (the expensive case).
    bytes_target = int(GATEWAY_POD_CORES * TARGET_UTILISATION * 1000 / _m("gateway_cpu_ms_large") * LARGE_BYTES)

    stats_per_pod = STATS_POD_CORES * TARGET_UTILISATION * 1000 / _m("stats_cpu_ms")
    stats_pods = max(2, math.ceil(stats_rps / stats_per_pod))

    # every stage runs at the job's parallelism (sharded since issue 17), so the busiest one sets it
    needed_parallelism = uploads_per_s * PARTITION_HEADROOM / _m("subtask_events_per_s")
    partitions = next((n for n in NICE_PARTITIONS if n >= needed_parallelism), NICE_PARTITIONS[-1])
    parallelism = math.ceil(uploads_per_s / (_m("subtask_events_per_s") * FLINK_TARGET_UTILISATION))
    slots = 2 * parallelism  # the writer per subtask, and decide's own slot group (cleaning included)
    taskmanagers = max(2, math.ceil(slots / TM_SLOTS))
    sink_tasks = math.ceil(uploads_per_s * ROWS_PER_EVENT / (_m("sink_rows_per_task_s") * TARGET_UTILISATION))
    connect_workers = max(3, sink_tasks)
    # Scylla: the measured Cassandra CPU x 3 replicas x 2 (CDC log tables double the writes).
    scylla_cores = uploads_per_s * _m("store_cpu_ms") / 1000 * 3 * 2
    rows_month = uploads_per_s * ROWS_PER_EVENT * SECONDS_PER_MONTH
    metadata_tb = rows_month * ROW_BYTES / 1e12
    scylla_nodes = max(3, 3 * math.ceil(scylla_cores / (8 * 0.5) / 3))  # 8 vCPU nodes at 50 %, whole AZ rows

    # the dedup index holds every event of its retention: memory, not CPU, bounds the job at length
    index_events = uploads_per_s * INDEX_RETENTION_S
    index_state_gb = index_events * _m("index_state_bytes") / 1e9
    # memory: the state as heap objects in the TaskManager plus the Python workers' mirrors (the
    # checkpoint's bytes per event are the state serialised, 3x smaller than on the heap)
    index_heap_gb = index_events * _m("index_heap_bytes") / 1e9
    index_worker_gb = index_events * _m("index_worker_bytes") / 1e9
    near_shard_gb = (index_heap_gb + index_worker_gb) * _m("near_state_share") / NEAR_SHARDS
    taskmanagers_for_index = math.ceil((index_heap_gb + index_worker_gb) / TM_INDEX_GB)

    ingest = uploads_per_s * mean_bytes / 1e6
    s3_tb = ingest * SECONDS_PER_MONTH / 1e6
    vcpu = gateway_pods * GATEWAY_POD_CORES + stats_pods * STATS_POD_CORES \
        + max(taskmanagers, taskmanagers_for_index) * TM_CORES + 2 \
        + connect_workers * 1 + 2  # + 2 JobManagers, + heartbeat/exporters/submitters (~2)
    p = PRICES
    bill = {
        "EKS control plane": p["eks_cluster_hour"] * HOURS_PER_MONTH,
        f"EKS workers ({vcpu} vCPU)": vcpu * p["vcpu_hour"] * HOURS_PER_MONTH,
        f"ScyllaDB ({scylla_nodes} x i4i.2xlarge)": scylla_nodes * p["scylla_node_hour"] * HOURS_PER_MONTH,
        "MSK (3 x m7g.large + 3 TB)": 3 * p["msk_broker_hour"] * HOURS_PER_MONTH + 3000 * p["msk_storage_gb_month"],
        "RDS PostgreSQL Multi-AZ (+ first month's rows)": p["rds_hour"] * HOURS_PER_MONTH
        + metadata_tb * 1000 * 2 * p["rds_storage_gb_month"],  # x2: indexes
        "S3 PUTs": uploads_per_s * SECONDS_PER_MONTH / 1000 * p["s3_put_per_1000"],
        "S3 storage (first month's uploads)": s3_tb * 1000 * p["s3_gb_month"],
        "ALB (bytes processed)": p["alb_hour"] * HOURS_PER_MONTH
        + ingest * 3600 / 1000 * p["alb_lcu_hour"] * HOURS_PER_MONTH,
        "EMR Serverless (derivatives: 10 vCPU-h + 40 GB-h per hour)": HOURS_PER_MONTH * (
            10 * p["emr_vcpu_hour"] + 40 * p["emr_gb_hour"]),
    }
    return Plan(uploads_per_s, large_share, stats_rps, round(gateway_cores, 1), gateway_pods, in_flight_target,
                bytes_target, stats_pods, int(stats_per_pod), partitions, parallelism, slots,
                taskmanagers, connect_workers, sink_tasks, scylla_nodes, round(scylla_cores, 1), round(ingest, 1),
                round(s3_tb, 1), rows_month, round(metadata_tb, 2), index_events, round(index_state_gb),
                round(index_heap_gb), round(index_worker_gb), round(near_shard_gb), taskmanagers_for_index,
                {k: round(v, 0) for k, v in bill.items()})


def report(p: Plan) -> str:
    lines = [f"Design load: {p.uploads_per_s:,.0f} uploads/s ({p.large_share:.0%} ~5 MB, the rest ~50 KB), "
             f"{p.stats_rps:,.0f} stats requests/s",
             "",
             "| what | how many | from |",
             "| --- | --- | --- |",
             f"| gateway pods ({GATEWAY_POD_CORES} cores) | {p.gateway_pods} ({p.gateway_cores} cores busy) | "
             f"uploads/s x CPU ms per upload / ({GATEWAY_POD_CORES} x {TARGET_UTILISATION}) |",
             f"| gateway KEDA targets per pod | {p.gateway_in_flight_target} in flight; "
             f"{p.gateway_bytes_target / 1e6:.0f} MB/s | per-pod rate x time in gateway; large-upload bytes a pod inspects |",
             f"| stats API pods ({STATS_POD_CORES} core) | {p.stats_pods} (KEDA target {p.stats_rps_target} req/s per pod) | "
             f"requests/s x {_m('stats_cpu_ms')} ms |",
             f"| images.uploaded partitions | {p.partitions} | load x {PARTITION_HEADROOM} headroom / "
             f"{_m('subtask_events_per_s'):.0f} events/s per subtask |",
             f"| Flink pipeline parallelism (every stage) | {p.parallelism} | load / ({_m('subtask_events_per_s'):.0f} "
             f"events/s per subtask of the busiest stage x {FLINK_TARGET_UTILISATION}) |",
             f"| TaskManager slots / TaskManagers ({TM_CORES} cores, {TM_SLOTS} slots) | {p.tm_slots} / {p.taskmanagers} | "
             "2 x parallelism: the writer, and decide's slot group (cleaning in it) |",
             f"| dedup index, {INDEX_RETENTION_S // 86_400} days of events | {p.index_events / 1e9:.2f} G events: "
             f"{p.index_state_gb:,.0f} GB of Flink state checkpointed; in memory {p.index_heap_gb:,.0f} GB of TaskManager "
             f"heap + {p.index_worker_gb:,.0f} GB in the Python workers | measured bytes per event (checkpoint "
             f"{_m('index_state_bytes'):.0f}; heap {_m('index_heap_bytes'):.0f} + workers {_m('index_worker_bytes'):.0f}) "
             "x load x retention |",
             f"| TaskManagers to hold the index | {p.taskmanagers_for_index} | index / {TM_INDEX_GB:.0f} GB per TaskManager: "
             f"{'above' if p.taskmanagers_for_index > p.taskmanagers else 'within'} the CPU's {p.taskmanagers} (the bill counts the larger) |",
             f"| one `decide: near` shard's part | {p.near_shard_gb:,.0f} GB | near share x index / {NEAR_SHARDS} near shards: "
             f"{'fits' if p.near_shard_gb <= TM_INDEX_GB / TM_SLOTS else 'does NOT fit'} a slot's {TM_INDEX_GB / TM_SLOTS:.0f} GB |",
             f"| Kafka Connect workers / sink tasks | {p.connect_workers} / {p.sink_tasks} | "
             f"{ROWS_PER_EVENT} rows per event / {_m('sink_rows_per_task_s'):.0f} rows/s per task |",
             f"| ScyllaDB nodes | {p.scylla_nodes} ({p.scylla_cores_used} cores of writes) | measured store CPU x RF 3 x 2 (CDC log) |",
             f"| upload bytes | {p.ingest_mb_per_s} MB/s; {p.s3_tb_per_month} TB/month to S3 | |",
             f"| image metadata | {p.metadata_rows_per_month / 1e9:.1f} G rows, {p.metadata_tb_per_month} TB/month "
             "(no TTL on images: grows in Scylla and RDS) | |",
             "",
             "| monthly bill (USD, on-demand list prices) | |",
             "| --- | ---: |"]
    lines += [f"| {item} | {usd:,.0f} |" for item, usd in p.monthly_usd.items()]
    lines.append(f"| **total** | **{p.monthly_total:,.0f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=float, default=1000.0, help="uploads/s")
    parser.add_argument("--large-share", type=float, default=0.1, help="share of ~5 MB uploads (rest ~50 KB)")
    parser.add_argument("--stats-rps", type=float, default=200.0, help="stats API requests/s")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = plan(args.uploads, args.large_share, args.stats_rps)
    if args.json:
        print(json.dumps(dict(asdict(result), monthly_total=result.monthly_total)))
    else:
        print(report(result))
        print("\nper-unit figures:")
        for key, (value, unit, source) in MEASURED.items():
            print(f"  {key} = {value}  ({unit}; {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
