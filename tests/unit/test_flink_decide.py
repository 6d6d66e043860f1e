"""The deciding operator's state handling, without a Flink runtime: fake keyed state, timers
and watermark. A "restore" is a new operator instance over a copy of the state (what a
checkpoint holds), whose watermark is Long.MIN_VALUE until the next one arrives."""

import copy

from flink_jobs.functions import Decide
from imgstream.domain.dedup import DedupPolicy
from imgstream.domain.hashing import format_hash

W, L = 60_000, 120_000
LONG_MIN = -(2**63)


class FakeMapState:
    def __init__(self, data):
        self.data = data

    def items(self):
        return list(self.data.items())

    def put(self, key, value):
        self.data[key] = value

    def remove(self, key):
        del self.data[key]


class FakeRuntime:
    """Keyed state by descriptor name; ``checkpoint`` is a deep copy of all of it."""

    def __init__(self, states=None):
        self.states = states if states is not None else {}

    def get_map_state(self, descriptor):
        return FakeMapState(self.states.setdefault(descriptor.get_name(), {}))

    def checkpoint(self):
        return copy.deepcopy(self.states)


class FakeTimers:
    def __init__(self):
        self.watermark = LONG_MIN
        self.registered = set()

    def current_watermark(self):
        return self.watermark

    def register_event_time_timer(self, ts):
        self.registered.add(ts)


class FakeContext:
    def __init__(self, timers):
        self.timers = timers

    def get_current_key(self):
        return "index"

    def timer_service(self):
        return self.timers


class Operator:
    """One Decide instance with its fake runtime; ``watermark(w)`` fires due timers like Flink."""

    def __init__(self, states=None):
        self.runtime = FakeRuntime(states)
        self.decide = Decide(DedupPolicy(), W, L)
        self.decide.open(self.runtime)
        self.timers = FakeTimers()
        self.ctx = FakeContext(self.timers)
        self.out = []

    def element(self, image):
        self.out.extend(self.decide.process_element(dict(image), self.ctx))

    def watermark(self, watermark):
        self.timers.watermark = watermark
        while True:
            due = sorted(t for t in self.timers.registered if t <= watermark)
            if not due:
                return
            self.timers.registered.discard(due[0])
            self.out.extend(self.decide.on_timer(due[0], self.ctx))

    def windows(self):
        return [w for step in self.out for w in step["windows"]]

    def verdicts(self):
        return [v for step in self.out for v in step["verdicts"]]


def _image(n, ts, phash=None):
    return {
        "image_id": f"00000000-0000-4000-8000-{n:012d}", "producer": "p", "sha256": f"{n:064x}",
        "phash": format_hash(phash if phash is not None else (n * 0x9E3779B97F4A7C15) % 2**64),
        "size": 100, "content_type": "image/png", "received_at": None,
        "event_time": ts, "topic": "t", "partition": 0, "offset": n,
    }  # fmt: skip


def test_a_restore_classifies_against_the_finalised_through_point_and_keeps_final_rows():
    first = Operator()
    for n in range(3):
        first.element(_image(n, 1_000 + n))
    final_at = W - 1 + L
    first.watermark(final_at)
    finals = [w for w in first.windows() if w["final"]]
    assert [(w["window_start"], w["uploads"], w["revision"]) for w in finals] == [(0, 3, 2)]

    restored = Operator(first.runtime.checkpoint())  # watermark: Long.MIN_VALUE
    restored.element(_image(10, 5_000))  # too late for window 0, which is final
    restored.watermark(final_at + 1_000)
    (verdict,) = restored.verdicts()
    assert verdict["lateness"] == "too_late"
    assert verdict["watermark"] == final_at
    # no version of the final window is written again (it would overwrite uploads=3)
    assert [w for w in restored.windows() if w["window_start"] == 0] == []


def test_a_restore_still_counts_a_late_event_into_an_open_window():
    first = Operator()
    first.element(_image(1, W + 1_000))
    first.watermark(2 * W)  # window [W, 2W) fired, not final
    restored = Operator(first.runtime.checkpoint())
    restored.element(_image(2, W + 2_000))
    (verdict,) = restored.verdicts()
    assert verdict["lateness"] == "late"
    (version,) = restored.windows()
    assert (version["window_start"], version["uploads"], version["late_events"], version["final"]) == (W, 2, 1, False)


