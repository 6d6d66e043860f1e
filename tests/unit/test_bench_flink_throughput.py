"""bench/flink_throughput: per-task times come from Flink's accumulated metrics, for the whole run."""

from bench.flink_throughput import task_times


def test_task_times_reads_the_accumulated_metrics_of_every_task():
    body = {"vertices": [
        {"name": "Source: raw -> clean", "metrics": {"accumulated-busy-time": 95_000, "accumulated-backpressured-time": 24_000,
                                                     "accumulated-idle-time": 1_500}},
        {"name": "decide: dedup, windows", "metrics": {"accumulated-busy-time": 92_300}},
    ]}  # fmt: skip
    lines = task_times(body)
    assert len(lines) == 2
    assert lines[0].split() == ["busy", "95.0s", "backpressured", "24.0s", "idle", "1.5s", "Source:", "raw", "->", "clean"]
    assert "busy   92.3s" in lines[1]  # a task without the other metrics counts them 0
    assert "backpressured    0.0s" in lines[1] and lines[1].endswith("decide: dedup, windows")


def test_the_pipeline_takes_two_slots_per_subtask_unless_decide_shares_cleans_group():
    from bench.flink_throughput import slots_needed

    assert slots_needed(1, []) == 2
    assert slots_needed(2, ["--checkpoint_interval_ms=1"]) == 4
    assert slots_needed(2, ["--decide_slot_group="]) == 2


def test_the_steady_window_spans_the_middle_rows():
    import pytest

    from bench.flink_throughput import steady_window

    stamps = [float(t) for t in range(100, 200)]  # one row a second
    assert steady_window(stamps) == (120.0, 180.0, 60)
    assert steady_window(stamps, (0.0, 1.0)) == (100.0, 199.0, 99)  # never past the last row
    assert steady_window([5.0, 7.0], (0.2, 0.8)) == (5.0, 7.0, 1)
    with pytest.raises(ValueError):
        steady_window([5.0])


def test_the_live_phase_and_the_backlog_share_one_mix_unless_asked_for_new_images_only():
    from bench.flink_throughput import mix

    counts = mix(100_000)
    assert sum(counts.values()) == 100_000
    assert (counts["originals"], counts["exact_copies"], counts["replays"], counts["malformed"]) == (70_000, 10_000, 5_000, 5_000)
    assert mix(30_000, new_only=True) == {"originals": 30_000, "exact_copies": 0, "near_copies": 0, "replays": 0, "malformed": 0}


def test_checkpoint_sizes_name_each_task_with_state_and_the_size_per_event():
    from bench.flink_throughput import checkpoint_sizes

    job = {"vertices": [{"id": "a", "name": "decide: near"}, {"id": "b", "name": "clean, decide: exact"},
                        {"id": "c", "name": "cassandra: write steps"}]}
    checkpoints = {"counts": {"completed": 9, "failed": 1},
                   "summary": {"end_to_end_duration": {"avg": 5_685, "max": 7_288}}}
    details = {"state_size": 64_000_000, "checkpointed_size": 64_000_000,
               "tasks": {"a": {"state_size": 40_000_000}, "b": {"state_size": 24_000_000}, "c": {"state_size": 0}}}
    lines = checkpoint_sizes(job, checkpoints, details, 100_000)
    assert lines[0] == "checkpoints: 9 completed, 1 failed; end to end avg 5.7s, max 7.3s"
    assert "64.0 MB of state (640 bytes per event)" in lines[1]
    assert lines[2].split() == ["40.0", "MB", "decide:", "near"]  # the largest first
    assert lines[3].endswith("clean, decide: exact") and len(lines) == 4  # a task without state is left out
    assert checkpoint_sizes(job, {"counts": {}}, None, 10) == [
        "checkpoints: 0 completed, 0 failed; end to end avg 0.0s, max 0.0s"]  # none completed: no sizes


def test_task_traffic_prints_what_each_task_sent_per_event_and_leaves_out_the_silent_ones():
    from bench.flink_throughput import task_traffic

    body = {"vertices": [
        {"name": "clean, decide: exact", "metrics": {"write-records": 6_632, "write-bytes": 160_800_000}},
        {"name": "cassandra: write steps", "metrics": {"write-records": 0, "write-bytes": 0}},
        {"name": "decide: near", "metrics": {"write-records": 533, "write-bytes": 4_700_000}},
    ]}
    lines = task_traffic(body, 100_000)
    assert [line.split()[-1] for line in lines] == ["exact", "near"]  # a task that sent nothing is left out
    assert lines[0].split()[:7] == ["out", "6,632", "records", "160.8", "MB", "1,608", "B/event"]
    assert "47 B/event" in lines[1]
    assert task_traffic(body, 0)[0].split()[5] == "160,800,000"  # no events: per event of one, no division by zero
