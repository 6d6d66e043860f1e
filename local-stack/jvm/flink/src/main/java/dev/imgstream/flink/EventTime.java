package dev.imgstream.flink;

import java.time.LocalDateTime;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.api.JsonValueOnEmptyOrError;
import org.apache.flink.table.data.TimestampData;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.table.runtime.functions.SqlJsonUtils;
import org.apache.flink.table.utils.DateTimeUtils;

/**
 * The upload source's event time, reading the record's JSON once: {@code received_at}, or the
 * Kafka timestamp when it is missing or unreadable, or more than the clock-skew tolerance ahead
 * of the Kafka timestamp ({@code imgstream.domain.clock.clamp_event_time}'s rule).
 *
 * <p>It is the SQL expression the source used before, evaluated once:
 * <pre>
 *   CASE WHEN r IS NULL OR r &gt; kafka_ts + tolerance THEN kafka_ts ELSE r END
 *   r = TO_TIMESTAMP(REPLACE(REPLACE(JSON_VALUE(value, '$.received_at'), 'T', ' '), 'Z', ''),
 *                    'yyyy-MM-dd HH:mm:ss.SSS')
 * </pre>
 * Flink's code generator does not share repeated sub-expressions, so that CASE parsed the JSON
 * three times, and the source evaluates its event time twice (for the watermark, then for the
 * row). Here each step calls the method Flink's own code calls for that SQL function
 * ({@link SqlJsonUtils#jsonValue}: {@code JSON_VALUE ... NULL ON EMPTY NULL ON ERROR};
 * {@link DateTimeUtils#parseTimestampData(String, String)}: {@code TO_TIMESTAMP(string, format)}),
 * so the two read every value alike; {@code tests/unit/test_flink_clock.py} runs both in Flink on
 * hostile values and holds them equal.
 *
 * <p>Registered by {@code flink_jobs.pipeline} as {@code IMGSTREAM_EVENT_TIME}.
 */
public class EventTime extends ScalarFunction {

    private static final long serialVersionUID = 1L;

    /** The path and format of the SQL this replaces. */
    static final String RECEIVED_AT_PATH = "$.received_at";
    static final String RECEIVED_AT_FORMAT = "yyyy-MM-dd HH:mm:ss.SSS";

    /**
     * @param value the record's value as a string ({@code CAST(value AS STRING)})
     * @param kafkaTs the record's Kafka timestamp as a {@code TIMESTAMP(3)} in the session's zone
     * @param toleranceMs how far {@code received_at} may be ahead of {@code kafkaTs}
     */
    public @DataTypeHint("TIMESTAMP(3)") LocalDateTime eval(
            String value, @DataTypeHint("TIMESTAMP(3)") LocalDateTime kafkaTs, Long toleranceMs) {
        LocalDateTime received = receivedAt(value);
        if (received == null) {
            return kafkaTs;
        }
        // SQL: received > NULL is unknown, so the CASE keeps received when the Kafka time is missing
        if (kafkaTs != null && toleranceMs != null && received.isAfter(kafkaTs.plusNanos(toleranceMs * 1_000_000L))) {
            return kafkaTs;
        }
        return received;
    }

    /** {@code received_at} as the SQL above read it (null where it gave NULL). */
    static LocalDateTime receivedAt(String value) {
        if (value == null) {
            return null;
        }
        Object text = SqlJsonUtils.jsonValue(value, RECEIVED_AT_PATH, JsonValueOnEmptyOrError.NULL, null,
                JsonValueOnEmptyOrError.NULL, null);
        if (text == null) {
            return null;
        }
        TimestampData parsed = DateTimeUtils.parseTimestampData(
                text.toString().replace("T", " ").replace("Z", ""), RECEIVED_AT_FORMAT);
        return parsed == null ? null : parsed.toLocalDateTime();
    }
}
