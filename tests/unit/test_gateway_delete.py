"""DELETE /v1/images/{image_id}: the owner's 204, everyone else's 404, hostile ids, and the event."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest

from imgstream.domain import events
from imgstream.domain.cleaning import DeadLetter, clean_deletion
from imgstream.domain.deletion import STATUS_DELETED, Decision, decide
from imgstream.domain.events import TOPIC_DELETED, ImageDeleted
from tests.fixtures import images as fx
from tests.fixtures.gateway import FIXED_NOW, Harness, gateway_factory, gw  # noqa: F401  (fixtures)


async def uploaded(gw: Harness, producer: str = "alice", nonce: str = "a") -> str:
    """Upload an image as ``producer``; the pipeline records it; its image_id."""
    response = await gw.upload(fx.unique_jpeg(nonce), producer)
    assert response.status == 201
    gw.pipeline()
    return (await response.json())["image_id"]


# --- the contract ------------------------------------------------------------------------------


async def test_owner_deletes_its_image_and_one_keyed_event_is_published(gw: Harness) -> None:
    image_id = await uploaded(gw)
    response = await gw.delete(image_id)
    assert response.status == 204 and await response.read() == b""
    [record] = [r for r in gw.publisher.records if r.topic == TOPIC_DELETED]
    assert record.key == image_id.encode()  # keyed: every deletion of one image in one partition
    event = events.validate_deleted(json.loads(record.value))
    assert event == {"schema_version": 1, "event_type": "image.deleted", "image_id": image_id, "producer": "alice",
                     "requested_at": "2026-11-26T12:00:00.123Z", "gateway": "test-gateway"}
    assert dict(record.headers)["event_type"] == b"image.deleted"
    gw.pipeline()
    assert gw.owners.rows[image_id]["status"] == STATUS_DELETED
    assert len(gw.events()) == 1  # the upload event is untouched: a deletion is not an un-upload
    assert gw.metric("imgstream_gateway_deletions_total", outcome="delete") == 1


async def test_deleting_twice_answers_204_and_publishes_nothing_more(gw: Harness) -> None:
    image_id = await uploaded(gw)
    assert (await gw.delete(image_id)).status == 204
    # before the pipeline applied it: the row is still live, so the retry publishes again
    # (harmless: applying a deletion twice changes nothing more)
    assert (await gw.delete(image_id)).status == 204
    assert len(gw.deletions()) == 2
    gw.pipeline()
    # after: the row says deleted, the answer is the same 204 and nothing is published
    for _ in range(3):
        assert (await gw.delete(image_id)).status == 204
    assert len(gw.deletions()) == 2
    assert gw.owners.rows[image_id]["status"] == STATUS_DELETED
    assert gw.metric("imgstream_gateway_deletions_total", outcome="already_deleted") == 3


async def test_another_producers_image_answers_exactly_like_an_unknown_id(gw: Harness) -> None:
    image_id = await uploaded(gw, "bob")
    unknown = str(uuid.uuid4())
    theirs = await gw.delete(image_id, "alice")
    missing = await gw.delete(unknown, "alice")
    assert theirs.status == missing.status == 404
    body, other = await theirs.json(), await missing.json()
    assert body["error"]["code"] == "not_found" and body["error"]["reason"] == "image_not_found"
    assert json.loads(json.dumps(body).replace(image_id, unknown)) == other  # the same but for the id asked
    assert "bob" not in json.dumps(body)
    assert {k: theirs.headers.get(k) for k in ("Content-Type", "Retry-After")} == \
        {k: missing.headers.get(k) for k in ("Content-Type", "Retry-After")}
    assert gw.deletions() == []
    gw.pipeline()
    assert gw.owners.rows[image_id]["status"] == "accepted"  # bob's image is untouched
    assert (await gw.delete(image_id, "bob")).status == 204  # and its owner still can


async def test_an_image_not_yet_processed_is_not_found(gw: Harness) -> None:
    response = await gw.upload(fx.unique_jpeg("pending"))
    image_id = (await response.json())["image_id"]  # no pipeline() yet: no row
    assert (await gw.delete(image_id)).status == 404
    assert gw.deletions() == []
    gw.pipeline()
    assert (await gw.delete(image_id)).status == 204


async def test_an_uppercase_id_is_the_same_image(gw: Harness) -> None:
    image_id = await uploaded(gw)
    assert (await gw.delete(image_id.upper())).status == 204
    assert gw.deletions()[0]["image_id"] == image_id


# --- hostile input -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    "not-a-uuid", "x" * 5000, "0" * 36, "{12345678-1234-1234-1234-123456789abc}",
    "12345678123412341234123456789abc",  # 32 hex digits without hyphens
    "12345678-1234-1234-1234-123456789abc ", "12345678-1234-1234-1234-123456789abg",
    "'; DROP TABLE images; --", "%00", "ü" * 36, "12345678-1234-1234-1234-123456789ab\u0661",
])
async def test_malformed_ids_are_400_and_touch_nothing(gw: Harness, bad: str) -> None:
    response = await gw.client.delete(f"/v1/images/{bad}", headers=gw.auth())
    assert response.status == 400, bad
    error = (await response.json())["error"]
    assert error["code"] == "bad_request" and error["reason"] == "invalid_image_id" and error["field"] == "image_id"
    assert gw.owners.lookups == [] and gw.publisher.records == []


async def test_paths_that_are_not_one_id_are_not_routed(gw: Harness) -> None:
    image_id = await uploaded(gw)
    for path in (f"/v1/images/{image_id}/extra", "/v1/images/", "/v1/images"):
        response = await gw.client.delete(path, headers=gw.auth())
        assert response.status in (404, 405), path
    assert gw.deletions() == [] and gw.owners.lookups == []


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic YWxpY2U6cGFzcw=="])
async def test_delete_without_a_valid_token_is_401(gw: Harness, authorization: str | None) -> None:
    image_id = await uploaded(gw)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await gw.client.delete(f"/v1/images/{image_id}", headers=headers)
    assert response.status == 401 and (await response.json())["error"]["code"] == "unauthorized"
    assert gw.deletions() == [] and gw.owners.lookups == []


async def test_analyst_token_cannot_delete(gw: Harness) -> None:
    image_id = await uploaded(gw)
    token = gw.ring.issue("alice", "analyst")  # even named like the owner
    response = await gw.client.delete(f"/v1/images/{image_id}", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 403
    assert gw.deletions() == [] and gw.owners.lookups == []


async def test_deletions_share_the_producers_rate_limit(gateway_factory) -> None:  # noqa: F811
    gw = await gateway_factory(rate_per_second=1.0, rate_burst=2.0)
    image_id = await uploaded(gw)  # takes one of the two
    assert (await gw.delete(image_id)).status == 204
    limited = await gw.delete(image_id)
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert len(gw.deletions()) == 1
    other = await gw.delete(str(uuid.uuid4()), "bob")  # another producer's budget is its own
    assert other.status == 404


async def test_owner_store_down_is_503_and_publishes_nothing(gw: Harness) -> None:
    image_id = await uploaded(gw)
    gw.owners.down = True
    response = await gw.delete(image_id)
    assert response.status == 503 and response.headers.get("Retry-After")
    body = await response.json()
    assert body["error"]["code"] == "unavailable" and "Cassandra" not in json.dumps(body)  # cause only logged
    assert gw.deletions() == []


async def test_kafka_down_is_503_and_a_retry_deletes(gw: Harness) -> None:
    image_id = await uploaded(gw)
    gw.publisher.fail_publishes = 1
    assert (await gw.delete(image_id)).status == 503
    assert gw.deletions() == []
    assert (await gw.delete(image_id)).status == 204
    assert len(gw.deletions()) == 1


async def test_a_body_on_delete_is_never_read_and_the_connection_closes(gw: Harness) -> None:
    image_id = await uploaded(gw)
    host, port = gw.client.server.host, gw.client.server.port
    token = gw.token()

    def exchange() -> bytes:
        # declares 50 MB and sends 10 bytes: a gateway that read the body would wait for the rest
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall((f"DELETE /v1/images/{image_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                          f"Content-Length: 50000000\r\n\r\n0123456789").encode())
            data = b""
            while b"\r\n\r\n" not in data:  # the answer comes although the body never will
                chunk = sock.recv(65536)
                assert chunk, "closed without an answer"
                data += chunk
            return data

    answer = await asyncio.wait_for(asyncio.to_thread(exchange), 10)
    head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 204") and "connection: close" in head
    assert len(gw.deletions()) == 1


async def test_openapi_documents_delete(gw: Harness) -> None:
    document = await (await gw.client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/images/{image_id}"]["delete"]
    assert set(operation["responses"]) >= {"204", "400", "401", "403", "404", "429", "503"}
    assert operation["parameters"][0]["name"] == "image_id"


# --- pure parts --------------------------------------------------------------------------------


def test_decide_owner_not_owner_and_already_deleted() -> None:
    assert decide("alice", None) is Decision.NOT_FOUND
    assert decide("alice", {"producer": "bob", "status": "accepted"}) is Decision.NOT_FOUND
    assert decide("alice", {"producer": "bob", "status": "deleted"}) is Decision.NOT_FOUND
    for status in ("accepted", "duplicate", "rejected"):
        assert decide("alice", {"producer": "alice", "status": status}) is Decision.DELETE
    assert decide("alice", {"producer": "alice", "status": "deleted"}) is Decision.ALREADY_DELETED


def test_deletion_events_round_trip_and_bad_ones_become_dead_letters() -> None:
    event = ImageDeleted(image_id=str(uuid.uuid4()), producer="alice", requested_at="2026-11-26T12:00:00.000Z",
                         gateway="g")
    assert clean_deletion(event.to_json()) == event
    upper = json.loads(event.to_json())
    upper["image_id"] = upper["image_id"].upper()  # hex case carries no meaning
    assert clean_deletion(json.dumps(upper).encode()) == event
    for bad in (b"", b"{", b"[]", b"x" * 70_000,
                json.dumps({**event.to_dict(), "image_id": "nope"}).encode(),
                json.dumps({**event.to_dict(), "extra": 1}).encode(),
                json.dumps({**event.to_dict(), "requested_at": "yesterday"}).encode(),
                json.dumps({**event.to_dict(), "schema_version": 2}).encode(),
                json.dumps({k: v for k, v in event.to_dict().items() if k != "producer"}).encode(),
                fx.unique_jpeg("binary")):
        out = clean_deletion(bad)
        assert isinstance(out, DeadLetter), bad[:40]
        assert out.reason and out.to_dict()["topic"] == TOPIC_DELETED
    # an upload event is not a deletion
    assert isinstance(clean_deletion(json.dumps({"event_type": "image.uploaded", "schema_version": 1}).encode()),
                      DeadLetter)
    assert FIXED_NOW  # the harness clock the gateway stamps requested_at with


async def test_owner_index_on_an_unreachable_cassandra_is_unavailable_not_a_crash() -> None:
    from api.gateway.owners import OwnerIndex
    from imgstream.config import CassandraConfig
    from imgstream.domain.errors import Unavailable

    index = OwnerIndex(CassandraConfig(hosts=("127.0.0.1",), port=1), connect_timeout=1.0)
    await index.start()  # a background attempt: never raises
    with pytest.raises(Unavailable) as caught:
        await index.owner(str(uuid.uuid4()))
    assert caught.value.details["reason"] == "cassandra"
    await index.close()
