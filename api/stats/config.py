"""Stats API configuration: named limits with their reasons, and a frozen config read once from env."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from imgstream.adapters.postgres import PoolLimits
from imgstream.config import ConfigReader, PostgresConfig, Secret
from imgstream.domain.tokens import DEFAULT_KEYS_FILE, keys_file_from_env

#: Connections per process. Every request holds one connection for one or two short statements
#: (a few ms), so 10 connections serve hundreds of requests/s; PostgreSQL on the local stack allows
#: 200 connections shared by Kafka Connect, tests and analysts.
POOL_MAX: Final = 10
#: A statement running longer than this is a runaway (every query is an index range scan over a
#: capped range); it is cancelled server-side and the client gets a 503 instead of a hung request.
STATEMENT_TIMEOUT: Final = 5.0
#: Waiting longer than this for a free connection means the service is saturated: answer 503 and
#: let the client retry rather than queue without bound.
ACQUIRE_TIMEOUT: Final = 2.0
#: Freshness is measured at most this often per process and shared by every answer in between:
#: "seconds behind" does not need millisecond precision, and it saves a query per request.
FRESHNESS_TTL: Final = 1.0
#: How long a client may reuse an answer whose windows are all final (closed): they never change
#: again. Not longer, because a final row can still arrive late through CDC.
CLOSED_MAX_AGE: Final = 300
#: The PostgreSQL session setting that makes the ``analytics`` views show synthetic producers
#: (``connectors/postgres/20-analytics.sql``, ``analytics.shows_producer``).
INCLUDE_SYNTHETIC_SETTING: Final = "imgstream.include_synthetic"
#: Request bodies are never read (every endpoint is a GET); anything larger than this is refused.
MAX_BODY_BYTES: Final = 1024


@dataclass(frozen=True)
class StatsConfig:
    """Everything the stats API needs, built once by :meth:`from_env` at the entry point."""

    host: str = "127.0.0.1"
    port: int = 8090
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    pool_min: int = 2
    pool_max: int = POOL_MAX
    statement_timeout: float = STATEMENT_TIMEOUT
    acquire_timeout: float = ACQUIRE_TIMEOUT
    connect_timeout: float = 5.0
    keys_file: Path = DEFAULT_KEYS_FILE
    freshness_ttl: float = FRESHNESS_TTL
    closed_max_age: int = CLOSED_MAX_AGE
    startup_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    log_level: str = "INFO"
    #: Test-only: also serve synthetic producers (tests', benchmarks'; hidden by the ``analytics``
    #: views unless a session sets ``imgstream.include_synthetic``). Never set on a user-facing API.
    include_synthetic: bool = False

    @property
    def session_postgres(self) -> PostgresConfig:
        """The DSN with the session settings of every API connection: read-only transactions (the
        API never writes; a hostile parameter that somehow reached SQL could still change nothing),
        a server-side statement timeout backing the client-side one, an application name that
        shows in ``pg_stat_activity``, and (tests only) the views' switch for synthetic producers."""
        settings = {
            "application_name": "imgstream-stats",
            "default_transaction_read_only": "on",
            "statement_timeout": str(int(self.statement_timeout * 1000)),
        }
        if self.include_synthetic:
            settings[INCLUDE_SYNTHETIC_SETTING] = "on"
        return PostgresConfig(dsn=Secret(with_session_settings(str(self.postgres.dsn), settings)))

    @property
    def pool_limits(self) -> PoolLimits:
        return PoolLimits(min_size=self.pool_min, max_size=self.pool_max, command_timeout=self.statement_timeout,
                          connect_timeout=self.connect_timeout)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, prefix: str = "IMGSTREAM_STATS_") -> "StatsConfig":
        """Read ``IMGSTREAM_STATS_*`` plus the shared ``IMGSTREAM_PG_DSN`` and
        ``IMGSTREAM_TOKEN_KEYS_FILE``; every variable is optional."""
        env = os.environ if env is None else env
        read = ConfigReader(env, prefix)
        # A DSN of its own (e.g. the read-only analyst role) if given, else the stack's.
        own_dsn = read.optional("PG_DSN")
        config = cls(
            host=read.text("HOST", cls.host),
            port=read.integer("PORT", cls.port),
            postgres=PostgresConfig(dsn=Secret(own_dsn)) if own_dsn else PostgresConfig.from_env(env),
            pool_min=read.integer("POOL_MIN", cls.pool_min),
            pool_max=read.integer("POOL_MAX", cls.pool_max),
            statement_timeout=read.number("STATEMENT_TIMEOUT", cls.statement_timeout),
            acquire_timeout=read.number("ACQUIRE_TIMEOUT", cls.acquire_timeout),
            connect_timeout=read.number("CONNECT_TIMEOUT", cls.connect_timeout),
            keys_file=keys_file_from_env(env),
            freshness_ttl=read.number("FRESHNESS_TTL", cls.freshness_ttl),
            closed_max_age=read.integer("CLOSED_MAX_AGE", cls.closed_max_age),
            startup_timeout=read.number("STARTUP_TIMEOUT", cls.startup_timeout),
            shutdown_timeout=read.number("SHUTDOWN_TIMEOUT", cls.shutdown_timeout),
            log_level=read.text("LOG_LEVEL", cls.log_level).upper(),
            include_synthetic=read.flag("INCLUDE_SYNTHETIC", cls.include_synthetic),
        )
        if not 1 <= config.pool_min <= config.pool_max:
            raise ValueError(f"{prefix}POOL_MIN/POOL_MAX: need 1 <= min ({config.pool_min}) <= max ({config.pool_max})")
        return config


def with_session_settings(dsn: str, settings: Mapping[str, str]) -> str:
    """``dsn`` (a ``postgresql://`` URL) with ``settings`` added as query parameters, which asyncpg
    sends as server settings; settings the DSN already has win. Other DSN forms are returned as is."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        return dsn
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    merged = {**settings, **query}
    return urlunsplit(parts._replace(query=urlencode(merged)))
