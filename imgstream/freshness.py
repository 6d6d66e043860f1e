"""How far behind real time each replicated table is (``GET /v1/freshness``, and every stats answer).

PostgreSQL receives the pipeline's Cassandra tables by change data capture; each replicated row
carries ``cdc_ts``, the time its last change was written to Cassandra. The newest ``cdc_ts`` of a
table is the event time applied there; ``behind_seconds`` = now - that. Under steady traffic it
is the replication delay; a table that had no change for a while shows the time since its last one
(``analytics.freshness`` in connectors/postgres/20-analytics.sql).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

FRESHNESS_SQL = ("SELECT table_name, newest_change_at, newest_applied_at, behind_seconds "
                 "FROM analytics.freshness ORDER BY table_name")


@dataclass(frozen=True)
class TableFreshness:
    """The newest change applied to one replicated table."""

    table: str
    newest_change_at: datetime | None   # its Cassandra write time
    newest_applied_at: datetime | None  # when PostgreSQL applied it
    behind_seconds: float | None        # now - newest_change_at; None for a table with no row yet

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "newest_change_at": self.newest_change_at.isoformat() if self.newest_change_at else None,
            "newest_applied_at": self.newest_applied_at.isoformat() if self.newest_applied_at else None,
            "behind_seconds": self.behind_seconds,
        }


async def table_freshness(conn: Any) -> list[TableFreshness]:
    """Freshness of every replicated table; ``conn`` is an asyncpg connection or pool."""
    rows = await conn.fetch(FRESHNESS_SQL)
    return [TableFreshness(r["table_name"], r["newest_change_at"], r["newest_applied_at"],
                           None if r["behind_seconds"] is None else float(r["behind_seconds"])) for r in rows]
