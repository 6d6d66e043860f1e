/*
 * imgstream: PyFlink's Python operators, with longer bundles while the job catches up on a backlog.
 */
package dev.imgstream.flink;

import java.util.concurrent.ScheduledFuture;
import java.util.function.LongSupplier;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.metrics.Gauge;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.python.PythonOptions;
import org.apache.flink.streaming.api.functions.python.DataStreamPythonFunctionInfo;
import org.apache.flink.streaming.api.operators.python.DataStreamPythonFunctionOperator;
import org.apache.flink.streaming.api.operators.python.process.AbstractExternalDataStreamPythonFunctionOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonKeyedProcessOperator;
import org.apache.flink.streaming.api.operators.python.process.ExternalPythonProcessOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.tasks.ProcessingTimeService;

/**
 * PyFlink's process-mode Python operators whose bundle time follows the job's lag: the short
 * {@code python.fn-execution.bundle.time} while the input watermark is within {@code lagMs} of the
 * wall clock (live: someone waits for each verdict), a long one while it is further behind
 * (catching up on a backlog: no one waits for a verdict that is minutes late already, and the
 * sooner the backlog is gone, the sooner verdicts are live again).
 *
 * <p>Why: a Python operator sends its input to its worker in bundles, and each bundle's end is a
 * synchronous round trip in which the task waits and the worker commits its state. A watermark
 * that meets an open bundle is held until that bundle ends (PyFlink's
 * {@code AbstractPythonFunctionOperator.processWatermark}), so the bundle time is latency added at
 * every Python operator on the path: short bundles keep the status of an upload within seconds,
 * but in a backlog their ends cost ~0.16 ms of Python CPU per event against 1 s bundles (measured,
 * docs/flink-jobs.md).
 *
 * <p>Nothing a stage computes depends on where bundles end: a bundle's results are out before the
 * watermark it held passes on, and state is committed at each bundle's end and at each checkpoint,
 * whatever the bundle time. Only how often that happens changes.
 *
 * <p>How: the operator keeps PyFlink's own timer, set to the long bundle time, and adds one at the
 * short bundle time that ends the open bundle only while the job is live. A bundle also ends, as in
 * PyFlink's, after {@code bundle.size} elements, at each checkpoint and at the end of the input.
 * Gauge {@code catchingUp}: 1 while the operator runs its long bundles.
 */
public final class CatchUpBundles {

    private CatchUpBundles() {}

    /**
     * Whether an operator whose input watermark is {@code watermark} at wall-clock time {@code now}
     * is catching up: it has seen a watermark, and it is more than {@code lagMs} behind.
     */
    public static boolean catchingUp(long now, long watermark, long lagMs) {
        return watermark != Long.MIN_VALUE && watermark != Long.MAX_VALUE && now - watermark > lagMs;
    }

    /**
     * The operator PyFlink built ({@code ExternalPythonKeyedProcessOperator} for a keyed stream's
     * {@code process}, {@code ExternalPythonProcessOperator} for a stream's {@code process}), as the
     * same operator with bundles of {@code catchUpBundleMs} while it lags the wall clock by more than
     * {@code lagMs}; its own configured bundle time stays the live one.
     */
    @SuppressWarnings({"rawtypes", "unchecked"})
    public static DataStreamPythonFunctionOperator<?> of(
            DataStreamPythonFunctionOperator<?> operator, long catchUpBundleMs, long lagMs) {
        if (operator instanceof Keyed || operator instanceof Plain) {
            return operator;
        }
        if (lagMs < 1) {
            throw new IllegalArgumentException("lagMs must be at least 1, got " + lagMs);
        }
        if (operator instanceof ExternalPythonKeyedProcessOperator) {
            ExternalPythonKeyedProcessOperator keyed = (ExternalPythonKeyedProcessOperator) operator;
            Timing timing = Timing.of(keyed.getConfiguration(), catchUpBundleMs, lagMs);
            return new Keyed(timing, keyed.getPythonFunctionInfo(), (RowTypeInfo) keyed.getInputTypeInfo(),
                    keyed.getProducedType());
        }
        if (operator instanceof ExternalPythonProcessOperator) {
            ExternalPythonProcessOperator plain = (ExternalPythonProcessOperator) operator;
            Timing timing = Timing.of(plain.getConfiguration(), catchUpBundleMs, lagMs);
            return new Plain(timing, plain.getPythonFunctionInfo(), plain.getInputTypeInfo(), plain.getProducedType());
        }
        throw new IllegalArgumentException(
                "not a process-mode Python operator of PyFlink's DataStream API: " + operator.getClass().getName());
    }

    /** The two bundle times and the lag, and the configuration PyFlink's operator gets (the long time). */
    static final class Timing implements java.io.Serializable {

        private static final long serialVersionUID = 1L;

        final Configuration config;
        final long liveBundleMs;
        final long lagMs;

        private Timing(Configuration config, long liveBundleMs, long lagMs) {
            this.config = config;
            this.liveBundleMs = liveBundleMs;
            this.lagMs = lagMs;
        }

