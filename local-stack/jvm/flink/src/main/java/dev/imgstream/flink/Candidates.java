/*
 * imgstream: the images registered under one band value of the near-duplicate index.
 */
package dev.imgstream.flink;

import java.util.Arrays;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.types.Row;

/**
 * The candidates of one band key, oldest first: what {@code imgstream.domain.dedup.Seen} lists hold
 * in the Python index (image id, producer, event time, pHash), as four parallel arrays. State holds
 * them as a {@link #TYPE} row of the same arrays (Flink's own serializers: a savepoint names no
 * class of this jar, and a restore needs none of it to read the state's schema).
 *
 * <p>Values are replaced, never changed in place: state handed out during a snapshot stays what
 * the snapshot holds.
 */
public final class Candidates {

    /** How state stores candidates: {@code Row(ids, producers, times, hashes)}. */
    public static final TypeInformation<Row> TYPE = Types.ROW(Types.OBJECT_ARRAY(Types.STRING),
            Types.OBJECT_ARRAY(Types.STRING), Types.PRIMITIVE_ARRAY(Types.LONG), Types.PRIMITIVE_ARRAY(Types.LONG));

    public String[] ids;
    public String[] producers;
    public long[] times;
    public long[] hashes;

    /** No candidates. */
    public Candidates() {
        this(new String[0], new String[0], new long[0], new long[0]);
    }

    public Candidates(String[] ids, String[] producers, long[] times, long[] hashes) {
        this.ids = ids;
        this.producers = producers;
        this.times = times;
        this.hashes = hashes;
    }

    /** The candidates a {@link #TYPE} row holds (its arrays, not copies). */
    public static Candidates of(Row row) {
        return new Candidates((String[]) row.getField(0), (String[]) row.getField(1), (long[]) row.getField(2),
                (long[]) row.getField(3));
    }

    /** As state stores them (the arrays, not copies). */
    public Row toRow() {
        return Row.of(ids, producers, times, hashes);
    }

    public int size() {
        return ids.length;
    }

    /**
     * These candidates after {@code image} joins (the rule of {@code register_candidate}): those
     * within {@code ttlMs} of its event time and with another id kept in their order, it appended,
     * then at most {@code cap} kept, the oldest dropped first.
     */
    public Candidates register(String id, String producer, long time, long hash, long ttlMs, int cap) {
        int n = size();
        int[] kept = new int[n];
        int count = 0;
        for (int i = 0; i < n; i++) {
            if (time - times[i] <= ttlMs && !ids[i].equals(id)) {
                kept[count++] = i;
            }
        }
        int skip = Math.max(0, count + 1 - cap);
        int size = count + 1 - skip;
        Candidates next = new Candidates(new String[size], new String[size], new long[size], new long[size]);
        int at = 0;
        for (int k = skip; k < count; k++) {
            next.set(at++, this, kept[k]);
        }
        next.ids[at] = id;
        next.producers[at] = producer;
        next.times[at] = time;
        next.hashes[at] = hash;
        return next;
    }

    /** The candidates no image at event time {@code now} or later keeps (older than {@code ttlMs}) left out; {@code this} when none is. */
    public Candidates alive(long now, long ttlMs) {
        int n = size();
        int[] kept = new int[n];
        int count = 0;
        for (int i = 0; i < n; i++) {
            if (now - times[i] <= ttlMs) {
                kept[count++] = i;
            }
        }
        if (count == n) {
            return this;
        }
        Candidates next = new Candidates(new String[count], new String[count], new long[count], new long[count]);
        for (int k = 0; k < count; k++) {
            next.set(k, this, kept[k]);
        }
        return next;
    }

    private void set(int at, Candidates from, int i) {
        ids[at] = from.ids[i];
        producers[at] = from.producers[i];
        times[at] = from.times[i];
        hashes[at] = from.hashes[i];
    }

    @Override
    public String toString() {
        return "Candidates" + Arrays.toString(ids);
    }
}
