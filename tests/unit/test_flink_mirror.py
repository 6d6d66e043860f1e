"""MirroredMap: reads once, writes through, and a new instance over the same state sees it all."""

from flink_jobs.mirror import MirroredMap


class FakeMapState:
    """Counts reads: the point of the mirror is that lookups stop reaching the state."""

    def __init__(self, data=None):
        self.data = dict(data or {})
        self.iterations = 0
        self.puts = 0

    def items(self):
        self.iterations += 1
        return list(self.data.items())

    def put(self, key, value):
        self.puts += 1
        self.data[key] = value

    def remove(self, key):
        del self.data[key]


def test_loads_once_then_answers_hits_and_misses_from_memory():
    state = FakeMapState({"a": [1]})
    mirror = MirroredMap(state)
    assert mirror.get("a") == [1] and mirror.get("missing") is None and "b" not in mirror
    assert len(mirror) == 1 and list(mirror) == ["a"]
    assert state.iterations == 1


def test_writes_and_deletes_reach_the_state_so_a_restore_rebuilds_the_same_map():
    state = FakeMapState({"a": [1], "b": [2]})
    mirror = MirroredMap(state)
    mirror["c"] = [3]
    mirror["a"] = [10]
    del mirror["b"]
    assert state.data == {"a": [10], "c": [3]} and state.puts == 2
    restored = MirroredMap(state)  # a restarted worker over the restored state
    assert dict(restored.items()) == dict(mirror.items())


def test_reset_reloads_from_the_state():
    state = FakeMapState({"a": [1]})
    mirror = MirroredMap(state)
    assert mirror["a"] == [1]
    state.data["a"] = [2]  # another key's map, after the current key changed
    mirror.reset()
    assert mirror["a"] == [2] and state.iterations == 2


def test_get_after_a_reset_answers_from_the_reloaded_map():
    # once loaded, get is the dict's own method: a reset must not leave the old dict's behind
    state = FakeMapState({"a": [1]})
    mirror = MirroredMap(state)
    assert mirror.get("a") == [1]
    state.data = {"b": [2]}
    mirror.reset()
    assert mirror.get("a") is None and mirror.get("b") == [2] and state.iterations == 2
    mirror["c"] = [3]
    assert mirror.get("c") == [3]


def test_views_and_get_follow_writes_without_reading_the_state_again():
    state = FakeMapState({"a": [1]})
    mirror = MirroredMap(state)
    mirror["b"] = [2]
    del mirror["a"]
    assert mirror.get("a", "gone") == "gone" and mirror.get("b") == [2]
    assert list(mirror.keys()) == ["b"] and list(mirror.values()) == [[2]] and list(mirror.items()) == [("b", [2])]
    assert state.iterations == 1 and state.data == {"b": [2]}


class KeyedFakeMapState:
    """MapState scoped by a current key, as Flink's is: each key's map is loaded once."""

    def __init__(self, data):
        self.data, self.key, self.loads = data, None, []

    def items(self):
        self.loads.append(self.key)
        return list(self.data.setdefault(self.key, {}).items())

    def put(self, key, value):
        self.data.setdefault(self.key, {})[key] = value

    def remove(self, key):
        del self.data[self.key][key]


def test_use_switches_between_keys_loading_each_once():
    state = KeyedFakeMapState({0: {"a": 1}, 1: {"b": 2}})
    mirror = MirroredMap(state)
    for _ in range(3):
        for key in (0, 1):
            state.key = key
            mirror.use(key)
            assert dict(mirror.items()) == state.data[key]
    state.key = 0
    mirror.use(0)
    mirror["c"] = 3
    state.key = 1
    mirror.use(1)
    assert mirror.get("c") is None and mirror.get("b") == 2
    assert state.loads == [0, 1] and state.data[0] == {"a": 1, "c": 3}


def test_mirrors_are_kept_per_key_so_alternating_keys_read_each_map_once():
    maps = {"index": {"a": [1]}, "index-synthetic": {"s": [9]}}
    current = ["index"]

    class Keyed(FakeMapState):
        @property
        def data(self):
            return maps[current[0]]

        @data.setter
        def data(self, value):
            pass

    state = Keyed()
    mirror = MirroredMap(state)
    for _ in range(3):
        for key, present, absent in (("index", "a", "s"), ("index-synthetic", "s", "a")):
            current[0] = key
            mirror.use(key)
            assert mirror.get(present) is not None and mirror.get(absent) is None and absent not in mirror
    assert state.iterations == 2  # one load per key, not one per switch
    current[0] = "index"
    mirror.use("index")
    mirror["b"] = [2]
    assert maps["index"] == {"a": [1], "b": [2]} and "b" not in maps["index-synthetic"]


def test_band_keys_are_ints_in_the_mirror_and_their_old_text_in_the_state():
    # the near index's codec: a savepoint written while keys were strings reads back as the
    # same keys, and what the mirror writes is that text again
    from flink_jobs.functions import BAND_KEYS
    from imgstream.domain.hashing import BandPlan

    plan = BandPlan.for_distance(6)
    key = plan.keys(0xABCD_0000_0000_0001)[0]
    state = FakeMapState({"4.0:abcd": [["old"]], "00:1ff": [["older layout"]]})
    mirror = MirroredMap(state, BAND_KEYS)
    assert mirror.get(key) == [["old"]] and plan.owns(key)
    assert mirror.get("00:1ff") == [["older layout"]] and not plan.owns("00:1ff")
    mirror[key] = [["new"]]
    del mirror["00:1ff"]
    assert state.data == {"4.0:abcd": [["new"]]}
    assert dict(MirroredMap(state, BAND_KEYS).items()) == {key: [["new"]]}
