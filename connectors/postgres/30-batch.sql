-- Tables of the batch service (batch/, docs/batch.md) replicated from Cassandra by the same CDC
-- chain as 10-replicated.sql (the sink's topics.regex already covers cdc.imgstream.*), and their
-- analyst views. Idempotent; applied at every `make up` as role imgstream, after 10 and 20.

CREATE TABLE IF NOT EXISTS public.derivatives (
    sha256         text NOT NULL,
    ladder         text NOT NULL,
    preset         text NOT NULL,
    format         text NOT NULL,
    width          integer,
    height         integer,
    size           bigint,
    storage_key    text,
    created_at     timestamptz,
    run_id         text,
    cdc_op         text,
    cdc_ts         timestamptz,
    cdc_applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sha256, ladder, preset, format)
);

CREATE TABLE IF NOT EXISTS public.gc_log (
    run_id         text NOT NULL,
    storage_key    text NOT NULL,
    action         text NOT NULL,
    reason         text,
    size           bigint,
    sha256         text,
    mode           text,
    at             timestamptz,
    cdc_op         text,
    cdc_ts         timestamptz,
    cdc_applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, storage_key, action)
);

CREATE INDEX IF NOT EXISTS derivatives_cdc_ts_idx ON public.derivatives (cdc_ts);
CREATE INDEX IF NOT EXISTS gc_log_at_idx ON public.gc_log (at);
CREATE INDEX IF NOT EXISTS gc_log_storage_key_idx ON public.gc_log (storage_key);

CREATE OR REPLACE TRIGGER derivatives_cdc_applied_at BEFORE INSERT OR UPDATE ON public.derivatives
    FOR EACH ROW EXECUTE FUNCTION public.cdc_touch_applied_at();
CREATE OR REPLACE TRIGGER gc_log_cdc_applied_at BEFORE INSERT OR UPDATE ON public.gc_log
    FOR EACH ROW EXECUTE FUNCTION public.cdc_touch_applied_at();

-- Derivatives (thumbnails, sizes, conversions) per content hash: join analytics.images on sha256
-- to list an image's derivatives (every image with that content shares them).
CREATE OR REPLACE VIEW analytics.derivatives AS
SELECT sha256, ladder, preset, format, width, height, size, storage_key, created_at, run_id,
       cdc_applied_at AS replicated_at
FROM public.derivatives;

-- The garbage collector's audit trail: every candidate, quarantine, restore and delete.
CREATE OR REPLACE VIEW analytics.gc_log AS
SELECT run_id, storage_key, action, reason, size, sha256, mode, at, cdc_applied_at AS replicated_at
FROM public.gc_log;

GRANT SELECT ON public.derivatives, public.gc_log TO analyst;
GRANT USAGE ON SCHEMA analytics TO analyst;
GRANT SELECT ON analytics.derivatives, analytics.gc_log TO analyst;
