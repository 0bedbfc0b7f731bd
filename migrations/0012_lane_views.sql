-- Lanes in the dashboard views (grafana/dashboards/mdti.json) and in `report`: what waits in
-- each lane, and how fast each lane is done.

-- What waits in each lane's work and retry queues, as a consuming worker last counted it
-- (`lane_backlog`, written every 5 s). Both lanes are always present: a lane no worker has
-- counted yet has a null count and time, rather than no row, so a reader can tell "never
-- counted" from "empty". `age_seconds` is how old the count is: a count that stopped
-- refreshing means no worker consumes that lane.
CREATE VIEW dash_lane_backlog AS
SELECT l.lane,
       b.ready_messages,
       b.observed_at,
       extract(epoch FROM now() - b.observed_at)::double precision AS age_seconds
FROM (VALUES ('live'), ('bulk')) AS l (lane)
LEFT JOIN lane_backlog b ON b.lane = l.lane;

-- Observables done (runs of any outcome) per UTC minute and lane, with the Graph requests they
-- cost: each lane's pace, minute by minute.
CREATE VIEW dash_lane_throughput_minutely AS
SELECT date_trunc('minute', r.created_at, 'UTC') AS minute,
       r.lane,
       count(*)                                  AS observables,
       sum(r.graph_requests)::bigint             AS graph_requests
FROM enrichment_runs r
GROUP BY 1, 2;
