-- Documented views for SQL analysts and the stats API (docs/analytics.md), over the tables the
-- CDC sink replicates (10-replicated.sql). Idempotent (CREATE OR REPLACE); applied at every
-- `make up` as role imgstream. All times are timestamptz; roll-ups are by UTC hour/day.

CREATE SCHEMA IF NOT EXISTS analytics;

-- Synthetic producers are left out of every view below (and so of the stats API): what tests,
-- benchmarks and the event generator write as producers named 'synthetic-...' (the reserved
-- prefix, imgstream/domain/producers.py SYNTHETIC_PREFIX; a unit test holds the two equal).
-- A session sees them only after `SET imgstream.include_synthetic = on` (tests reading their
-- own rows; a stats API started with IMGSTREAM_STATS_INCLUDE_SYNTHETIC=1). Rows whose producer
-- is NULL are shown. A plain SQL function: the planner inlines it into each view.
CREATE OR REPLACE FUNCTION analytics.shows_producer(producer text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT producer IS NULL OR NOT starts_with(producer, 'synthetic-')
        OR coalesce(current_setting('imgstream.include_synthetic', true), '') = 'on'
$$;

-- One row per upload (and per rejected event) with its processing result.
CREATE OR REPLACE VIEW analytics.images AS
SELECT image_id, producer, status, duplicate_of, duplicate_kind, distance,
       sha256, phash, size, content_type, width, height, storage_key,
       received_at, lateness, reject_reason, reject_error, processed_at,
       cdc_applied_at AS replicated_at
FROM public.images
WHERE analytics.shows_producer(producer);

-- Minute windows per producer and content type, as the Flink job last wrote them.
-- is_final: the window will not change any more (the watermark passed it plus allowed lateness).
CREATE OR REPLACE VIEW analytics.upload_stats AS
SELECT window_start, window_end, producer, content_type,
       uploads, bytes, accepted, duplicates_exact, duplicates_near, duplicates, rejected,
       late_events, revision, final AS is_final, updated_at
FROM public.upload_stats
WHERE analytics.shows_producer(producer);

-- How far event time has been finalised: the end of the newest final minute window.
CREATE INDEX IF NOT EXISTS upload_stats_final_window_end_idx ON public.upload_stats (window_end) WHERE final;

-- Hour and day roll-ups of the minute windows (sums; an hour/day is final once every minute
-- window in it is final and the newest final window ends at or after its end). One definition,
-- parameterised by the bucket ('hour' | 'day'); a plain SQL function, so the planner inlines it.
CREATE OR REPLACE FUNCTION analytics.upload_stats_rollup(unit text)
RETURNS TABLE (window_start timestamptz, window_end timestamptz, producer text, content_type text,
               uploads bigint, bytes bigint, accepted bigint, duplicates_exact bigint,
               duplicates_near bigint, duplicates bigint, rejected bigint, late_events bigint,
               is_final boolean, minute_windows bigint, updated_at timestamptz)
LANGUAGE sql STABLE AS $$
WITH watermark AS (SELECT max(window_end) AS final_until FROM public.upload_stats
                   WHERE final AND analytics.shows_producer(producer))
SELECT date_trunc(unit, s.window_start, 'UTC') AS window_start,
       date_trunc(unit, s.window_start, 'UTC') + ('1 ' || unit)::interval AS window_end,
       s.producer, s.content_type,
       sum(s.uploads)::bigint, sum(s.bytes)::bigint,
       sum(s.accepted)::bigint,
       sum(s.duplicates_exact)::bigint, sum(s.duplicates_near)::bigint,
       sum(s.duplicates)::bigint, sum(s.rejected)::bigint,
       sum(s.late_events)::bigint,
       (bool_and(s.final) AND coalesce(min(w.final_until), '-infinity')
            >= date_trunc(unit, s.window_start, 'UTC') + ('1 ' || unit)::interval),
       count(*), max(s.updated_at)
FROM public.upload_stats s CROSS JOIN watermark w
WHERE analytics.shows_producer(s.producer)
GROUP BY 1, 2, s.producer, s.content_type
$$;

CREATE OR REPLACE VIEW analytics.upload_stats_hourly AS SELECT * FROM analytics.upload_stats_rollup('hour');
CREATE OR REPLACE VIEW analytics.upload_stats_daily AS SELECT * FROM analytics.upload_stats_rollup('day');

-- Every duplicate with what it duplicates (the original's producer and arrival time; NULL when
-- the original is not shown, e.g. a synthetic producer's).
CREATE OR REPLACE VIEW analytics.duplicates AS
SELECT d.image_id, d.duplicate_of, d.duplicate_kind, d.distance, d.producer, d.sha256,
       d.received_at, d.processed_at,
       o.producer AS original_producer, o.received_at AS original_received_at
FROM public.duplicates d
LEFT JOIN public.images o ON o.image_id = d.duplicate_of AND analytics.shows_producer(o.producer)
WHERE analytics.shows_producer(d.producer);

-- Events that arrived after their window was final (counted in no minute window).
CREATE OR REPLACE VIEW analytics.late_events AS
SELECT window_start, image_id, producer, content_type, status, duplicate_kind, size,
       received_at, watermark, behind_ms, processed_at
FROM public.late_events
WHERE analytics.shows_producer(producer);

-- analytics.freshness (every replicated table, the batch service's too): 40-freshness.sql.

GRANT USAGE ON SCHEMA analytics TO analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO analyst;
GRANT EXECUTE ON FUNCTION analytics.shows_producer(text) TO analyst;
