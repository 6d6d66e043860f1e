"""The local stack: every component, in start order, and the steps run around them.

The one list of what ``make up`` starts (``stackctl.py`` brings components up concurrently, each
once its ``depends`` are healthy; ``make down`` stops them in reverse order). Each component is
described in its own module of ``components/``; none of them imports this one.
"""

from __future__ import annotations

import demo
from component import Bootstrap, Component, StopStep
from components import cassandra, cassandra_cdc, connect, flink, kafka, pipeline, postgres, s3proxy, services

COMPONENTS: tuple[Component, ...] = (
    postgres.COMPONENT,
    s3proxy.COMPONENT,
    kafka.COMPONENT,
    cassandra.COMPONENT,
    flink.JOBMANAGER,
    flink.TASKMANAGER,
    connect.COMPONENT,
    cassandra_cdc.COMPONENT,
    services.GATEWAY,
    services.STATS_API,
    services.HEARTBEAT,
)

BY_NAME = {c.name: c for c in COMPONENTS}

#: Idempotent steps run after a component's own bootstrap, by component name: steps that belong
#: to another component's module (it needs this one healthy) or to no process at all.
BOOTSTRAP_HOOKS: dict[str, list[Bootstrap]] = {
    # After Cassandra's bootstrap applied the CQL scripts (new CDC tables), their topics must exist
    # before the Flink job writes them, whether or not the agent restarts.
    "cassandra": [cassandra_cdc.ensure_table_topics],
    # A few real sample images through the real gateway (idempotent: keyed uploads).
    "gateway": [demo.ingest],
    # The pipeline needs Kafka, Cassandra (schema applied) and a TaskManager: the heartbeat's deps.
    "heartbeat": [pipeline.submit],
}

#: Steps run before a running component is stopped by ``make down``.
STOP_HOOKS: dict[str, list[StopStep]] = {
    "flink-taskmanager": [pipeline.savepoint],  # needs a live TaskManager
}
