"""Typed, frozen configuration built once at an entry point from the environment.

Nothing in the library reads the environment at import time: entry points (services, jobs,
the CLI, test fixtures) call ``X.from_env()`` once and pass the objects down. Every ``from_env``
(here, in ``api/gateway``, ``api/stats`` and ``flink_jobs``) reads through one
:class:`ConfigReader`, so every variable parses the same way and a bad value is refused with
the variable's name.

The local stack writes every value below into ``.stack/env`` (``KEY=VALUE`` lines); services it
starts get them in their environment, and tests load that file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Final, Mapping, TypeVar

T = TypeVar("T")

#: How a boolean variable may be spelt (any case, surrounding spaces ignored). Anything else is
#: refused rather than read as false: ``ENSURE_TOPIC=flase`` must not silently mean false.
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})


class Secret(str):
    """A string that never shows itself in ``repr``/logs (``str()`` still returns the value)."""

    def __repr__(self) -> str:
        return "Secret('***')"


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise ValueError(text)
    return word in TRUE_WORDS


@dataclass(frozen=True)
class ConfigReader:
    """Typed reads of configuration variables: ``prefix + name`` looked up in ``env``.

    Each read takes the variable's name (without the prefix) and a default; without a default
    the variable is required and a missing one raises :class:`KeyError` naming it. A value that
    does not parse as the type asked for raises :class:`ValueError` naming the variable and the
    value (never a :class:`Secret`'s: secrets are taken as they are).
    """

    env: Mapping[str, str]
    prefix: str = ""

    def is_set(self, name: str) -> bool:
        """Whether the variable is present (even if empty)."""
        return self.prefix + name in self.env

    def text(self, name: str, default: str | None = None) -> str:
        """The variable as it is."""
        return self._read(name, default, "a string", str)

    def optional(self, name: str) -> str | None:
        """The variable, or ``None`` when it is unset or empty."""
        return self.env.get(self.prefix + name) or None

    def integer(self, name: str, default: int | None = None) -> int:
        """The variable as an ``int`` (``42``, ``-1``, ``10_000``)."""
        return self._read(name, default, "a whole number", int)

    def number(self, name: str, default: float | None = None) -> float:
        """The variable as a ``float`` (``2``, ``0.5``, ``1e3``)."""
        return self._read(name, default, "a number", float)

    def flag(self, name: str, default: bool | None = None) -> bool:
        """The variable as a ``bool``: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``
        (any case); anything else is refused."""
        return self._read(name, default, "a boolean (true/false, 1/0, yes/no, on/off)", _parse_bool)

    def secret(self, name: str, default: str | None = None) -> Secret:
        """The variable as a :class:`Secret` (kept out of ``repr`` and logs)."""
        return Secret(self._read(name, default, "a string", str))

    def _read(self, name: str, default: T | None, what: str, parse: Callable[[str], T]) -> T:
        key = self.prefix + name
        value = self.env.get(key)
        if value is None:
            if default is None:
                raise KeyError(f"missing configuration variable {key}")
            return default
        try:
            return parse(value)
        except ValueError:
            raise ValueError(f"{key}: {value!r} is not {what}") from None


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
        read = ConfigReader(os.environ if env is None else env)
        return cls(bootstrap_servers=read.text("IMGSTREAM_KAFKA_BOOTSTRAP", cls.bootstrap_servers))


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str = "http://127.0.0.1:9000"
    bucket: str = "imgstream-images"
    access_key: Secret = field(default=Secret("imgstream"), repr=False)
    secret_key: Secret = field(default=Secret(""), repr=False)
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Config":
        read = ConfigReader(os.environ if env is None else env)
        return cls(
            endpoint_url=read.text("IMGSTREAM_S3_ENDPOINT", cls.endpoint_url),
            bucket=read.text("IMGSTREAM_S3_BUCKET", cls.bucket),
            access_key=read.secret("IMGSTREAM_S3_ACCESS_KEY"),
            secret_key=read.secret("IMGSTREAM_S3_SECRET_KEY"),
            region=read.text("IMGSTREAM_S3_REGION", cls.region),
        )


@dataclass(frozen=True)
class CassandraConfig:
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "imgstream"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "CassandraConfig":
        read = ConfigReader(os.environ if env is None else env)
        return cls(
            hosts=tuple(read.text("IMGSTREAM_CASSANDRA_HOSTS", ",".join(cls.hosts)).split(",")),
            port=read.integer("IMGSTREAM_CASSANDRA_PORT", cls.port),
            keyspace=read.text("IMGSTREAM_CASSANDRA_KEYSPACE", cls.keyspace),
        )


@dataclass(frozen=True)
class PostgresConfig:
    dsn: Secret = field(default=Secret("postgresql://imgstream@127.0.0.1:5432/imgstream"), repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PostgresConfig":
        read = ConfigReader(os.environ if env is None else env)
        return cls(dsn=read.secret("IMGSTREAM_PG_DSN", str(cls.dsn)))


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
        read = ConfigReader(env)
        return cls(
            kafka=KafkaConfig.from_env(env),
            s3=S3Config.from_env(env),
            cassandra=CassandraConfig.from_env(env),
            postgres=PostgresConfig.from_env(env),
            flink_rest=read.text("IMGSTREAM_FLINK_REST", cls.flink_rest),
            connect_rest=read.text("IMGSTREAM_CONNECT_REST", cls.connect_rest),
        )
