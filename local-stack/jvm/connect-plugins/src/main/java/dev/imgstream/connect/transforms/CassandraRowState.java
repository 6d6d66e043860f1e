/*
 * imgstream: Debezium Cassandra change events -> flat rows for the Debezium JDBC sink.
 */
package dev.imgstream.connect.transforms;

import java.util.ArrayList;
import java.util.Date;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.ConnectRecord;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaBuilder;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.data.Timestamp;
import org.apache.kafka.connect.errors.DataException;
import org.apache.kafka.connect.transforms.Transformation;
import org.apache.kafka.connect.transforms.util.SchemaUtil;
import org.apache.kafka.connect.transforms.util.SimpleConfig;

/**
 * Turns a change event of the Debezium Cassandra agent into what the Debezium JDBC sink upserts or
 * deletes, and leaves every other record untouched (so the same sink also serves flat rows from
 * ScyllaDB's CDC source connector in production).
 *
 * <p>Why not stock SMTs: a Cassandra event is {@code {ts_ms, op: i|u|d|r, source, after}} where every
 * column of {@code after} is a cell {@code {value, deletion_ts, set}} and a delete still carries its key
 * cells in {@code after} (there is no {@code before}). Kafka's SMTs have no predicate on a value field,
 * so none can turn {@code op = d} into a delete; Debezium's ExtractNewRecordState detects deletes by
 * {@code after == null}, which a Cassandra event never has, and the JDBC sink reads {@code before} for a
 * delete envelope. Flatten + ReplaceField could unwrap the cells, but only with a rename per column.
 *
 * <ul>
 *   <li>{@code i}/{@code u}: a struct with one optional field per column the change wrote, holding the
 *       cell's value (null when the write set it to null). Columns the change did not touch are left
 *       out, so the sink's upsert leaves them as they are (a partial UPDATE stays partial), plus
 *       {@code op.field} (c for an insert, u: Debezium op codes, as ScyllaDB emits) and {@code timestamp.field} (the mutation time, from
 *       {@code source.ts_micro}).</li>
 *   <li>{@code d}: a tombstone (null value and schema) with the event's key: the sink deletes by key.
 *       A delete whose key lacks a column (a partition delete on a table with clustering columns)
 *       is rejected like a range tombstone.</li>
 *   <li>{@code r} (range tombstone) and unknown ops: a {@link DataException}, so the record goes to the
 *       dead-letter topic with that reason instead of being half-applied.</li>
 *   <li>any record without a struct key, or with a value that is not a struct: a {@link DataException}
 *       too (the sink would otherwise fail its task on it).</li>
 * </ul>
 */
public class CassandraRowState<R extends ConnectRecord<R>> implements Transformation<R> {

    public static final String OP_FIELD = "op.field";
    public static final String TIMESTAMP_FIELD = "timestamp.field";

    private static final String ENVELOPE_SUFFIX = ".Envelope";
    private static final String RANGE_PREFIX = "_range_";

    public static final ConfigDef CONFIG_DEF = new ConfigDef()
            .define(OP_FIELD, ConfigDef.Type.STRING, "cdc_op", ConfigDef.Importance.MEDIUM,
                    "Name of the output field holding the change's operation (i or u); empty for none.")
            .define(TIMESTAMP_FIELD, ConfigDef.Type.STRING, "cdc_ts", ConfigDef.Importance.MEDIUM,
                    "Name of the output field holding the mutation time (Connect Timestamp); empty for none.");

    private String opField;
    private String timestampField;
    /** Row schemas by (after schema, columns present in the event). */
    private final Map<Schema, Map<String, Schema>> rowSchemas = new ConcurrentHashMap<>();

    @Override
    public void configure(Map<String, ?> props) {
        SimpleConfig config = new SimpleConfig(CONFIG_DEF, props);
        opField = config.getString(OP_FIELD);
        timestampField = config.getString(TIMESTAMP_FIELD);
    }

    /** A Cassandra agent event: an envelope with op and after but no before. */
    static boolean isCassandraEvent(Object value) {
        if (!(value instanceof Struct)) {
            return false;
        }
        Schema schema = ((Struct) value).schema();
        return schema.type() == Schema.Type.STRUCT
                && schema.name() != null && schema.name().endsWith(ENVELOPE_SUFFIX)
                && schema.field("op") != null && schema.field("after") != null
                && schema.field("before") == null;
    }

