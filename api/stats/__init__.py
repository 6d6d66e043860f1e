"""The stats API: the analysts' numbers over HTTP (aiohttp + asyncpg over the analytics views)."""
