-- Views for dashboards (Grafana, grafana/dashboards/mdti.json) and the `report` command: the
-- one read contract over the tables, so a dashboard never repeats a join and a schema change is
-- absorbed here. Days and hours are cut in UTC whatever the session's time zone, so every
-- reader agrees on what "a day" holds.

-- Enrichment runs per UTC day and outcome (enriched: Graph was called; cached: answered from
-- Postgres; skipped: not enriched, e.g. a private address).
CREATE VIEW dash_enrichments_daily AS
SELECT date_trunc('day', r.created_at, 'UTC') AS day,
       r.status,
       count(*)                                AS runs,
       count(DISTINCT r.observable_id)         AS observables,
       sum(r.graph_requests)::bigint           AS graph_requests,
       round(avg(r.duration_ms))::integer      AS avg_duration_ms,
       max(r.duration_ms)                      AS max_duration_ms
FROM enrichment_runs r
GROUP BY 1, 2;

-- Throughput: runs per UTC hour, split by outcome.
CREATE VIEW dash_throughput_hourly AS
SELECT date_trunc('hour', r.created_at, 'UTC')              AS hour,
       count(*)                                             AS runs,
       count(*) FILTER (WHERE r.status = 'enriched')        AS enriched,
       count(*) FILTER (WHERE r.status = 'cached')          AS cached,
       count(*) FILTER (WHERE r.status = 'skipped')         AS skipped,
       sum(r.graph_requests)::bigint                        AS graph_requests
FROM enrichment_runs r
GROUP BY 1;

-- Graph usage per UTC day: requests the runs cost, and cache hits (cached runs, which cost
-- none). Throttling (429) is not stored in Postgres: the Graph client counts it in process.
CREATE VIEW dash_graph_usage_daily AS
SELECT date_trunc('day', r.created_at, 'UTC')                       AS day,
       sum(r.graph_requests)::bigint                                AS graph_requests,
       count(*) FILTER (WHERE r.status = 'enriched')                AS enriched_runs,
       count(*) FILTER (WHERE r.status = 'cached')                  AS cache_hits,
       round(
           (count(*) FILTER (WHERE r.status = 'cached'))::numeric
           / nullif(count(*) FILTER (WHERE r.status IN ('enriched', 'cached')), 0),
           3)                                                       AS cache_hit_ratio
FROM enrichment_runs r
GROUP BY 1;

-- The latest whois indicator of each observable (the most recently updated one).
CREATE VIEW dash_latest_indicators AS
SELECT DISTINCT ON (i.observable_id)
       o.kind,
       o.value             AS observable,
       i.id                AS indicator_id,
       i.title,
       i.description,
       i.threat_start_time,
       i.threat_end_time,
       i.observed_time,
       i."timestamp",
       i.labels,
       i.first_seen_at,
       i.updated_at
FROM indicators i
JOIN observables o ON o.id = i.observable_id
ORDER BY i.observable_id, i.updated_at DESC, i.id;

-- Actor hits with the IOC they were found from and their evidence; `evidence_sources` lists
-- the kinds of evidence (reputation_rule, intel_article, profile_indicator) once each.
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
       h.first_seen,
       h.last_seen,
       h.context,
       h.created_at,
       h.updated_at,
       h.notified_at
FROM actor_hits h
JOIN observables o ON o.id = h.observable_id;

-- New actor hits per UTC day and actor (a hit counts on the day it was first stored).
CREATE VIEW dash_actor_hits_daily AS
SELECT date_trunc('day', h.created_at, 'UTC') AS day,
       h.actor,
       count(*)                               AS hits,
       count(DISTINCT h.observable_id)        AS observables
FROM actor_hits h
GROUP BY 1, 2;

-- Actors by the number of observables linked to them, all time.
CREATE VIEW dash_top_actors AS
SELECT h.actor,
       max(h.profile_id)                AS profile_id,
       count(DISTINCT h.observable_id)  AS observables,
       count(DISTINCT h.artifact)       AS artifacts,
       count(*)                         AS hits,
       min(h.created_at)                AS first_hit_at,
       max(h.updated_at)                AS last_hit_at
FROM actor_hits h
GROUP BY h.actor;

-- Rejected inputs with their reasons (one row per rejected message item).
CREATE VIEW dash_rejections AS
SELECT r.rejected_at,
       r.code,
       r.reason,
       r.input,
       r.source,
       r.message_id,
       r.item_index,
       r.attempts
FROM rejected_inputs r;

-- Rejections per UTC day and code.
CREATE VIEW dash_rejections_daily AS
SELECT date_trunc('day', r.rejected_at, 'UTC') AS day,
       r.code,
       count(*)                                AS rejections
FROM rejected_inputs r
GROUP BY 1, 2;
