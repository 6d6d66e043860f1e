"""Multipart uploads: one receipt or one error per part, in order; one bad part blocks nothing."""

from __future__ import annotations

from imgstream.domain.events import image_id_for
from tests.fixtures import images as fx
from tests.fixtures.gateway import Harness, gateway_factory, gw  # noqa: F401  (fixtures)


async def test_mixed_batch_answers_every_part_in_order(gw: Harness) -> None:
    parts = [
        ("file", "rocket.jpg", fx.real("rocket.jpg")),
        ("file", "evil.svg", fx.svg_with_script()),
        ("file", "camera.png", fx.real("camera.png")),
        ("file", "cut.jpg", fx.truncated_jpeg()),
        ("file", "photo.jpg", fx.text_named_jpg()),
        ("file", "bomb.png", fx.png_bomb()),
        ("file", "chelsea.webp", fx.real_images()["chelsea.webp"][0]),
        ("file", "polyglot.jpg", fx.jpeg_html_polyglot()),
    ]
    response = await gw.upload_parts(parts)
    assert response.status == 200
    results = (await response.json())["results"]
    assert [r["part"] for r in results] == list(range(len(parts)))
    assert [r["filename"] for r in results] == [p[1] for p in parts]
    outcome = [r.get("status") if r.get("status") == "stored" else r["error"]["code"] for r in results]
    assert outcome == ["stored", "unsupported_media_type", "stored", "corrupt_image", "unsupported_media_type",
                       "image_too_large", "stored", "unsupported_media_type"]
    assert [r.get("http_status") for r in results if r["status"] == "error"] == [415, 422, 415, 422, 415]
    stored = [r for r in results if r["status"] == "stored"]
    assert sorted(e["image_id"] for e in gw.events()) == sorted(r["image_id"] for r in stored)
    assert len(gw.store.objects) == 3
    assert "evil.svg" in str(results[1])  # the error names the file


async def test_parts_with_another_name_are_reported_not_dropped(gw: Harness) -> None:
    results = (await (await gw.upload_parts([("image", "a.jpg", fx.real("rocket.jpg")),
                                             ("file", "b.png", fx.real("camera.png"))])).json())["results"]
    assert results[0]["error"]["code"] == "bad_request" and "'image'" in results[0]["error"]["message"]
    assert results[1]["status"] == "stored"
    assert len(gw.events()) == 1


async def test_parts_over_the_part_limit_are_refused_individually(gateway_factory) -> None:
    gw = await gateway_factory(max_parts=3)
    parts = [("file", f"{i}.jpg", fx.unique_jpeg(str(i))) for i in range(5)]
    results = (await (await gw.upload_parts(parts)).json())["results"]
    assert [r["status"] for r in results] == ["stored"] * 3 + ["error"] * 2
    assert {r["error"]["code"] for r in results[3:]} == {"payload_too_large"}
    assert len(gw.events()) == 3


async def test_an_oversized_part_is_skipped_and_the_next_one_stored(gateway_factory) -> None:
    gw = await gateway_factory(max_upload_bytes=200_000)
    parts = [("file", "small.jpg", fx.real("rocket.jpg")), ("file", "big.jpg", fx.real("hubble_deep_field.jpg")),
             ("file", "small.png", fx.real("camera.png"))]
    results = (await (await gw.upload_parts(parts)).json())["results"]
    assert [r["status"] for r in results] == ["stored", "error", "stored"]
    assert results[1]["error"]["code"] == "payload_too_large" and results[1]["http_status"] == 413


async def test_request_budget_stops_reading_but_answers_what_was_stored(gateway_factory) -> None:
    gw = await gateway_factory(max_request_bytes=300_000)
    parts = [("file", f"{i}.jpg", fx.unique_jpeg(str(i))) for i in range(5)]  # ~112 KB each
    response = await gw.upload_parts_chunked(parts)  # no Content-Length: found out while reading
    assert response.status == 200
    results = (await response.json())["results"]
    assert [r["status"] for r in results] == ["stored", "stored", "error"]
    assert results[2]["error"]["code"] == "payload_too_large" and results[2]["error"]["scope"] == "request"
    assert len(gw.events()) == 2
    assert response.headers.get("Connection", "").lower() == "close"