def test_after_a_restore_verdicts_below_the_topics_end_are_tagged_for_a_recheck(monkeypatch):
    """Issue 16, item 4: only the backlog a restored task may have written before is re-read."""
    import flink_jobs.functions as functions
    from imgstream.config import KafkaConfig

    calls = []

    async def end_offsets(config, topic):
        calls.append(topic)
        return {0: 100}

    monkeypatch.setattr(functions, "end_offsets", end_offsets)

    def operator(states=None):
        op = Operator(states)
        op.decide = Decide(DedupPolicy(), W, L, KafkaConfig(), "t")
        op.decide.open(op.runtime)
        return op

    fresh = operator()
    fresh.element(_image(1, 1_000))
    fresh.watermark(2_000)
    assert calls == [] and not any(v.get("recheck") for v in fresh.verdicts())  # a fresh job reads nothing

    restored = operator(fresh.runtime.checkpoint())
    restored.element(_image(99, 3_000))  # offset 99: below the end offsets at restore
    restored.element(_image(150, 3_100))  # appended after the restore
    restored.watermark(4_000)
    assert calls == ["t"]
    assert {v["offset"]: bool(v.get("recheck")) for v in restored.verdicts()} == {99: True, 150: False}


class KeyedRuntime:
    """Keyed state as Flink scopes it: each descriptor's map is the current key's."""

    def __init__(self):
        self.key = None
        self.states = {}  # (descriptor name, key) -> dict

    def get_map_state(self, descriptor):
        runtime, name = self, descriptor.get_name()

        class Scoped(FakeMapState):
            @property
            def data(self):
                return runtime.states.setdefault((name, runtime.key), {})

            @data.setter
            def data(self, value):
                pass

        return Scoped(None)


class KeyedOperator:
    """Decide over two keys (the dedup realms), timers registered per key like Flink's."""

    def __init__(self):
        from flink_jobs.functions import index_key

        self.index_key = index_key
        self.runtime = KeyedRuntime()
        self.decide = Decide(DedupPolicy(), W, L)
        self.decide.open(self.runtime)
        self.registered = set()  # (key, timestamp)
        self.watermark_at = LONG_MIN
        self.out = []

    def _ctx(self, key):
        operator = self

        class Timers:
            def current_watermark(self):
                return operator.watermark_at

            def register_event_time_timer(self, ts):
                operator.registered.add((key, ts))

        class Ctx:
            def get_current_key(self):
                return key

            def timer_service(self):
                return Timers()

        return Ctx()

    def element(self, image):
        key = self.runtime.key = self.index_key(image)
        self.out.extend(self.decide.process_element(dict(image), self._ctx(key)))

    def watermark(self, watermark):
        self.watermark_at = watermark
        for key, ts in sorted((k, t) for k, t in self.registered if t <= watermark):
            self.registered.discard((key, ts))
            self.runtime.key = key
            self.out.extend(self.decide.on_timer(ts, self._ctx(key)))

    def verdicts(self):
        return {v["image_id"]: v for step in self.out for v in step["verdicts"]}


def test_each_dedup_realm_gets_its_own_bucket_timer_and_index():
    """The same picture from a synthetic producer and then a user in the same 200 ms bucket:
    both are decided (a timer registered for one realm's key must not stand in for the
    other's), each as the first of its realm; a second user copy is a duplicate of the user's."""
    op = KeyedOperator()
    hidden = {**_image(1, 1_000), "producer": "synthetic-bench-a"}
    mine = {**_image(2, 1_050), "producer": "alice", "sha256": hidden["sha256"], "phash": hidden["phash"]}
    again = {**_image(3, 1_100), "producer": "alice", "sha256": hidden["sha256"], "phash": hidden["phash"]}
    for image in (hidden, mine, again):
        op.element(image)
    op.watermark(W)
    verdicts = op.verdicts()
    assert set(verdicts) == {hidden["image_id"], mine["image_id"], again["image_id"]}
    assert verdicts[hidden["image_id"]]["status"] == verdicts[mine["image_id"]]["status"] == "accepted"
    assert (verdicts[again["image_id"]]["status"], verdicts[again["image_id"]]["duplicate_of"]) == (
        "duplicate", mine["image_id"])
    # the index of each realm lives under its own key
    assert {k for (name, k) in op.runtime.states if name == "exact" and op.runtime.states[(name, k)]} == {
        "index", "index-synthetic"}