    @Override
    public R apply(R record) {
        // The sink upserts/deletes by the record key and casts values to Struct: anything else would
        // fail the sink task (a ClassCastException is not an errant record), so it is rejected here,
        // where errors.tolerance=all sends it to the dead-letter topic with this reason.
        if (!(record.key() instanceof Struct)) {
            throw new DataException("record without a struct key on " + record.topic()
                    + ": the sink applies changes by primary key");
        }
        if (record.value() != null && !(record.value() instanceof Struct)) {
            throw new DataException("value on " + record.topic() + " is a "
                    + record.value().getClass().getSimpleName() + ", not a change event struct");
        }
        if (!isCassandraEvent(record.value())) {
            return record;
        }
        Struct envelope = (Struct) record.value();
        String op = envelope.getString("op");
        switch (op) {
            case "d":
                Struct key = (Struct) record.key();
                for (Field field : key.schema().fields()) {
                    if (key.get(field) == null) {
                        // a partition delete (or a delete of a clustering prefix): the sink would
                        // delete "WHERE ck IS NULL", i.e. nothing. Visible in the DLQ instead.
                        throw new DataException("delete on " + record.topic() + " without key column '"
                                + field.name() + "' (partition or range delete): not applicable row by row");
                    }
                }
                return record.newRecord(record.topic(), record.kafkaPartition(), record.keySchema(), record.key(),
                        null, null, record.timestamp());
            case "i":
            case "u":
                return toRow(record, envelope, op);
            case "r":
                throw new DataException("range tombstone (op=r) on " + record.topic()
                        + ": a range delete has no row key, it cannot be applied row by row");
            default:
                throw new DataException("unknown Cassandra change op '" + op + "' on " + record.topic());
        }
    }

    private R toRow(R record, Struct envelope, String op) {
        Struct after = envelope.getStruct("after");
        if (after == null) {
            throw new DataException("op=" + op + " without 'after' on " + record.topic());
        }
        List<String> present = new ArrayList<>();
        for (Field field : after.schema().fields()) {
            if (!field.name().startsWith(RANGE_PREFIX) && after.get(field) != null) {
                present.add(field.name());
            }
        }
        Schema rowSchema = rowSchemas.computeIfAbsent(after.schema(), s -> new ConcurrentHashMap<>())
                .computeIfAbsent(String.join(",", present),
                        k -> rowSchema(after.schema(), present, envelope.schema().name()));
        Struct row = new Struct(rowSchema);
        for (Field field : rowSchema.fields()) {
            String name = field.name();
            if (name.equals(opField) || name.equals(timestampField)) {
                continue;
            }
            Object cell = after.get(name);
            if (cell instanceof Struct && isCell(((Struct) cell).schema())) {
                row.put(name, ((Struct) cell).get("value"));
            }
            else {
                row.put(name, cell);
            }
        }
        if (!opField.isEmpty()) {
            row.put(opField, "i".equals(op) ? "c" : op);  // Debezium codes, as ScyllaDB emits
        }
        if (!timestampField.isEmpty()) {
            row.put(timestampField, mutationTime(envelope));
        }
        return record.newRecord(record.topic(), record.kafkaPartition(), record.keySchema(), record.key(),
                rowSchema, row, record.timestamp());
    }

    private static boolean isCell(Schema schema) {
        return schema.type() == Schema.Type.STRUCT && schema.field("value") != null
                && schema.field("deletion_ts") != null;
    }

    private Schema rowSchema(Schema afterSchema, List<String> present, String envelopeName) {
        String base = envelopeName.substring(0, envelopeName.length() - ENVELOPE_SUFFIX.length());
        SchemaBuilder builder = SchemaBuilder.struct().name(base + ".Row").optional();
        for (Field field : afterSchema.fields()) {
            if (!present.contains(field.name())) {
                continue;
            }
            Schema columnSchema = isCell(field.schema()) ? field.schema().field("value").schema() : field.schema();
            builder.field(field.name(), optional(columnSchema));
        }
        if (!opField.isEmpty()) {
            builder.field(opField, Schema.OPTIONAL_STRING_SCHEMA);
        }
        if (!timestampField.isEmpty()) {
            builder.field(timestampField, Timestamp.builder().optional().build());
        }
        return builder.build();
    }

    private static Schema optional(Schema schema) {
        if (schema.isOptional()) {
            return schema;
        }
        SchemaBuilder copy;
        switch (schema.type()) {
            case ARRAY:
                copy = SchemaBuilder.array(schema.valueSchema());
                break;
            case MAP:
                copy = SchemaBuilder.map(schema.keySchema(), schema.valueSchema());
                break;
            case STRUCT:
                copy = SchemaBuilder.struct();
                for (Field f : schema.fields()) {
                    copy.field(f.name(), f.schema());
                }
                break;
            default:
                copy = SchemaBuilder.type(schema.type());
        }
        return SchemaUtil.copySchemaBasics(schema, copy).optional().build();
    }

    /** The mutation time: source.ts_micro (Cassandra write time), else source.ts_ms, else the event's ts_ms. */
    private static Date mutationTime(Struct envelope) {
        Struct source = envelope.schema().field("source") != null ? envelope.getStruct("source") : null;
        if (source != null) {
            if (source.schema().field("ts_micro") != null && source.get("ts_micro") != null) {
                return new Date(((Number) source.get("ts_micro")).longValue() / 1000L);
            }
            if (source.schema().field("ts_ms") != null && source.get("ts_ms") != null) {
                return new Date(((Number) source.get("ts_ms")).longValue());
            }
        }
        Object ts = envelope.get("ts_ms");
        return ts == null ? null : new Date(((Number) ts).longValue());
    }

    @Override
    public ConfigDef config() {
        return CONFIG_DEF;
    }

    @Override
    public void close() {
        rowSchemas.clear();
    }
}
