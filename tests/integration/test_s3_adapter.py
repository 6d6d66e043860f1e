"""S3ObjectStore against the stack's real S3-compatible server (a bucket of its own)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
from typing import AsyncIterator

import pytest
import pytest_asyncio

from imgstream.adapters.s3 import S3ObjectStore
from imgstream.config import Secret, StackConfig
from imgstream.domain.errors import Unavailable
from tests.fixtures.stack import it_bucket  # noqa: F401  (fixture)


@pytest_asyncio.fixture(params=["signed", "checksummed"])
async def store(request: pytest.FixtureRequest, it_bucket: StackConfig) -> AsyncIterator[S3ObjectStore]:
    # Both ways the gateway can run: botocore-signed payloads, or unsigned + x-amz-checksum-sha256.
    checksummed = request.param == "checksummed"
    s3 = S3ObjectStore(it_bucket.s3, payload_signing=not checksummed, send_sha256_checksum=checksummed,
                       multipart_threshold=6 * 1024 * 1024, part_size=5 * 1024 * 1024)
    await s3.start()
    yield s3
    await s3.close()


async def test_keys_with_odd_characters_round_trip(store: S3ObjectStore) -> None:
    for key in ("t/with space", "t/plus+and=equals", "t/ünïcode", "t/tilde~dash-dot."):
        await store.put(key, b"odd", size=3, content_type="text/plain", metadata={"sha256": "ab"})
        info = await store.head(key)
        assert info is not None and info.metadata["sha256"] == "ab" and await store.get(key) == b"odd"


async def test_put_head_get_list_delete(store: S3ObjectStore) -> None:
    data = os.urandom(100_000)
    sha = hashlib.sha256(data).hexdigest()
    await store.put("t/a", data, size=len(data), content_type="image/jpeg", metadata={"sha256": sha}, sha256=sha)
    info = await store.head("t/a")
    assert info is not None and info.size == len(data) and info.content_type == "image/jpeg"
    assert info.metadata["sha256"] == sha
    assert await store.get("t/a") == data
    await store.put("t/b", b"x", size=1)
    await store.put("u/c", b"y", size=1)
    assert [o.key async for o in store.list("t/")] == ["t/a", "t/b"]
    await store.delete("t/a")
    assert await store.head("t/a") is None and await store.get("t/a") is None
    await store.delete("t/a")  # deleting what is gone is fine


async def test_put_from_a_file_object(store: S3ObjectStore) -> None:
    data = os.urandom(3 * 1024 * 1024)
    await store.put("t/file", io.BytesIO(data), size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert await store.get("t/file") == data


async def test_large_body_goes_multipart_and_arrives_whole(store: S3ObjectStore) -> None:
    data = os.urandom(13 * 1024 * 1024)  # 3 parts of 5 MiB
    await store.put("t/big", io.BytesIO(data), size=len(data), content_type="image/tiff")
    assert await store.get("t/big") == data
    assert (await store.head("t/big")).content_type == "image/tiff"  # type: ignore[union-attr]
    uploads = await store.client.list_multipart_uploads(Bucket=store.bucket)
    assert not uploads.get("Uploads")  # completed, nothing left dangling


async def test_identical_bytes_overwrite_to_one_object(store: S3ObjectStore) -> None:
    data = os.urandom(10_000)
    for _ in range(3):
        await store.put("sha/x", data, size=len(data))
    assert [o.key async for o in store.list("sha/")] == ["sha/x"]


async def test_server_verifies_the_sha256_we_send(it_bucket: StackConfig) -> None:
    store = S3ObjectStore(it_bucket.s3, payload_signing=False, send_sha256_checksum=True)
    await store.start()
    try:
        with pytest.raises(Unavailable, match="BadDigest|Checksum|Invalid"):
            await store.put("t/bad", b"real bytes", size=10, sha256="0" * 64)
        assert await store.head("t/bad") is None
    finally:
        await store.close()


async def test_ensure_bucket_is_idempotent_and_ping_checks_the_bucket(store: S3ObjectStore,
                                                                      it_bucket: StackConfig) -> None:
    await store.ensure_bucket()
    await store.ping()
    missing = S3ObjectStore(dataclasses.replace(it_bucket.s3, bucket="imgstream-it-does-not-exist"))
    await missing.start()
    try:
        with pytest.raises(Unavailable):
            await missing.ping()
    finally:
        await missing.close()


@pytest.mark.parametrize("signing", [True, False], ids=["botocore", "direct-put"])
async def test_wrong_credentials_are_unavailable_not_a_crash(it_bucket: StackConfig, signing: bool) -> None:
    bad = S3ObjectStore(dataclasses.replace(it_bucket.s3, secret_key=Secret("wrong")), payload_signing=signing)
    await bad.start()
    try:
        with pytest.raises(Unavailable, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId|403"):
            await bad.put("t/x", b"x", size=1)
        with pytest.raises(Unavailable):
            await bad.create("t/y", b"y")
    finally:
        await bad.close()


async def test_unreachable_server_is_unavailable(it_bucket: StackConfig) -> None:
    down = S3ObjectStore(dataclasses.replace(it_bucket.s3, endpoint_url="http://127.0.0.1:1"), connect_timeout=1)
    await down.start()
    try:
        with pytest.raises(Unavailable):
            await down.ping()
    finally:
        await down.close()


async def test_create_is_atomic_among_concurrent_writers(store: S3ObjectStore) -> None:
    results = await asyncio.gather(*(store.create("claims/one", bytes([i]) * 50_000) for i in range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await store.get("claims/one") == bytes([winner]) * 50_000
    assert await store.create("claims/one", b"later") is False
