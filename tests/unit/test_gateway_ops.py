"""Operations: health, readiness, metrics, OpenAPI, logs, config, graceful shutdown, the spool."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from api.gateway.app import GATEWAY, create_app, server_options
from api.gateway.config import MAX_PARTS, MAX_UPLOAD_BYTES, GatewayConfig
from api.gateway.ingest import Spool
from imgstream.adapters.kafka import MemoryEventPublisher
from imgstream.adapters.s3 import MemoryObjectStore
from imgstream.domain.errors import PayloadTooLarge
from api.common.httpkit import JsonFormatter
from imgstream.domain.tokens import KeyRing
from tests.fixtures import images as fx
from tests.fixtures.gateway import Harness, gateway_factory, gw  # noqa: F401  (fixtures)


async def test_healthz(gw: Harness) -> None:
    response = await gw.client.get("/healthz")
    assert response.status == 200 and (await response.json())["status"] == "ok"


async def test_readyz_reflects_the_process_not_the_shared_dependencies(gw: Harness) -> None:
    ready = await gw.client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"
    gw.store.unavailable = True  # an S3 blip hits every replica: none of them may leave the pool for it
    gw.publisher.unavailable = True
    assert (await gw.client.get("/readyz")).status == 200
    verbose = await (await gw.client.get("/readyz?deps=1")).json()
    assert verbose["status"] == "ready" and verbose["checks"]["s3"] != "ok" and verbose["checks"]["kafka"] != "ok"
    gw.store.unavailable = gw.publisher.unavailable = False
    assert (await (await gw.client.get("/readyz?deps=1")).json())["checks"]["s3"] == "ok"
    gw.client.server.app[GATEWAY].draining = True
    response = await gw.client.get("/readyz")
    assert response.status == 503 and (await response.json())["status"] == "draining"


class GatedStore(MemoryObjectStore):
    """Holds every put until ``release`` is set: uploads stay in flight as long as a test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = 0

    async def put(self, key, body, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.waiting += 1
        await self.release.wait()
        await super().put(key, body, **kwargs)


async def test_uploads_past_the_limit_are_refused_before_100_continue(unused_tcp_port: int) -> None:
    config = GatewayConfig(port=unused_tcp_port, max_concurrent_uploads=2)
    store, ring = GatedStore(), KeyRing.generate()
    app = create_app(config, store, MemoryEventPublisher(), ring)
    runner = web.AppRunner(app, **server_options(config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    url = f"http://127.0.0.1:{unused_tcp_port}/v1/images"
    headers = {"Authorization": f"Bearer {ring.issue('alice', 'producer')}"}
    body_sent = []

    async def watched_body():
        body_sent.append(True)
        yield fx.unique_jpeg("third")

    try:
        async with aiohttp.ClientSession() as session:
            held = [asyncio.create_task(session.post(url, data=fx.unique_jpeg(f"held-{i}"), headers=headers))
                    for i in range(2)]
            deadline = asyncio.get_running_loop().time() + 10
            while store.waiting < 2:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            async with session.post(url, data=watched_body(), headers=headers, expect100=True) as refused:
                assert refused.status == 503
                assert 1 <= int(refused.headers["Retry-After"]) <= 5
                assert (await refused.json())["error"]["reason"] == "overloaded"
            assert body_sent == []  # refused from the headers: the client never sent its body
            store.release.set()
            assert [(await t).status for t in held] == [201, 201]
            async with session.post(url, data=fx.unique_jpeg("after"), headers=headers) as later:
                assert later.status == 201  # the slots came back
    finally:
        await runner.cleanup()


async def test_prestop_keeps_serving_while_readiness_fails(gateway_factory) -> None:
    gw = await gateway_factory(prestop_delay=0.5)
    gateway = gw.client.server.app[GATEWAY]
    prestop = asyncio.create_task(gateway.prestop())
    await asyncio.sleep(0)
    assert (await gw.client.get("/readyz")).status == 503
    during = await gw.upload(fx.unique_jpeg("during-prestop"))
    assert during.status == 201 and not prestop.done()  # still serving inside the delay
    await asyncio.wait_for(prestop, 5)


async def test_metrics_count_requests_bytes_outcomes_and_latency(gw: Harness) -> None:
    data = fx.real("rocket.jpg")
    await gw.upload(data)
    await gw.upload(fx.svg_bare())
    text = await (await gw.client.get("/metrics")).text()
    assert 'imgstream_gateway_requests_total{method="POST",route="/v1/images",status="201"} 1.0' in text
    assert 'imgstream_gateway_requests_total{method="POST",route="/v1/images",status="415"} 1.0' in text
    assert 'imgstream_gateway_images_total{outcome="stored"} 1.0' in text
    assert 'imgstream_gateway_images_total{outcome="unsupported_media_type"} 1.0' in text
    assert gw.metric("imgstream_gateway_stored_bytes_total") == len(data)
    assert gw.metric("imgstream_gateway_received_bytes_total") == len(data) + len(fx.svg_bare())
    assert gw.metric("imgstream_gateway_request_duration_seconds_count", route="/v1/images", method="POST") == 2
    assert gw.metric("imgstream_gateway_requests_in_flight") == 0
    for stage in ("receive", "inspect", "store", "publish"):
        assert gw.metric("imgstream_gateway_stage_duration_seconds_count", stage=stage) >= 1, stage


async def test_openapi_documents_the_upload_contract(gw: Harness) -> None:
    doc = await (await gw.client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    responses = doc["paths"]["/v1/images"]["post"]["responses"]
    assert {"200", "201", "400", "401", "413", "415", "422", "429"} <= set(responses)
    assert str(MAX_UPLOAD_BYTES) in doc["info"]["description"]
    assert {"/healthz", "/readyz", "/metrics", "/openapi.json"} <= set(doc["paths"])


async def test_openapi_paths_and_methods_match_the_routes(gw: Harness) -> None:
    doc = await (await gw.client.get("/openapi.json")).json()
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item
                  if method != "parameters"}
    routed = {(route.resource.canonical, route.method) for route in gw.client.server.app.router.routes()
              if route.method != "HEAD" or route.resource.canonical.startswith("/v1/uploads/")}
    assert documented == routed
    assert {"204", "200", "409", "460"} <= set(doc["paths"]["/v1/uploads/{upload_id}"]["patch"]["responses"])
    headers = doc["paths"]["/v1/images"]["post"]["responses"]["503"]["headers"]
    assert {"Retry-After", "Idempotency-Key"} <= set(headers)


async def test_request_id_is_echoed_or_made_up(gw: Harness) -> None:
    given = await gw.client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    made = await gw.client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert made.headers["X-Request-Id"] != "bad id with spaces" and len(made.headers["X-Request-Id"]) == 32


class SlowStore(MemoryObjectStore):
    """A store whose put takes a while, so a shutdown can start while an upload is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.put_started = asyncio.Event()

    async def put(self, key, body, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.put_started.set()
        await asyncio.sleep(0.5)
        await super().put(key, body, **kwargs)


class OrderedPublisher(MemoryEventPublisher):
    async def close(self) -> None:
        self.records_at_close = len(self.records)
        await super().close()


async def test_graceful_shutdown_finishes_in_flight_uploads(unused_tcp_port: int) -> None:
    """The sequence api.gateway.__main__ runs on SIGTERM, with one upload whose body is still
    streaming in and one already being stored when the signal arrives."""
    config = GatewayConfig(port=unused_tcp_port, shutdown_timeout=10)
    store, publisher, ring = SlowStore(), OrderedPublisher(), KeyRing.generate()
    app = create_app(config, store, publisher, ring)
    runner = web.AppRunner(app, **server_options(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    assert store.started and publisher.started
    url = f"http://127.0.0.1:{unused_tcp_port}/v1/images"
    headers = {"Authorization": f"Bearer {ring.issue('alice', 'producer')}"}
    data = fx.real("hubble_deep_field.jpg")
    first_chunk_sent = asyncio.Event()

    async def slow_body():
        for i in range(0, len(data), 50_000):
            yield data[i : i + 50_000]
            first_chunk_sent.set()
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as session:
        storing = asyncio.create_task(session.post(url, data=fx.real("rocket.jpg"), headers=headers))
        await asyncio.wait_for(store.put_started.wait(), 10)
        streaming = asyncio.create_task(session.post(url, data=slow_body(), headers=headers))
        await asyncio.wait_for(first_chunk_sent.wait(), 10)

        await site.stop()
        assert await app[GATEWAY].drain(config.shutdown_timeout)
        await runner.cleanup()

        for task in (storing, streaming):
            response = await task
            assert response.status == 201, await response.text()
    assert publisher.closed and publisher.records_at_close == 2  # flushed after the last event
    assert store.closed


async def test_drain_gives_up_after_its_timeout(gw: Harness) -> None:
    gateway = gw.client.server.app[GATEWAY]
    gateway._uploads, _ = 1, gateway._idle.clear()  # an upload that never ends
    assert await gateway.drain(0.05) is False
    assert gateway.draining


async def test_upload_outcomes_are_logged_as_structured_records(gw: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imgstream.gateway")
    await gw.upload_parts([("file", "ok.jpg", fx.real("rocket.jpg")), ("file", "bad.svg", fx.svg_bare())])
    await gw.upload(fx.truncated_jpeg())
    by_msg: dict[str, list[logging.LogRecord]] = {}
    for record in caplog.records:
        by_msg.setdefault(record.getMessage(), []).append(record)
    (stored,) = by_msg["image stored"]
    assert stored.producer == "alice" and len(stored.sha256) == 64  # type: ignore[attr-defined]
    rejected = by_msg["image rejected"]
    assert [(r.code, r.part, r.file) for r in rejected] == [  # type: ignore[attr-defined]
        ("unsupported_media_type", 1, "bad.svg"), ("corrupt_image", None, None)]
    requests = by_msg["request"]
    assert {r.status for r in requests} == {200, 422}  # type: ignore[attr-defined]
    for record in caplog.records:
        json.loads(JsonFormatter().format(record))  # every record renders as one JSON line


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("imgstream.gateway", logging.INFO, __file__, 1, "image stored", (), None)
    record.image_id = "abc"
    record.size = 12
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "image stored" and line["image_id"] == "abc" and line["size"] == 12
    assert line["level"] == "INFO" and line["ts"].endswith("+00:00")


def test_config_from_env_reads_once_with_defaults(tmp_path: Path) -> None:
    env = {"IMGSTREAM_S3_ACCESS_KEY": "k", "IMGSTREAM_S3_SECRET_KEY": "TOPSECRET-VALUE", "IMGSTREAM_GATEWAY_PORT": "18080",
           "IMGSTREAM_GATEWAY_MAX_PARTS": "7", "IMGSTREAM_GATEWAY_RATE": "0",
           "IMGSTREAM_TOKEN_KEYS_FILE": str(tmp_path / "k.json"), "IMGSTREAM_GATEWAY_ENSURE_TOPIC": "no"}
    config = GatewayConfig.from_env(env)
    assert (config.host, config.port, config.max_parts, config.rate_per_second) == ("127.0.0.1", 18080, 7, 0.0)
    assert config.keys_file == tmp_path / "k.json" and config.ensure_topic is False
    assert config.max_upload_bytes == MAX_UPLOAD_BYTES and GatewayConfig().max_parts == MAX_PARTS
    assert "TOPSECRET-VALUE" not in repr(config)
    with pytest.raises(KeyError):
        GatewayConfig.from_env({})  # S3 credentials are required


def test_config_from_env_names_a_malformed_variable() -> None:
    env = {"IMGSTREAM_S3_ACCESS_KEY": "k", "IMGSTREAM_S3_SECRET_KEY": "s"}
    with pytest.raises(ValueError, match="IMGSTREAM_GATEWAY_MAX_PARTS: 'many'"):
        GatewayConfig.from_env({**env, "IMGSTREAM_GATEWAY_MAX_PARTS": "many"})
    flags = GatewayConfig.from_env({**env, "IMGSTREAM_GATEWAY_REUSE_PORT": " ON ", "IMGSTREAM_GATEWAY_S3_CHECKSUM": "0",
                                    "IMGSTREAM_GATEWAY_SPOOL_DIR": ""})
    assert flags.reuse_port is True and flags.s3_checksum is False and flags.spool_dir is None


def test_spool_keeps_small_bodies_in_memory_and_rolls_big_ones_to_disk() -> None:
    small = Spool(max_bytes=10**7, memory_bytes=200_000)
    small.write(fx.real("rocket.jpg"))
    small.finish()
    assert small.in_memory and small.body() == fx.real("rocket.jpg")
    big = Spool(max_bytes=10**7, memory_bytes=50_000)
    data = fx.real("hubble_deep_field.jpg")
    for i in range(0, len(data), 30_000):
        big.write(data[i : i + 30_000])
    summary = big.finish()
    assert not big.in_memory and summary.size == len(data)
    body = big.body()
    assert isinstance(body, io.IOBase) or hasattr(body, "read")
    assert body.read() == data  # type: ignore[union-attr]
    big.close()
    over = Spool(max_bytes=1000, memory_bytes=500)
    with pytest.raises(PayloadTooLarge):
        over.write(fx.real("rocket.jpg"))
