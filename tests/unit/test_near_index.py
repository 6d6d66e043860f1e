"""``dev.imgstream.flink.NearIndex`` (``decide: near`` in the JVM) against the pure reference.

Driven through Flink's operator test harness (as ``test_watermark_batcher.py``): the near ops of
random streams go to every near shard they visit, in batches and watermark steps, and the best of
each image's shards' matches must be the single in-memory index's answer
(:meth:`imgstream.domain.dedup.Deduplicator.near_step` on all probe keys), whatever the scope,
realm, cap and TTL - also across a snapshot restored mid-stream. The mini-cluster runs
(``test_flink_pipeline.py``) show the job's verdicts with it equal the reference end to end.
"""

from __future__ import annotations

import contextlib
import pickle
import random
from typing import Any, Iterator

import pytest

pytest.importorskip("pyflink")

from flink_jobs.functions import PRUNE_EVERY_MS, PRUNE_SLACK_MS  # noqa: E402
from flink_jobs.near_index import near_index_spec, near_op, routed  # noqa: E402
from imgstream.domain.dedup import DedupPolicy, Deduplicator, ImageRef, NearMatch, ProducerPolicy, Scope, best_match  # noqa: E402
from imgstream.domain.producers import dedup_realm  # noqa: E402
from imgstream.domain.sharding import ShardPlan, due_of, order_key, pending_key  # noqa: E402
from tests.fixtures.flink_harness import java_row, jvm  # noqa: E402,F401 (jvm: the fixture)

T0 = 1_764_950_400_000
#: A watermark below every event: what decide: exact's arrival watermark is before any.
LONG_MIN = -(2**63)


@contextlib.contextmanager
def harness(jvm: Any, spec: str, restore: Any = None) -> Iterator[Any]:
    """An opened harness around a new ``NearIndex(spec)``, keyed as the job keys it (``Row(shard)``),
    started from ``restore`` (a snapshot) when given."""
    from flink_jobs.pipeline import SHARD_KEY_TYPE

    operator = jvm.org.apache.flink.streaming.api.operators.KeyedProcessOperator(jvm.dev.imgstream.flink.NearIndex(spec))
    test = jvm.org.apache.flink.streaming.util.KeyedOneInputStreamOperatorTestHarness(
        operator, jvm.KeyByKeySelector(), SHARD_KEY_TYPE.get_java_type_info())
    if restore is not None:
        test.initializeState(restore)
    test.open()
    try:
        yield test
    finally:
        test.close()


def send(jvm: Any, test: Any, shard: int, ops: list[Any]) -> None:
    """One batch of near ops (``near_op`` rows) for ``shard``, as ``decide: exact`` sends it."""
    items = jvm.java.util.ArrayList()
    for op in ops:
        items.add(java_row(jvm, *op))
    element = java_row(jvm, shard, items)  # keyed as the job keys it: Row(shard) (KeyByKeySelector)
    test.processElement(jvm.org.apache.flink.streaming.runtime.streamrecord.StreamRecord(element))


def matches_out(test: Any) -> dict[str, NearMatch]:
    """The matches the operator emitted since the last call, by pending key (unpickled as the
    verdict stage reads them: ``[source, [(pk, [original, distance, time]), ...]]``)."""
    found: dict[str, NearMatch] = {}
    queue = test.getOutput()
    for element in list(queue.toArray()):
        if element.getClass().getSimpleName() == "Watermark":
            continue
        row = element.getValue()
        source, items = pickle.loads(bytes(row.getField(1)))
        assert source.startswith("n") and items == sorted(items)
        for pk, match in items:
            found[pk] = best_match(found.get(pk), NearMatch.from_list(match))
    queue.clear()
    return found


def stream(seed: int, n: int) -> list[tuple[str, ImageRef]]:
    """``n`` images in decision order: fresh hashes, near copies (a few bits flipped), exact
    re-uploads of a hash under a new id, producers of every policy and both realms."""
    rng = random.Random(seed)
    images: list[tuple[str, ImageRef]] = []
    hashes: list[int] = []
    for i in range(n):
        roll = rng.random()
        if hashes and roll < 0.45:
            phash = rng.choice(hashes)
            for bit in rng.sample(range(64), rng.randint(0, 9)):
                phash ^= 1 << bit
        else:
            phash = rng.getrandbits(64)
        hashes.append(phash)
        ts = T0 + i * rng.choice([0, 7, 150, 900])
        producer = rng.choice(["p1", "p1", "own", "opt-out", "synthetic-bench"])
        ref = ImageRef(f"id{i:04d}", producer, "", phash, ts)
        images.append((pending_key(order_key(ts, ref.image_id, LONG_MIN), 0, i), ref))
    return sorted(images)


