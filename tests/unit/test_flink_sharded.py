"""The sharded deciding operators (issue 17) without a Flink runtime: fake keyed state per
shard key, timers and watermarks, the three stages wired as build() wires them. A "restore" is
a new set of operators over a copy of the state and the timers (what a checkpoint holds),
whose watermark is Long.MIN_VALUE until the next one arrives."""

import copy
import itertools
import json
import random
import sys

import pytest

from flink_jobs.functions import DLQ_TAG
from flink_jobs.sharded import NEAR_TAG, DecideExact, DecideNear, DecideWindows
from flink_jobs.near_index import near_op, routed
from imgstream.domain.dedup import DedupPolicy, ImageRef
from imgstream.domain.hashing import format_hash, key_text
from imgstream.domain.sharding import ShardPlan, due_of, order_key, pending_key
from tests.fixtures.flink_fakes import FakeMetrics

W, L = 60_000, 120_000
LONG_MIN = -(2**63)


class KeyedState:
    """MapState of one descriptor, scoped by the runtime's current key."""

    def __init__(self, runtime, name):
        self.runtime, self.name = runtime, name

    def _data(self):
        return self.runtime.states.setdefault(self.name, {}).setdefault(self.runtime.key, {})

    def items(self):
        return list(self._data().items())

    def put(self, key, value):
        self._data()[key] = value

    def remove(self, key):
        del self._data()[key]


class Runtime:
    def __init__(self, states=None, timers=None):
        self.states = states if states is not None else {}
        self.timers = timers if timers is not None else set()  # (key, ts)
        self.key = None
        self.watermark = LONG_MIN
        self.metrics = FakeMetrics()

    def get_map_state(self, descriptor):
        return KeyedState(self, descriptor.get_name())

    def get_job_parameter(self, key, default):
        return default

    def get_metrics_group(self):
        return self.metrics

    # the context of process_element / on_timer
    def get_current_key(self):
        return self.key

    def timer_service(self):
        return self

    def current_watermark(self):
        return self.watermark

    def register_event_time_timer(self, ts):
        self.timers.add((self.key, ts))


STAGES = ("exact", "near", "windows")


