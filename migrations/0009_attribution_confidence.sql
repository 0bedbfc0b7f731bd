-- Attribution a SOC can act on (src/chain/confidence.rs, src/store/attributions.rs,
-- src/outbox.rs).
--
-- Every actor hit gets a confidence from 0 to 100 and the factors that made it. Events go out
-- per (observable, actor) instead of per hit: `actor_attributions` holds one row per pair,
-- whose confidence is the best of its hits', and it is the outbox. A pair is owed an event when
-- it first reaches the worker's --min-event-confidence, and again when its band changes or a
-- new kind of evidence arrives.

-- The bands of src/chain/confidence.rs (Band::of); a test checks that both agree.
CREATE FUNCTION confidence_band(confidence integer) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN confidence >= 70 THEN 'high'
                      WHEN confidence >= 40 THEN 'medium'
                      ELSE 'low' END $$;

-- Hits stored before this migration were not scored: they read 0 until their observable is
-- walked again.
ALTER TABLE actor_hits
    ADD COLUMN confidence smallint NOT NULL DEFAULT 0
        CONSTRAINT actor_hits_confidence_range CHECK (confidence BETWEEN 0 AND 100),
    -- [{"factor": "link" | "agreement" | ..., "detail": "...", "points": 40}, ...]
    ADD COLUMN confidence_factors jsonb NOT NULL DEFAULT '[]';

-- How many distinct hosts a host's passive DNS names (a page at most): how shared it is.
-- A cache, like `reputations`: a lost row is asked of Graph again.
CREATE TABLE host_fanout (
    host       text        PRIMARY KEY,
    names      integer     NOT NULL,
    -- The listing went on past what was counted: `names` is a lower bound.
    more       boolean     NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (observable, actor): what the hits of the pair add up to.
CREATE TABLE actor_attributions (
    id              bigserial   PRIMARY KEY,
    observable_id   bigint      NOT NULL REFERENCES observables (id) ON DELETE CASCADE,
    actor           text        NOT NULL,
    profile_id      text,
    aliases         text[]      NOT NULL DEFAULT '{}',
    -- The best confidence of the pair's hits, and its band.
    confidence      smallint    NOT NULL,
    band            text        NOT NULL,
    -- Distinct evidence kinds over the pair's hits, sorted.
    evidence_kinds  text[]      NOT NULL DEFAULT '{}',
    -- Distinct linking artifacts.
    artifacts       integer     NOT NULL,
    first_seen      timestamptz,
    last_seen       timestamptz,
    context         jsonb,
    -- An event is due: set by the writer that changed the pair, cleared by the relay that
    -- announced it.
    owed            boolean     NOT NULL DEFAULT false,
    -- What the last event said (band and evidence kinds), to tell a change worth a new event.
    announced_band  text,
    announced_kinds text[]      NOT NULL DEFAULT '{}',
    announcements   integer     NOT NULL DEFAULT 0,
    notified_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT actor_attributions_observable_actor_key UNIQUE (observable_id, actor)
);
CREATE INDEX actor_attributions_owed_idx ON actor_attributions (id) WHERE owed;
CREATE INDEX actor_attributions_actor_idx ON actor_attributions (actor, band);

-- The pairs of the hits stored so far. Those hits were announced one by one: a pair with a hit
-- still owed is owed, the others count as announced as they stand, so the upgrade repeats no
-- event.
INSERT INTO actor_attributions (observable_id, actor, profile_id, aliases, confidence, band,
                                evidence_kinds, artifacts, first_seen, last_seen, context, owed,
                                announced_band, announced_kinds, announcements, notified_at,
                                created_at, updated_at)
SELECT p.observable_id, p.actor, latest.profile_id, latest.aliases, 0, 'low', kinds.kinds,
       p.artifacts, p.first_seen, p.last_seen, latest.context, p.owed,
       CASE WHEN p.owed THEN NULL ELSE 'low' END,
       CASE WHEN p.owed THEN '{}' ELSE kinds.kinds END,
       CASE WHEN p.owed THEN 0 ELSE 1 END,
       p.notified_at, p.created_at, p.updated_at
FROM (
    SELECT h.observable_id, h.actor, count(*) AS artifacts, min(h.first_seen) AS first_seen,
           max(h.last_seen) AS last_seen, bool_or(h.notified_at IS NULL) AS owed,
           max(h.notified_at) AS notified_at, min(h.created_at) AS created_at,
           max(h.updated_at) AS updated_at
    FROM actor_hits h
    GROUP BY h.observable_id, h.actor
) p
CROSS JOIN LATERAL (
    SELECT x.profile_id, x.aliases, x.context FROM actor_hits x
    WHERE x.observable_id = p.observable_id AND x.actor = p.actor
    ORDER BY (x.profile_id IS NULL), x.updated_at DESC, x.id DESC LIMIT 1
) latest
CROSS JOIN LATERAL (
    SELECT ARRAY(SELECT DISTINCT e ->> 'source'
                 FROM actor_hits x, jsonb_array_elements(x.evidence) AS e
                 WHERE x.observable_id = p.observable_id AND x.actor = p.actor
                   AND e ->> 'source' IS NOT NULL
                 ORDER BY 1) AS kinds
) kinds;

-- Hits are no longer the outbox.
DROP VIEW dash_actor_hits;
DROP INDEX actor_hits_pending_idx;
ALTER TABLE actor_hits DROP COLUMN notified_at;

-- Actor hits with the IOC they were found from, their evidence and confidence.
CREATE VIEW dash_actor_hits AS
SELECT h.id            AS hit_id,
       h.actor,
       h.profile_id,
       h.aliases,
       o.kind,
       o.value         AS observable,
       h.artifact,
       h.path,
       h.evidence,
       ARRAY(SELECT DISTINCT e ->> 'source'
             FROM jsonb_array_elements(h.evidence) AS e
             WHERE e ->> 'source' IS NOT NULL
             ORDER BY 1)  AS evidence_sources,
       h.confidence,
       confidence_band(h.confidence) AS band,
       h.confidence_factors,
       h.first_seen,
       h.last_seen,
       h.context,
       h.created_at,
       h.updated_at
FROM actor_hits h
JOIN observables o ON o.id = h.observable_id;
