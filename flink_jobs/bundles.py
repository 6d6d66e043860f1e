"""Python operators whose bundles follow the job's lag (``dev.imgstream.flink.CatchUpBundles``).

A Python operator hands its input to its worker in bundles. Each bundle's end is a synchronous
round trip in which the task waits and the worker commits its state, and a watermark that
meets an open bundle waits for it: the bundle time is latency added at every Python operator
on the path, and its ends are CPU (~0.16 ms of Python per event at 100 ms against 1 s bundles in
a backlog, docs/flink-jobs.md). Live, the status of an upload needs the short bundles; catching
up on a backlog, no one waits for a verdict that is late already, and the long bundles clear
the backlog sooner. :func:`python_process` builds the upload path's Python operators as
PyFlink's own with that one change; what a stage computes does not depend on where bundles end
(the mini-cluster tests compare both).
"""

from __future__ import annotations

from pyflink.common import TypeInformation
from pyflink.datastream import DataStream, KeyedStream
from pyflink.datastream.functions import KeyedProcessFunction, ProcessFunction
from pyflink.java_gateway import get_gateway

from flink_jobs.config import PipelineConfig


def python_process(
    stream: DataStream,
    function: ProcessFunction | KeyedProcessFunction,
    output_type: TypeInformation | None,
    config: PipelineConfig,
) -> DataStream:
    """``stream.process(function, output_type)``, as PyFlink builds it; with
    ``config.python_catchup_bundle_time_ms`` (not 0) its operator runs bundles of that length
    while its input watermark lags the wall clock by more than ``config.python_catchup_lag_ms``,
    and ``python_bundle_time_ms`` otherwise. Uses PyFlink's operator factory as ``process`` does
    (apache-flink is pinned; ``tests/unit/test_flink_bundles.py`` checks the operators)."""
    if not config.python_catchup_bundle_time_ms:
        return stream.process(function, output_type)
    from pyflink.datastream.data_stream import _get_one_input_stream_operator
    from pyflink.fn_execution.flink_fn_execution_pb2 import UserDefinedDataStreamFunction as Kinds

    keyed = isinstance(stream, KeyedStream)
    kind = Kinds.KEYED_PROCESS if keyed else Kinds.PROCESS
    j_operator, j_output_type = _get_one_input_stream_operator(stream, function, kind, output_type)
    j_operator = get_gateway().jvm.dev.imgstream.flink.CatchUpBundles.of(
        j_operator, config.python_catchup_bundle_time_ms, config.python_catchup_lag_ms)
    return DataStream(stream._j_data_stream.transform("KEYED PROCESS" if keyed else "PROCESS", j_output_type, j_operator))