async def test_declared_multipart_length_over_the_request_limit_is_413(gateway_factory) -> None:
    gw = await gateway_factory(max_request_bytes=100_000)
    response = await gw.upload_parts([("file", "a.jpg", fx.real("rocket.jpg"))])
    assert response.status == 413
    assert gw.metric("imgstream_gateway_received_bytes_total") == 0


async def test_empty_part_is_an_error_of_that_part(gw: Harness) -> None:
    results = (await (await gw.upload_parts([("file", "empty.jpg", b""), ("file", "ok.jpg", fx.real("rocket.jpg"))]
                                            )).json())["results"]
    assert results[0]["error"]["code"] == "bad_request"
    assert results[1]["status"] == "stored"


async def test_multipart_without_parts_or_boundary_is_400(gw: Harness) -> None:
    headers = gw.auth(**{"Content-Type": "multipart/form-data; boundary=xyz"})
    response = await gw.client.post("/v1/images", data=b"--xyz--\r\n", headers=headers)
    assert response.status == 400
    headers = gw.auth(**{"Content-Type": "multipart/form-data"})
    response = await gw.client.post("/v1/images", data=b"--xyz\r\n\r\nabc\r\n--xyz--\r\n", headers=headers)
    assert response.status == 400
    headers = gw.auth(**{"Content-Type": "multipart/mixed; boundary=xyz"})
    response = await gw.client.post("/v1/images", data=b"--xyz--\r\n", headers=headers)
    assert response.status == 400
    assert gw.publisher.records == []


async def test_broken_multipart_body_answers_the_parts_before_the_break(gw: Harness) -> None:
    image = fx.real("rocket.jpg")
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n" + image
            + b"\r\n--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.jpg\"\r\n\r\n"
            + image[:5000])  # second part never ends: no closing boundary
    headers = gw.auth(**{"Content-Type": "multipart/form-data; boundary=xyz"})
    response = await gw.client.post("/v1/images", data=body, headers=headers)
    assert response.status == 200
    results = (await response.json())["results"]
    assert results[0]["status"] == "stored"
    assert results[-1]["status"] == "error" and results[-1]["error"]["code"] == "bad_request"
    assert len(gw.events()) == 1


async def test_idempotent_multipart_retry_replays_every_part(gw: Harness) -> None:
    parts = [("file", "a.jpg", fx.unique_jpeg("a")), ("file", "x.svg", fx.svg_bare()),
             ("file", "b.jpg", fx.unique_jpeg("b"))]
    first = (await (await gw.upload_parts(parts, **{"Idempotency-Key": "batch-7"})).json())["results"]
    second = (await (await gw.upload_parts(parts, **{"Idempotency-Key": "batch-7"})).json())["results"]
    assert [r.get("image_id") for r in first] == [r.get("image_id") for r in second]
    assert first[0]["image_id"] == image_id_for("alice", "batch-7#0")
    assert second[0]["replayed"] is True and second[2]["replayed"] is True
    assert second[1]["error"]["code"] == "unsupported_media_type"
    assert len(gw.events()) == 2


async def test_rate_limit_applies_per_image_within_a_batch(gateway_factory) -> None:
    gw = await gateway_factory(rate_per_second=1.0, rate_burst=2)
    parts = [("file", f"{i}.jpg", fx.unique_jpeg(f"rl{i}")) for i in range(3)]
    results = (await (await gw.upload_parts(parts)).json())["results"]
    assert [r["status"] for r in results] == ["stored", "stored", "error"]
    assert results[2]["error"]["code"] == "rate_limited" and results[2]["error"]["retry_after"] >= 1
    assert len(gw.events()) == 2


async def test_longest_idempotency_key_still_makes_valid_part_events(gw: Harness) -> None:
    parts = [("file", f"{i}.jpg", fx.unique_jpeg(f"long{i}")) for i in range(12)]
    response = await gw.upload_parts(parts, **{"Idempotency-Key": "k" * 200})
    assert {r["status"] for r in (await response.json())["results"]} == {"stored"}
    assert {e["idempotency_key"] for e in gw.events()} == {f"{'k' * 200}#{i}" for i in range(12)}  # schema-valid
