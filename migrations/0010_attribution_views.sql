-- Confidence in the dashboard views (grafana/dashboards/mdti.json) and in `report`: every view
-- that shows hits says how strong they are, and the attributions (one per observable and actor,
-- `actor_attributions`) get views of their own.
--
-- A pair's confidence is the best of its hits' (as `actor_attributions` stores it), and
-- `confidence_band` (0009) is the one definition of the bands here, so a view cannot drift
-- from src/chain/confidence.rs. Existing views only gain columns at their end (CREATE OR
-- REPLACE VIEW allows no more), so the panels and queries written against them keep working.

-- New actor hits per UTC day and actor, now split by the band of each hit.
CREATE OR REPLACE VIEW dash_actor_hits_daily AS
SELECT date_trunc('day', h.created_at, 'UTC')                               AS day,
       h.actor,
       count(*)                                                             AS hits,
       count(DISTINCT h.observable_id)                                      AS observables,
       count(*) FILTER (WHERE confidence_band(h.confidence) = 'high')       AS high_hits,
       count(*) FILTER (WHERE confidence_band(h.confidence) = 'medium')     AS medium_hits,
       count(*) FILTER (WHERE confidence_band(h.confidence) = 'low')        AS low_hits
FROM actor_hits h
GROUP BY 1, 2;

-- Actors by the number of observables linked to them, all time, and by how strongly: an
-- observable counts in the band of its pair (the best of its hits with this actor), so an actor
-- with one strong and one weak link to the same observable counts it once, as high.
CREATE OR REPLACE VIEW dash_top_actors AS
SELECT h.actor,
       max(h.profile_id)                                                    AS profile_id,
       count(DISTINCT h.observable_id)                                      AS observables,
       count(DISTINCT h.artifact)                                           AS artifacts,
       count(*)                                                             AS hits,
       min(h.created_at)                                                    AS first_hit_at,
       max(h.updated_at)                                                    AS last_hit_at,
       count(DISTINCT h.observable_id) FILTER (WHERE h.pair_band = 'high')   AS high_observables,
       count(DISTINCT h.observable_id) FILTER (WHERE h.pair_band = 'medium') AS medium_observables,
       count(DISTINCT h.observable_id) FILTER (WHERE h.pair_band = 'low')    AS low_observables,
       max(h.confidence)                                                    AS best_confidence
FROM (
    SELECT x.*,
           confidence_band(max(x.confidence) OVER (PARTITION BY x.observable_id, x.actor))
               AS pair_band
    FROM actor_hits x
) h
GROUP BY h.actor;

-- One row per observable and actor: what its hits add up to, and whether it was announced.
-- `updated_at` moves when a walk writes the pair's hits again (not when an event goes out), so
-- it is when the attribution was last seen to hold.
CREATE VIEW dash_attributions AS
SELECT a.id              AS attribution_id,
       o.kind,
       o.value           AS observable,
       a.actor,
       a.profile_id,
       a.aliases,
       a.confidence,
       a.band,
       a.evidence_kinds,
       a.artifacts,
       a.first_seen,
       a.last_seen,
       a.context,
       a.owed            AS event_owed,
       a.announcements,
       a.notified_at,
       a.created_at,
       a.updated_at
FROM actor_attributions a
JOIN observables o ON o.id = a.observable_id;

-- Attributions per UTC day (the day the pair was first attributed) and band. The band is the
-- pair's band now: a pair that rose from medium to high counts as high on the day it appeared.
CREATE VIEW dash_attributions_daily AS
SELECT date_trunc('day', a.created_at, 'UTC') AS day,
       a.band,
       count(*)                               AS attributions,
       count(DISTINCT a.observable_id)        AS observables,
       count(DISTINCT a.actor)                AS actors
FROM actor_attributions a
GROUP BY 1, 2;
