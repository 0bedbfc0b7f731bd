-- Workers sharing one Graph tenant's quota coordinate here. Every timestamp is the database's
-- now(), never a worker's clock, so workers whose clocks disagree still agree on who is live
-- and how long the tenant is throttled.

-- One row per running worker process: its lease on a share of its tenant's quota. A worker
-- renews heartbeat_at every heartbeat interval; a lease not renewed within the lease expiry no
-- longer counts (its worker was killed or cut off) and is deleted by the next live worker.
CREATE TABLE worker_leases (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- Graph requests per second this worker allowed itself at its last heartbeat (null until
    -- it first computed one).
    share double precision,
    -- Live workers it counted then, itself included.
    live_workers integer
);

CREATE INDEX worker_leases_tenant_heartbeat_idx ON worker_leases (tenant_id, heartbeat_at);

-- One row per tenant: until when Graph throttled it. Any worker's 429 raises it (never lowers
-- it); every worker holds back until then.
CREATE TABLE tenant_quotas (
    tenant_id text PRIMARY KEY,
    throttled_until timestamptz NOT NULL
);