class Stages:
    """decide: exact -> decide: near -> decide: verdicts, windows, wired like build(), each
    stage at ``parallelism`` subtasks (key ``k`` on subtask ``k % parallelism``; a subtask
    sees only its keys' state and timers, as after Flink redistributes key groups)."""

    def __init__(self, shards=4, checkpoint=None, kafka=None, topic="", parallelism=1, merge=False):
        policy = DedupPolicy()
        self.merge = merge  # each subtask's step outputs merged per key, as flink_jobs.pipeline.merged does
        self.plan = ShardPlan.for_policy(policy, shards=shards)
        self.parallelism = parallelism
        saved = checkpoint or {}
        self.runtimes, self.ops = {}, {}
        for name in STAGES:
            states, timers = saved.get(name, ({}, set()))
            self.runtimes[name] = [
                Runtime(states, {(k, t) for k, t in timers if k % parallelism == i}) for i in range(parallelism)
            ]
            self.ops[name] = []
            for runtime in self.runtimes[name]:
                op = {"exact": lambda: DecideExact(policy, self.plan, W, L), "near": lambda: DecideNear(policy, self.plan),
                      "windows": lambda: DecideWindows(W, L, kafka, topic)}[name]()  # fmt: skip
                op.open(runtime)
                self.ops[name].append(op)
        self.steps = []

    def checkpoint(self):
        out = {}
        for name, runtimes in self.runtimes.items():
            out[name] = (copy.deepcopy(runtimes[0].states), set().union(*(r.timers for r in runtimes)))
        return out

    def _deliver(self, name, key, item):
        i = key % self.parallelism
        runtime = self.runtimes[name][i]
        runtime.key = key
        if name == "exact":  # a cleaned event: what process_element makes of a raw record
            op = self.ops[name][i]
            op.use_key(key)
            op.hold([op.positioned(item, runtime.watermark)], "", runtime)
            return
        for record in self.ops[name][i].process_element(item, runtime) or ():
            self._route(name, record)

    def _route(self, name, record):
        if name == "exact":
            if isinstance(record, tuple) and record[0] is NEAR_TAG:  # route: near shards, in the JVM
                for shard, ops in routed(self.plan, record[1][1]).items():
                    self._deliver("near", shard, ops)
            else:
                self._deliver("windows", record[0], record[1])
        elif name == "near":
            self._deliver("windows", record[0], record[1])
        else:
            self.steps.append(record)

    def element(self, image):
        self._deliver("exact", self.plan.exact_shard(image["sha256"]), dict(image))

    def watermark(self, watermark):
        for name in STAGES:  # each stage forwards the watermark after its timers
            for op, runtime in zip(self.ops[name], self.runtimes[name]):
                runtime.watermark = watermark
                out = []
                while True:
                    due = sorted((ts, key) for key, ts in runtime.timers if ts <= watermark)
                    if not due:
                        break
                    ts, key = due[0]
                    runtime.timers.discard((key, ts))
                    runtime.key = key
                    for record in op.on_timer(ts, runtime):
                        if self.merge and name != "windows":
                            out.append(record)
                        else:
                            self._route(name, record)
                self._route_merged(name, out)

    def _route_merged(self, name, records):
        """One subtask's outputs of one watermark advance, one merged record per next stage and
        key: ``[([source, items], timestamp), ...]`` in the order they were made."""
        merged = {}
        for record in records:
            if isinstance(record, tuple) and record[0] is NEAR_TAG:
                self._route(name, record)  # near ops go on as they are (typed rows: no merge hop)
                continue
            key, batch = record
            merged.setdefault(("windows", key), []).append((batch, 0))
        for (stage, key), batches in merged.items():
            self._deliver(stage, key, batches)

    def verdicts(self):
        return [v for step in self.steps for v in step["verdicts"]]

    def windows(self):
        return [w for step in self.steps for w in step["windows"]]


def _image(n, ts, phash=None, sha=None, producer="p"):
    return {
        "image_id": f"00000000-0000-4000-8000-{n:012d}", "producer": producer, "sha256": sha or f"{n:064x}",
        "phash": format_hash(phash if phash is not None else (n * 0x9E3779B97F4A7C15) % 2**64),
        "size": 100, "content_type": "image/png", "received_at": None,
        "event_time": ts, "topic": "t", "partition": 0, "offset": n,
    }  # fmt: skip


def test_exact_and_near_duplicates_are_found_across_shards_in_event_time_order():
    stages = Stages(shards=4)
    stages.element(_image(2, 1_500, phash=0xF0F0_0000_0000_0001, sha="b" * 64))  # arrives first, later in time
    stages.element(_image(1, 1_000, phash=0xF0F0_0000_0000_0000, sha="a" * 64))
    stages.element(_image(3, 1_600, phash=0x1234, sha="a" * 64))  # exact copy of 1
    stages.watermark(2_000)
    got = {v["image_id"][-1]: (v["status"], v["duplicate_of"] and v["duplicate_of"][-1], v["distance"])
           for v in stages.verdicts()}  # fmt: skip
    assert got == {"1": ("accepted", None, None), "2": ("duplicate", "1", 1), "3": ("duplicate", "1", 0)}


def test_a_restore_classifies_against_the_finalised_through_point_and_keeps_final_rows():
    first = Stages()
    for n in range(3):
        first.element(_image(n, 1_000 + n, producer="p"))
    final_at = W - 1 + L
    first.watermark(final_at)
    finals = [w for w in first.windows() if w["final"]]
    assert [(w["window_start"], w["uploads"], w["revision"]) for w in finals] == [(0, 3, 2)]

    restored = Stages(checkpoint=first.checkpoint())  # watermark: Long.MIN_VALUE
    restored.element(_image(10, 5_000, producer="p"))  # too late for window 0, which is final
    restored.watermark(final_at + 1_000)
    (verdict,) = restored.verdicts()
    assert verdict["lateness"] == "too_late" and verdict["watermark"] == final_at
    assert [w for w in restored.windows() if w["window_start"] == 0] == []  # the final row stays


