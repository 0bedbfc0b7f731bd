-- Lanes: live observables (answered first) and bulk ones (backfills), and a ledger of what the
-- publish command sent, so that `status` can say what is left of a source and when it ends.

-- Which lane each run and rejection came through. Existing rows were all bulk work: one queue
-- served everything before lanes. A constant default adds the column without rewriting the
-- table, and NOT VALID checks new rows without scanning the old ones (all 'bulk').
ALTER TABLE enrichment_runs ADD COLUMN lane text NOT NULL DEFAULT 'bulk';
ALTER TABLE enrichment_runs ADD CONSTRAINT enrichment_runs_lane_check
    CHECK (lane IN ('live', 'bulk')) NOT VALID;
ALTER TABLE rejected_inputs ADD COLUMN lane text NOT NULL DEFAULT 'bulk';
ALTER TABLE rejected_inputs ADD CONSTRAINT rejected_inputs_lane_check
    CHECK (lane IN ('live', 'bulk')) NOT VALID;

-- One row per publish run: what it sent, to which lane, for which source. What a source has
-- left is what its publications sent since its first unfinished one, less what the worker has
-- settled of that source since.
CREATE TABLE publications (
    id           bigserial   PRIMARY KEY,
    source       text        NOT NULL,
    lane         text        NOT NULL CHECK (lane IN ('live', 'bulk')),
    observables  bigint      NOT NULL CHECK (observables >= 0),
    messages     bigint      NOT NULL CHECK (messages >= 0),
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX publications_source_published_idx ON publications (source, published_at);

-- What waits in each lane's queues (work and retry), as a consuming worker last saw it: the
-- broker's count, kept where the dashboards (which read only Postgres) can show it.
CREATE TABLE lane_backlog (
    lane           text        PRIMARY KEY CHECK (lane IN ('live', 'bulk')),
    ready_messages bigint      NOT NULL CHECK (ready_messages >= 0),
    observed_at    timestamptz NOT NULL DEFAULT now()
);
