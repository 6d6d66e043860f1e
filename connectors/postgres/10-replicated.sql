-- Tables replicated from Cassandra (keyspace imgstream) by the Debezium JDBC sink
-- (connectors/cdc-postgres-sink.json), pre-created here so their types, keys and indexes are
-- ours rather than inferred from the first record. Applied by the local stack at every
-- `make up`, as role imgstream: idempotent.
--
-- Columns mirror flink_jobs/schema.cql one to one (Cassandra timestamp -> timestamptz, UTC),
-- plus three written by the CDC path:
--   cdc_op          c (insert) | u (update) of the last change applied
--   cdc_ts          when that change was written to Cassandra (mutation time, from the commit log)
--   cdc_applied_at  when PostgreSQL applied it (set by trigger): cdc_applied_at - cdc_ts is the
--                   replication delay of that row
-- Deletes in Cassandra delete here (the sink deletes by primary key). Rows that expire by TTL in
-- Cassandra (upload_stats, 30 days) produce no change and stay here: PostgreSQL keeps the history.

CREATE TABLE IF NOT EXISTS public.images (
    image_id         text PRIMARY KEY,
    producer         text,
    sha256           text,
    phash            text,
    size             bigint,
    content_type     text,
    width            integer,
    height           integer,
    storage_key      text,
    received_at      timestamptz,
    status           text,
    duplicate_of     text,
    duplicate_kind   text,
    distance         integer,
    lateness         text,
    reject_reason    text,
    reject_error     text,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    processed_at     timestamptz,
    cdc_op           text,
    cdc_ts           timestamptz,
    cdc_applied_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.duplicates (
    duplicate_of   text NOT NULL,
    image_id       text NOT NULL,
    duplicate_kind text,
    distance       integer,
    producer       text,
    sha256         text,
    received_at    timestamptz,
    processed_at   timestamptz,
    cdc_op         text,
    cdc_ts         timestamptz,
    cdc_applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (duplicate_of, image_id)
);

CREATE TABLE IF NOT EXISTS public.upload_stats (
    window_start     timestamptz NOT NULL,
    producer         text NOT NULL,
    content_type     text NOT NULL,
    window_end       timestamptz,
    uploads          bigint,
    bytes            bigint,
    accepted         bigint,
    duplicates_exact bigint,
    duplicates_near  bigint,
    rejected         bigint,
    duplicates       bigint,
    revision         integer,
    late_events      integer,
    final            boolean,
    updated_at       timestamptz,
    cdc_op           text,
    cdc_ts           timestamptz,
    cdc_applied_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start, producer, content_type)
);

CREATE TABLE IF NOT EXISTS public.late_events (
    window_start   timestamptz NOT NULL,
    image_id       text NOT NULL,
    producer       text,
    content_type   text,
    status         text,
    duplicate_kind text,
    size           bigint,
    received_at    timestamptz,
    watermark      timestamptz,
    behind_ms      bigint,
    processed_at   timestamptz,
    cdc_op         text,
    cdc_ts         timestamptz,
    cdc_applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start, image_id)
);

-- Indexes for the stats API and analysts: per-producer time ranges, status filters, "copies of X",
-- and the freshness probe (newest change applied per table).
CREATE INDEX IF NOT EXISTS images_received_at_idx ON public.images (received_at);
CREATE INDEX IF NOT EXISTS images_producer_received_at_idx ON public.images (producer, received_at);
CREATE INDEX IF NOT EXISTS images_status_received_at_idx ON public.images (status, received_at);
CREATE INDEX IF NOT EXISTS images_sha256_idx ON public.images (sha256);
CREATE INDEX IF NOT EXISTS images_duplicate_of_idx ON public.images (duplicate_of) WHERE duplicate_of IS NOT NULL;
CREATE INDEX IF NOT EXISTS images_cdc_ts_idx ON public.images (cdc_ts);
CREATE INDEX IF NOT EXISTS duplicates_received_at_idx ON public.duplicates (received_at);
CREATE INDEX IF NOT EXISTS duplicates_producer_received_at_idx ON public.duplicates (producer, received_at);
CREATE INDEX IF NOT EXISTS duplicates_image_id_idx ON public.duplicates (image_id);
CREATE INDEX IF NOT EXISTS duplicates_cdc_ts_idx ON public.duplicates (cdc_ts);
CREATE INDEX IF NOT EXISTS upload_stats_producer_window_idx ON public.upload_stats (producer, window_start);
CREATE INDEX IF NOT EXISTS upload_stats_cdc_ts_idx ON public.upload_stats (cdc_ts);
CREATE INDEX IF NOT EXISTS late_events_producer_window_idx ON public.late_events (producer, window_start);
CREATE INDEX IF NOT EXISTS late_events_cdc_ts_idx ON public.late_events (cdc_ts);

-- cdc_applied_at = the time PostgreSQL applied the row (the sink's upsert does not touch it).
CREATE OR REPLACE FUNCTION public.cdc_touch_applied_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.cdc_applied_at := clock_timestamp();
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER images_cdc_applied_at BEFORE INSERT OR UPDATE ON public.images
    FOR EACH ROW EXECUTE FUNCTION public.cdc_touch_applied_at();
CREATE OR REPLACE TRIGGER duplicates_cdc_applied_at BEFORE INSERT OR UPDATE ON public.duplicates
    FOR EACH ROW EXECUTE FUNCTION public.cdc_touch_applied_at();
CREATE OR REPLACE TRIGGER upload_stats_cdc_applied_at BEFORE INSERT OR UPDATE ON public.upload_stats
    FOR EACH ROW EXECUTE FUNCTION public.cdc_touch_applied_at();
CREATE OR REPLACE TRIGGER late_events_cdc_applied_at BEFORE INSERT OR UPDATE ON public.late_events
    FOR EACH ROW EXECUTE FUNCTION public.cdc_touch_applied_at();

GRANT SELECT ON public.images, public.duplicates, public.upload_stats, public.late_events TO analyst;
