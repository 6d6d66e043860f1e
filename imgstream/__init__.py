"""imgstream: a streaming image platform built around Apache Flink.

This package is the shared library: pure domain logic (events, hashing, dedup, cleaning,
windows, errors) plus thin adapters to Kafka, S3, Cassandra and PostgreSQL. Deployables
(`api/`, `flink_jobs/`, `local-stack/`) import it; it never imports them.
"""

__version__ = "0.1.0"
