"""The pipeline's deletion branch without a cluster: image.deleted events -> the image's status,
idempotent under replays and duplicates, never reviving a deleted image on an upload replay."""

import json
import uuid
from datetime import datetime, timezone

from flink_jobs.cassandra_sink import MARK_DELETED, STATEMENTS, deletion_writes, image_writes
from flink_jobs.functions import DLQ_TAG, ApplyDeletions, WriteSteps
from imgstream.domain.deletion import Decision
from imgstream.domain.events import TOPIC_DELETED, ImageDeleted
from tests.fixtures.flink_fakes import FakeCounter

W = 60_000
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
IMAGE = "00000000-0000-4000-8000-000000000001"


def _event(image_id: str = IMAGE, producer: str = "alice") -> ImageDeleted:
    return ImageDeleted(image_id=image_id, producer=producer, requested_at="2026-01-01T00:00:00.000Z")


class Images:
    """The images table as the writer sees it: rows by id; writes applied like Cassandra's."""

    def __init__(self, **rows):
        self.rows = {k: dict(v) for k, v in rows.items()}
        self.written = []
        self.opened = False

    def open(self):
        self.opened = True

    def close(self):
        pass

    def previous(self, ids):
        return {i: dict(self.rows[i]) for i in ids if i in self.rows}

    def write(self, writes):
        self.written.append(list(writes))
        for name, params in writes:
            if name == "mark_deleted":
                status, _, image_id = params
                self.rows.setdefault(image_id, {})["status"] = status  # an UPDATE upserts
            elif name == "image":
                self.rows[params[0]] = {"producer": params[1], "status": params[10]}


class Ctx:
    def timestamp(self):
        return 1_700_000_000_000


def test_only_the_owners_live_image_is_marked_and_only_its_status_is_written():
    decision, writes = deletion_writes(_event(), {"producer": "alice", "status": "duplicate"}, NOW)
    assert decision is Decision.DELETE and writes == [("mark_deleted", ("deleted", NOW, IMAGE))]
    # a partial update: status and processed_at, nothing the upload wrote (windows keep counts)
    assert STATEMENTS["mark_deleted"] == MARK_DELETED and MARK_DELETED.startswith("UPDATE images SET status = ?")
    for row, expected in ((None, Decision.NOT_FOUND), ({"producer": "bob", "status": "accepted"}, Decision.NOT_FOUND),
                          ({"producer": "alice", "status": "deleted"}, Decision.ALREADY_DELETED)):
        assert deletion_writes(_event(), row, NOW) == (expected, [])


def test_apply_deletions_is_idempotent_under_duplicated_and_replayed_events():
    table = Images(**{IMAGE: {"producer": "alice", "status": "accepted"}})
    operator = ApplyDeletions(table, TOPIC_DELETED)
    operator.writer.open()
    operator.applied, operator.ignored = FakeCounter(), FakeCounter()
    value = _event().to_json().decode()
    for _ in range(3):  # the event, a duplicate, a replay after a restore
        assert list(operator.process_element(value, Ctx())) == []
    assert table.rows[IMAGE]["status"] == "deleted"
    assert len(table.written) == 1  # written once: the later ones changed nothing (not even processed_at)
    assert (operator.applied.count, operator.ignored.count) == (1, 2)
    # another producer's deletion (a forged event) and an unknown id: no write, no row created
    other = str(uuid.uuid4())
    list(operator.process_element(_event(producer="mallory").to_json().decode(), Ctx()))
    list(operator.process_element(_event(other).to_json().decode(), Ctx()))
    assert len(table.written) == 1 and other not in table.rows


def test_a_bad_deletion_event_goes_to_the_dead_letters_and_writes_nothing():
    table = Images()
    operator = ApplyDeletions(table, TOPIC_DELETED)
    for bad in ("", "{", json.dumps({"event_type": "image.deleted"}), "x" * 100_000):
        [(tag, letter)] = list(operator.process_element(bad, Ctx()))
        assert tag == DLQ_TAG
        assert json.loads(letter)["topic"] == TOPIC_DELETED and json.loads(letter)["reason"]
    assert table.written == []


def _verdict(image_id, status="accepted", recheck=False):
    verdict = {
        "image_id": image_id, "producer": "alice", "sha256": "ab" * 32, "phash": "0" * 16, "size": 10,
        "content_type": "image/png", "event_time": 1_000, "received_at": None, "status": status,
        "duplicate_of": None, "duplicate_kind": None, "distance": None, "lateness": "on_time", "watermark": 0,
        "topic": "images.uploaded", "partition": 0, "offset": 1,
    }  # fmt: skip
    if recheck:
        verdict["recheck"] = True
    return verdict


def test_an_upload_replayed_after_its_deletion_keeps_the_image_deleted():
    # the job restores from a checkpoint taken before the upload was decided; meanwhile the
    # deletion was applied: the replayed upload must not set the status back to accepted
    table = Images(**{IMAGE: {"producer": "alice", "status": "deleted"}})
    other = "00000000-0000-4000-8000-000000000002"
    WriteSteps(table, W).flat_map({"verdicts": [_verdict(IMAGE, recheck=True), _verdict(other, recheck=True)],
                                   "windows": []})
    assert table.rows[IMAGE]["status"] == "deleted"
    assert table.rows[other]["status"] == "accepted"  # a live image is rewritten as always
    [image_row] = [p for name, p in table.written[-1] if name == "image" and p[0] == IMAGE]
    assert image_row[1:6] == ("alice", "ab" * 32, "0" * 16, 10, "image/png")  # the rest as the upload wrote it


def test_image_writes_keep_deleted_only_when_told():
    assert image_writes(_verdict(IMAGE), W, NOW)[0][1][10] == "accepted"
    assert image_writes(_verdict(IMAGE), W, NOW, deleted=True)[0][1][10] == "deleted"
    # a deleted duplicate keeps its duplicates row (the link is history, like the window counts)
    dup = {**_verdict(IMAGE, "duplicate"), "duplicate_of": "o", "duplicate_kind": "exact", "distance": 0}
    assert [w[0] for w in image_writes(dup, W, NOW, deleted=True)] == ["image", "duplicate"]
