-- The extracts' key and pivot columns compare as bytes (collation "C") instead of through the
-- database's locale: their values are names, addresses and Graph field names, matched for
-- equality, and every extract row's two index entries were placed by locale comparisons, a
-- tenth of the row's insert. Equality is unchanged (the locales Postgres ships compare equal
-- exactly what is byte-equal); only ORDER BY on these columns may order differently under a
-- locale other than C or C.UTF-8, which order by code point as bytes do.
--
-- The table is not rewritten, but its two indexes are rebuilt; run it in a quiet hour.
ALTER TABLE extracts
    ALTER COLUMN enricher TYPE text COLLATE "C",
    ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN value TYPE text COLLATE "C",
    ALTER COLUMN field TYPE text COLLATE "C";
