-- Reputation lookups in flight across workers. A worker about to ask Graph for a host's
-- reputation claims the host here first; a worker that finds it claimed waits for the answer to
-- appear in `reputations` instead of asking too, until the claim runs out (its holder may have
-- died). Within one worker, walks already share their lookups in memory; this extends that to
-- workers sharing one database, used with --share-lookups (on with --tenant-quota).
--
-- UNLOGGED: a claim is worth nothing after a crash (it runs out anyway), and writing claims to
-- the WAL would cost every lookup a flush.
CREATE UNLOGGED TABLE reputation_claims (
    host          text        PRIMARY KEY,
    claimed_until timestamptz NOT NULL
);
