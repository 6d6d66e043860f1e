"""Fields at the job's typed boundary (Kafka/Table -> DataStream).

Between Python operators records are plain pickled dicts; the raw Kafka rows the SQL source
hands over are the one typed stream, and these are its fields.
"""

from __future__ import annotations

#: A raw Kafka record: value bytes and its coordinates (the record timestamp travels as the
#: stream record's timestamp).
RAW_FIELDS = ["value", "topic", "partition", "offset"]
