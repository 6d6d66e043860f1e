"""``python -m api.stats``: read the configuration once, open the pool, serve until SIGTERM/SIGINT.

On a signal the API fails /readyz, stops accepting connections, lets in-flight requests finish
(up to ``IMGSTREAM_STATS_SHUTDOWN_TIMEOUT`` seconds) and closes the pool.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import Callable

import asyncpg
from aiohttp import web

from imgstream.errors import Unavailable
from imgstream.httpkit import configure_logging
from imgstream.tokens import ReloadingKeyRing, ensure_key_file

from api.stats.app import create_app, server_options
from api.stats.config import StatsConfig
from api.stats.pool import open_pool

log = logging.getLogger("imgstream.stats")


async def _open_pool(config: StatsConfig) -> asyncpg.Pool:
    """Open the pool, retrying until ``startup_timeout`` (PostgreSQL may still be starting)."""
    deadline = time.monotonic() + config.startup_timeout
    delay = 0.5
    while True:
        try:
            return await open_pool(config)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            if time.monotonic() + delay > deadline:
                raise Unavailable(f"PostgreSQL unreachable: {type(exc).__name__}: {exc}") from None
            log.warning("PostgreSQL not reachable yet, retrying", extra={"error": str(exc), "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def serve(config: StatsConfig) -> None:
    """Run the stats API until a termination signal."""
    ensure_key_file(config.keys_file)  # first start on a fresh stack: create the signing key
    keyring = ReloadingKeyRing(config.keys_file)
    pool = await _open_pool(config)
    try:
        app = create_app(config, pool, keyring)
        runner = web.AppRunner(app, handle_signals=False, **server_options(config))
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, backlog=1024)
        await site.start()
        log.info("listening", extra={"url": f"http://{config.host}:{config.port}", "pool_max": config.pool_max,
                                     "keys_file": str(config.keys_file)})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: draining")
        await runner.cleanup()
    finally:
        await pool.close()
    log.info("stopped")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (requirements.txt pins it): it roughly halves the event loop's share of
    each request, which is most of this service's CPU; plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop not installed (pip install -r requirements.txt): using the asyncio event loop")
        return None
    return uvloop.new_event_loop


def main() -> int:
    """Entry point: ``.venv/bin/python -m api.stats``."""
    config = StatsConfig.from_env()
    configure_logging(config.log_level)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config))
    except Unavailable as exc:
        log.error("cannot start: PostgreSQL is unreachable", extra={"error": str(exc)})
        return 2
    except (OSError, ValueError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
