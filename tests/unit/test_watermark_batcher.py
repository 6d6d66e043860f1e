"""``dev.imgstream.flink.WatermarkBatcher`` as an operator, driven record by record and watermark
by watermark through Flink's own operator test harness (flink-runtime's test jar, which
``make unit`` resolves into ``.stack/lib/flink-test``; ``tests/conftest.py`` puts it on the
class path of PyFlink's gateway).

The mini-cluster runs (``test_flink_pipeline.py``) show the job's outputs do not change; these
show what the operator itself does between two watermarks: which records it holds, when they
leave, and which watermarks go on."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest

pytest.importorskip("pyflink")

from tests.fixtures.flink_harness import java_row, jvm  # noqa: E402,F401 (jvm: the fixture)

#: A grid line: a whole second, so ``BASE - 1`` ends the second before it.
BASE = 1_764_950_400_000


@contextlib.contextmanager
def harness(jvm: Any, max_buffered: int = 100, quantum_ms: int = 1_000) -> Iterator[Any]:
    """An opened keyed harness around a new batcher (keyed, like the job's, on a row's first field)."""
    from pyflink.common import Types

    operator = jvm.dev.imgstream.flink.WatermarkBatcher(max_buffered, quantum_ms)
    test = jvm.org.apache.flink.streaming.util.KeyedOneInputStreamOperatorTestHarness(
        operator, jvm.KeyByKeySelector(), Types.INT().get_java_type_info())
    test.open()
    try:
        yield test
    finally:
        test.close()


def send(jvm: Any, test: Any, key: int, item: str, timestamp: int) -> None:
    row = java_row(jvm, key, item)
    test.processElement(jvm.org.apache.flink.streaming.runtime.streamrecord.StreamRecord(row, timestamp))


def taken(test: Any) -> list[Any]:
    """What the operator emitted since the last call, in order: ``(key, [(item, timestamp)])``
    per batch, an ``int`` per watermark."""
    out = []
    queue = test.getOutput()
    for element in list(queue.toArray()):
        if element.getClass().getSimpleName() == "Watermark":
            out.append(element.getTimestamp())
        else:
            row = element.getValue()
            items = [(item.getField(0), item.getField(1)) for item in row.getField(1)]
            out.append((row.getField(0), items))
    queue.clear()
    return out


def batches_then(out: list[Any]) -> tuple[dict[int, list[Any]], list[int]]:
    """``out`` as its batches by key (each key once: the order between keys is free) and the
    watermarks after them, checking no batch follows a watermark."""
    keys = [o for o in out if isinstance(o, tuple)]
    marks = [o for o in out if not isinstance(o, tuple)]
    assert out == keys + marks, out
    by_key = dict(keys)
    assert len(by_key) == len(keys), f"a key has two batches: {keys}"
    return by_key, marks


def test_records_wait_for_the_grid_line_to_move_then_leave_before_it_one_batch_per_key(jvm):
    with harness(jvm) as test:
        test.processWatermark(BASE + 500)  # the first line at or before it: BASE - 1
        assert taken(test) == [BASE - 1]
        send(jvm, test, 1, "a", BASE + 100)
        send(jvm, test, 2, "b", BASE + 150)
        send(jvm, test, 1, "c", BASE + 120)
        test.processWatermark(BASE + 998)  # the line has not moved: nothing leaves
        assert taken(test) == []
        send(jvm, test, 2, "d", BASE + 300)
        test.processWatermark(BASE + 999)  # it moves: the batches, then the watermark
        by_key, marks = batches_then(taken(test))
        assert by_key == {1: [("a", BASE + 100), ("c", BASE + 120)], 2: [("b", BASE + 150), ("d", BASE + 300)]}
        assert marks == [BASE + 999]
        test.processWatermark(BASE + 1_500)  # nothing held: no batch, and no watermark either
        assert taken(test) == []
        test.processWatermark(BASE + 2_700)  # a jump over a line and a half: the last one at or before it
        assert taken(test) == [BASE + 1_999]


def test_a_quantum_of_one_forwards_every_watermark_and_a_lower_one_never(jvm):
    with harness(jvm, quantum_ms=1) as test:
        test.processWatermark(BASE + 10)
        send(jvm, test, 3, "a", BASE + 11)
        test.processWatermark(BASE + 11)
        test.processWatermark(BASE + 5)  # behind: not forwarded (watermarks only move on)
        assert taken(test) == [BASE + 10, (3, [("a", BASE + 11)]), BASE + 11]


def test_held_records_leave_before_a_barrier_at_the_bound_and_at_the_end(jvm):
    with harness(jvm, max_buffered=3) as test:
        test.processWatermark(BASE - 1)
        taken(test)
        send(jvm, test, 1, "a", BASE)
        send(jvm, test, 2, "b", BASE)
        assert taken(test) == []
        test.prepareSnapshotPreBarrier(7)  # nothing may be held across a checkpoint (no state)
        assert batches_then(taken(test)) == ({1: [("a", BASE)], 2: [("b", BASE)]}, [])
        for item in "cde":
            send(jvm, test, 4, item, BASE + 1)
        assert taken(test) == [(4, [("c", BASE + 1), ("d", BASE + 1), ("e", BASE + 1)])]  # the bound: 3 held
        send(jvm, test, 4, "f", BASE + 2)
        test.processWatermark(2**63 - 1)  # the end of the input goes on as it is
        assert taken(test) == [(4, [("f", BASE + 2)]), 2**63 - 1]


@pytest.mark.parametrize("args", [(0, 1_000), (10, 0), (-5, 200)])
def test_the_operator_refuses_settings_it_cannot_run(jvm, args):
    from py4j.protocol import Py4JJavaError

    with pytest.raises(Py4JJavaError, match="IllegalArgumentException"):
        jvm.dev.imgstream.flink.WatermarkBatcher(*args)
