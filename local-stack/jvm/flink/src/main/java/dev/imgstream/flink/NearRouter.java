/*
 * imgstream: near ops to the near shards they visit, in the JVM.
 */
package dev.imgstream.flink;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFlatMapFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * {@code route: near shards}: a step's near ops ({@code Row(exact shard, [op, ...])}, ops in decision
 * order, {@link NearIndex#OP_TYPE}) as one {@code Row(near shard, [op, ...])} per near shard they
 * visit, each op in it once and in the same order: the rule of {@code ShardPlan.near_shards_of}
 * (per band, the top bits of every value it probes).
 *
 * <p>Why in the JVM: {@code clean, decide: exact} sent each op once per near shard it visits (8 at the
 * default split), and encoding those rows in Python cost about as much as the rest of its near
 * work. It now sends each op once; this stateless function, chained after it, fans them out.
 */
public final class NearRouter extends RichFlatMapFunction<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final String spec;
    private transient NearIndex.Plan plan;

    /** @param spec the plan {@link NearIndex} gets (the same string) */
    public NearRouter(String spec) {
        this.spec = spec;
        NearIndex.Plan.parse(spec);
    }

    @Override
    public void open(OpenContext context) {
        plan = NearIndex.Plan.parse(spec);
    }

    @Override
    public void flatMap(Row batch, Collector<Row> out) {
        @SuppressWarnings("unchecked")
        List<Row> ops = (List<Row>) batch.getField(1);
        Map<Integer, List<Row>> routed = new LinkedHashMap<>();
        for (Row op : ops) {
            long hash = ((Number) op.getField(NearIndex.PHASH)).longValue();
            for (int shard : plan.shardsOf(hash)) {
                routed.computeIfAbsent(shard, s -> new ArrayList<>()).add(op);
            }
        }
        for (Map.Entry<Integer, List<Row>> shard : routed.entrySet()) {
            out.collect(Row.of(shard.getKey(), shard.getValue()));
        }
    }
}