POLICIES = {
    "default": DedupPolicy(producers={"own": ProducerPolicy(Scope.PRODUCER), "opt-out": ProducerPolicy(near=False)}),
    "tight": DedupPolicy(near_max_distance=10, max_band_candidates=2, near_ttl_ms=2_000,
                         producers={"own": ProducerPolicy(Scope.PRODUCER)}),  # fmt: skip
}


def reference(policy: DedupPolicy, images: list[tuple[str, ImageRef]]) -> dict[str, NearMatch]:
    dedups: dict[str, Deduplicator] = {}
    plan, found = policy.band_plan, {}
    for pk, ref in images:
        dedup = dedups.setdefault(dedup_realm(ref.producer), Deduplicator(policy))
        match = dedup.near_step(ref, plan.probe_keys(ref.phash), plan.keys(ref.phash))
        if match is not None:
            found[pk] = match
    return found


def run(jvm: Any, policy: DedupPolicy, plan: ShardPlan, images: list[tuple[str, ImageRef]],
        restore_at: int | None = None) -> dict[str, NearMatch]:  # fmt: skip
    """The images' matches from ``NearIndex``: ops sent in batches of a few images per near shard,
    the watermark moved past each batch's buckets; with ``restore_at``, the operator snapshotted after
    that many images and a new one restored from it goes on."""
    spec = near_index_spec(policy, plan, PRUNE_EVERY_MS, PRUNE_SLACK_MS)
    found: dict[str, NearMatch] = {}
    start, snapshot = 0, None
    for part in ([images] if restore_at is None else [images[:restore_at], images[restore_at:]]):
        with harness(jvm, spec, snapshot) as test:
            for at in range(0, len(part), 5):
                batch = part[at:at + 5]
                per_shard: dict[int, list[Any]] = {}
                for pk, ref in reversed(batch):  # out of order within a batch: the operator sorts
                    for shard in plan.near_shards_of(ref.phash):
                        per_shard.setdefault(shard, []).append(near_op(pk, 3, ref, policy))
                for shard, ops in per_shard.items():
                    send(jvm, test, shard, ops)
                test.processWatermark(due_of(batch[-1][0]) + 200)
                for pk, match in matches_out(test).items():
                    found[pk] = best_match(found.get(pk), match)
            snapshot = test.snapshot(1, 1)
        start += len(part)
    assert start == len(images)
    return found


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
@pytest.mark.parametrize("split_bits", [0, 1, 2])
def test_the_jvm_near_stage_finds_the_single_indexs_matches(jvm, policy_name, split_bits):
    policy = POLICIES[policy_name]
    plan = ShardPlan.for_policy(policy, shards=4, near_split_bits=split_bits)
    images = stream(seed=split_bits * 10 + len(policy_name), n=160)
    expected = reference(policy, images)
    assert len(expected) > 15  # the stream has near duplicates to find
    assert run(jvm, policy, plan, images) == expected


def test_a_snapshot_restored_mid_stream_ends_like_one_run(jvm):
    policy = POLICIES["default"]
    plan = ShardPlan.for_policy(policy, shards=4)
    images = stream(seed=7, n=120)
    expected = reference(policy, images)
    assert run(jvm, policy, plan, images, restore_at=55) == expected


def test_a_pair_across_the_sign_bit_and_every_scope(jvm):
    # pHashes above 2**63 travel as negative longs; an opted-out producer registers (its copy is
    # found by others) but never probes; a producer-scoped one sees its own images only
    policy = POLICIES["default"]
    plan = ShardPlan.for_policy(policy, shards=4)
    h = 0xFEDC_BA98_7654_3210
    refs = [ImageRef("a", "opt-out", "", h, T0), ImageRef("b", "opt-out", "", h ^ 1, T0 + 1),
            ImageRef("c", "p1", "", h ^ 3, T0 + 2), ImageRef("d", "own", "", h ^ 2, T0 + 3),
            ImageRef("e", "own", "", h ^ 6, T0 + 4)]  # fmt: skip
    images = [(pending_key(order_key(r.event_time, r.image_id, LONG_MIN), 0, i), r) for i, r in enumerate(refs)]
    found = {pk.split("|")[3]: (m.original, m.distance) for pk, m in run(jvm, policy, plan, images).items()}
    assert found == {
        "c": ("b", 1),  # b is 1 bit away, a 2: the closest wins; a and b themselves never probed
        "e": ("d", 1),  # d is its producer's; a, b and c are not, however close
    }


