"""bench/worker_profile.py: py-spy's raw stacks sorted into the parts of a worker's time."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.worker_profile import split  # noqa: E402

HARNESS = "Thread._bootstrap (threading.py:995);SdkWorker.process_bundle (apache_beam/runners/worker/sdk_worker.py:1)"
RAW = [
    # the decide worker deciding, and collecting garbage in the middle of it
    f"{HARNESS};DecideNear.step (flink_jobs/sharded.py:340);Deduplicator.near_step (imgstream/domain/dedup.py:200) 7",
    f"{HARNESS};DecideNear.step (flink_jobs/sharded.py:340);dict_get (libpython3.11.so.1.0);gc_collect_main (libpython3.11.so.1.0) 5",
    f"{HARNESS};CloudPickleCoderImpl_decode_from_stream (coder_impl_fast.cpython-311-x86_64-linux-gnu.so) 2",
    f"{HARNESS};DecideExact.step (flink_jobs/sharded.py:280) 1",
    # waiting: a lock, a select, gRPC's spin thread
    "Thread._bootstrap (threading.py:995);Condition.wait (threading.py:320);0x7f (libc.so.6) 40",
    "Thread._bootstrap (threading.py:995);select (libc.so.6) 9",
    "Thread._bootstrap (threading.py:995);_run_channel_spin_thread.<locals>.channel_spin (grpc/_channel.py:1);syscall (libc.so.6) 30",
    f"{HARNESS};0x7f01 (cygrpc.cpython-311-x86_64-linux-gnu.so) 4",
    "not a stack line",
]


def test_busy_samples_go_to_the_innermost_part_and_waiting_is_left_out() -> None:
    worker = split(RAW)
    assert (worker.samples, worker.busy) == (98, 19)
    assert worker.parts == {"dedup (domain)": 7, "garbage collector": 5, "pickling (wire, state values)": 2,
                            "stage code": 1, "beam/grpc harness": 4}  # fmt: skip
    assert worker.operators == {"DecideNear": 12, "DecideExact": 1}


def test_the_report_names_the_worker_and_its_shares() -> None:
    lines = split(RAW).lines("worker 42")
    assert lines[0] == "worker 42: 19 busy samples of 98 (operators: DecideNear, DecideExact)"
    assert lines[1].split() == ["36.8", "%", "dedup", "(domain)"]
