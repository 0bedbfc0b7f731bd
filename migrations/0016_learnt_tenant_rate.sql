-- The rate a fleet sharing a tenant has learnt from Graph's 429s: cut by any worker's 429, grown
-- at the heartbeats of workers that wait for their share, never above --tenant-quota. Null until
-- the first change: the fleet then spends the whole quota. Every time is the database's now().
ALTER TABLE tenant_quotas
    ADD COLUMN learnt_rate double precision,
    -- When learnt_rate last changed (grown or cut).
    ADD COLUMN learnt_at timestamptz,
    -- When a 429 last cut it: at most one cut a second for the whole tenant.
    ADD COLUMN cut_at timestamptz;
