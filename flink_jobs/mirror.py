"""A Flink ``MapState`` mirrored in the Python worker's memory.

Every read of PyFlink keyed state that misses the worker's small cache is a blocking round
trip to the JVM (about 1-3 ms on the local stack), and a dedup index is mostly misses: each
new image asks about a new SHA-256, a new ``image_id`` and several band keys. A
:class:`MirroredMap` loads the whole map of the current key once (after a start or a
restore), then answers every read from memory - including "not there" - and writes through
to the ``MapState``, which stays the checkpointed source of truth. PyFlink commits the
writes before each checkpoint barrier, so a restore rebuilds exactly the mirror it lost.

Memory: the mirror holds what the state holds; the operators prune it by event time.

A mirror's keys may differ from the state's (:class:`KeyCodec`): the near index's band keys
are ints in memory, stored as the text they had when they were strings.
"""

from __future__ import annotations

from typing import Any, Callable, ItemsView, Iterator, KeysView, MutableMapping, NamedTuple, ValuesView


class KeyCodec(NamedTuple):
    """A mirror's keys as the ``MapState`` stores them: ``text`` of a mirror key, and the
    mirror key ``parse`` reads back from a state key."""

    text: Callable[[Any], str]
    parse: Callable[[str], Any]


class MirroredMap(MutableMapping[Any, Any]):
    """``MutableMapping`` view of one key's ``MapState``, read once and written through.

    Values must be replaced, not mutated in place: an in-place change would reach the mirror
    but never the state (and so be lost on restore). Keys are the state's strings, or with
    ``keys`` whatever its codec parses them to.
    """

    def __init__(self, state: Any, keys: KeyCodec | None = None) -> None:
        self._state = state
        self._codec = keys
        self._data: dict[Any, Any] | None = None
        self._key: Any = None
        self._by_key: dict[Any, dict[Any, Any]] = {}  # the mirrors of the keys met in this attempt

    def reset(self) -> None:
        """Forget every mirror (the state changed underneath); the next access reloads."""
        self._data = None
        self._by_key.clear()
        self.__dict__.pop("get", None)  # back to the class's get, which loads first

    def use(self, key: Any) -> None:
        """Switch to the mirror of ``key`` (the operator's current key changed). Mirrors are
        kept per key: operators whose keys alternate (``decide``'s dedup realms) must not reload
        a whole index at each switch. Coherent because only this operator writes its keys'
        state, and every write goes through the mirror."""
        if key == self._key and self._data is not None:
            return
        self._key = key
        self._data = self._by_key.get(key)
        if self._data is None:
            self.__dict__.pop("get", None)
        else:
            self.get = self._data.get  # type: ignore[method-assign,assignment]

    @property
    def data(self) -> dict[Any, Any]:
        if self._data is None:
            items = self._state.items()
            self._data = self._by_key[self._key] = (
                {self._codec.parse(key): value for key, value in items} if self._codec else dict(items))
            # Once loaded, ``get`` is the dict's own (C) method: near dedup probes 68 keys per
            # image, and a Python-level get per probe was 14 % of deciding's time.
            self.get = self._data.get  # type: ignore[method-assign,assignment]
        return self._data

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self._state.put(self._codec.text(key) if self._codec else key, value)

    def __delitem__(self, key: Any) -> None:
        del self.data[key]
        self._state.remove(self._codec.text(key) if self._codec else key)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    # The mixins' versions go through __getitem__ and a KeyError per miss; these are the hot
    # path of every decision (a dozen lookups per image, most of them misses), and of a prune.

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def keys(self) -> KeysView[Any]:
        return self.data.keys()

    def items(self) -> ItemsView[Any, Any]:
        return self.data.items()

    def values(self) -> ValuesView[Any]:
        return self.data.values()
