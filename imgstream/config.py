"""Typed, frozen configuration built once at an entry point from the environment.

Nothing in the library reads the environment at import time: entry points (services, jobs,
the CLI, test fixtures) call ``X.from_env()`` once and pass the objects down.

The local stack writes every value below into ``.stack/env`` (``KEY=VALUE`` lines); services it
starts get them in their environment, and tests load that file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


class Secret(str):
    """A string that never shows itself in ``repr``/logs (``str()`` still returns the value)."""

    def __repr__(self) -> str:
        return "Secret('***')"


def _get(env: Mapping[str, str], key: str, default: str | None = None) -> str:
    value = env.get(key, default)
    if value is None:
        raise KeyError(f"missing configuration variable {key}")
    return value


def load_env_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` file (``#`` comments, no shell expansion)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "KafkaConfig":
        env = os.environ if env is None else env
        return cls(bootstrap_servers=_get(env, "IMGSTREAM_KAFKA_BOOTSTRAP", cls.bootstrap_servers))


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str = "http://127.0.0.1:9000"
    bucket: str = "imgstream-images"
    access_key: Secret = field(default=Secret("imgstream"), repr=False)
    secret_key: Secret = field(default=Secret(""), repr=False)
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Config":
        env = os.environ if env is None else env
        return cls(
            endpoint_url=_get(env, "IMGSTREAM_S3_ENDPOINT", cls.endpoint_url),
            bucket=_get(env, "IMGSTREAM_S3_BUCKET", cls.bucket),
            access_key=Secret(_get(env, "IMGSTREAM_S3_ACCESS_KEY")),
            secret_key=Secret(_get(env, "IMGSTREAM_S3_SECRET_KEY")),
            region=_get(env, "IMGSTREAM_S3_REGION", cls.region),
        )


@dataclass(frozen=True)
class CassandraConfig:
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "imgstream"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "CassandraConfig":
        env = os.environ if env is None else env
        return cls(
            hosts=tuple(_get(env, "IMGSTREAM_CASSANDRA_HOSTS", "127.0.0.1").split(",")),
            port=int(_get(env, "IMGSTREAM_CASSANDRA_PORT", "9042")),
            keyspace=_get(env, "IMGSTREAM_CASSANDRA_KEYSPACE", cls.keyspace),
        )


@dataclass(frozen=True)
class PostgresConfig:
    dsn: Secret = field(default=Secret("postgresql://imgstream@127.0.0.1:5432/imgstream"), repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PostgresConfig":
        env = os.environ if env is None else env
        return cls(dsn=Secret(_get(env, "IMGSTREAM_PG_DSN", str(cls.dsn))))


@dataclass(frozen=True)
class StackConfig:
    """Where every service of the stack is; what tests and the CLI need to reach them."""

    kafka: KafkaConfig
    s3: S3Config
    cassandra: CassandraConfig
    postgres: PostgresConfig
    flink_rest: str = "http://127.0.0.1:8081"
    connect_rest: str = "http://127.0.0.1:8083"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "StackConfig":
        env = os.environ if env is None else env
        return cls(
            kafka=KafkaConfig.from_env(env),
            s3=S3Config.from_env(env),
            cassandra=CassandraConfig.from_env(env),
            postgres=PostgresConfig.from_env(env),
            flink_rest=_get(env, "IMGSTREAM_FLINK_REST", cls.flink_rest),
            connect_rest=_get(env, "IMGSTREAM_CONNECT_REST", cls.connect_rest),
        )
