-- Newest change wins, whatever order changes arrive in (issue 16, item 6).
--
-- The JDBC sink upserts in arrival order. A dead-letter replay, a connector offset reset or a
-- reordering between CDC topics can bring an older version of a row after a newer one; a plain
-- upsert would then put the old version back. Cassandra itself keeps the version with the
-- newest write time, and cdc_ts is that write time (the mutation time from the commit log), so
-- these guards make PostgreSQL agree with Cassandra: an update whose cdc_ts is older than the
-- stored row's is skipped (a BEFORE UPDATE trigger returning NULL skips the row; the sink's
-- INSERT ... ON CONFLICT DO UPDATE goes through it). upload_stats breaks a tie of cdc_ts (it is
-- in milliseconds) by revision. Rows without a cdc_ts (written by hand) are not guarded.
-- Deletes are not guarded: the sink deletes by key and carries no time to compare.
-- Applied at every `make up` after 10-replicated.sql: idempotent.

CREATE OR REPLACE FUNCTION public.cdc_keep_newest() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.cdc_ts IS NOT NULL AND OLD.cdc_ts IS NOT NULL AND NEW.cdc_ts < OLD.cdc_ts THEN
        RETURN NULL;  -- an older change arriving late: keep the newer row
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION public.cdc_keep_newest_revision() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.cdc_ts IS NOT NULL AND OLD.cdc_ts IS NOT NULL AND (
           NEW.cdc_ts < OLD.cdc_ts
        OR (NEW.cdc_ts = OLD.cdc_ts AND NEW.revision IS NOT NULL AND OLD.revision IS NOT NULL
            AND NEW.revision < OLD.revision)) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER images_cdc_keep_newest BEFORE UPDATE ON public.images
    FOR EACH ROW EXECUTE FUNCTION public.cdc_keep_newest();
CREATE OR REPLACE TRIGGER duplicates_cdc_keep_newest BEFORE UPDATE ON public.duplicates
    FOR EACH ROW EXECUTE FUNCTION public.cdc_keep_newest();
CREATE OR REPLACE TRIGGER late_events_cdc_keep_newest BEFORE UPDATE ON public.late_events
    FOR EACH ROW EXECUTE FUNCTION public.cdc_keep_newest();
CREATE OR REPLACE TRIGGER upload_stats_cdc_keep_newest BEFORE UPDATE ON public.upload_stats
    FOR EACH ROW EXECUTE FUNCTION public.cdc_keep_newest_revision();
