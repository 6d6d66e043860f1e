"""s3proxy (filesystem backend) as the stack's S3: the bucket created once ``ListBuckets``
answers with the stack's credentials."""

from __future__ import annotations

import os

from imgstream.adapters.s3 import S3ObjectStore

import health
from component import PORTS, Component, Context, render

S3PROXY_HEAP = "512m"


def prepare(ctx: Context) -> None:
    data = ctx.paths.data / "s3"
    data.mkdir(parents=True, exist_ok=True)
    conf = render("s3proxy.conf", ctx.paths.conf / "s3" / "s3proxy.conf", {
        "s3_port": PORTS["s3"], "s3_access_key": "imgstream", "s3_secret_key": ctx.s3_secret, "data_dir": data,
    })
    os.chmod(conf, 0o600)


def argv(ctx: Context) -> list[str]:
    jars = sorted((ctx.paths.lib / "s3proxy").glob("s3proxy-*.jar"))
    if not jars:
        raise RuntimeError("s3proxy jar missing: run `make jars`")
    return [ctx.java, f"-Xmx{S3PROXY_HEAP}", "-XX:+UseSerialGC", "-jar", str(jars[-1]),
            "--properties", str(ctx.paths.conf / "s3" / "s3proxy.conf")]


async def bootstrap(ctx: Context) -> None:
    """The images bucket, unless it exists."""
    store = S3ObjectStore(ctx.config.s3, max_pool_connections=1)
    try:
        await store.start()
        await store.ensure_bucket()
    finally:
        await store.close()


async def check(ctx: Context) -> str | None:
    return await health.s3(ctx.config)


COMPONENT = Component(
    "s3", (PORTS["s3"],), f"http://127.0.0.1:{PORTS['s3']}", S3PROXY_HEAP, argv, check, prepare, bootstrap,
    start_timeout=90,
)