@pytest.mark.parametrize("split_bits", [0, 1, 2, 3])
def test_the_jvm_router_sends_each_op_to_the_near_shards_the_plan_names(jvm, split_bits):
    policy = DedupPolicy()
    plan = ShardPlan.for_policy(policy, shards=4, near_split_bits=split_bits)
    router = jvm.dev.imgstream.flink.NearRouter(near_index_spec(policy, plan, PRUNE_EVERY_MS, PRUNE_SLACK_MS))
    test = jvm.org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness(
        jvm.org.apache.flink.streaming.api.operators.StreamFlatMap(router))
    test.open()
    rng = random.Random(split_bits)
    refs = [ImageRef(f"id{i}", "p1", "", rng.getrandbits(64), T0 + i) for i in range(60)] + [
        ImageRef("zero", "p1", "", 0, T0), ImageRef("ones", "p1", "", 2**64 - 1, T0)]  # fmt: skip
    ops = [near_op(f"pk{i:03d}", 0, ref, policy) for i, ref in enumerate(refs)]
    items = jvm.java.util.ArrayList()
    for op in ops:
        items.add(java_row(jvm, *op))
    test.processElement(jvm.org.apache.flink.streaming.runtime.streamrecord.StreamRecord(java_row(jvm, 5, items)))
    out = {row.getField(0): [op.getField(0) for op in row.getField(1)] for row in
           (element.getValue() for element in test.extractOutputStreamRecords())}  # fmt: skip
    test.close()
    expected = {shard: [op[0] for op in batch] for shard, batch in routed(plan, ops).items()}
    assert out == expected and len(out) == plan.near_shards  # every shard met, each op once, in order


@pytest.mark.parametrize("spec, error", [
    ("", "bad near index spec part"),
    ("split_bits=1", "without max_distance"),
    ("split_bits=9;max_distance=8;ttl_ms=1;cap=1;prune_every_ms=1;prune_slack_ms=0;bands=0/64/0", "split_bits must be"),
    ("split_bits=0;max_distance=8;ttl_ms=0;cap=1;prune_every_ms=1;prune_slack_ms=0;bands=0/64/0", "ttl_ms must be"),
    ("split_bits=0;max_distance=8;ttl_ms=1;cap=1;prune_every_ms=1;prune_slack_ms=0;bands=0/8/256", "wider than its band"),
    ("split_bits=0;max_distance=8;ttl_ms=1;cap=1;prune_every_ms=1;prune_slack_ms=0;bands=60/8/0", "bad band"),
    ("split_bits=0;max_distance=8;ttl_ms=1;cap=1;prune_every_ms=1;prune_slack_ms=0;bands=0/8", "want shift/width/flips"),
])  # fmt: skip
def test_a_bad_spec_is_refused_when_the_job_is_built(jvm, spec, error):
    from py4j.protocol import Py4JJavaError

    with pytest.raises(Py4JJavaError, match=error):
        jvm.dev.imgstream.flink.NearIndex(spec)


def test_the_pickles_written_in_the_jvm_read_back_in_python(jvm):
    writer = jvm.dev.imgstream.flink.PickleWriter()
    writer.beginList().string("n3").beginList()
    for pk, number in [("ä|☃|𝄞", 0), ("x", -1), ("y", 2**31), ("z", -(2**63)), ("", 2**63 - 1)]:
        writer.string(pk).beginList().string(pk).integer(number).endList().pair()
    data = bytes(writer.endList().endList().toBytes())
    assert pickle.loads(data) == ["n3", [("ä|☃|𝄞", ["ä|☃|𝄞", 0]), ("x", ["x", -1]), ("y", ["y", 2**31]),
                                         ("z", ["z", -(2**63)]), ("", ["", 2**63 - 1])]]  # fmt: skip


def test_pending_keys_sort_in_the_jvm_as_in_python(jvm):
    # ids may hold any character: U+E000-U+FFFF sort below characters above U+FFFF in Python, but
    # above their surrogates in Java's compareTo
    rng = random.Random(3)
    alphabet = ["a", "b", "|", "é", "\ue000", "\uffff", "\U0001d11e", "\U0010ffff", "0"]
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))) for _ in range(150)]
    compare = jvm.dev.imgstream.flink.NearIndex.compareCodePoints
    for a, b in zip(words, reversed(words)):
        assert (compare(a, b) > 0) - (compare(a, b) < 0) == (a > b) - (a < b), (a, b)


def test_the_spec_carries_the_band_plans_own_probes():
    policy = DedupPolicy()
    spec = dict(part.split("=", 1) for part in near_index_spec(policy, ShardPlan.for_policy(policy), 1, 2).split(";"))
    bands = [band.split("/") for band in spec["bands"].split("|")]
    assert [(int(s), int(w)) for s, w, _ in bands] == list(policy.band_plan.layout)
    assert sum(len(flips.split(".")) for _, _, flips in bands) == policy.band_plan.probes
    assert (spec["prune_every_ms"], spec["prune_slack_ms"], spec["cap"]) == ("1", "2", str(policy.max_band_candidates))
