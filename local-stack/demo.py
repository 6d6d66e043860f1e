"""The demo ingest run at the end of ``make up``: real sample images through the real gateway.

Uploads scikit-image's bundled sample images (photos no one here drew) as producer ``demo``,
one request per file, with ``Idempotency-Key: demo-<file>`` so running ``make up`` again counts
nothing twice. Also sends two hostile files to show their error codes.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import aiohttp

from component import PORTS, Context

DEMO_PRODUCER = "demo"
DEMO_EXTENSIONS = (".png", ".jpg", ".gif", ".tif")
#: Enough images to see stats and a duplicate or two, few enough to keep `make up` quick.
MAX_DEMO_IMAGES = 24


def sample_images() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return sorted(p for p in data.iterdir() if p.suffix in DEMO_EXTENSIONS)[:MAX_DEMO_IMAGES]


async def ingest(ctx: Context) -> None:
    from imgstream.domain.tokens import KeyRing

    ring = KeyRing.load(ctx.paths.secrets / "token-keys.json")
    token = ring.issue(DEMO_PRODUCER, "producer", ttl=timedelta(minutes=10))
    url = f"http://127.0.0.1:{PORTS['gateway']}/v1/images"
    counts: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for path in sample_images():
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"demo-{path.name}",
                       "Content-Type": "application/octet-stream"}
            async with http.post(url, data=path.read_bytes(), headers=headers) as resp:
                key = str(resp.status)
                if resp.status >= 300:
                    error = (await resp.json()).get("error", {})
                    key = f"{resp.status} {error.get('code', '?')} ({path.name})"
                counts[key] = counts.get(key, 0) + 1
        hostile = {"not-an-image.jpg": b"hello, I am text", "script.svg": b"<svg onload='alert(1)'/>"}
        for name, body in hostile.items():
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
            async with http.post(url, data=body, headers=headers) as resp:
                payload = await resp.json()
                code = payload.get("error", {}).get("code", "?")
                counts[f"{resp.status} {code}"] = counts.get(f"{resp.status} {code}", 0) + 1
    summary = ", ".join(f"{n} x {status}" for status, n in sorted(counts.items()))
    print(f"  demo     uploaded {len(sample_images())} sample images as producer '{DEMO_PRODUCER}': {summary}",
          flush=True)
