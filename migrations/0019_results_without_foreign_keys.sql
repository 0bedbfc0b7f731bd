-- The rest of a result's rows go the way of the extracts (0014): runs, enricher results,
-- indicators, actor hits and attributions are written only by the transaction that upserts their
-- observable (store/write.rs and store/actors.rs take its id from that upsert's RETURNING, which
-- also locks the row until the commit), and an enricher result's or indicator's run is written
-- by the same transaction. Their foreign keys checked nothing the writer does not guarantee, at
-- one referential-integrity query per row: about 25 per enriched observable (every hit, pair,
-- enricher result and indicator, and the runs), each with a row lock on the parent.
--
-- What the keys did on delete stays, done once per deleting statement instead of once per row:
-- deleting observables deletes everything written about them, and deleting runs (directly or
-- through their observable) clears the run_id of the rows they wrote.
ALTER TABLE enrichment_runs DROP CONSTRAINT enrichment_runs_observable_id_fkey;
ALTER TABLE enricher_results
    DROP CONSTRAINT enricher_results_observable_id_fkey,
    DROP CONSTRAINT enricher_results_run_id_fkey;
ALTER TABLE indicators
    DROP CONSTRAINT indicators_observable_id_fkey,
    DROP CONSTRAINT indicators_run_id_fkey;
ALTER TABLE actor_hits DROP CONSTRAINT actor_hits_observable_id_fkey;
ALTER TABLE actor_attributions DROP CONSTRAINT actor_attributions_observable_id_fkey;

-- The runs go last: their own trigger then unlinks rows already gone.
CREATE OR REPLACE FUNCTION extracts_drop_deleted_observables() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM extracts x USING gone g WHERE x.observable_id = g.id;
    DELETE FROM enricher_results r USING gone g WHERE r.observable_id = g.id;
    DELETE FROM indicators i USING gone g WHERE i.observable_id = g.id;
    DELETE FROM actor_hits h USING gone g WHERE h.observable_id = g.id;
    DELETE FROM actor_attributions a USING gone g WHERE a.observable_id = g.id;
    DELETE FROM enrichment_runs r USING gone g WHERE r.observable_id = g.id;
    RETURN NULL;
END
$$;
ALTER FUNCTION extracts_drop_deleted_observables() RENAME TO observables_drop_dependents;
ALTER TRIGGER observables_delete_extracts ON observables RENAME TO observables_delete_dependents;

CREATE OR REPLACE FUNCTION extracts_unlink_deleted_runs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE extracts x SET run_id = NULL FROM gone g WHERE x.run_id = g.id;
    UPDATE enricher_results r SET run_id = NULL FROM gone g WHERE r.run_id = g.id;
    UPDATE indicators i SET run_id = NULL FROM gone g WHERE i.run_id = g.id;
    RETURN NULL;
END
$$;
ALTER FUNCTION extracts_unlink_deleted_runs() RENAME TO enrichment_runs_unlink_dependents;
ALTER TRIGGER enrichment_runs_unlink_extracts ON enrichment_runs
    RENAME TO enrichment_runs_unlink_dependents;
