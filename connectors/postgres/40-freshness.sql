-- Freshness: per replicated table, the newest change applied (its Cassandra write time) and
-- how far that is behind now (of any producer, synthetic ones included: it measures replication,
-- and names no producer). Under steady traffic behind_seconds is the replication delay;
-- an idle table shows the time since its last change.
-- In its own file, applied after 10 (pipeline tables) and 30-batch (batch tables): it lists every
-- table of imgstream.ops.cdc.TABLES, and tests/integration/test_cdc_analytics.py holds them equal.
-- Each branch is one backward step of the table's cdc_ts index.

CREATE INDEX IF NOT EXISTS gc_log_cdc_ts_idx ON public.gc_log (cdc_ts);

CREATE OR REPLACE FUNCTION analytics.freshness()
RETURNS TABLE (table_name text, newest_change_at timestamptz, newest_applied_at timestamptz,
               behind_seconds double precision)
LANGUAGE sql STABLE AS $$
    WITH newest (table_name, cdc_ts, cdc_applied_at) AS (
        (SELECT 'images', cdc_ts, cdc_applied_at FROM public.images
         WHERE cdc_ts IS NOT NULL ORDER BY cdc_ts DESC LIMIT 1)
        UNION ALL
        (SELECT 'duplicates', cdc_ts, cdc_applied_at FROM public.duplicates
         WHERE cdc_ts IS NOT NULL ORDER BY cdc_ts DESC LIMIT 1)
        UNION ALL
        (SELECT 'upload_stats', cdc_ts, cdc_applied_at FROM public.upload_stats
         WHERE cdc_ts IS NOT NULL ORDER BY cdc_ts DESC LIMIT 1)
        UNION ALL
        (SELECT 'late_events', cdc_ts, cdc_applied_at FROM public.late_events
         WHERE cdc_ts IS NOT NULL ORDER BY cdc_ts DESC LIMIT 1)
        UNION ALL
        (SELECT 'derivatives', cdc_ts, cdc_applied_at FROM public.derivatives
         WHERE cdc_ts IS NOT NULL ORDER BY cdc_ts DESC LIMIT 1)
        UNION ALL
        (SELECT 'gc_log', cdc_ts, cdc_applied_at FROM public.gc_log
         WHERE cdc_ts IS NOT NULL ORDER BY cdc_ts DESC LIMIT 1)
    )
    SELECT t.table_name, n.cdc_ts, n.cdc_applied_at, extract(epoch FROM now() - n.cdc_ts)::double precision
    FROM (VALUES ('images'), ('duplicates'), ('upload_stats'), ('late_events'), ('derivatives'), ('gc_log'))
         AS t(table_name)
    LEFT JOIN newest n USING (table_name)
$$;

CREATE OR REPLACE VIEW analytics.freshness AS SELECT * FROM analytics.freshness();

GRANT USAGE ON SCHEMA analytics TO analyst;
GRANT SELECT ON analytics.freshness TO analyst;
GRANT EXECUTE ON FUNCTION analytics.freshness() TO analyst;
