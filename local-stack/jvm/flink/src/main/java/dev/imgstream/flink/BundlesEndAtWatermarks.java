/*
 * imgstream: PyFlink's Python operators, but their bundles end when a watermark arrives.
 */
package dev.imgstream.flink;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.streaming.api.functions.python.DataStreamPythonFunctionInfo;
import org.apache.flink.streaming.api.operators.python.DataStreamPythonFunctionOperator;
import org.apache.flink.streaming.api.operators.python.process.AbstractExternalDataStreamPythonFunctionOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonKeyedProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonProcessOperator;
import org.apache.flink.streaming.api.watermark.Watermark;

/**
 * PyFlink's process-mode Python operators with one change: a watermark ends the open bundle at
 * once, instead of waiting for it to end by time.
 *
 * <p>A Python operator sends its input to the Python worker in bundles; a bundle ends after
 * {@code python.fn-execution.bundle.time}, after {@code bundle.size} elements and at each
 * checkpoint - each end a synchronous round trip in which the task waits and the worker commits
 * its state. A watermark that meets an open bundle is held until that bundle ends (PyFlink's
 * {@code AbstractPythonFunctionOperator.processWatermark} trades latency for throughput), and
 * then ends another bundle for the timers it fires. So the bundle time sets both the latency each
 * Python operator adds and how many bundles end: 100 ms bundles add little latency but end ten
 * times a second per operator, 1 s bundles end once a second but add up to a second per operator.
 *
 * <p>Ending the bundle when the watermark arrives gives the latency of the shortest bundles (no
 * wait at all) with bundles only as frequent as watermarks, and the bundle time can be long. In
 * this job nearly all input arrives just before a watermark (batches made at each watermark
 * upstream), so little waits in a bundle either way. The order of results and watermarks is the
 * one PyFlink guarantees: everything of the bundle is out before the watermark advances the
 * timers and passes on.
 */
public final class BundlesEndAtWatermarks {

    private BundlesEndAtWatermarks() {}

    /**
     * The operator PyFlink built ({@code ExternalPythonKeyedProcessOperator} for a keyed stream's
     * {@code process}, {@code ExternalPythonProcessOperator} for a stream's {@code process},
     * {@code map}, {@code flat_map}...) as the same operator whose bundles end at watermarks.
     */
    @SuppressWarnings({"rawtypes", "unchecked"})
    public static DataStreamPythonFunctionOperator<?> of(DataStreamPythonFunctionOperator<?> operator) {
        if (operator instanceof Keyed || operator instanceof Plain) {
            return operator;
        }
        if (operator instanceof ExternalPythonKeyedProcessOperator) {
            ExternalPythonKeyedProcessOperator keyed = (ExternalPythonKeyedProcessOperator) operator;
            return new Keyed(keyed.getConfiguration(), keyed.getPythonFunctionInfo(),
                    (RowTypeInfo) keyed.getInputTypeInfo(), keyed.getProducedType());
        }
        if (operator instanceof ExternalPythonProcessOperator) {
            ExternalPythonProcessOperator plain = (ExternalPythonProcessOperator) operator;
            return new Plain(plain.getConfiguration(), plain.getPythonFunctionInfo(),
                    plain.getInputTypeInfo(), plain.getProducedType());
        }
        throw new IllegalArgumentException(
                "not a process-mode Python operator of PyFlink's DataStream API: " + operator.getClass().getName());
    }

    /** A keyed {@code process}: its timers fire after the bundle's results are out, as before. */
    public static final class Keyed<OUT> extends ExternalPythonKeyedProcessOperator<OUT> {

        private static final long serialVersionUID = 1L;

        Keyed(org.apache.flink.configuration.Configuration config, DataStreamPythonFunctionInfo function,
                RowTypeInfo input, TypeInformation<OUT> output) {
            super(config, function, input, output);
        }

        @Override
        public void processWatermark(Watermark mark) throws Exception {
            invokeFinishBundle();
            super.processWatermark(mark);
        }

        /** PyFlink's chaining of Python operators copies them; the copy keeps the behaviour. */
        @Override
        public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(
                DataStreamPythonFunctionInfo function, TypeInformation<T> output) {
            return new Keyed<>(config, function, (RowTypeInfo) getInputTypeInfo(), output);
        }
    }

    /** A stream's (not keyed) {@code process}, {@code map}, {@code flat_map}. */
    public static final class Plain<IN, OUT> extends ExternalPythonProcessOperator<IN, OUT> {

        private static final long serialVersionUID = 1L;

        Plain(org.apache.flink.configuration.Configuration config, DataStreamPythonFunctionInfo function,
                TypeInformation<IN> input, TypeInformation<OUT> output) {
            super(config, function, input, output);
        }

        @Override
        public void processWatermark(Watermark mark) throws Exception {
            invokeFinishBundle();
            super.processWatermark(mark);
        }

        /** PyFlink's chaining of Python operators copies them; the copy keeps the behaviour. */
        @Override
        public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(
                DataStreamPythonFunctionInfo function, TypeInformation<T> output) {
            return new Plain<>(config, function, getInputTypeInfo(), output);
        }
    }
}
