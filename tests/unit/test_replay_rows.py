"""Replays leave no stale rows (issue 16, item 4): after a replay decides an image differently,
the Cassandra tables (and so, through CDC, PostgreSQL) equal those of a single clean run."""

from datetime import datetime, timezone

from flink_jobs.cassandra_sink import maybe_written, superseded_writes
from flink_jobs.functions import step_writes

W = 60_000
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
O, L, E = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))


class Tables:
    """Cassandra's tables as dicts keyed by primary key: upserts overwrite, deletes remove."""

    KEYS = {"image": 1, "duplicate": 2, "late_event": 2, "upload_stats": 4}

    def __init__(self):
        self.rows = {name: {} for name in ("image", "duplicate", "late_event", "upload_stats")}

    def apply(self, writes):
        for name, params in writes:
            if name.startswith("delete_"):
                self.rows[name[len("delete_"):]].pop(tuple(params), None)
            elif name == "upload_stats":
                self.rows[name][(params[0], params[2], params[3])] = params[:-1]  # updated_at aside
            else:
                self.rows[name][tuple(params[: self.KEYS[name]])] = params[:-1]  # processed_at aside

    def previous(self, image_id):
        row = self.rows["image"].get((image_id,))
        return None if row is None else {"duplicate_of": row[11], "lateness": row[14]}

    def write_step(self, verdicts, replay=False):
        step = {"verdicts": verdicts, "windows": []}
        writes = step_writes(step, W)
        if replay:
            writes = [w for v in verdicts for w in superseded_writes(v, self.previous(v["image_id"]), W)] + writes
        self.apply(writes)


def _verdict(image_id, ts, status="accepted", duplicate_of=None, kind=None, lateness="on_time", watermark=0):
    return {
        "image_id": image_id, "producer": "p", "sha256": "ab" * 32, "phash": "0" * 16, "size": 10,
        "content_type": "image/png", "event_time": ts, "received_at": None, "status": status,
        "duplicate_of": duplicate_of, "duplicate_kind": kind, "distance": 0 if kind else None,
        "lateness": lateness, "watermark": watermark, "topic": "images.uploaded", "partition": 0, "offset": ts,
    }  # fmt: skip


def test_a_replay_that_reverses_a_duplicate_pair_and_counts_a_too_late_event_leaves_a_clean_run():
    # the failed attempt: O on time; L (earlier event time) arrived late and was decided on
    # arrival as a duplicate of O; E arrived after its window was final (a late_events row)
    first = [
        _verdict(O, 2_000),
        _verdict(L, 1_000, "duplicate", O, "exact", "late", 5_000),
        _verdict(E, 1_500, lateness="too_late", watermark=10**6),
    ]
    # the replay decides in event-time order: L first, O duplicates L; E is on time
    replay = [
        _verdict(L, 1_000),
        _verdict(E, 1_500),
        _verdict(O, 2_000, "duplicate", L, "exact"),
    ]
    tables = Tables()
    tables.write_step(first)
    assert set(tables.rows["duplicate"]) == {(O, L)} and len(tables.rows["late_event"]) == 1
    tables.write_step(replay, replay=True)
    clean = Tables()
    clean.write_step(replay)
    assert tables.rows == clean.rows
    assert set(tables.rows["duplicate"]) == {(L, O)} and tables.rows["late_event"] == {}


def test_a_near_duplicate_that_finds_another_original_on_replay_loses_its_old_pair():
    tables = Tables()
    tables.write_step([_verdict(E, 3_000, "duplicate", O, "near")])
    tables.write_step([_verdict(E, 3_000, "duplicate", L, "near")], replay=True)
    assert set(tables.rows["duplicate"]) == {(L, E)}


def test_an_unchanged_verdict_deletes_nothing_and_new_events_need_no_look_up():
    v = _verdict(O, 2_000, "duplicate", L, "exact", "too_late")
    assert superseded_writes(v, {"duplicate_of": L, "lateness": "too_late"}, W) == []
    assert superseded_writes(v, None, W) == []
    horizon = {0: 100, 1: 5}
    assert maybe_written({"topic": "t", "partition": 0, "offset": 99}, "t", horizon)
    assert not maybe_written({"topic": "t", "partition": 0, "offset": 100}, "t", horizon)
    assert not maybe_written({"topic": "t", "partition": 2, "offset": 0}, "t", horizon)
    assert not maybe_written({"topic": "other", "partition": 0, "offset": 0}, "t", horizon)


def test_the_writer_reads_earlier_rows_only_for_verdicts_tagged_for_a_recheck():
    from flink_jobs.functions import WriteSteps

    class Writer:
        def __init__(self):
            self.asked, self.written = [], []

        def previous(self, ids):
            self.asked.append(list(ids))
            return {O: {"duplicate_of": L, "lateness": "on_time"}}

        def write(self, writes):
            self.written.append(writes)

    writer = Writer()
    steps = WriteSteps(writer, W)
    steps.flat_map({"verdicts": [_verdict(E, 1_000)], "windows": []})
    assert writer.asked == []  # steady state: no read
    steps.flat_map({"verdicts": [{**_verdict(O, 2_000), "recheck": True}, _verdict(E, 1_000)], "windows": []})
    assert writer.asked == [[O]]
    assert ("delete_duplicate", (L, O)) in writer.written[-1]
