"""The one config reader every ``from_env`` uses: types, defaults, required variables, errors that name the variable."""

from __future__ import annotations

import pytest

from api.stats.config import StatsConfig
from imgstream.config import CassandraConfig, ConfigReader, PostgresConfig, S3Config, Secret


def test_typed_reads_with_prefix_and_defaults() -> None:
    read = ConfigReader({"X_N": "42", "X_F": "0.5", "X_S": "hi", "X_T": " Yes ", "X_OFF": "off", "X_E": ""}, "X_")
    assert (read.integer("N"), read.number("F"), read.text("S"), read.flag("T"), read.flag("OFF")) == (
        42, 0.5, "hi", True, False)
    assert (read.integer("MISSING", 7), read.number("MISSING", 1.5), read.flag("MISSING", True)) == (7, 1.5, True)
    assert read.text("MISSING", "d") == "d" and read.optional("E") is None and read.optional("MISSING") is None
    assert read.is_set("E") and not read.is_set("MISSING")
    secret = read.secret("S")
    assert isinstance(secret, Secret) and str(secret) == "hi" and "hi" not in repr(secret)


@pytest.mark.parametrize(("method", "value", "what"), [
    ("integer", "many", "a whole number"), ("integer", "1.5", "a whole number"), ("number", "fast", "a number"),
    ("flag", "maybe", "a boolean"), ("flag", "", "a boolean"), ("flag", "flase", "a boolean"),
])
def test_a_bad_value_is_refused_naming_the_variable(method: str, value: str, what: str) -> None:
    with pytest.raises(ValueError, match=f"^X_V: {value!r} is not {what}"):
        getattr(ConfigReader({"X_V": value}, "X_"), method)("V", None)


def test_a_missing_required_variable_is_named() -> None:
    with pytest.raises(KeyError, match="IMGSTREAM_S3_ACCESS_KEY"):
        S3Config.from_env({})
    with pytest.raises(KeyError, match="X_V"):
        ConfigReader({}, "X_").integer("V")


def test_library_configs_read_through_it() -> None:
    assert CassandraConfig.from_env({"IMGSTREAM_CASSANDRA_HOSTS": "a,b"}).hosts == ("a", "b")
    assert CassandraConfig.from_env({}) == CassandraConfig()
    assert PostgresConfig.from_env({}) == PostgresConfig()
    with pytest.raises(ValueError, match="IMGSTREAM_CASSANDRA_PORT: 'x'"):
        CassandraConfig.from_env({"IMGSTREAM_CASSANDRA_PORT": "x"})
    with pytest.raises(ValueError, match="IMGSTREAM_STATS_FRESHNESS_TTL: 'soon'"):
        StatsConfig.from_env({"IMGSTREAM_STATS_FRESHNESS_TTL": "soon"})


def test_flink_settings_are_typed_by_their_fields() -> None:
    pytest.importorskip("pyflink")
    from flink_jobs.config import PipelineConfig

    assert PipelineConfig.from_env({}).bounded is False
    assert PipelineConfig.from_env({}, ["--bounded=1"]).bounded is True  # the benchmarks' spelling
    assert PipelineConfig.from_env({"IMGSTREAM_FLINK_BOUNDED": "true"}).bounded is True
    assert PipelineConfig.from_env({"IMGSTREAM_FLINK_BOUNDED": "1"}, ["--bounded=0"]).bounded is False  # args win
    config = PipelineConfig.from_env({"IMGSTREAM_FLINK_JARS": "file:///a.jar,,file:///b.jar"}, ["--job-name=j"])
    assert config.jars == ("file:///a.jar", "file:///b.jar") and config.job_name == "j"
    with pytest.raises(ValueError, match="IMGSTREAM_FLINK_BOUNDED: 'maybe'"):
        PipelineConfig.from_env({"IMGSTREAM_FLINK_BOUNDED": "maybe"})
    with pytest.raises(ValueError, match="--window_ms: 'abc'"):
        PipelineConfig.from_env({}, ["--window-ms=abc"])