def test_a_restore_still_counts_a_late_event_into_an_open_window():
    first = Stages()
    first.element(_image(1, W + 1_000))
    first.watermark(2 * W)  # window [W, 2W) fired, not final
    restored = Stages(checkpoint=first.checkpoint())  # watermark: Long.MIN_VALUE
    restored.element(_image(2, W + 2_000))
    restored.watermark(2 * W + 1_000)
    (verdict,) = restored.verdicts()
    assert verdict["lateness"] == "late"
    (version,) = [w for w in restored.windows() if w["window_start"] == W]
    assert (version["uploads"], version["late_events"], version["final"]) == (2, 1, False)


def test_late_events_of_one_step_write_one_version_of_their_window():
    stages = Stages()
    stages.element(_image(1, W + 1_000))
    stages.watermark(2 * W)  # window [W, 2W) fired, not final
    for n in range(2, 7):
        stages.element(_image(n, W + 1_000 + n))  # five late events before the next watermark
    stages.watermark(2 * W + 1_000)
    late = [v for v in stages.verdicts() if v["lateness"] == "late"]
    assert len(late) == 5
    versions = [w for w in stages.windows() if w["window_start"] == W]
    assert [(w["revision"], w["uploads"], w["late_events"]) for w in versions] == [(1, 1, 0), (6, 6, 5)]


def test_after_a_restore_verdicts_below_the_topics_end_are_tagged_for_a_recheck(monkeypatch):
    import flink_jobs.sharded as sharded
    from imgstream.config import KafkaConfig

    calls = []

    async def end_offsets(config, topic):
        calls.append(topic)
        return {0: 100}

    monkeypatch.setattr(sharded, "end_offsets", end_offsets)
    fresh = Stages(kafka=KafkaConfig(), topic="t")
    fresh.element(_image(1, 1_000))
    fresh.watermark(2_000)
    assert calls == [] and not any(v.get("recheck") for v in fresh.verdicts())  # a fresh job reads nothing

    restored = Stages(checkpoint=fresh.checkpoint(), kafka=KafkaConfig(), topic="t")
    restored.element(_image(99, 3_000))  # offset 99: below the end offsets at restore
    restored.element(_image(150, 3_100))  # appended after the restore
    restored.watermark(4_000)
    assert calls == ["t"]
    assert {v["offset"]: bool(v.get("recheck")) for v in restored.verdicts()} == {99: True, 150: False}


def test_each_stage_keeps_state_only_under_its_shards():
    stages = Stages(shards=4)
    for n in range(40):
        stages.element(_image(n, 1_000 + n, producer=f"p{n % 5}"))
    stages.watermark(W + L)
    exact_keys = set(stages.runtimes["exact"][0].states["exact"])
    near_keys = set(stages.runtimes["near"][0].states["bands"])
    assert exact_keys <= set(range(4)) and len(exact_keys) > 1
    assert near_keys <= set(range(stages.plan.near_shards)) and len(near_keys) > 1
    # every band key lives in exactly one near shard, and the near shards hold each image's 4 keys
    owners = {}
    for shard, bands in stages.runtimes["near"][0].states["bands"].items():
        for key in bands:
            assert owners.setdefault(key, shard) == shard
    assert sum(len(c) for b in stages.runtimes["near"][0].states["bands"].values() for c in b.values()) == 40 * 4


