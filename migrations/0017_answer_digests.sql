-- A re-enrichment whose answer is the one stored leaves the extracts alone: each enricher result
-- keeps a digest of the extract rows its answer wrote, and when the next answer's digest is the
-- same only this row changes (fetched_at, run_id). Before, every re-enrichment rewrote each
-- extract row only to move its last_seen_at (about 74 row updates per observable).
ALTER TABLE enricher_results
    -- SHA-1 of the answer's extract rows, 16 bytes (a name-based UUID). Null for rows written
    -- before this column: the next answer is then written in full.
    ADD COLUMN answer_digest uuid,
    -- When the answer took its current form; fetched_at is when it was last confirmed.
    ADD COLUMN unchanged_since timestamptz;

COMMENT ON COLUMN extracts.last_seen_at IS
    'when the row was last written; the last sighting is extracts_seen.last_seen_at';

-- Extracts with their last sighting: a row written since its answer took its current form was
-- seen at every fetch since, so at fetched_at; a row a later answer dropped keeps the time of
-- the last answer that had it.
CREATE VIEW extracts_seen AS
SELECT x.observable_id, x.enricher, x.kind, x.value, x.field, x.country_code,
       x.first_seen_at,
       CASE WHEN x.last_seen_at >= r.unchanged_since
            THEN greatest(x.last_seen_at, r.fetched_at)
            ELSE x.last_seen_at END AS last_seen_at,
       x.run_id
FROM extracts x
LEFT JOIN enricher_results r ON r.observable_id = x.observable_id AND r.enricher = x.enricher;
