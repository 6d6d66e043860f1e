"""``python -m api.stats``: read the configuration once, open the pool, serve until SIGTERM/SIGINT.

On a signal the API fails /readyz, stops accepting connections, lets in-flight requests finish
(up to ``IMGSTREAM_STATS_SHUTDOWN_TIMEOUT`` seconds) and closes the pool.
"""

from __future__ import annotations

import logging
import sys

import asyncpg

from imgstream.domain.errors import Unavailable
from api.common.httpkit import configure_logging
from api.common.runtime import retry_until, run_service, serve_until_signal, uvloop_factory
from imgstream.domain.tokens import ReloadingKeyRing, ensure_key_file

from api.stats.app import create_app, server_options
from api.stats.config import StatsConfig
from api.stats.pool import open_pool

log = logging.getLogger("imgstream.stats")

#: What PostgreSQL not (yet) being reachable looks like while the pool opens.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError)


async def _open_pool(config: StatsConfig) -> asyncpg.Pool:
    """Open the pool, retrying until ``startup_timeout`` (PostgreSQL may still be starting)."""
    try:
        return await retry_until(lambda: open_pool(config), timeout=config.startup_timeout, retry_on=_UNREACHABLE,
                                 logger=log, message="PostgreSQL not reachable yet, retrying")
    except _UNREACHABLE as exc:
        raise Unavailable(f"PostgreSQL unreachable: {type(exc).__name__}: {exc}") from None


async def serve(config: StatsConfig) -> None:
    """Run the stats API until a termination signal."""
    ensure_key_file(config.keys_file)  # first start on a fresh stack: create the signing key
    keyring = ReloadingKeyRing(config.keys_file)
    pool = await _open_pool(config)
    try:
        await serve_until_signal(create_app(config, pool, keyring), host=config.host, port=config.port, logger=log,
                                 server_options=server_options(config),
                                 listening={"pool_max": config.pool_max, "keys_file": str(config.keys_file)})
    finally:
        await pool.close()
    log.info("stopped")


def main() -> int:
    """Entry point: ``.venv/bin/python -m api.stats``."""
    config = StatsConfig.from_env()
    configure_logging(config.log_level)
    # uvloop: the event loop is most of this service's CPU per request.
    return run_service(lambda: serve(config), log, unreachable="cannot start: PostgreSQL is unreachable",
                       loop_factory=uvloop_factory(log))


if __name__ == "__main__":
    sys.exit(main())
