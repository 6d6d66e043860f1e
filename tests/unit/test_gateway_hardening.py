"""Hostile requests: every error code of the contract, early cut-offs, slow clients."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import AsyncIterator

import pytest

from imgstream.domain.tokens import KeyRing
from imgstream.polling import until
from tests.fixtures import images as fx
from tests.fixtures.gateway import Harness, gateway_factory, gw  # noqa: F401  (fixtures)


@pytest.mark.parametrize("name", sorted(fx.HOSTILE))
async def test_every_hostile_file_gets_its_status_and_code(gw: Harness, name: str) -> None:
    factory, status, code = fx.HOSTILE[name]
    response = await gw.upload(factory())
    assert response.status == status
    body = await response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert gw.publisher.records == [] and gw.store.objects == {}


# --- 401 / 403 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic YWxpY2U6cGFzcw==", "Bearer", "Bearer not-a-token", "Bearer isv1.k.e30.AAAA"],
)
async def test_missing_or_invalid_token_is_401(gw: Harness, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await gw.client.post("/v1/images", data=fx.real("rocket.jpg"), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert gw.publisher.records == []


async def test_expired_and_foreign_tokens_are_401(gw: Harness) -> None:
    expired = gw.ring.issue("alice", "producer", ttl=timedelta(seconds=1), now=1_000_000.0)
    foreign = KeyRing.generate().issue("alice", "producer")
    for token in (expired, foreign):
        response = await gw.client.post("/v1/images", data=fx.real("rocket.jpg"),
                                        headers={"Authorization": f"Bearer {token}"})
        assert response.status == 401


async def test_analyst_token_cannot_upload(gw: Harness) -> None:
    token = gw.ring.issue("ana", "analyst")
    response = await gw.client.post("/v1/images", data=fx.real("rocket.jpg"), headers={"Authorization": f"Bearer {token}"})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "forbidden"


# --- 429 --------------------------------------------------------------------------------------


async def test_rate_limit_is_429_with_retry_after_and_recovers(gateway_factory) -> None:
    gw = await gateway_factory(rate_per_second=0.5, rate_burst=2)
    assert [(await gw.upload(fx.unique_jpeg(str(i)))).status for i in range(2)] == [201, 201]
    limited = await gw.upload(fx.unique_jpeg("3"))
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "2"
    assert (await limited.json())["error"]["retry_after"] == 2
    assert (await gw.upload(fx.unique_jpeg("other"), "bob")).status == 201  # other producers unaffected
    gw.clock[0] += 2.0
    assert (await gw.upload(fx.unique_jpeg("4"))).status == 201
    assert gw.metric("imgstream_gateway_rate_limited_total") == 1


# --- 413 and early cut-off --------------------------------------------------------------------


async def test_declared_length_over_limit_is_refused_before_reading(gateway_factory) -> None:
    gw = await gateway_factory(max_upload_bytes=50_000)
    response = await gw.upload(fx.real("rocket.jpg"))  # 112 KB, Content-Length declared
    assert response.status == 413
    assert (await response.json())["error"]["limit"] == 50_000
    assert gw.metric("imgstream_gateway_received_bytes_total") == 0


async def test_streamed_body_over_limit_is_cut_off_early(gateway_factory) -> None:
    limit = 1024 * 1024
    gw = await gateway_factory(max_upload_bytes=limit)
    total = 256 * 1024 * 1024
    sent = [0]
    head = fx.real("rocket.jpg")
    filler = bytes(1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        yield head
        sent[0] += len(head)
        while sent[0] < total:
            yield filler
            sent[0] += len(filler)

    response = await gw.client.post("/v1/images", data=body(), headers=gw.auth())
    assert response.status == 413
    sent_when_answered = sent[0]
    assert sent_when_answered < total // 4  # answered long before the client got through its body
    assert gw.metric("imgstream_gateway_received_bytes_total") <= limit + 512 * 1024
    assert response.headers.get("Connection", "").lower() == "close"
    assert gw.store.objects == {}


async def _raw_exchange(gw: Harness, head: bytes, body: bytes = b"", *, read_first: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(gw.client.server.host, gw.client.server.port)
    try:
        writer.write(head)
        await writer.drain()
        first = b""
        if read_first:
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(body)
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(65536), 10)
        return first + rest
    finally:
        writer.close()


async def test_expect_continue_refuses_before_the_body_is_sent(gateway_factory) -> None:
    gw = await gateway_factory(max_upload_bytes=50_000)
    head = (f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gw.token()}\r\n"
            f"Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n").encode()
    answer = await _raw_exchange(gw, head)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"100 Continue" not in answer


async def test_expect_continue_is_granted_to_a_valid_upload(gw: Harness) -> None:
    data = fx.real("rocket.jpg")
    head = (f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gw.token()}\r\n"
            f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").encode()
    answer = await _raw_exchange(gw, head, data, read_first=True)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201")
    assert len(gw.events()) == 1


async def test_expect_continue_with_bad_token_gets_401_not_100(gw: Harness) -> None:
    head = (b"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
            b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
    answer = await _raw_exchange(gw, head)
    assert answer.startswith(b"HTTP/1.1 401")


# --- 400 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "x" * 201, "has space", "tab\there", "ünicode"])
async def test_bad_idempotency_key_is_400(gw: Harness, key: str) -> None:
    headers = gw.auth()
    headers["Idempotency-Key"] = key
    try:
        response = await gw.client.post("/v1/images", data=fx.real("rocket.jpg"), headers=headers)
    except ValueError:
        pytest.skip("the HTTP client itself refuses this header value")
    assert response.status == 400
    assert gw.publisher.records == []


async def test_compressed_body_is_refused(gw: Harness) -> None:
    import gzip

    response = await gw.upload(gzip.compress(fx.real("rocket.jpg")), **{"Content-Encoding": "gzip"})
    assert response.status == 415
    assert (await response.json())["error"]["detected"] == "content-encoding"


async def test_stalled_client_is_dropped_after_the_idle_timeout(gateway_factory) -> None:
    gw = await gateway_factory(idle_read_timeout=0.3)
    data = fx.real("rocket.jpg")
    head = (f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gw.token()}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    answer = await _raw_exchange(gw, head, data[:1000])  # then nothing
    assert answer.startswith(b"HTTP/1.1 408")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["reason"] == "timeout"
    assert gw.store.objects == {}


async def test_trickling_client_hits_the_request_deadline(gateway_factory) -> None:
    gw = await gateway_factory(idle_read_timeout=5.0, request_timeout=0.5)
    data = fx.real("rocket.jpg")

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 100):
            yield data[i : i + 100]
            await asyncio.sleep(0.05)

    response = await gw.client.post("/v1/images", data=trickle(), headers=gw.auth())
    assert response.status == 408
    assert (await response.json())["error"]["reason"] == "timeout"


async def test_client_hanging_up_mid_body_stores_nothing(gw: Harness) -> None:
    data = fx.real("hubble_deep_field.jpg")
    head = (f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gw.token()}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection(gw.client.server.host, gw.client.server.port)
    writer.write(head + data[: len(data) // 2])
    await writer.drain()
    writer.close()

    async def upload_handled() -> bool:
        """The gateway is done with the broken-off upload: counted, and nothing in flight."""
        counted = sum(sample.value for family in gw.metrics.registry.collect()
                      if family.name == "imgstream_gateway_requests" for sample in family.samples
                      if sample.name.endswith("_total") and sample.labels["route"] == "/v1/images")
        return counted == 1 and gw.metric("imgstream_gateway_requests_in_flight") == 0

    await until(upload_handled, "the gateway to finish the upload whose client hung up", timeout=10, interval=0.02)
    assert (await gw.client.get("/healthz")).status == 200
    assert gw.store.objects == {} and gw.publisher.records == []


# --- routing ----------------------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_answer_json(gw: Harness) -> None:
    missing = await gw.client.get("/v1/nope")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    wrong = await gw.client.get("/v1/images")
    assert wrong.status == 405 and (await wrong.json())["error"]["code"] == "method_not_allowed"