def test_a_fresh_job_meeting_its_keys_again_never_reads_the_topic(monkeypatch):
    """State a key holds when this attempt meets it again was written by this attempt: only
    state found at a key's first touch means a restore."""
    import flink_jobs.sharded as sharded
    from imgstream.config import KafkaConfig

    calls = []

    async def end_offsets(config, topic):
        calls.append(topic)
        return {0: 10**9}

    monkeypatch.setattr(sharded, "end_offsets", end_offsets)
    stages = Stages(shards=4, kafka=KafkaConfig(), topic="t")
    for n in range(40):
        stages.element(_image(n, 1_000 + 100 * n, producer=f"p{n % 7}"))
        stages.watermark(1_000 + 100 * n)
    stages.watermark(W + L)
    assert len({stages.plan.window_shard(v["producer"], 0) for v in stages.verdicts()}) > 1  # several keys
    assert calls == [] and not any(v.get("recheck") for v in stages.verdicts())


def _stream(seed, count=160):
    """Originals, exact and near copies and replays, arriving up to 3 s out of order."""
    rnd = random.Random(seed)
    images, contents = [], []
    for n in range(count):
        ts = 1_000 + 250 * n
        roll = rnd.random()
        if contents and roll < 0.2:
            sha, phash = rnd.choice(contents)
        elif contents and roll < 0.4:
            sha, phash = f"{n:064x}", rnd.choice(contents)[1] ^ (1 << rnd.randrange(64)) ^ (1 << rnd.randrange(64))
        else:
            sha, phash = f"{n:064x}", rnd.getrandbits(64)
        contents.append((sha, phash))
        images.append(_image(n, ts, phash=phash, sha=sha, producer=f"p{n % 3}"))
        if roll > 0.95:
            images.append(dict(images[rnd.randrange(len(images))], offset=10_000 + n))  # a replay
    arrival = sorted(images, key=lambda i: i["event_time"] + rnd.randint(0, 3_000))
    return arrival


def _feed(stages, arrival, start, stop):
    for image in arrival[start:stop]:
        stages.element(image)
        if image["offset"] % 4 == 0:
            stages.watermark(max(i["event_time"] for i in arrival[: arrival.index(image) + 1]) - 2_000)


def _result(stages_list):
    verdicts = sorted(json.dumps({k: v for k, v in verdict.items() if k != "watermark"}, sort_keys=True)
                      for stages in stages_list for verdict in stages.verdicts())
    table = {}
    for stages in stages_list:
        for row in stages.windows():
            table[(row["window_start"], row["producer"], row["content_type"])] = row
    return verdicts, table


@pytest.mark.parametrize("before, after", [(1, 2), (2, 1), (1, 4), (3, 2)])
def test_a_restore_at_another_parallelism_mid_stream_ends_like_one_uninterrupted_run(before, after):
    """Issue 17: a checkpoint at parallelism ``before`` restored at ``after`` in the middle of a
    stream (pending images, timers, open windows, half-built index): the same verdicts and the
    same final table as one run that never stopped (the restored run first sees the watermark
    the source re-emits)."""
    arrival = _stream(seed=before * 10 + after)
    cut = len(arrival) // 2
    whole = Stages(parallelism=1)
    _feed(whole, arrival, 0, len(arrival))
    whole.watermark(10**12)

    first = Stages(parallelism=before)
    _feed(first, arrival, 0, cut)
    last_watermark = first.runtimes["exact"][0].watermark
    saved = first.checkpoint()
    assert any(saved["exact"][0]["pending"].values()) and saved["exact"][1]  # images in flight, timers
    assert any(saved["windows"][0]["windows"].values())  # open windows
    second = Stages(parallelism=after, checkpoint=saved)
    second.watermark(last_watermark)
    _feed(second, arrival, cut, len(arrival))
    second.watermark(10**12)

    assert _result([first, second]) == _result([whole])
    statuses = {v["status"] for v in whole.verdicts()}
    assert statuses == {"accepted", "duplicate"} and any(v["duplicate_kind"] == "near" for v in whole.verdicts())


