-- The enricher names are known to the code alone (the list in src/enrich/mod.rs): a new
-- enricher is stored without a schema change. 0001 gave the column an unnamed CHECK, which
-- Postgres named enricher_results_enricher_check; IF EXISTS lets a database whose check is
-- already gone migrate too.
ALTER TABLE enricher_results DROP CONSTRAINT IF EXISTS enricher_results_enricher_check;
