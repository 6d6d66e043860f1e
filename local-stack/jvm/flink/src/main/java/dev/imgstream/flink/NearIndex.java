/*
 * imgstream: "decide: near" in the JVM - one near shard of the banded pHash index.
 */
package dev.imgstream.flink;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * {@code decide: near}, keyed by near shard: per image, in decision order, the closest earlier
 * candidate under the probe keys this shard owns, then the image registered under its band value
 * when this shard owns it. The Python stage it replaces is {@code flink_jobs.sharded.DecideNear};
 * the rules are {@code imgstream.domain.dedup} ({@code near_step}, {@code near_match},
 * {@code register_candidate}, {@code prune}) and the routes {@code ShardPlan.near_route}.
 *
 * <p><b>Input</b>: {@code Row(shard, [op, ...])} from {@code clean, decide: exact}, an op being
 * {@link #OP_TYPE}: {@code (pending key, window shard, image id, producer, pHash as a signed long,
 * event time, realm, scope)}. Realm 0 is the user index and 1 the synthetic one (each its own
 * state); scope is {@link #SCOPE_NONE} (the producer opted out of near dedup: registered, never
 * probed), {@link #SCOPE_GLOBAL} or {@link #SCOPE_PRODUCER} (only its own producer's images).
 *
 * <p><b>Order</b>: an op waits in {@code pending} until the watermark passes the end of its
 * 200 ms bucket (its due time is the pending key's first 15 digits), then its bucket is decided in
 * pending-key order: the order every stage agrees on. Timers fire in timestamp order and pending
 * keys sort by due time first, so each key applies its ops as the Python stage did.
 *
 * <p><b>Output</b>: per timer, one {@code Row(window shard, pickle of ["n<shard>", [(pk, [original,
 * distance, original time]), ...]])} per window shard of the images that found a match (as
 * {@code flink_jobs.sharded.batches} makes them): the verdict stage reads no match as "accepted".
 *
 * <p><b>State</b>: per realm a {@code MapState<band value, Candidates>} ({@link Candidates#TYPE} rows). A shard owns one band
 * (its index is {@code shard >> splitBits}), so the band value alone is the key. Candidates older
 * than the TTL are pruned by event time once per {@code pruneEveryMs} of timer time and key.
 */
public final class NearIndex extends KeyedProcessFunction<Row, Row, Row> {

    private static final long serialVersionUID = 1L;

    public static final int SCOPE_NONE = 0;
    public static final int SCOPE_GLOBAL = 1;
    public static final int SCOPE_PRODUCER = 2;
    /** The dedup realms: 0 users, 1 synthetic producers ({@code imgstream.domain.producers.dedup_realm}). */
    public static final int REALMS = 2;
    /** The order buckets of {@code imgstream.domain.sharding.ORDER_BUCKET_MS}. */
    public static final long BUCKET_MS = 200;
    /** Digits of a pending key's due time ({@code imgstream.domain.sharding.pending_key}). */
    private static final int DUE_DIGITS = 15;

    private static final int PK = 0;
    private static final int WSHARD = 1;
    private static final int ID = 2;
    private static final int PRODUCER = 3;
    static final int PHASH = 4;
    private static final int TIME = 5;
    private static final int REALM = 6;
    private static final int SCOPE = 7;

    /** One near op, as {@code decide: exact} sends it (see the class comment). */
    public static final TypeInformation<Row> OP_TYPE = Types.ROW(
            Types.STRING, Types.INT, Types.STRING, Types.STRING, Types.LONG, Types.LONG, Types.INT, Types.INT);

    private final String spec;
    private transient Plan plan;
    private transient MapState<Long, List<Row>> pending;
    private transient List<MapState<Long, Row>> bands;
    private transient Map<Integer, Long> prunedAt;
    private transient Map<String, String> names;
    private transient Counter batchesIn;
    private transient Counter itemsIn;
    private transient Counter steps;
    private transient Counter matches;

    /** @param spec the plan, as {@code flink_jobs.near_index.near_index_spec} writes it (checked here) */
    public NearIndex(String spec) {
        this.spec = spec;
        Plan.parse(spec);
    }

    @Override
    public void open(OpenContext context) throws Exception {
        plan = Plan.parse(spec);
        pending = getRuntimeContext().getMapState(
                new MapStateDescriptor<>("near-pending", Types.LONG, Types.LIST(OP_TYPE)));
        bands = new ArrayList<>();
        for (int realm = 0; realm < REALMS; realm++) {
            bands.add(getRuntimeContext().getMapState(new MapStateDescriptor<>(
                    realm == 0 ? "near-bands" : "near-bands-synthetic", Types.LONG, Candidates.TYPE)));
        }
        prunedAt = new HashMap<>();
        names = new HashMap<>();
        MetricGroup metrics = getRuntimeContext().getMetricGroup();
        batchesIn = metrics.counter("batchesIn");
        itemsIn = metrics.counter("itemsIn");
        steps = metrics.counter("steps");
        matches = metrics.counter("matches");
    }

    /** The end of the 200 ms bucket holding {@code due} (its timer). */
    public static long bucketEnd(long due) {
        return due - Math.floorMod(due, BUCKET_MS) + BUCKET_MS - 1;
    }

    @Override
    public void processElement(Row batch, Context ctx, Collector<Row> out) throws Exception {
        @SuppressWarnings("unchecked")
        List<Row> ops = (List<Row>) batch.getField(1);
        batchesIn.inc();
        itemsIn.inc(ops.size());
        Map<Long, List<Row>> byBucket = new HashMap<>();
        for (Row op : ops) {
            String pk = (String) op.getField(PK);
            long due = Long.parseLong(pk.substring(0, DUE_DIGITS));
            byBucket.computeIfAbsent(bucketEnd(due), end -> new ArrayList<>()).add(op);
        }
        for (Map.Entry<Long, List<Row>> bucket : byBucket.entrySet()) {
            List<Row> held = pending.get(bucket.getKey());
            List<Row> next = new ArrayList<>(bucket.getValue());
            if (held != null) {
                next.addAll(held);
            }
            pending.put(bucket.getKey(), next);
            ctx.timerService().registerEventTimeTimer(bucket.getKey());
        }
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        int shard = ((Number) ctx.getCurrentKey().getField(0)).intValue();
        List<Row> due = pending.get(timestamp);
        if (due != null) {
            pending.remove(timestamp);
            steps.inc();
            List<Row> ops = new ArrayList<>(due);
            ops.sort((a, b) -> compareCodePoints((String) a.getField(PK), (String) b.getField(PK)));
            emit(shard, decide(shard, ops), out);
        }
        Long last = prunedAt.get(shard);
        if (last == null || timestamp - last >= plan.pruneEveryMs) {
            prune(timestamp - plan.pruneSlackMs);
            prunedAt.put(shard, timestamp);
        }
    }

    /** Per window shard, the {@code (pk, match)} of each op (in order) that found one. */
    private Map<Integer, List<Object[]>> decide(int shard, List<Row> ops) throws Exception {
        Map<Integer, List<Object[]>> found = new LinkedHashMap<>();
        int index = shard >> plan.splitBits;
        int top = shard & ((1 << plan.splitBits) - 1);
        Band band = plan.bands[index];
        for (Row op : ops) {
            String id = (String) op.getField(ID);
            String producer = (String) op.getField(PRODUCER);
            long hash = number(op, PHASH).longValue();
            long time = number(op, TIME).longValue();
            int scope = number(op, SCOPE).intValue();
            MapState<Long, Row> realm = bands.get(number(op, REALM).intValue());
            long value = band.value(hash);
            int home = band.top(value, plan.splitBits);
            Match best = null;
            Row held = null;  // the candidates under the image's own value, once read
            boolean heldRead = false;
            if (scope != SCOPE_NONE) {
                for (long flip : band.flipsByTop[home ^ top]) {
                    Row candidates = realm.get(value ^ flip);
                    if (flip == 0) {  // the own value, probed first where this shard owns it
                        held = candidates;
                        heldRead = true;
                    }
                    if (candidates != null) {
                        best = closest(best, Candidates.of(candidates), id, producer, hash, scope);
                    }
                }
            }
            if (home == top) {
                if (!heldRead) {
                    held = realm.get(value);
                }
                String name = names.computeIfAbsent(producer, p -> p);
                realm.put(value, (held == null ? new Candidates() : Candidates.of(held))
                        .register(id, name, time, hash, plan.ttlMs, plan.cap).toRow());
            }
            if (best != null) {
                matches.inc();
                found.computeIfAbsent(number(op, WSHARD).intValue(), w -> new ArrayList<>())
                        .add(new Object[] {op.getField(PK), best});
            }
        }
        return found;
    }

    /** Field {@code field} of {@code op}: a number of the op's type (or any, from a test through py4j). */
    private static Number number(Row op, int field) {
        return (Number) op.getField(field);
    }

    /** The better of {@code best} and the candidates within the distance the image may see ({@code near_match}). */
    private Match closest(Match best, Candidates candidates, String id, String producer, long hash, int scope) {
        for (int i = 0; i < candidates.size(); i++) {
            int distance = Long.bitCount(candidates.hashes[i] ^ hash);
            if (distance > plan.maxDistance || candidates.ids[i].equals(id)) {
                continue;
            }
            if (scope == SCOPE_PRODUCER && !candidates.producers[i].equals(producer)) {
                continue;
            }
            Match match = new Match(candidates.ids[i], distance, candidates.times[i]);
            if (best == null || match.compareTo(best) < 0) {
                best = match;
            }
        }
        return best;
    }

    private void emit(int shard, Map<Integer, List<Object[]>> found, Collector<Row> out) {
        String source = "n" + shard;
        for (Map.Entry<Integer, List<Object[]>> batch : found.entrySet()) {
            PickleWriter pickle = new PickleWriter().beginList().string(source).beginList();
            for (Object[] item : batch.getValue()) {
                Match match = (Match) item[1];
                pickle.string((String) item[0])
                        .beginList().string(match.original).integer(match.distance).integer(match.originalTime).endList()
                        .pair();
            }
            out.collect(Row.of(batch.getKey(), pickle.endList().endList().toBytes()));
        }
    }

    /** Drops the candidates no image at event time {@code now} or later can use ({@code Deduplicator.prune}). */
    private void prune(long now) throws Exception {
        for (MapState<Long, Row> index : bands) {
            Iterator<Map.Entry<Long, Row>> entries = index.iterator();
            List<Map.Entry<Long, Row>> changed = new ArrayList<>();
            while (entries.hasNext()) {
                Map.Entry<Long, Row> entry = entries.next();
                Candidates held = Candidates.of(entry.getValue());
                Candidates kept = held.alive(now, plan.ttlMs);
                if (kept.size() == 0) {
                    entries.remove();
                } else if (kept != held) {
                    changed.add(Map.entry(entry.getKey(), kept.toRow()));
                }
            }
            for (Map.Entry<Long, Row> entry : changed) {
                index.put(entry.getKey(), entry.getValue());
            }
        }
    }

    /**
     * Python's order of two strings: by code point. Java's {@code compareTo} compares UTF-16 units,
     * which orders the same except where a surrogate (half of a character above U+FFFF) meets a
     * character from U+E000 to U+FFFF: the surrogate's character is the larger.
     */
    public static int compareCodePoints(String a, String b) {
        int n = Math.min(a.length(), b.length());
        for (int i = 0; i < n; i++) {
            char ca = a.charAt(i);
            char cb = b.charAt(i);
            if (ca != cb) {
                boolean sa = Character.isSurrogate(ca);
                return sa == Character.isSurrogate(cb) ? ca - cb : sa ? 1 : -1;
            }
        }
        return a.length() - b.length();
    }

    /** A match ({@code imgstream.domain.dedup.NearMatch}); lower ranks better: closest, earliest, smallest id. */
    private static final class Match implements Comparable<Match> {
        final String original;
        final int distance;
        final long originalTime;

        Match(String original, int distance, long originalTime) {
            this.original = original;
            this.distance = distance;
            this.originalTime = originalTime;
        }

        @Override
        public int compareTo(Match other) {
            if (distance != other.distance) {
                return Integer.compare(distance, other.distance);
            }
            if (originalTime != other.originalTime) {
                return Long.compare(originalTime, other.originalTime);
            }
            return compareCodePoints(original, other.original);
        }
    }

    /** One band of the hash: where its value sits, and its probe masks grouped by their top bits. */
    static final class Band {
        final int shift;
        final int width;
        final long mask;
        /** Per top-bits group ({@code splitBits} wide): the flip masks in it. */
        final long[][] flipsByTop;

        Band(int shift, int width, long[] flips, int splitBits) {
            if (width < 1 || width > 64 || shift < 0 || shift + width > 64 || splitBits > width) {
                throw new IllegalArgumentException("bad band: shift " + shift + ", width " + width);
            }
            this.shift = shift;
            this.width = width;
            this.mask = width == 64 ? -1L : (1L << width) - 1;
            List<List<Long>> groups = new ArrayList<>();
            for (int g = 0; g < 1 << splitBits; g++) {
                groups.add(new ArrayList<>());
            }
            for (long flip : flips) {
                if ((flip & ~mask) != 0) {
                    throw new IllegalArgumentException("flip mask " + Long.toUnsignedString(flip) + " wider than its band (" + width + " bits)");
                }
                groups.get(top(flip, splitBits)).add(flip);
            }
            flipsByTop = new long[groups.size()][];
            for (int g = 0; g < groups.size(); g++) {
                flipsByTop[g] = groups.get(g).stream().mapToLong(Long::longValue).toArray();
            }
        }

        long value(long hash) {
            return (hash >>> shift) & mask;
        }

        /** The top {@code bits} bits of a band value (0 when {@code bits} is 0). */
        int top(long value, int bits) {
            return bits == 0 ? 0 : (int) (value >>> (width - bits));
        }
    }

    /** What the operator is configured with; the spec's form is {@code key=value;...}, see {@link #parse}. */
    static final class Plan {
        int splitBits;
        int maxDistance;
        long ttlMs;
        int cap;
        long pruneEveryMs;
        long pruneSlackMs;
        Band[] bands;

        /**
         * {@code split_bits=1;max_distance=8;ttl_ms=604800000;cap=512;prune_every_ms=3600000;
         * prune_slack_ms=86400000;bands=<shift>/<width>/<flip>.<flip>...|...}, flips in decimal
         * (unsigned), bands in order of their index.
         */
        static Plan parse(String spec) {
            Map<String, String> fields = new HashMap<>();
            for (String part : spec.split(";")) {
                int eq = part.indexOf('=');
                if (eq < 1) {
                    throw new IllegalArgumentException("bad near index spec part '" + part + "' in: " + spec);
                }
                fields.put(part.substring(0, eq), part.substring(eq + 1));
            }
            Plan plan = new Plan();
            plan.splitBits = (int) number(fields, "split_bits", 0, 8);
            plan.maxDistance = (int) number(fields, "max_distance", 0, 64);
            plan.ttlMs = number(fields, "ttl_ms", 1, Long.MAX_VALUE);
            plan.cap = (int) number(fields, "cap", 1, Integer.MAX_VALUE);
            plan.pruneEveryMs = number(fields, "prune_every_ms", 1, Long.MAX_VALUE);
            plan.pruneSlackMs = number(fields, "prune_slack_ms", 0, Long.MAX_VALUE);
            String[] bands = require(fields, "bands").split("\\|");
            plan.bands = new Band[bands.length];
            for (int i = 0; i < bands.length; i++) {
                String[] band = bands[i].split("/", -1);
                if (band.length != 3) {
                    throw new IllegalArgumentException("bad band '" + bands[i] + "' (want shift/width/flips)");
                }
                String[] flips = band[2].split("\\.");
                long[] masks = new long[flips.length];
                for (int f = 0; f < flips.length; f++) {
                    masks[f] = Long.parseUnsignedLong(flips[f]);
                }
                plan.bands[i] = new Band(Integer.parseInt(band[0]), Integer.parseInt(band[1]), masks, plan.splitBits);
            }
            return plan;
        }

        /** The near shards an image of pHash {@code hash} visits ({@code ShardPlan.near_shards_of}). */
        int[] shardsOf(long hash) {
            int[] shards = new int[bands.length << splitBits];
            int count = 0;
            for (int index = 0; index < bands.length; index++) {
                Band band = bands[index];
                int home = band.top(band.value(hash), splitBits);
                for (int group = 0; group < band.flipsByTop.length; group++) {
                    if (band.flipsByTop[group].length > 0) {
                        shards[count++] = (index << splitBits) | (home ^ group);
                    }
                }
            }
            return Arrays.copyOf(shards, count);
        }

        private static String require(Map<String, String> fields, String name) {
            String value = fields.get(name);
            if (value == null) {
                throw new IllegalArgumentException("near index spec without " + name);
            }
            return value;
        }

        private static long number(Map<String, String> fields, String name, long min, long max) {
            long value = Long.parseLong(require(fields, name));
            if (value < min || value > max) {
                throw new IllegalArgumentException(name + " must be in " + min + ".." + max + ", got " + value);
            }
            return value;
        }
    }
}
