"""The source's routing in the JVM (issue 17): the SQL that keys each raw record by its exact
shard must name the shard the Python side computes from the cleaned SHA-256
(``ShardPlan.exact_shard``) - else ``decide: exact`` refuses the record as misrouted."""

import json
import random

import pytest

from imgstream.domain.cleaning import ASCII_WHITESPACE, Cleaned, Source, clean
from imgstream.domain.dedup import DedupPolicy
from imgstream.domain.sharding import ShardPlan

pytestmark = pytest.mark.slow


def _event(sha):
    return json.dumps({
        "schema_version": 1, "event_type": "image.uploaded", "image_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "producer": "alice", "sha256": sha, "phash": "00ff00ff00ff00ff", "size": 1, "content_type": "image/png",
        "width": 1, "height": 1, "storage_key": "k", "received_at": "2026-12-05T00:00:00.000Z",
    })  # fmt: skip


#: Values cleaning accepts with an unusual SHA-256 spelling, and values it rejects.
ODD_VALID = ["\t " + "AB" * 32 + "\r\n", "Ab" * 32]
INVALID = ['{"sha256": "xyz"}', "not json", '{"sha256": 5}', json.dumps({"sha256": "a" * 63}), "[1]", "",
           _event("\u00a0" + "ab" * 32), _event("ab" * 32 + "0")]  # fmt: skip


def test_cleaning_strips_the_white_space_of_the_sqls_pattern():
    # the SQL's pattern strips Java's \s: space, \t, \n, \x0B, \f, \r (ASCII only)
    assert sorted(ASCII_WHITESPACE) == sorted(" \t\n\x0b\f\r")


@pytest.mark.parametrize("shards", [1, 3, 32])
def test_the_sql_shard_of_a_record_is_the_shard_of_its_cleaned_sha256(shards):
    from pyflink.table import DataTypes, EnvironmentSettings, TableEnvironment

    from flink_jobs.pipeline import exact_shard_sql

    plan = ShardPlan.for_policy(DedupPolicy(), shards=shards)
    rnd = random.Random(shards)
    values = [_event(f"{rnd.getrandbits(256):064x}") for _ in range(200)] + [_event(s) for s in ODD_VALID] + INVALID
    values.append(_event("b" * 64).replace('"' + "b" * 64, '"\\u0062' + "b" * 63))  # a JSON escape: both parsers decode it
    values.append(_event("f" * 64)[:-1] + ', "sha256": "' + "e" * 64 + '"}')  # a key given twice: Python reads the last
    expected = []
    for offset, value in enumerate(values):
        out = clean(value.encode(), Source("t", 0, offset, 0))
        expected.append(plan.exact_shard(out.event.sha256) if isinstance(out, Cleaned) else offset % shards)
    assert sum(isinstance(clean(v.encode()), Cleaned) for v in values) == 200 + len(ODD_VALID) + 2

    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("parallelism.default", "1")
    rows = DataTypes.ROW([DataTypes.FIELD("o", DataTypes.BIGINT()), DataTypes.FIELD("v", DataTypes.STRING())])
    t_env.create_temporary_view("x", t_env.from_elements(list(enumerate(values)), rows))
    query = f"SELECT o, {exact_shard_sql('v', 'o', shards)} FROM x"
    with t_env.execute_sql(query).collect() as results:
        got = dict(tuple(r) for r in results)
    assert [got[o] for o in range(len(values))] == expected
    assert len(set(expected[:200])) == shards  # and the shards are all used
