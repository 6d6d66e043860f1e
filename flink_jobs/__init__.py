"""PyFlink jobs of imgstream: deployables that wire the pure logic in :mod:`imgstream`.

* :mod:`flink_jobs.pipeline` - clean -> replay drop -> exact/near dedup -> windowed stats,
  writing Cassandra (images, duplicates, upload_stats, late_events) and the dead-letter topic.
* :mod:`flink_jobs.passthrough` - Kafka -> Kafka copy, the throughput baseline for ``bench/``.

Each job module exposes ``build(...)`` (wiring only, testable on a bounded source) and
``main()`` (reads config, runs). See ``docs/flink-jobs.md``.
"""
