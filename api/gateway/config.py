"""Gateway configuration: named limits with their reasons, and a frozen config read once from env."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Mapping

from api.gateway.decoding import DECODE_MEMORY_BYTES
from imgstream.config import CassandraConfig, ConfigReader, KafkaConfig, S3Config
from imgstream.cpus import usable_cpus
from imgstream.domain.events import TOPIC_DELETED, TOPIC_UPLOADED
from imgstream.domain.imaging import MAX_PIXELS
from imgstream.domain.tus import UPLOAD_EXPIRY
from imgstream.domain.tokens import DEFAULT_KEYS_FILE, keys_file_from_env

#: Largest single image body. A 48 MP phone JPEG at maximum quality is about 20 MB; nothing a camera
#: or phone produces as a still image is larger, while every byte admitted occupies a spool file
#: and a decode worker. Bigger bodies are mistakes (video, RAW) or abuse.
MAX_UPLOAD_BYTES: Final = 25 * 1024 * 1024

#: Largest multipart request body (sum of its parts). Four maximum-size images or dozens of
#: ordinary ones; caps how long one request can hold a connection and a worker.
MAX_REQUEST_BYTES: Final = 100 * 1024 * 1024

#: Most parts in one multipart request. Enough to amortise a request's overhead over a batch of
#: phone photos, few enough that one slow batch cannot monopolise the decode workers; every part
#: gets its own receipt or error, so the response stays readable.
MAX_PARTS: Final = 32

#: Bodies up to this size stay in memory while spooled; larger ones go to a temporary file. 1 MiB
#: holds a typical web image whole, and bounds memory to 1 MiB per in-flight upload.
SPOOL_MEMORY_BYTES: Final = 1024 * 1024

#: A client that sends nothing for this long is stalled or hostile (slowloris); its connection and
#: spool are released. Mobile networks stall for seconds, not tens of seconds.
IDLE_READ_TIMEOUT: Final = 15.0

#: Whole-body deadline: MAX_UPLOAD_BYTES at ~2 Mbit/s, a slow but honest uplink, takes about 100 s.
REQUEST_TIMEOUT: Final = 120.0

#: On SIGTERM, in-flight uploads get this long to finish before they are cancelled; below the
#: usual 30-60 s grace period of process supervisors and Kubernetes.
SHUTDOWN_TIMEOUT: Final = 25.0

#: Uploads one gateway process handles at once; past it, new uploads get 503 + Retry-After from
#: their headers alone (before "100 Continue", so no body is sent). Each may hold 1 MiB of spool in
#: memory and up to 25 MiB on disk: 64 x 25 MiB = 1.6 GiB fits the pod's 2 GiB spool volume, and
#: 64 is far above what two cores keep busy (~12 uploads in flight at 5 MB, docs/gateway.md).
MAX_CONCURRENT_UPLOADS: Final = 64

#: On SIGTERM, the gateway first fails /readyz and keeps serving for this long, so load balancers
#: stop routing to it before it stops listening (readiness probes and endpoint updates take a few
#: seconds to reach every proxy); then in-flight uploads drain for up to SHUTDOWN_TIMEOUT. For
#: platforms without a pre-stop hook: Kubernetes uses its preStop sleep instead and sets 0
#: (k8s/base/gateway/deployment.yaml), as does the local stack, which has no load balancer.
PRESTOP_DELAY: Final = 10.0

#: Resumable uploads: seconds without a PATCH before an upload expires (its parts are aborted), and
#: how often each gateway looks for expired ones. Why a day: imgstream/domain/tus.py UPLOAD_EXPIRY.
UPLOAD_EXPIRY_SECONDS: Final = int(UPLOAD_EXPIRY.total_seconds())
#: Every 5 minutes: an expired upload then holds its parts at most that much longer; sweeping lists
#: the uploads/ prefix, so it is not done per request.
UPLOAD_SWEEP_INTERVAL: Final = 300.0

#: After an early error (413/415 mid-body) the server keeps reading and discarding for at most this
#: long, so a client still sending can read the error instead of a connection reset; it bounds
#: what an over-limit body can make us read.
LINGER_SECONDS: Final = 1.0

#: Per-producer rate limit per gateway instance: sustained images/s and burst. Set well under
#: one instance's measured capacity (docs/gateway.md), so one producer cannot starve the others.
RATE_PER_SECOND: Final = 50.0
RATE_BURST: Final = 100.0

#: Read size from the socket: large enough that hashing and scanning run in few, big C calls.
READ_CHUNK: Final = 256 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs, built once by :meth:`from_env` at the entry point."""

    host: str = "127.0.0.1"
    port: int = 8080
    s3: S3Config = field(default_factory=S3Config)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topic: str = TOPIC_UPLOADED
    #: Where deletions are published (``image.deleted``, keyed by image_id).
    deleted_topic: str = TOPIC_DELETED
    #: Read for one thing: an image's owner, on DELETE (api/gateway/owners.py).
    cassandra: CassandraConfig = field(default_factory=CassandraConfig)
    keys_file: Path = DEFAULT_KEYS_FILE
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_parts: int = MAX_PARTS
    max_pixels: int = MAX_PIXELS
    spool_memory_bytes: int = SPOOL_MEMORY_BYTES
    spool_dir: str | None = None
    idle_read_timeout: float = IDLE_READ_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    shutdown_timeout: float = SHUTDOWN_TIMEOUT
    linger_seconds: float = LINGER_SECONDS
    rate_per_second: float = RATE_PER_SECOND
    rate_burst: float = RATE_BURST
    inspect_workers: int = 2
    max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS
    prestop_delay: float = PRESTOP_DELAY
    decode_memory_bytes: int = DECODE_MEMORY_BYTES
    upload_expiry: float = UPLOAD_EXPIRY_SECONDS
    upload_sweep_interval: float = UPLOAD_SWEEP_INTERVAL
    gateway_id: str = "gateway"
    ensure_topic: bool = True
    topic_partitions: int = 3
    ensure_bucket: bool = True
    s3_checksum: bool = True
    reuse_port: bool = False
    startup_timeout: float = 60.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, prefix: str = "IMGSTREAM_GATEWAY_") -> "GatewayConfig":
        """Read ``IMGSTREAM_GATEWAY_*`` (plus the shared ``IMGSTREAM_S3_*``, ``IMGSTREAM_KAFKA_*``,
        ``IMGSTREAM_CASSANDRA_*`` and ``IMGSTREAM_TOKEN_KEYS_FILE``); every variable is optional except the S3 credentials."""
        env = os.environ if env is None else env
        read = ConfigReader(env, prefix)
        port = read.integer("PORT", cls.port)
        return cls(
            host=read.text("HOST", cls.host),
            port=port,
            s3=S3Config.from_env(env),
            kafka=KafkaConfig.from_env(env),
            topic=read.text("TOPIC", cls.topic),
            deleted_topic=read.text("DELETED_TOPIC", cls.deleted_topic),
            cassandra=CassandraConfig.from_env(env),
            keys_file=keys_file_from_env(env),
            max_upload_bytes=read.integer("MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_request_bytes=read.integer("MAX_REQUEST_BYTES", cls.max_request_bytes),
            max_parts=read.integer("MAX_PARTS", cls.max_parts),
            max_pixels=read.integer("MAX_PIXELS", cls.max_pixels),
            spool_memory_bytes=read.integer("SPOOL_MEMORY_BYTES", cls.spool_memory_bytes),
            spool_dir=read.optional("SPOOL_DIR"),
            idle_read_timeout=read.number("IDLE_TIMEOUT", cls.idle_read_timeout),
            request_timeout=read.number("REQUEST_TIMEOUT", cls.request_timeout),
            shutdown_timeout=read.number("SHUTDOWN_TIMEOUT", cls.shutdown_timeout),
            linger_seconds=read.number("LINGER_SECONDS", cls.linger_seconds),
            rate_per_second=read.number("RATE", cls.rate_per_second),
            rate_burst=read.number("BURST", cls.rate_burst),
            inspect_workers=read.integer("WORKERS", usable_cpus()),
            max_concurrent_uploads=read.integer("MAX_CONCURRENT_UPLOADS", cls.max_concurrent_uploads),
            prestop_delay=read.number("PRESTOP_DELAY", cls.prestop_delay),
            decode_memory_bytes=read.integer("DECODE_MEMORY_BYTES", cls.decode_memory_bytes),
            upload_expiry=read.number("UPLOAD_EXPIRY", cls.upload_expiry),
            upload_sweep_interval=read.number("UPLOAD_SWEEP_INTERVAL", cls.upload_sweep_interval),
            gateway_id=read.text("ID", f"{socket.gethostname()}:{port}"),
            ensure_topic=read.flag("ENSURE_TOPIC", cls.ensure_topic),
            topic_partitions=read.integer("TOPIC_PARTITIONS", cls.topic_partitions),
            ensure_bucket=read.flag("ENSURE_BUCKET", cls.ensure_bucket),
            s3_checksum=read.flag("S3_CHECKSUM", cls.s3_checksum),
            reuse_port=read.flag("REUSE_PORT", cls.reuse_port),
            startup_timeout=read.number("STARTUP_TIMEOUT", cls.startup_timeout),
            log_level=read.text("LOG_LEVEL", cls.log_level).upper(),
        )
