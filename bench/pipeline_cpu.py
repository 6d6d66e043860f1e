"""CPU per event of the pipeline's ``build()`` in a local mini-cluster, for several source trees
side by side in one run (issue 17: this branch against main, at the same parallelism).

No stack is used: each run is a fresh process that wires ``build(..., write=False)`` of the
tree under test on a bounded in-memory stream (the mix of ``bench/flink_throughput.py``: 70 %
originals, 10 % exact and 10 % near copies, 5 % replays, 5 % malformed, 10 ms apart in event
time) and runs it to the end. It prints the CPU seconds of the process and its descendants
(the JVM; the Python workers run in-process, "loopback"), the steps' Cassandra rows
(``step_writes``: images, duplicates, late events, upload_stats) and the verdicts.

The start-up of a mini-cluster costs seconds of CPU, so the cost of an event is the slope
between two sizes: ``(cpu(large) - cpu(small)) / (large - small)``. Runs alternate between
the trees (small, large, small, large, ...) so that the noise of a shared machine hits both.

    python bench/pipeline_cpu.py --tree . --tree /tmp/main-snapshot --sizes 2000,8000 --parallelism 1

A tree is a checkout (``git worktree add`` or ``git archive main | tar -x -C DIR``): its
``flink_jobs`` and ``imgstream`` are imported and shipped to the workers. ``--job-arg`` passes
``--key=value`` settings to every tree's ``PipelineConfig``; ``--flink KEY=VALUE`` raw Flink settings.
A tree may carry settings of its own after ``::`` (comma-separated), so one tree can run side by
side in two configurations:

    python bench/pipeline_cpu.py --tree /tmp/main-snapshot --tree . --tree .::--dedup_shards=4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# appended, not inserted: a run's process must import flink_jobs and imgstream from the tree
# under test (its PYTHONPATH), and only what no tree has from here
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench import quiet  # noqa: E402

HERE = Path(__file__).resolve()
WINDOW_MS = 60_000
_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` itself (here: the Python workers, in loopback) and of its
    reaped children and every live descendant (the JVM)."""
    total = own = 0.0
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    todo = [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields:
            total += sum(int(v) for v in fields[11:15]) / _TICK  # utime stime cutime cstime
            if current == pid:
                own = sum(int(v) for v in fields[11:13]) / _TICK
        todo.extend(children.get(current, ()))
    return total, total - own


def child(events: int, parallelism: int, job_args: list[str], flink: dict[str, str]) -> None:
    """One run, in a process whose ``sys.path`` starts with the tree under test."""
    from pyflink.common import Duration, Row, Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner

    from flink_jobs.config import PipelineConfig
    from flink_jobs.functions import step_writes
    from flink_jobs.generator import plan
    from flink_jobs.pipeline import build, environment, records_from_stream
    from imgstream.domain.cleaning import heartbeat_value
    from imgstream.domain.timefmt import from_millis

    class FromField(TimestampAssigner):
        def extract_timestamp(self, value, record_timestamp):  # type: ignore[no-untyped-def]
            return value[4]

    n = events
    planned = plan(seed=1, originals=int(n * 0.7), exact_copies=n // 10, near_copies=n // 10, replays=n // 20,
                   malformed=n // 20, step_ms=10, producers=("synthetic-alice", "synthetic-bob"))  # fmt: skip
    config = PipelineConfig.from_env(env={}, argv=[f"--parallelism={parallelism}", "--window_ms=60000", "--topic=synthetic-images",
                                                   "--checkpoint_interval_ms=60000", *job_args])  # fmt: skip
    env, t_env = environment(config, jars=[], extra=flink)
    raw_type = Types.ROW_NAMED(
        ["value", "topic", "partition", "offset", "ts"],
        [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(), Types.LONG()],
    )
    rows, last = [], 0
    for offset, p in enumerate(planned):
        last = p.event_time or last
        rows.append(Row(p.value, "synthetic-images", 0, offset, last))
    rows.append(Row(heartbeat_value(from_millis(last + 120_000)), "synthetic-images", 0, len(rows), last + 120_000))
    raw = env.from_collection(rows, type_info=raw_type).assign_timestamps_and_watermarks(
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(config.out_of_orderness_ms))
        .with_timestamp_assigner(FromField())
    )
    streams = build(env, t_env, records_from_stream(t_env, raw, config), config, write=False)
    counted = streams.results.map(
        lambda step: json.dumps([len(step["verdicts"]), len(step_writes(step, WINDOW_MS)), len(step["windows"])]),
        Types.STRING(),
    )
    verdicts = writes = windows = steps = 0
    t0 = time.monotonic()
    with counted.execute_and_collect() as results:
        for item in results:
            v, w, win = json.loads(item)
            verdicts, writes, windows, steps = verdicts + v, writes + w, windows + win, steps + 1
    wall = time.monotonic() - t0
    cpu, jvm = _tree_cpu(os.getpid())
    print(json.dumps({"events": len(planned), "verdicts": verdicts, "rows": writes, "window_rows": windows,
                      "steps": steps, "wall_s": wall, "cpu_s": cpu, "jvm_s": jvm}), flush=True)  # fmt: skip


def run(tree: Path, events: int, parallelism: int, job_args: list[str], flink: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(HERE), "--child", f"--events={events}", f"--parallelism={parallelism}"]
    cmd += [f"--job-arg={a}" for a in job_args] + [f"--flink={f}" for f in flink]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"run in {tree} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def _variant(spec: str) -> tuple[str, Path, list[str]]:
    """``PATH`` or ``PATH::--k=v,--k2=v2``: the name shown, the tree and its own job args."""
    path, _, own = spec.partition("::")
    return spec, Path(path).resolve(), [a for a in own.split(",") if a]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="source tree (repeatable; default: this one)")
    parser.add_argument("--sizes", default="2000,8000", help="two event counts: the slope between them")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (the median slope is shown)")
    parser.add_argument("--job-arg", action="append", default=[], help="--key=value for every tree's pipeline")
    parser.add_argument("--flink", action="append", default=[], help="raw Flink setting KEY=VALUE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=0, help=argparse.SUPPRESS)
    quiet.add_arguments(parser)
    args = parser.parse_args()
    if args.child:
        child(args.events, args.parallelism, args.job_arg, dict(f.split("=", 1) for f in args.flink))
        return
    quiet.wait_as_told(args)
    trees = [_variant(t) for t in args.tree] or [(str(HERE.parents[1]), HERE.parents[1], [])]
    small, large = (int(s) for s in args.sizes.split(","))
    results: dict[str, list[tuple[dict, dict]]] = {name: [] for name, _, _ in trees}
    for round_ in range(args.rounds):
        for tree, path, own_args in trees:
            a = run(path, small, args.parallelism, args.job_arg + own_args, args.flink)
            b = run(path, large, args.parallelism, args.job_arg + own_args, args.flink)
            results[tree].append((a, b))
            slope = (b["cpu_s"] - a["cpu_s"]) / (b["events"] - a["events"]) * 1000
            jvm = (b["jvm_s"] - a["jvm_s"]) / (b["events"] - a["events"]) * 1000
            print(f"round {round_ + 1} {tree}: cpu {a['cpu_s']:.1f}s / {b['cpu_s']:.1f}s, "
                  f"{slope:.3f} ms/event (jvm {jvm:.3f}), wall {a['wall_s']:.1f}s / {b['wall_s']:.1f}s", flush=True)  # fmt: skip
    print(f"\nparallelism {args.parallelism}, {small} vs {large} events, {args.rounds} round(s), "
          f"job args {args.job_arg or '-'}, flink {args.flink or '-'}")  # fmt: skip
    print("| tree | CPU ms/event (median slope) | slopes | of which JVM | Cassandra rows/event | window rows/event |")
    print("| --- | --- | --- | --- | --- | --- |")
    for tree, pairs in results.items():
        slopes = [(b["cpu_s"] - a["cpu_s"]) / (b["events"] - a["events"]) * 1000 for a, b in pairs]
        jvms = [(b["jvm_s"] - a["jvm_s"]) / (b["events"] - a["events"]) * 1000 for a, b in pairs]
        b = pairs[-1][1]
        print(f"| {tree} | **{statistics.median(slopes):.3f}** | {', '.join(f'{s:.3f}' for s in slopes)} | "
              f"{statistics.median(jvms):.3f} | {b['rows'] / b['events']:.3f} | {b['window_rows'] / b['events']:.4f} |")


if __name__ == "__main__":
    main()