def test_a_users_upload_of_a_synthetic_images_bytes_is_accepted():
    """Issue 20 in the stages: same bytes (and pHash), a synthetic producer first, then a user:
    the user's image is accepted; each realm's index lives in state of its own."""
    stages = Stages(shards=4)
    phash = 0xF0F0_0000_0000_0000
    stages.element(_image(1, 1_000, phash=phash, sha="a" * 64, producer="synthetic-bench"))
    stages.element(_image(2, 1_100, phash=phash, sha="a" * 64, producer="alice"))
    stages.element(_image(3, 1_200, phash=phash ^ 1, sha="b" * 64, producer="bob"))  # near copy of alice's
    stages.element(_image(4, 1_300, phash=phash, sha="a" * 64, producer="synthetic-other"))
    stages.watermark(2_000)
    got = {v["image_id"][-1]: (v["status"], v["duplicate_of"] and v["duplicate_of"][-1]) for v in stages.verdicts()}
    assert got == {"1": ("accepted", None), "2": ("accepted", None), "3": ("duplicate", "2"), "4": ("duplicate", "1")}
    exact_states = stages.runtimes["exact"][0].states
    assert {k for shard in exact_states["exact"].values() for k in shard} == {"a" * 64, "b" * 64}
    assert {k for shard in exact_states["exact-synthetic"].values() for k in shard} == {"a" * 64}
    assert stages.runtimes["near"][0].states["bands-synthetic"]


def test_a_restore_with_other_shards_fails_instead_of_missing_duplicates():
    first = Stages(shards=4)
    first.element(_image(1, 1_000, sha="a" * 64))
    first.watermark(2_000)
    saved = first.checkpoint()

    same = Stages(shards=4, checkpoint=saved)
    same.element(_image(2, 3_000, sha="a" * 64))  # the same layout: the copy is found
    same.watermark(4_000)
    assert [v["duplicate_kind"] for v in same.verdicts()] == ["exact"]

    other = Stages(shards=8, checkpoint=saved)
    with pytest.raises(ValueError, match=r"sharded as 4/1/4/java-hash .* this job as 8/1/4/java-hash.*make flink-reset"):
        for n in range(2, 40):  # some image reaches a shard that holds state of the 4-shard layout
            other.element(_image(n, 3_000 + n, sha=f"{n:064x}"))


def _sha_in_shard(plan, shard, start=0):
    """The first SHA-256 (hex of ``start``, ``start + 1``, ...) whose exact shard is ``shard``."""
    return next(sha for sha in (f"{n:064x}" for n in itertools.count(start)) if plan.exact_shard(sha) == shard)


def test_a_restored_timer_wakes_its_key_for_the_next_bucket_after_it_fires():
    """A key's items of a later bucket wait on the key's earliest timer, which re-wakes the key
    for them when it fires. After a restore the operator no longer knows which timers the
    checkpoint holds: a new item of a still later bucket registered its own timer and made the
    restored one look like a later one, so the re-wake was skipped and the middle bucket waited
    for the new item's timer - decided after images of other shards it precedes (a near
    duplicate became the original: the TaskManager kill test, CI rehearsal of 2026-12-05)."""
    first = Stages(shards=4)
    plan = first.plan
    k = plan.exact_shard("0" * 64)
    a, b, d = (_sha_in_shard(plan, k, start=s) for s in (0, 10_000, 20_000))
    c = next(_sha_in_shard(plan, s, start=30_000) for s in range(4) if s != k)
    near = 0xF0F0_F0F0_0000_0000
    first.element(_image(1, 1_000, phash=0x1111_2222_3333_4444, sha=a))  # key k: its timer (bucket 1,199)
    first.element(_image(2, 1_500, phash=near, sha=b))  # key k, a later bucket: waits on that timer
    restored = Stages(shards=4, checkpoint=first.checkpoint())
    restored.element(_image(4, 2_500, phash=0x5555_6666_7777_8888, sha=d))  # key k again, after the restore
    restored.element(_image(3, 1_700, phash=near ^ 1, sha=c))  # another shard: a near copy of image 2
    restored.watermark(1_300)  # fires the restored timer: image 1's bucket, not yet image 2's
    restored.watermark(2_000)  # image 2 (bucket 1,599) is due here, before image 3
    restored.watermark(3_000)
    got = {v["image_id"][-1]: (v["status"], v["duplicate_of"] and v["duplicate_of"][-1]) for v in restored.verdicts()}
    assert got == {"1": ("accepted", None), "2": ("accepted", None), "3": ("duplicate", "2"), "4": ("accepted", None)}


