"""Python operators whose bundles follow the job's lag (``flink_jobs.bundles``,
``dev.imgstream.flink.CatchUpBundles``): which operators get them, with which bundle times, and
when an operator counts as catching up. That the outputs do not change is
``tests/unit/test_flink_pipeline.py``'s (the mini-cluster with and without them)."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_flink_pipeline import host_process_restored

UPLOAD_PATH = ("clean, decide: exact", "decide: near", "decide: verdicts, windows", "cassandra: write steps")
CATCH_UP = "dev.imgstream.flink.CatchUpBundles"


def python_operators(**overrides):
    """``{operator name: (class, bundle time in ms)}`` of the Python operators of the whole job
    (uploads, Cassandra, deletions) as ``build`` wires it, nothing run."""
    from pyflink.common import Row, Types
    from pyflink.java_gateway import get_gateway

    from flink_jobs.config import PipelineConfig
    from flink_jobs.pipeline import build, environment, records_from_stream

    with host_process_restored():
        config = PipelineConfig(parallelism=2, **overrides)
        env, t_env = environment(config, jars=[])
        raw = env.from_collection([Row(b"{}", "t", 0, 0)], type_info=Types.ROW_NAMED(
            ["value", "topic", "partition", "offset"],
            [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG()]))
        deletions = env.from_collection(["{}"], type_info=Types.STRING())
        build(env, t_env, records_from_stream(t_env, raw, config), config, write=True, deletions=deletions)
        jvm = get_gateway().jvm
        bundle_time = jvm.org.apache.flink.python.PythonOptions.MAX_BUNDLE_TIME_MILLS
        util = jvm.org.apache.flink.python.util.PythonConfigUtil
        found = {}
        for transformation in env._j_stream_execution_environment.getTransformations():
            if util.isPythonDataStreamOperator(transformation):
                operator = util.getOperatorFactory(transformation).getOperator()
                found[transformation.getName()] = (operator.getClass().getName(),
                                                   operator.getConfiguration().get(bundle_time))
        return found


def test_the_upload_paths_python_operators_run_catch_up_bundles_and_the_deletions_do_not():
    """By default the four Python operators an upload passes are ``CatchUpBundles``'s, configured
    with the long bundle time (PyFlink's own timer; the live one is theirs); the deletion branch,
    which has no event time to lag by, keeps PyFlink's operator and the live bundle time."""
    found = python_operators()
    for name in UPLOAD_PATH:
        cls, bundle_ms = found[name]
        assert cls.startswith(CATCH_UP + "$"), (name, cls)
        assert bundle_ms == 1_000, (name, bundle_ms)
    cls, bundle_ms = found["cassandra: apply deletions"]
    assert not cls.startswith(CATCH_UP) and bundle_ms == 100


def test_catch_up_bundle_time_0_gives_pyflinks_own_operators():
    found = python_operators(python_catchup_bundle_time_ms=0)
    assert set(UPLOAD_PATH) <= set(found)
    assert all(not cls.startswith(CATCH_UP) and bundle_ms == 100 for cls, bundle_ms in found.values()), found


def test_the_catch_up_bundle_time_is_the_one_configured():
    found = python_operators(python_catchup_bundle_time_ms=2_500, python_bundle_time_ms=250)
    assert {found[name][1] for name in UPLOAD_PATH} == {2_500}
    assert found["cassandra: apply deletions"][1] == 250


@pytest.mark.parametrize("overrides, message", [
    ({"python_catchup_bundle_time_ms": 50}, "python_catchup_bundle_time_ms must be 0 (off) or at least"),
    ({"python_catchup_bundle_time_ms": 400, "python_bundle_time_ms": 500}, "at least python_bundle_time_ms (500)"),
    ({"python_catchup_lag_ms": 0}, "python_catchup_lag_ms must be at least 1"),
    ({"python_catchup_lag_ms": -30_000}, "python_catchup_lag_ms must be at least 1"),
])
def test_bad_catch_up_settings_are_refused_when_the_config_is_built(overrides, message):
    from flink_jobs.config import PipelineConfig

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PipelineConfig(**overrides)


def test_an_operator_is_catching_up_only_past_the_lag_after_a_watermark():
    """``CatchUpBundles.catchingUp``, the JVM's own: no watermark yet (``Long.MIN_VALUE``) and
    the end of input (``Long.MAX_VALUE``) are not catching up; otherwise exactly when the
    watermark is more than the lag behind the wall clock (a watermark ahead of it is live)."""
    from pyflink.java_gateway import get_gateway

    from flink_jobs.config import PipelineConfig
    from flink_jobs.pipeline import environment

    low, high, now, lag = -(2**63), 2**63 - 1, 1_764_950_400_000, 30_000
    with host_process_restored():
        environment(PipelineConfig(), jars=[])  # loads the job's operators into this gateway
        catching_up = get_gateway().jvm.dev.imgstream.flink.CatchUpBundles.catchingUp
        cases = {low: False, high: False, now: False, now + 5_000: False, now - lag: False,
                 now - lag - 1: True, now - 3_600_000: True, 0: True}
        got = {mark: catching_up(now, mark, lag) for mark in cases}
    assert got == cases, json.dumps({str(k): v for k, v in got.items()})


def test_the_jvm_refuses_a_catch_up_time_below_the_live_one_and_a_lag_below_1ms():
    """``CatchUpBundles.of`` checks what it is given, whoever calls it (a config built another
    way than ``PipelineConfig``, a later caller)."""
    from py4j.protocol import Py4JJavaError
    from pyflink.common import Types
    from pyflink.datastream import ProcessFunction
    from pyflink.datastream.data_stream import _get_one_input_stream_operator
    from pyflink.fn_execution.flink_fn_execution_pb2 import UserDefinedDataStreamFunction as Kinds
    from pyflink.java_gateway import get_gateway

    from flink_jobs.config import PipelineConfig
    from flink_jobs.pipeline import environment

    class Identity(ProcessFunction):
        def process_element(self, value, ctx):
            yield value

    with host_process_restored():
        env, _ = environment(PipelineConfig(), jars=[])
        stream = env.from_collection(["a"], type_info=Types.STRING())
        operator, _ = _get_one_input_stream_operator(stream, Identity(), Kinds.PROCESS, Types.STRING())
        of = get_gateway().jvm.dev.imgstream.flink.CatchUpBundles.of
        with pytest.raises(Py4JJavaError, match="must be at least the live bundle time"):
            of(operator, 99, 30_000)
        with pytest.raises(Py4JJavaError, match="lagMs must be at least 1"):
            of(operator, 1_000, 0)
        wrapped = of(operator, 1_000, 30_000)
        assert wrapped.getClass().getName() == CATCH_UP + "$Plain"
        assert of(wrapped, 5_000, 1).equals(wrapped)  # already one: as it is
        assert operator.getConfiguration().get(
            get_gateway().jvm.org.apache.flink.python.PythonOptions.MAX_BUNDLE_TIME_MILLS) == 100  # not changed
