"""``python -m api.gateway``: read the configuration once, connect, serve until SIGTERM/SIGINT.

On a signal the gateway fails /readyz and keeps serving for ``IMGSTREAM_GATEWAY_PRESTOP_DELAY``
seconds, then stops accepting connections, lets in-flight uploads finish (up to
``IMGSTREAM_GATEWAY_SHUTDOWN_TIMEOUT`` seconds), flushes Kafka and exits.
"""

from __future__ import annotations

import logging
import sys

from imgstream.adapters.kafka import KafkaEventPublisher, TopicSpec, ensure_topics
from imgstream.adapters.s3 import S3ObjectStore
from imgstream.domain.errors import Unavailable
from api.common.httpkit import configure_logging
from imgstream.domain.imaging import configure_pillow
from api.common.runtime import retry_until, run_service, serve_until_signal, uvloop_factory
from imgstream.domain.tokens import ReloadingKeyRing, ensure_key_file

from api.gateway.app import GATEWAY, create_app, server_options
from api.gateway.config import GatewayConfig
from api.gateway.owners import OwnerIndex

log = logging.getLogger("imgstream.gateway")

#: Loggers kept at WARNING or above: aiokafka and botocore are chatty at INFO about reconnects we
#: already report ourselves; the observe middleware logs every request, so no access log.
QUIET_LOGGERS = ("aiokafka", "botocore", "aiobotocore", "aiohttp.access")


async def _connect(config: GatewayConfig, store: S3ObjectStore, publisher: KafkaEventPublisher) -> None:
    """Start the dependencies, retrying until ``startup_timeout`` (the stack may still be coming up)."""

    async def attempt() -> None:
        await store.start()
        if config.ensure_bucket:
            await store.ensure_bucket()
        else:
            await store.ping()
        if config.ensure_topic:
            await ensure_topics(config.kafka, [TopicSpec(config.topic, config.topic_partitions),
                                               TopicSpec(config.deleted_topic, config.topic_partitions)])
        await publisher.start()

    await retry_until(attempt, timeout=config.startup_timeout, retry_on=(Unavailable,), logger=log,
                      message="dependencies not reachable yet, retrying")


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
    app = create_app(config, store, publisher, keyring, owners=OwnerIndex(config.cassandra))

    async def drain() -> None:
        # The listening socket is closed; established connections keep streaming their bodies.
        finished = await app[GATEWAY].drain(config.shutdown_timeout)
        log.info("in-flight uploads finished" if finished else "shutdown timeout: cancelling unfinished uploads")

    # After drain, the runner's cleanup closes idle connections, Kafka (flush) and S3.
    await serve_until_signal(app, host=config.host, port=config.port, logger=log, server_options=server_options(config),
                             reuse_port=config.reuse_port, drain=drain, prestop=app[GATEWAY].prestop,
                             listening={"topic": config.topic, "bucket": config.s3.bucket,
                                        "keys_file": str(config.keys_file)})
    log.info("stopped")


def main() -> int:
    """Entry point: ``.venv/bin/python -m api.gateway``."""
    config = GatewayConfig.from_env()
    configure_logging(config.log_level, quiet=QUIET_LOGGERS)
    # uvloop: the event loop (server, S3 client, Kafka client) is a third of the CPU of a small upload.
    return run_service(lambda: serve(config), log, unreachable="cannot start: a dependency is unreachable",
                       loop_factory=uvloop_factory(log))


if __name__ == "__main__":
    sys.exit(main())
