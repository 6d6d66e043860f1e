"""Reconcile a replicated table: the same rows, with equal values, in Cassandra and PostgreSQL.

The correctness check of the CDC path (tests, benchmarks, and an operator after a crash):
read the rows of one table from both stores, normalise the values both drivers return
(timestamps to UTC-aware datetimes at millisecond precision, UUIDs to strings), and report
the keys missing on either side and the rows whose values differ.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable, Mapping, Sequence

Key = tuple[Any, ...]
Row = tuple[Any, ...]


def normalise(value: Any) -> Any:
    """A value as both sides compare it (Cassandra keeps timestamps in milliseconds)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        aware = aware.astimezone(timezone.utc)
        return aware.replace(microsecond=aware.microsecond // 1000 * 1000)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (list, set, frozenset, tuple)):
        return tuple(sorted(normalise(v) for v in value)) if isinstance(value, (set, frozenset)) else tuple(
            normalise(v) for v in value)
    return value


def index_rows(rows: Iterable[Mapping[str, Any]], key: Sequence[str], columns: Sequence[str]) -> dict[Key, Row]:
    """``{key tuple: value tuple}`` of ``rows`` (mappings by column name), values normalised."""
    return {tuple(normalise(r[k]) for k in key): tuple(normalise(r[c]) for c in columns) for r in rows}


@dataclass(frozen=True)
class Diff:
    """Differences between the source (Cassandra) and the replica (PostgreSQL)."""

    source_rows: int
    replica_rows: int
    missing: list[Key] = field(default_factory=list)       # in the source, not in the replica
    extra: list[Key] = field(default_factory=list)         # in the replica, not in the source
    different: list[tuple[Key, Row, Row]] = field(default_factory=list)  # (key, source, replica)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def summary(self, limit: int = 5) -> str:
        return (f"source {self.source_rows} rows, replica {self.replica_rows}; "
                f"missing {len(self.missing)} {self.missing[:limit]}, extra {len(self.extra)} {self.extra[:limit]}, "
                f"different {len(self.different)} {self.different[:limit]}")


def compare(source: Mapping[Key, Row], replica: Mapping[Key, Row]) -> Diff:
    """Keys missing or extra in ``replica``, and rows whose values differ."""
    missing = sorted(k for k in source if k not in replica)
    extra = sorted(k for k in replica if k not in source)
    different = [(k, source[k], replica[k]) for k in sorted(source) if k in replica and source[k] != replica[k]]
    return Diff(len(source), len(replica), missing, extra, different)


def cassandra_rows(store: Any, table: str, key: Sequence[str], columns: Sequence[str],
                   where: str = "", params: Sequence[Any] = ()) -> dict[Key, Row]:
    """Rows of ``table`` read with a :class:`imgstream.adapters.cassandra.CassandraStore`.

    ``where`` (CQL, ``?`` placeholders) narrows the read, e.g. to one test's partition(s).
    """
    cols = list(dict.fromkeys([*key, *columns]))
    cql = f"SELECT {', '.join(cols)} FROM {table}" + (f" WHERE {where}" if where else "")
    rows = store.execute(cql, list(params) if params else None, timeout=120)
    return index_rows((r._asdict() for r in rows), key, columns)


async def postgres_rows(conn: Any, table: str, key: Sequence[str], columns: Sequence[str],
                        where: str = "", params: Sequence[Any] = ()) -> dict[Key, Row]:
    """Rows of ``table`` read with an asyncpg connection (``where`` uses ``$1``... placeholders)."""
    cols = list(dict.fromkeys([*key, *columns]))
    sql = f"SELECT {', '.join(cols)} FROM {table}" + (f" WHERE {where}" if where else "")
    rows = await conn.fetch(sql, *params)
    return index_rows((dict(r) for r in rows), key, columns)
