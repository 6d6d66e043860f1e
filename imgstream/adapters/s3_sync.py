"""A synchronous S3 adapter (botocore) for callers without an event loop: Spark executors, tools.

Same configuration and options as :class:`imgstream.adapters.s3.S3ObjectStore` (path-style
addressing, checksums only when required, so s3proxy and other S3 look-alikes accept it), same
:class:`~imgstream.adapters.s3.ObjectInfo`. Failures to reach the store raise
:class:`~imgstream.domain.errors.Unavailable`; a missing object is ``None``, never an exception.

Why not Spark's s3a: it needs ``hadoop-aws`` matching the wheel's Hadoop plus a 641 MB AWS SDK
bundle on every executor, and the jobs here work per object anyway (decode, hash, copy), so one
pooled botocore client per Python worker does the same with nothing added (docs/batch.md).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final, Iterator, Mapping, Sequence

from imgstream.adapters.s3 import ObjectInfo
from imgstream.config import S3Config
from imgstream.domain.errors import Unavailable

#: S3's DeleteObjects accepts at most 1,000 keys per request.
MAX_DELETE_BATCH: Final = 1000


def _missing(exc: Any) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class SyncObjectStore:
    """Blocking S3 client: put/get/head/copy/delete/delete_many/list on one bucket.

    Thread-safe (botocore clients are); create one per process and reuse it.
    """

    def __init__(self, config: S3Config, *, max_pool_connections: int = 16, connect_timeout: float = 5.0,
                 read_timeout: float = 60.0) -> None:
        from botocore.config import Config
        from botocore.session import get_session

        self.config = config
        self.bucket = config.bucket
        self.client: Any = get_session().create_client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            # Empty keys: botocore's default chain (an EMR job role, an instance profile).
            aws_access_key_id=str(config.access_key) or None,
            aws_secret_access_key=str(config.secret_key) or None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=max_pool_connections,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    def __repr__(self) -> str:
        return f"SyncObjectStore(endpoint={self.config.endpoint_url!r}, bucket={self.bucket!r})"

    def close(self) -> None:
        self.client.close()

    def _call(self, action: str, method: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, **params)
        except ClientError as exc:
            if _missing(exc):
                raise
            error = exc.response.get("Error", {})
            raise Unavailable(f"object store {action} failed: {error.get('Code')} {error.get('Message', '')}".strip(),
                              dependency="s3") from exc
        except (BotoCoreError, OSError) as exc:
            raise Unavailable(f"object store {action} failed: {exc}", dependency="s3") from exc

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None) -> None:
        """Store ``data`` under ``key``; returns once the server acknowledged it (MD5-checked)."""
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        self._call(f"put {key}", "put_object", Key=key, Body=data, ContentType=content_type,
                   ContentMD5=md5, Metadata=dict(metadata or {}))

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            answer = self._call(f"get {key}", "get_object", Key=key)
        except ClientError:
            return None
        body = answer["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            answer = self._call(f"head {key}", "head_object", Key=key)
        except ClientError:
            return None
        return ObjectInfo(key=key, size=int(answer.get("ContentLength", 0)), etag=answer.get("ETag", ""),
                          content_type=answer.get("ContentType", ""), metadata=answer.get("Metadata", {}),
                          last_modified=answer.get("LastModified"))

    def copy(self, source: str, target: str) -> bool:
        """Server-side copy (objects up to 5 GB, far above any upload limit here). ``False`` if
        ``source`` does not exist."""
        from botocore.exceptions import ClientError

        try:
            self._call(f"copy {source} -> {target}", "copy_object", Key=target,
                       CopySource={"Bucket": self.bucket, "Key": source}, MetadataDirective="COPY")
        except ClientError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", "delete_object", Key=key)

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        """Delete ``keys`` in DeleteObjects batches of at most :data:`MAX_DELETE_BATCH`.

        Returns key -> error code for keys the server refused (absent keys count as deleted).
        """
        failed: dict[str, str] = {}
        for start in range(0, len(keys), MAX_DELETE_BATCH):
            batch = keys[start:start + MAX_DELETE_BATCH]
            answer = self._call(f"delete {len(batch)} keys", "delete_objects",
                                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            for error in answer.get("Errors", []):
                failed[error["Key"]] = error.get("Code", "unknown")
        return failed

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (paginated, 1,000 per request)."""
        paginator = self.client.get_paginator("list_objects_v2")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"], size=int(item.get("Size", 0)), etag=item.get("ETag", ""),
                                     last_modified=item.get("LastModified"))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise Unavailable(f"object store list {prefix!r} failed: {exc}", dependency="s3") from exc
