-- Extracts are written only by the transaction that upserts their observable and their run
-- (store/write.rs takes the observable's id from that upsert's RETURNING), so the two foreign
-- keys checked nothing the writer does not guarantee. They cost the most of anything Postgres
-- did per observable: each extract row (about 72 per enriched observable) ran two
-- referential-integrity lookups, each a query of its own with a row lock on the parent,
-- which measured as much as the rest of the extract's insert.
--
-- What the keys did on delete stays, done once per deleting statement instead of once per row:
-- deleting observables deletes their extracts, and deleting runs (directly or through their
-- observable) clears the run_id of their extracts.
ALTER TABLE extracts
    DROP CONSTRAINT extracts_observable_id_fkey,
    DROP CONSTRAINT extracts_run_id_fkey;

CREATE FUNCTION extracts_drop_deleted_observables() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM extracts x USING gone g WHERE x.observable_id = g.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER observables_delete_extracts
    AFTER DELETE ON observables
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION extracts_drop_deleted_observables();

CREATE FUNCTION extracts_unlink_deleted_runs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE extracts x SET run_id = NULL FROM gone g WHERE x.run_id = g.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER enrichment_runs_unlink_extracts
    AFTER DELETE ON enrichment_runs
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION extracts_unlink_deleted_runs();
