"""The pure domain: events, errors, hashing, dedup, cleaning, windows, imaging, tokens, keys.

Nothing here imports a framework or a client library (no aiohttp, aiokafka, aiobotocore,
cassandra, asyncpg, pyflink, pyspark): the standard library, numpy and Pillow only, so every
module loads alike on a Flink worker, a Spark executor, a gateway and a unit test.
``tests/unit/test_layout.py`` enforces this by parsing the imports.
"""
