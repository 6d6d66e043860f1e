"""Who owns an image: the one read the gateway makes, for ``DELETE /v1/images/{image_id}``.

The gateway keeps no state, and an upload records its owner nowhere the gateway writes (receipts
exist only for idempotent uploads). The owner is in the pipeline's ``images`` row in Cassandra
(ScyllaDB in production), keyed by ``image_id``: one partition-key read at consistency
``LOCAL_QUORUM`` answers owner and status, costs the same at any scale (it goes to the replicas
of that one partition) and needs no new store. So the gateway reads it: :class:`OwnerIndex`.

An image has no row until the pipeline decided it (seconds after the upload): until then it is
"not found" to a deletion, as it is "pending" on the stats API.

The Cassandra session is opened lazily, on the first deletion (and tried once in the background
at start): uploads never depend on Cassandra, so a gateway starts and uploads while it is down;
only deletions answer 503 then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, Mapping, Protocol

from imgstream.config import CassandraConfig
from imgstream.domain.errors import Unavailable

log = logging.getLogger("imgstream.gateway")

#: The owner and status of one image (the partition key: one replica set answers).
SELECT_OWNER: Final = "SELECT producer, status FROM images WHERE image_id = ?"
#: A read slower than this fails the request with 503 (the client retries): a healthy partition
#: read takes milliseconds, and a DELETE must not hold a connection for the driver's 10 s default.
READ_TIMEOUT_S: Final = 2.0
#: Connecting (first deletion after start) may wait this long before the request gets 503.
CONNECT_TIMEOUT_S: Final = 5.0


class OwnerLookup(Protocol):
    """Where the gateway reads an image's owner (tests pass an in-memory one)."""

    async def owner(self, image_id: str) -> Mapping[str, Any] | None:
        """``{"producer", "status"}`` of the image's row, ``None`` when it has none; raises
        :class:`~imgstream.domain.errors.Unavailable` when the store cannot answer."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class OwnerIndex:
    """:class:`OwnerLookup` on Cassandra's ``images`` table (scylla-driver, one lazily opened
    session per process, reads through the driver's callback futures: no thread per request)."""

    def __init__(self, config: CassandraConfig, *, read_timeout: float = READ_TIMEOUT_S,
                 connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.config = config
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self._store: Any = None  # imgstream.adapters.cassandra.CassandraStore once connected
        self._lock = asyncio.Lock()
        self._warmup: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Try to connect in the background; a failure is logged, and the first deletion retries."""
        self._warmup = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            await self._connected()
        except Unavailable as exc:
            log.warning("Cassandra not reachable yet: deletions answer 503 until it is", extra={"error": str(exc)})

    async def _connected(self) -> Any:
        if self._store is not None:
            return self._store
        async with self._lock:
            if self._store is None:
                from imgstream.adapters.cassandra import CassandraStore

                def connect() -> Any:
                    store = CassandraStore.connect(self.config, connect_timeout=self.connect_timeout)
                    store.prepare(SELECT_OWNER)  # here, not on the event loop (a prepare blocks)
                    return store

                try:
                    self._store = await asyncio.to_thread(connect)
                except Exception as exc:  # noqa: BLE001 - the driver raises many kinds; all mean "not now"
                    raise Unavailable(f"Cassandra not reachable: {type(exc).__name__}: {exc}",
                                      reason="cassandra") from None
        return self._store

    async def owner(self, image_id: str) -> Mapping[str, Any] | None:
        store = await self._connected()
        from cassandra import DriverException
        from cassandra.cluster import NoHostAvailable

        try:
            rows = await store.execute_async(SELECT_OWNER, (image_id,), timeout=self.read_timeout)
        except (DriverException, NoHostAvailable, OSError) as exc:
            raise Unavailable(f"Cassandra read failed: {type(exc).__name__}: {exc}", reason="cassandra") from None
        if not rows:
            return None
        return {"producer": rows[0].producer, "status": rows[0].status}

    async def close(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
            try:
                await self._warmup
            except asyncio.CancelledError:
                pass
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None
