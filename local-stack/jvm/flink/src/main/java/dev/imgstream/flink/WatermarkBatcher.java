/*
 * imgstream: records of a keyed stream into one batch per key and watermark interval, in the JVM.
 */
package dev.imgstream.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Turns rows {@code (key, item)} of a keyed stream into rows {@code (key, [(item, timestamp), ...])}:
 * one batch per key of the records that arrived between two watermarks, emitted just before the
 * second watermark is forwarded (and before each checkpoint barrier, at the end of the input, and
 * when {@code maxBuffered} records are held).
 *
 * <p>Why: the Python operator after it ({@code clean, decide: exact}) paid PyFlink's per-record
 * machinery (a Beam element, a key switch, a call) for every upload; a batch pays it once per key
 * and watermark interval.
 *
 * <p>Nothing the operator after it can observe changes but the grouping. Each record of a batch
 * meets the same watermark there as it would have alone: the batch is emitted before the watermark
 * that follows its records, so the operator's current watermark is still the one they arrived
 * under. Records of one key keep their order; records of different keys between two watermarks
 * may be reordered, which {@code decide: exact} does not see (its order keys and lateness depend
 * on a record and its arrival watermark only). No state: everything held is emitted before a
 * barrier passes, so a checkpoint never holds a record here.
 *
 * <p>Watermarks on a grid ({@code quantumMs} &gt; 1): a watermark {@code W} is forwarded as the
 * last grid line's {@code floor((W + 1) / quantum) * quantum - 1}, and only when that moves. Every
 * stage after it fires its timers once per forwarded advance and key, and the source's subtasks
 * emit their watermarks out of phase, so their minimum moves several times per interval; on the
 * grid it moves once per {@code quantumMs}. A lower watermark is still a watermark: records are
 * late less often, never more, and windows close at most {@code quantumMs} later. A quantum of 1
 * forwards every watermark as it comes.
 */
public final class WatermarkBatcher extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final int maxBuffered;
    private final long quantumMs;
    private transient Map<Object, List<Row>> held;
    private transient int count;
    private transient long forwarded;

    /**
     * @param maxBuffered records held at most before the batches are emitted early (a bound on memory)
     * @param quantumMs the grid watermarks are forwarded on (1: every watermark as it comes)
     */
    public WatermarkBatcher(int maxBuffered, long quantumMs) {
        if (maxBuffered < 1) {
            throw new IllegalArgumentException("maxBuffered must be at least 1, got " + maxBuffered);
        }
        if (quantumMs < 1) {
            throw new IllegalArgumentException("quantumMs must be at least 1, got " + quantumMs);
        }
        this.maxBuffered = maxBuffered;
        this.quantumMs = quantumMs;
    }

    /** {@code timestamp} on the grid of {@code quantumMs}: the last grid line at or before it, minus 1 ms. */
    public static long onGrid(long timestamp, long quantumMs) {
        if (timestamp == Long.MAX_VALUE || timestamp < Long.MIN_VALUE + quantumMs) {  // no overflow of W + 1, nor below MIN
            return timestamp;
        }
        return Math.floorDiv(timestamp + 1, quantumMs) * quantumMs - 1;
    }

    @Override
    public void open() throws Exception {
        super.open();
        held = new HashMap<>();
        count = 0;
        forwarded = Long.MIN_VALUE;
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        Row row = element.getValue();
        Long timestamp = element.hasTimestamp() ? element.getTimestamp() : null;
        held.computeIfAbsent(row.getField(0), key -> new ArrayList<>()).add(Row.of(row.getField(1), timestamp));
        if (++count >= maxBuffered) {
            emit();
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        long next = onGrid(mark.getTimestamp(), quantumMs);
        if (next <= forwarded) {
            return;  // the grid line has not moved: the records held stay under the last one forwarded
        }
        emit();
        forwarded = next;
        super.processWatermark(next == mark.getTimestamp() ? mark : new Watermark(next));
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        emit();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void finish() throws Exception {
        emit();
        super.finish();
    }

    private void emit() {
        if (count == 0) {
            return;
        }
        for (Map.Entry<Object, List<Row>> batch : held.entrySet()) {
            output.collect(new StreamRecord<>(Row.of(batch.getKey(), batch.getValue())));
        }
        held = new HashMap<>();
        count = 0;
    }
}
