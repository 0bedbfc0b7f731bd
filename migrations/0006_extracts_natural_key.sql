-- Extracts are keyed by what identifies them, (observable_id, enricher, kind, value, field),
-- which was already their upsert key. The surrogate id was never read, yet every extract row
-- (about 57 per enriched observable) paid for its sequence value and its index entry.
--
-- On a large table this rebuilds the key's index once; run it in a quiet hour.
ALTER TABLE extracts DROP COLUMN id;
ALTER TABLE extracts
    DROP CONSTRAINT extracts_observable_enricher_kind_value_field_key,
    ADD CONSTRAINT extracts_pkey PRIMARY KEY (observable_id, enricher, kind, value, field);
