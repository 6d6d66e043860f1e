"""Synthetic producers (issue 20): one reserved prefix, kept apart from a user's data.

The prefix rule, the attribution of unreadable events read from synthetic topics, the generator's
names, the SQL views' copy of the prefix, the stats API's switch, and the lock that decides which
run cleans up."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from api.stats.config import INCLUDE_SYNTHETIC_SETTING, StatsConfig
from flink_jobs import testing
from flink_jobs.generator import plan
from imgstream.domain.cleaning import UNKNOWN, DeadLetter, Source, clean
from imgstream.domain.producers import (
    SYNTHETIC_PREFIX,
    SYNTHETIC_REALM,
    SYNTHETIC_UNKNOWN,
    USER_REALM,
    dedup_realm,
    is_synthetic,
    is_valid_name,
    synthetic,
)
from imgstream.ops.synthetic import synthetic_session
from tests.unit.test_stats_app import Api, api  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[2]


def test_the_prefix_names_a_namespace_of_valid_names() -> None:
    assert synthetic("alice") == SYNTHETIC_PREFIX + "alice" == synthetic(synthetic("alice"))
    assert is_synthetic("synthetic-x") and not is_synthetic("alice") and not is_synthetic(None)
    assert not is_synthetic("Synthetic-x") and not is_synthetic("my-synthetic-x")
    assert is_valid_name(SYNTHETIC_UNKNOWN) and is_synthetic(SYNTHETIC_UNKNOWN)
    with pytest.raises(ValueError):
        synthetic("x" * 64)  # too long once prefixed


def test_synthetic_and_user_images_are_decided_in_different_dedup_indexes() -> None:
    from flink_jobs.sharded import REALMS, realm_state

    assert dedup_realm("synthetic-bench-alice") == SYNTHETIC_REALM != USER_REALM == dedup_realm("alice")
    assert dedup_realm(None) == USER_REALM == dedup_realm("Synthetic-x")
    assert realm_state("exact", USER_REALM) == "exact"  # the users' index keeps its state name
    assert len({realm_state("exact", realm) for realm in REALMS}) == len(REALMS) == 2


def test_the_views_filter_on_the_same_prefix() -> None:
    sql = (REPO / "connectors" / "postgres" / "20-analytics.sql").read_text()
    body = sql.split("FUNCTION analytics.shows_producer", 1)[1].split("$$;", 1)[0]
    assert re.findall(r"starts_with\(producer, '([^']*)'\)", body) == [SYNTHETIC_PREFIX]
    assert f"current_setting('{INCLUDE_SYNTHETIC_SETTING}', true)" in body
    for view in ("images", "upload_stats", "duplicates", "late_events"):
        definition = sql.split(f"CREATE OR REPLACE VIEW analytics.{view} AS", 1)[1].split(";", 1)[0]
        assert "analytics.shows_producer(" in definition, view
    rollup = sql.split("FUNCTION analytics.upload_stats_rollup", 1)[1].split("$$;", 1)[0]
    assert rollup.count("analytics.shows_producer(") == 2  # the rows and the finality watermark


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"schema_version": 1, "producer": "alice"}',
                                 b'{"schema_version": 9, "producer": "bad name"}'])
def test_dead_letters_of_a_synthetic_topic_stay_synthetic(raw: bytes) -> None:
    real = clean(raw, Source("images.uploaded", 0, 1, 0))
    test = clean(raw, Source(synthetic("uploads-1a2b"), 0, 1, 0))
    assert isinstance(real, DeadLetter) and isinstance(test, DeadLetter)
    assert test.producer == SYNTHETIC_UNKNOWN
    assert real.producer == ("alice" if b"alice" in raw else UNKNOWN)


def test_a_synthetic_topic_keeps_a_synthetic_producer_it_names() -> None:
    letter = clean(b'{"schema_version": 9, "producer": "synthetic-it-a"}', Source(synthetic("uploads-x"), 0, 1, 0))
    assert isinstance(letter, DeadLetter) and letter.producer == "synthetic-it-a"


def test_generated_and_renamed_plans_name_only_synthetic_producers() -> None:
    planned = plan(seed=3, originals=40, malformed=30)
    renamed = testing.renamed(planned, "it1a2b")
    named = 0
    for p in planned + renamed:
        try:
            event = json.loads(p.value)
        except ValueError:
            continue
        if isinstance(event, dict) and "producer" in event:
            assert is_synthetic(event["producer"]), p
            named += 1
    assert named > len(planned)
    producers = {json.loads(p.value)["producer"] for p in renamed if p.kind == "original"}
    assert producers == {"synthetic-it1a2b-alice", "synthetic-it1a2b-bob"}
    assert testing.run_producer("synthetic-it1", "synthetic-a") == "synthetic-it1-a"


def test_only_the_test_setting_makes_the_stats_api_sessions_include_synthetic() -> None:
    assert INCLUDE_SYNTHETIC_SETTING not in str(StatsConfig().session_postgres.dsn)
    config = StatsConfig.from_env({"IMGSTREAM_STATS_INCLUDE_SYNTHETIC": "1"})
    assert config.include_synthetic and f"{INCLUDE_SYNTHETIC_SETTING}=on" in str(config.session_postgres.dsn)


async def test_a_synthetic_producer_reads_its_own_rows_and_no_one_else_does(api: Api) -> None:  # noqa: F811
    status, _, _ = await api.get("/v1/stats/summary", api.auth("synthetic-it-a"))
    assert status == 200
    # each connection's statements run between the views' switch on and off
    switch = [("'on'" in q, args) for q, args in api.pool.calls if "set_config" in q]
    assert switch and switch == [(True, (INCLUDE_SYNTHETIC_SETTING,)), (False, (INCLUDE_SYNTHETIC_SETTING,))] * (
        len(switch) // 2)
    data = [c for c in api.pool.data_calls() if "set_config" not in c[0]]
    assert data and all("synthetic-it-a" in c[1] for c in data)  # still scoped to itself
    api.pool.calls.clear()
    for headers in (api.analyst(), api.auth("alice")):
        status, _, _ = await api.get("/v1/stats/summary", headers)
        assert status == 200
    assert not [c for c in api.pool.calls if "set_config" in c[0]]


def test_the_last_run_out_cleans_and_a_killed_run_is_cleaned_at_the_next_start(tmp_path: Path) -> None:
    lock = tmp_path / "run" / "synthetic.lock"
    cleaned: list[str] = []
    with synthetic_session(lock, lambda when: cleaned.append(f"a-{when}")):
        with synthetic_session(lock, lambda when: cleaned.append(f"b-{when}")):
            assert cleaned == ["a-start"]  # b started while a ran: a's rows are left alone
        assert cleaned == ["a-start"]  # b ended while a still ran
    assert cleaned == ["a-start", "a-end"]
    # a run that dies holding the lock (here: an exception) leaves it free for the next start
    with pytest.raises(RuntimeError):
        with synthetic_session(lock, lambda when: cleaned.append(f"c-{when}")):
            raise RuntimeError("interrupted")
    with synthetic_session(lock, lambda when: cleaned.append(f"d-{when}")):
        pass
    assert cleaned[2:] == ["c-start", "d-start", "d-end"]


@pytest.mark.parametrize("name, legacy", [
    ("it2d5ff8a8-alice", True), ("ft11b9c893-bob", True), ("sp839811e0-alice", True), ("itc676936c-b", True),
    ("bench1a2b3c4d-alice", True), ("chaos-7579af-flink-jobmanager", True), ("it-replay-0e529456", True),
    ("e2e-stats-8b28fe8d", True), ("cdc-e2e-12345678", True), ("it-cdc-order-abcdef01", True),
    ("it-0123456789-a", True), ("bench-stats-3", True),
    ("alice", False), ("bob", False), ("unknown", False), ("demo", False), ("itgalaxy-alice", False),
    ("chaos-monkey", False), ("e2e-stats", False), (None, False),
])
def test_legacy_test_names_are_matched_exactly(name: str | None, legacy: bool) -> None:
    from imgstream.ops.synthetic import is_legacy_test_name

    assert is_legacy_test_name(name) is legacy


def test_a_scan_that_fails_on_tombstones_takes_the_keys_from_postgres() -> None:
    from types import SimpleNamespace

    from cassandra import ReadFailure

    from imgstream.ops.synthetic import TABLES, purge

    class Overwhelmed:
        """A session whose every scan fails like a read past tombstone_failure_threshold."""

        def prepare(self, cql: str) -> SimpleNamespace:
            return SimpleNamespace(cql=cql, fetch_size=None)

        def execute(self, statement: SimpleNamespace) -> list[Any]:
            raise ReadFailure("Operation failed - received 0 responses and 1 failures: READ_TOO_MANY_TOMBSTONES")

    known = {table: [((f"{table}-key",), "synthetic-a")] for table in TABLES}
    report = purge(Overwhelmed(), dry_run=True, fallback=known)
    assert report.deleted == {t: 1 for t in TABLES} and report.producers == {"synthetic-a"}
    assert set(report.fallbacks) == set(TABLES) and "READ_TOO_MANY_TOMBSTONES" in report.fallbacks["images"]
    with pytest.raises(ReadFailure):
        purge(Overwhelmed(), dry_run=True)  # no fallback: the failure is not swallowed
