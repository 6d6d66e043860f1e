"""SyncObjectStore (botocore, blocking) against the stack's real S3-compatible server."""

from __future__ import annotations

import os

from imgstream.adapters.s3_sync import MAX_DELETE_BATCH, SyncObjectStore
from imgstream.config import StackConfig
from tests.fixtures.stack import it_bucket  # noqa: F401  (fixture)


def test_put_get_head_copy_delete_list(it_bucket: StackConfig) -> None:
    store = SyncObjectStore(it_bucket.s3)
    data = os.urandom(50_000)
    store.put("a/one", data, content_type="image/webp", metadata={"sha256": "x"})
    info = store.head("a/one")
    assert info is not None and info.size == len(data) and info.content_type == "image/webp"
    assert info.metadata == {"sha256": "x"} and info.last_modified is not None
    assert store.get("a/one") == data
    assert store.get("a/missing") is None and store.head("a/missing") is None
    assert store.copy("a/one", "b/one") and store.get("b/one") == data
    assert store.copy("a/missing", "b/two") is False
    assert sorted(o.key for o in store.list("")) == ["a/one", "b/one"]
    store.delete("a/one")
    assert store.head("a/one") is None
    store.close()


def test_delete_many_batches_over_the_limit(it_bucket: StackConfig) -> None:
    store = SyncObjectStore(it_bucket.s3)
    calls: list[int] = []
    original = store.client.delete_objects

    def spy(**params: object) -> object:
        calls.append(len(params["Delete"]["Objects"]))  # type: ignore[index]
        return original(**params)

    store.client.delete_objects = spy
    keys = [f"k/{i:04d}" for i in range(MAX_DELETE_BATCH + 5)]
    for key in keys[:3] + keys[-3:]:
        store.put(key, b"x")
    assert store.delete_many(keys) == {}
    assert calls == [MAX_DELETE_BATCH, 5]
    assert list(store.list("k/")) == []