def test_restores_at_many_points_of_many_streams_end_like_one_uninterrupted_run():
    """The restore above at many cut points: 40 streams x 3 cuts at parallelism 2. Before the
    re-wake fix (a restored timer's firing re-checks the next bucket's timer), 4 of these 120
    restores decided an image in a later step than its bucket and changed a verdict."""
    differ = []
    for seed in range(40):
        arrival = _stream(seed=seed)
        whole = Stages(parallelism=1)
        _feed(whole, arrival, 0, len(arrival))
        whole.watermark(10**12)
        for fraction in (0.3, 0.5, 0.7):
            cut = int(len(arrival) * fraction)
            first = Stages(parallelism=2)
            _feed(first, arrival, 0, cut)
            last_watermark = first.runtimes["exact"][0].watermark
            second = Stages(parallelism=2, checkpoint=first.checkpoint())
            second.watermark(last_watermark)
            _feed(second, arrival, cut, len(arrival))
            second.watermark(10**12)
            if _result([first, second]) != _result([whole]):
                differ.append((seed, fraction))
    assert differ == []


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_batches_merged_per_subtask_and_key_decide_like_one_batch_per_key_pair(parallelism):
    """``flink_jobs.pipeline.merged``: a stage's step outputs reach each key of the next stage
    as one record per upstream subtask, held as one ``pending`` entry - the same verdicts and
    table as batches sent key pair by key pair, including across a restore mid-stream."""
    for seed in range(3):
        arrival = _stream(seed=100 + seed)
        whole = Stages(parallelism=1)
        _feed(whole, arrival, 0, len(arrival))
        whole.watermark(10**12)
        merged = Stages(parallelism=parallelism, merge=True)
        _feed(merged, arrival, 0, len(arrival))
        merged.watermark(10**12)
        assert _result([merged]) == _result([whole])
        cut = len(arrival) // 2
        first = Stages(parallelism=parallelism, merge=True)
        _feed(first, arrival, 0, cut)
        last_watermark = first.runtimes["exact"][0].watermark
        second = Stages(parallelism=parallelism, checkpoint=first.checkpoint(), merge=True)
        second.watermark(last_watermark)
        _feed(second, arrival, cut, len(arrival))
        second.watermark(10**12)
        assert _result([first, second]) == _result([whole])
    windows = merged.runtimes["windows"][0].metrics.counters
    assert windows["batchesIn"].count < windows["itemsIn"].count  # merged records carried several items


def test_merged_batches_are_one_sorted_entry_under_the_first_source():
    from flink_jobs.sharded import merge

    one = ["e1", [("b", 1), ("d", 2)]]
    assert merge([one]) == ("e1", [("b", 1), ("d", 2)])
    assert merge([one, ["e3", [("a", 3), ("c", 4)]]]) == ("e1", [("a", 3), ("b", 1), ("c", 4), ("d", 2)])


def _raw(n, sha, received_at="1970-01-01T00:00:01.000Z"):
    return json.dumps({
        "schema_version": 1, "event_type": "image.uploaded", "image_id": f"00000000-0000-4000-8000-{n:012d}",
        "producer": "p", "sha256": sha, "phash": f"{n:016x}", "size": 10, "content_type": "image/png",
        "width": 1, "height": 1, "storage_key": f"sha256/{sha}", "received_at": received_at,
    }).encode()  # fmt: skip


