"""``decide: near`` in the JVM: what ``clean, decide: exact`` sends it, and how the job wires it.

The near stage probes 68 band keys and registers up to 4 per image (at the default distance of 8
bits): per-image work on a hash index, which the Python stage (:class:`flink_jobs.sharded.DecideNear`)
did in memory-bound dict look-ups, ~40 % of the job's CPU (docs/flink-jobs.md). The JVM operator
``dev.imgstream.flink.NearIndex`` (local-stack/jvm/flink) applies the same rules
(``imgstream.domain.dedup``: ``near_step``, ``register_candidate``, ``prune``) on Flink's own state,
in the same decision order, and answers in the form the verdict stage reads (pickled batches of
matches). The Python stage stays, selected by ``--near_stage=python``: it is the reference the JVM
operator is tested against, and the one a savepoint written before this operator holds state of.

A near op is a typed row (:data:`NEAR_OP_TYPE`), so the JVM reads it without Python's pickle:
``(pending key, window shard, image id, producer, pHash as a signed 64-bit int, event time, realm,
scope)``, the realm and the producer's scope worked out by ``decide: exact``, which has the policy.
"""

from __future__ import annotations

from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import DataStream, KeyedStream
from pyflink.java_gateway import get_gateway

from imgstream.domain.dedup import DedupPolicy, ImageRef, Scope
from imgstream.domain.producers import SYNTHETIC_REALM, USER_REALM, dedup_realm
from imgstream.domain.sharding import ShardPlan

#: One near op (``NearIndex.OP_TYPE``): see the module's docstring.
NEAR_OP_TYPE = Types.ROW([Types.STRING(), Types.INT(), Types.STRING(), Types.STRING(), Types.LONG(), Types.LONG(),
                          Types.INT(), Types.INT()])  # fmt: skip
#: Near ops of one step in decision order, ``Row(shard, [op, ...])``: what ``decide: exact`` sends per
#: step (its exact shard first), and ``route: near shards`` per near shard (:func:`route_near_ops`).
NEAR_OPS_TYPE = Types.ROW([Types.INT(), Types.LIST(NEAR_OP_TYPE)])
#: The dedup realms in the order of their codes (``NearIndex``: one index each).
REALMS = (USER_REALM, SYNTHETIC_REALM)
#: ``NearIndex.SCOPE_*``: the producer opted out of near dedup (registered, never probed), or looks
#: in every producer's images, or in its own.
SCOPE_NONE, SCOPE_GLOBAL, SCOPE_PRODUCER = 0, 1, 2
#: Name and uid of the JVM stage (a new uid: its state is not the Python stage's ``decide-near``).
JVM_NEAR_NAME, JVM_NEAR_UID = "decide: near (JVM)", "decide-near-jvm"
#: Name and uid of the JVM function that sends the ops to their near shards (no state).
ROUTER_NAME, ROUTER_UID = "route: near shards", "route-near-ops"
#: Bits of a pHash (a Java ``long``), and the mask that reads a signed one as unsigned again.
_BITS = 64
_UNSIGNED = (1 << _BITS) - 1


def near_op(pk: str, wshard: int, ref: ImageRef, policy: DedupPolicy) -> Row:
    """The near op of ``ref`` (an image that passed the exact step), positioned at ``pk``."""
    producer = policy.for_producer(ref.producer)
    scope = SCOPE_NONE if not producer.near else SCOPE_PRODUCER if producer.scope is Scope.PRODUCER else SCOPE_GLOBAL
    phash = ref.phash - (1 << _BITS) if ref.phash >> (_BITS - 1) else ref.phash
    return Row(pk, wshard, ref.image_id, ref.producer, phash, ref.event_time, REALMS.index(dedup_realm(ref.producer)),
               scope)  # fmt: skip


def op_item(op: Any) -> tuple[str, int, str, str, int, int]:
    """A near op as the Python stage holds it: ``(pk, wshard, image id, producer, pHash, event time)``,
    the pHash unsigned again (the stage works out the realm and scope itself)."""
    return op[0], op[1], op[2], op[3], op[4] & _UNSIGNED, op[5]


def near_index_spec(policy: DedupPolicy, plan: ShardPlan, prune_every_ms: int, prune_slack_ms: int) -> str:
    """``NearIndex``'s plan (its constructor checks it): the split, the limits, and per band its
    shift, width and probe flip masks (``BandPlan``'s own, so both stages probe the same keys)."""
    band_plan = policy.band_plan
    bands = "|".join(f"{shift}/{width}/{'.'.join(map(str, masks))}"
                     for (shift, width), masks in zip(band_plan.layout, band_plan.flip_masks))  # fmt: skip
    return (f"split_bits={plan.near_split_bits};max_distance={policy.near_max_distance};ttl_ms={policy.near_ttl_ms};"
            f"cap={policy.max_band_candidates};prune_every_ms={prune_every_ms};prune_slack_ms={prune_slack_ms};"
            f"bands={bands}")


def routed(plan: ShardPlan, ops: list[Any]) -> dict[int, list[Any]]:
    """A step's near ops by the near shards they visit (:meth:`ShardPlan.near_shards_of`), each list
    in the ops' order: what ``route: near shards`` (``NearRouter``) emits, as ``{shard: ops}``."""
    out: dict[int, list[Any]] = {}
    for op in ops:
        for shard in plan.near_shards_of(op[4] & _UNSIGNED):
            out.setdefault(shard, []).append(op)
    return out


def route_near_ops(side_output: DataStream, spec: str, slot_group: str = "") -> DataStream:
    """``decide: exact``'s near ops (one ``Row(exact shard, [op, ...])`` per step) as one
    ``Row(near shard, [op, ...])`` per near shard they visit: ``NearRouter(spec)`` in the JVM,
    chained after it (no state). Python sent each op once per near shard before, and encoding
    those rows cost it about as much as the rest of its near work."""
    router = get_gateway().jvm.dev.imgstream.flink.NearRouter(spec)
    j_stream = side_output._j_data_stream.flatMap(router, NEAR_OPS_TYPE.get_java_type_info())
    j_stream.name(ROUTER_NAME).uid(ROUTER_UID)
    if slot_group:
        j_stream.slotSharingGroup(slot_group)
    return DataStream(j_stream)


def jvm_near_stage(keyed: KeyedStream, spec: str, output_type: Any) -> DataStream:
    """``decide: near`` on ``keyed`` (near ops keyed by near shard) as ``NearIndex(spec)``, emitting
    rows of ``output_type`` (the Python stages' batches)."""
    function = get_gateway().jvm.dev.imgstream.flink.NearIndex(spec)
    j_stream = keyed._j_data_stream.process(function, output_type.get_java_type_info())
    return DataStream(j_stream.name(JVM_NEAR_NAME).uid(JVM_NEAR_UID))
