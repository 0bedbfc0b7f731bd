-- When an intel profile sync last ran to its end. A worker starting up takes the stored profiles
-- as its index only once a sync has completed: while one is still running (another worker's),
-- the tables hold some profiles and not yet the others, and walks matched against them would
-- miss hits that later walks find.
CREATE TABLE intel_profile_syncs (
    -- One row: the latest completion.
    id           boolean     PRIMARY KEY DEFAULT true CHECK (id),
    completed_at timestamptz NOT NULL
);

-- Profiles stored before this table existed came from syncs that completed.
INSERT INTO intel_profile_syncs (completed_at)
SELECT max(synced_at) FROM intel_profiles HAVING count(*) > 0;