        static Timing of(Configuration original, long catchUpBundleMs, long lagMs) {
            long live = original.get(PythonOptions.MAX_BUNDLE_TIME_MILLS);
            if (catchUpBundleMs < live) {
                throw new IllegalArgumentException("catchUpBundleMs (" + catchUpBundleMs
                        + ") must be at least the live bundle time python.fn-execution.bundle.time (" + live + ")");
            }
            Configuration config = new Configuration(original);
            config.set(PythonOptions.MAX_BUNDLE_TIME_MILLS, catchUpBundleMs);
            return new Timing(config, live, lagMs);
        }
    }

    /** Ends the operator's open bundle (its {@code invokeFinishBundle}). */
    @FunctionalInterface
    interface BundleEnd {
        void run() throws Exception;
    }

    /**
     * What both operators add to PyFlink's: the input watermark they last saw and the timer that
     * ends a live bundle after the live bundle time.
     */
    private static final class Pacer {

        private final Timing timing;
        private long watermark = Long.MIN_VALUE;
        private ScheduledFuture<?> timer;

        private Pacer(Timing timing) {
            this.timing = timing;
        }

        /**
         * A pacer whose timer, every live bundle time, ends the open bundle ({@code end}) while the
         * operator is live; the gauge {@code catchingUp} says which bundles it runs.
         */
        static Pacer started(Timing timing, ProcessingTimeService time, MetricGroup metrics, LongSupplier lastFinish,
                BundleEnd end) {
            Pacer pacer = new Pacer(timing);
            metrics.gauge("catchingUp", (Gauge<Integer>) () -> pacer.catchingUp(time.getCurrentProcessingTime()) ? 1 : 0);
            pacer.timer = time.scheduleAtFixedRate(now -> {
                if (pacer.endsLiveBundle(now, lastFinish.getAsLong())) {
                    end.run();
                }
            }, timing.liveBundleMs, timing.liveBundleMs);
            return pacer;
        }

        boolean catchingUp(long now) {
            return CatchUpBundles.catchingUp(now, watermark, timing.lagMs);
        }

        /** Whether the open bundle, last ended at {@code lastFinish}, ends now. */
        boolean endsLiveBundle(long now, long lastFinish) {
            return !catchingUp(now) && now - lastFinish >= timing.liveBundleMs;
        }

        void cancel() {
            if (timer != null) {
                timer.cancel(true);
                timer = null;
            }
        }
    }

    /** A keyed {@code process}: its timers fire after the bundle's results are out, as before. */
    public static final class Keyed<OUT> extends ExternalPythonKeyedProcessOperator<OUT> {

        private static final long serialVersionUID = 1L;

        private final Timing timing;
        private transient Pacer pacer;

        Keyed(Timing timing, DataStreamPythonFunctionInfo function, RowTypeInfo input, TypeInformation<OUT> output) {
            super(timing.config, function, input, output);
            this.timing = timing;
        }

        @Override
        public void open() throws Exception {
            super.open();
            pacer = Pacer.started(timing, getProcessingTimeService(), getMetricGroup(), () -> lastFinishBundleTime,
                    this::invokeFinishBundle);
        }

        @Override
        public void processWatermark(Watermark mark) throws Exception {
            pacer.watermark = mark.getTimestamp();
            super.processWatermark(mark);
        }

        @Override
        public void finish() throws Exception {
            pacer.cancel();
            super.finish();
        }

        @Override
        public void close() throws Exception {
            if (pacer != null) {
                pacer.cancel();
            }
            super.close();
        }

        /** PyFlink's chaining of Python operators copies them; the copy keeps the behaviour. */
        @Override
        public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(
                DataStreamPythonFunctionInfo function, TypeInformation<T> output) {
            return new Keyed<>(timing, function, (RowTypeInfo) getInputTypeInfo(), output);
        }
    }

    /** A stream's (not keyed) {@code process}. */
    public static final class Plain<IN, OUT> extends ExternalPythonProcessOperator<IN, OUT> {

        private static final long serialVersionUID = 1L;

        private final Timing timing;
        private transient Pacer pacer;

        Plain(Timing timing, DataStreamPythonFunctionInfo function, TypeInformation<IN> input,
                TypeInformation<OUT> output) {
            super(timing.config, function, input, output);
            this.timing = timing;
        }

        @Override
        public void open() throws Exception {
            super.open();
            pacer = Pacer.started(timing, getProcessingTimeService(), getMetricGroup(), () -> lastFinishBundleTime,
                    this::invokeFinishBundle);
        }

        @Override
        public void processWatermark(Watermark mark) throws Exception {
            pacer.watermark = mark.getTimestamp();
            super.processWatermark(mark);
        }

        @Override
        public void finish() throws Exception {
            pacer.cancel();
            super.finish();
        }

        @Override
        public void close() throws Exception {
            if (pacer != null) {
                pacer.cancel();
            }
            super.close();
        }

        /** PyFlink's chaining of Python operators copies them; the copy keeps the behaviour. */
        @Override
        public <T> AbstractExternalDataStreamPythonFunctionOperator<T> copy(
                DataStreamPythonFunctionInfo function, TypeInformation<T> output) {
            return new Plain<>(timing, function, getInputTypeInfo(), output);
        }
    }
}
