"""``python -m api.gateway``: read the configuration once, connect, serve until SIGTERM/SIGINT.

On a signal the gateway stops accepting connections, fails /readyz, lets in-flight uploads
finish (up to ``IMGSTREAM_GATEWAY_SHUTDOWN_TIMEOUT`` seconds), then flushes Kafka and exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from aiohttp import web

from imgstream.adapters.kafka import KafkaEventPublisher, TopicSpec, ensure_topics
from imgstream.adapters.s3 import S3ObjectStore
from imgstream.errors import Unavailable
from imgstream.imaging import configure_pillow
from imgstream.tokens import ReloadingKeyRing, ensure_key_file

from api.gateway.app import GATEWAY, create_app, server_options
from api.gateway.config import GatewayConfig
from api.gateway.logs import configure_logging

log = logging.getLogger("imgstream.gateway")


async def _connect(config: GatewayConfig, store: S3ObjectStore, publisher: KafkaEventPublisher) -> None:
    """Start the dependencies, retrying until ``startup_timeout`` (the stack may still be coming up)."""
    deadline = time.monotonic() + config.startup_timeout
    delay = 0.5
    while True:
        try:
            await store.start()
            if config.ensure_bucket:
                await store.ensure_bucket()
            else:
                await store.ping()
            if config.ensure_topic:
                await ensure_topics(config.kafka, [TopicSpec(config.topic, config.topic_partitions)])
            await publisher.start()
            return
        except Unavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("dependencies not reachable yet, retrying", extra={"error": str(exc), "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def serve(config: GatewayConfig) -> None:
    """Run the gateway until a termination signal."""
    configure_pillow(config.max_pixels)
    # The SHA-256 computed while streaming travels as x-amz-checksum-sha256 and the server verifies
    # it, so botocore's own second pass over the body (payload signing over plain HTTP) is dropped.
    # IMGSTREAM_GATEWAY_S3_CHECKSUM=false restores signed payloads for servers without checksums.
    store = S3ObjectStore(config.s3, payload_signing=not config.s3_checksum,
                          send_sha256_checksum=config.s3_checksum)
    publisher = KafkaEventPublisher(config.kafka, client_id=f"imgstream-gateway-{config.gateway_id}")
    ensure_key_file(config.keys_file)  # first start on a fresh stack: create the signing key
    keyring = ReloadingKeyRing(config.keys_file)
    await _connect(config, store, publisher)
    app = create_app(config, store, publisher, keyring)
    runner = web.AppRunner(app, handle_signals=False, **server_options(config))
    await runner.setup()
    # reuse_port lets several gateway processes (one per core) share the port on one host.
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_port=config.reuse_port or None)
    await site.start()
    log.info("listening", extra={"url": f"http://{config.host}:{config.port}", "topic": config.topic,
                                 "bucket": config.s3.bucket, "keys_file": str(config.keys_file)})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining")
    await site.stop()  # no new connections; established ones keep streaming their bodies
    finished = await app[GATEWAY].drain(config.shutdown_timeout)
    log.info("in-flight uploads finished" if finished else "shutdown timeout: cancelling unfinished uploads")
    await runner.cleanup()  # on_shutdown, close idle connections, close Kafka (flush) and S3
    log.info("stopped")


def main() -> int:
    """Entry point: ``.venv/bin/python -m api.gateway``."""
    config = GatewayConfig.from_env()
    configure_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except Unavailable as exc:
        log.error("cannot start: a dependency is unreachable", extra={"error": str(exc)})
        return 2
    except (OSError, ValueError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