def test_decide_exact_cleans_raw_records_and_refuses_one_routed_to_a_foreign_shard():
    """process_element takes the source's raw records (value, partition, offset), keyed by the
    SQL's shard: it cleans them, places the valid ones, sends bad ones to the dead letters (and
    places their rejected verdict), and refuses a valid event whose SHA-256 belongs elsewhere -
    deciding it in this shard would miss its duplicates."""
    plan = ShardPlan.for_policy(DedupPolicy(), shards=4)
    op, runtime = DecideExact(DedupPolicy(), plan, W, L), Runtime()
    op.open(runtime)
    sha = "c" * 63 + "1"
    runtime.key = plan.exact_shard(sha)

    def feed(value, offset):
        return list(op.process_element([((value, 0, offset), 1_000)], runtime))

    assert feed(_raw(1, sha), 0) == []  # placed: nothing leaves before the watermark
    assert feed(b'{"event_type": "stream.heartbeat", "received_at": "1970-01-01T00:00:01.000Z"}', 1) == []
    ((tag, letter),) = feed(b"{not json", 2)
    assert tag is DLQ_TAG and json.loads(letter)["reason"] == "not_json"
    runtime.key = (plan.exact_shard(sha) + 1) % 4  # the SQL read another SHA-256 than cleaning did
    ((tag, letter),) = feed(_raw(3, sha), 3)
    assert json.loads(letter)["reason"] == "misrouted" and f"exact shard {plan.exact_shard(sha)}" in json.loads(letter)["error"]
    held = [image for key in (plan.exact_shard(sha), runtime.key) for image in _pending(runtime, key)]
    assert sorted((i["offset"], i.get("status"), i.get("reason")) for i in held) == [
        (0, None, None), (2, "rejected", "not_json"), (3, "rejected", "misrouted")]


def _pending(runtime, key):
    return [payload for items in runtime.states.get("pending", {}).get(key, {}).values() for _, payload in items]


def test_decide_exact_holds_a_batch_as_one_pending_entry_in_decision_order():
    """A batch (one shard's records of one watermark interval, as WatermarkBatcher groups them)
    becomes one ``pending`` entry, its items sorted by pending key: positioned under the
    watermark current when the batch arrived (late records among them flagged late), whatever
    order the records came in; its dead letters leave at once, and their rejected verdicts are
    held with the rest."""
    plan = ShardPlan.for_policy(DedupPolicy(), shards=1)
    op, runtime = DecideExact(DedupPolicy(), plan, W, L), Runtime()
    op.open(runtime)
    runtime.key, runtime.watermark = 0, 5_000
    batch = [((_raw(n, f"{n:064x}", f"1970-01-01T00:00:{s:02d}.000Z"), 0, n), s * 1_000)
             for n, s in ((1, 9), (2, 4), (3, 7))]  # fmt: skip
    batch.insert(1, ((b"[1, 2]", 0, 9), 6_000))
    ((tag, letter),) = list(op.process_element(batch, runtime))
    assert tag is DLQ_TAG and json.loads(letter)["reason"] != ""
    entries = runtime.states["pending"][0]
    assert len(entries) == 1
    ((first, items),) = entries.items()
    keys = [pk for pk, _ in items]
    assert keys == sorted(keys) and first == keys[0]
    by_offset = {image["offset"]: image for _, image in items}
    assert sorted(by_offset) == [1, 2, 3, 9]
    assert by_offset[2]["lateness"] != by_offset[1]["lateness"]  # 4 s is behind the 5 s watermark
    assert by_offset[9]["status"] == "rejected"
    assert due_of(first) == 5_001  # the late record: due right after the watermark it arrived under
    counters = runtime.metrics.counters
    assert (counters["batchesIn"].count, counters["itemsIn"].count, counters["steps"].count) == (1, 4, 0)
    ((timer_key, timer_ts),) = runtime.timers
    runtime.watermark = 10_000
    steps = list(op.on_timer(timer_ts, runtime))
    assert steps and counters["steps"].count == 1  # one step took the batch
    assert not list(op.on_timer(timer_ts, runtime)) and counters["steps"].count == 1  # nothing due: no step


