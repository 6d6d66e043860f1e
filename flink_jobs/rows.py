"""Row types at the job's typed boundaries (Kafka/Table <-> DataStream).

Between Python operators records are plain pickled dicts; where a stream meets the Table API
or a Java operator it must be typed, and these are those types.
"""

from __future__ import annotations

from pyflink.common import Types

#: A raw Kafka record: value bytes and its coordinates (the record timestamp travels as the
#: stream record's timestamp).
RAW_FIELDS = ["value", "topic", "partition", "offset"]
RAW_TYPE = Types.ROW_NAMED(
    RAW_FIELDS,
    [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG()],
)