def test_near_ops_held_in_older_savepoints_decide_as_new_ops_do():
    # a new op carries the image's hash and the near shard works out its keys; a savepoint taken
    # before 2026-12-06 holds ops that carry their keys, and one taken before band keys were ints
    # holds them as text. Restored, they must find (and register under) the same keys as new ops
    policy = DedupPolicy()
    plan = ShardPlan.for_policy(policy, shards=4)
    outputs = []
    for spell in (None, tuple, lambda keys: tuple(map(key_text, keys))):
        held, before = Runtime(), DecideNear(policy, plan)  # the attempt that held them, then its savepoint
        before.open(held)
        for n, (phash, ts) in enumerate([(0x0123_4567_89AB_CDEF, 1_000), (0x0123_4567_89AB_CDEE, 2_000)]):
            pk = pending_key(order_key(ts, f"id{n}", LONG_MIN), 0, n)
            for shard, route in plan.near_routes(phash).items():
                held.key = shard
                if spell is None:  # a new op, as decide: exact sends it
                    before.process_element([near_op(pk, 7, ImageRef(f"id{n}", "p", "", phash, ts), policy)], held)
                else:  # an older op, held in pending as that attempt held it
                    before.use_key(shard)
                    keys = (spell(route.probe_keys), spell(route.register_keys))
                    before.hold([(pk, 7, f"id{n}", "p", phash, ts, *keys)], "e0", held)
        runtime, op = Runtime(copy.deepcopy(held.states), set(held.timers)), DecideNear(policy, plan)  # restored
        op.open(runtime)
        runtime.watermark, out = 10_000, []
        for key, ts in sorted(runtime.timers, key=lambda t: (t[1], t[0])):
            runtime.key = key
            out += list(op.on_timer(ts, runtime))
        outputs.append(out)
        assert all(type(k) is str for keys in runtime.states["bands"].values() for k in keys)  # text in state
        assert all(plan.band_plan.owns(k) for dedup in op.dedups.values() for k in dedup.bands)  # ints in memory
    assert outputs[0] == outputs[1] and outputs[0]  # the copy found its original either way


def test_stored_candidates_share_one_copy_of_the_producers_name():
    # each near shard decodes its own copy of an image's op; the candidates it stores must not
    # each keep a copy of the producer's name (measured: ~16 % of the near index's memory)
    policy = DedupPolicy()
    plan = ShardPlan.for_policy(policy, shards=4)
    runtime, op = Runtime(), DecideNear(policy, plan)
    op.open(runtime)
    phash, ts = 0x0123_4567_89AB_CDEF, 1_000
    pk = pending_key(order_key(ts, "id0", LONG_MIN), 0, 0)
    for shard in plan.near_shards_of(phash):
        runtime.key = shard
        producer = "".join(["synthetic-", "alice"])  # a new string object per op, as from the wire
        op.process_element([near_op(pk, 7, ImageRef("id0", producer, "", phash, ts), policy)], runtime)
    runtime.watermark = 10_000
    for key, timer in sorted(runtime.timers, key=lambda t: (t[1], t[0])):
        runtime.key = key
        list(op.on_timer(timer, runtime))
    stored = [candidate for name, shards in runtime.states.items() if name.startswith("bands")
              for by_key in shards.values() for candidates in by_key.values() for candidate in candidates]  # fmt: skip
    assert len(stored) == plan.band_plan.bands  # registered once per band
    assert len({id(candidate[1]) for candidate in stored}) == 1  # one name object for them all
    assert stored[0][1] is sys.intern("synthetic-alice")
