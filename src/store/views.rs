//! The `report` command's picture, read from the dashboard views (`migrations/0004_views.sql`),
//! so the terminal and Grafana show the same numbers.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// What happened since an instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub since: DateTime<Utc>,
    /// Runs by outcome (`cached`, `enriched`, `skipped`), counted by whole UTC hours from the
    /// hour holding `since`.
    pub outcomes: Vec<(String, i64)>,
    pub graph_requests: i64,
    /// Cached runs: answered from Postgres without a Graph request.
    pub cache_hits: i64,
    /// One line per UTC day from the day holding `since`, oldest first.
    pub daily: Vec<DailyLine>,
    /// Actors with a hit updated since then, by observables linked (all-time counts).
    pub top_actors: Vec<TopActor>,
    /// Hits updated since then, newest first.
    pub recent_hits: Vec<RecentHit>,
    /// Rejections since then by code, most frequent first.
    pub rejections: Vec<RejectionCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DailyLine {
    pub day: DateTime<Utc>,
    pub enriched: i64,
    pub cached: i64,
    pub skipped: i64,
    pub graph_requests: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TopActor {
    pub actor: String,
    pub observables: i64,
    pub artifacts: i64,
    pub hits: i64,
    pub last_hit_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RecentHit {
    pub updated_at: DateTime<Utc>,
    pub actor: String,
    pub observable: String,
    pub artifact: String,
    pub evidence_sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RejectionCount {
    pub code: String,
    pub rejections: i64,
    /// The reason and input of the latest rejection with this code.
    pub latest_reason: String,
    pub latest_input: String,
}

impl Store {
    /// The report since `since`, with at most `top` actors and `top` recent hits.
    pub async fn report(&self, since: DateTime<Utc>, top: i64) -> Result<Report, StoreError> {
        let pool = self.pool();
        let totals = sqlx::query(
            "SELECT coalesce(sum(enriched), 0)::bigint AS enriched, \
                    coalesce(sum(cached), 0)::bigint AS cached, \
                    coalesce(sum(skipped), 0)::bigint AS skipped, \
                    coalesce(sum(graph_requests), 0)::bigint AS graph_requests \
             FROM dash_throughput_hourly WHERE hour >= date_trunc('hour', $1, 'UTC')",
        )
        .bind(since)
        .fetch_one(pool)
        .await?;
        let cache_hits: i64 = totals.try_get("cached")?;
        let outcomes = vec![
            ("cached".to_owned(), cache_hits),
            ("enriched".to_owned(), totals.try_get("enriched")?),
            ("skipped".to_owned(), totals.try_get("skipped")?),
        ];

        let daily = sqlx::query_as::<_, DailyLine>(
            "SELECT day, \
                    coalesce(sum(runs) FILTER (WHERE status = 'enriched'), 0)::bigint AS enriched, \
                    coalesce(sum(runs) FILTER (WHERE status = 'cached'), 0)::bigint AS cached, \
                    coalesce(sum(runs) FILTER (WHERE status = 'skipped'), 0)::bigint AS skipped, \
                    sum(graph_requests)::bigint AS graph_requests \
             FROM dash_enrichments_daily WHERE day >= date_trunc('day', $1, 'UTC') \
             GROUP BY day ORDER BY day",
        )
        .bind(since)
        .fetch_all(pool)
        .await?;

        let top_actors = sqlx::query_as::<_, TopActor>(
            "SELECT actor, observables, artifacts, hits, last_hit_at FROM dash_top_actors \
             WHERE last_hit_at >= $1 ORDER BY observables DESC, hits DESC, actor LIMIT $2",
        )
        .bind(since)
        .bind(top)
        .fetch_all(pool)
        .await?;

        let recent_hits = sqlx::query_as::<_, RecentHit>(
            "SELECT updated_at, actor, observable, artifact, evidence_sources FROM dash_actor_hits \
             WHERE updated_at >= $1 ORDER BY updated_at DESC, actor, observable, artifact LIMIT $2",
        )
        .bind(since)
        .bind(top)
        .fetch_all(pool)
        .await?;

        let rejections = sqlx::query_as::<_, RejectionCount>(
            "SELECT code, count(*) AS rejections, \
                    (array_agg(reason ORDER BY rejected_at DESC))[1] AS latest_reason, \
                    (array_agg(input ORDER BY rejected_at DESC))[1] AS latest_input \
             FROM dash_rejections WHERE rejected_at >= $1 \
             GROUP BY code ORDER BY count(*) DESC, code",
        )
        .bind(since)
        .fetch_all(pool)
        .await?;

        Ok(Report {
            since,
            outcomes,
            graph_requests: totals.try_get("graph_requests")?,
            cache_hits,
            daily,
            top_actors,
            recent_hits,
            rejections,
        })
    }
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Since {}", when(self.since))?;
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(status, runs)| format!("{runs} {status}"))
            .collect();
        writeln!(f, "  runs:            {}", outcomes.join(", "))?;
        writeln!(
            f,
            "  Graph:           {} requests, {} cache hits",
            self.graph_requests, self.cache_hits
        )?;
        if !self.daily.is_empty() {
            writeln!(
                f,
                "\n  day (UTC)     enriched   cached  skipped  Graph requests"
            )?;
            for line in &self.daily {
                writeln!(
                    f,
                    "  {}  {:>8} {:>8} {:>8} {:>15}",
                    line.day.format("%Y-%m-%d"),
                    line.enriched,
                    line.cached,
                    line.skipped,
                    line.graph_requests
                )?;
            }
        }
        writeln!(
            f,
            "\n  top actors (observables, artifacts, hits, last hit):"
        )?;
        if self.top_actors.is_empty() {
            writeln!(f, "    none")?;
        }
        for actor in &self.top_actors {
            writeln!(
                f,
                "    {:<24} {:>5} {:>5} {:>5}  {}",
                actor.actor,
                actor.observables,
                actor.artifacts,
                actor.hits,
                when(actor.last_hit_at)
            )?;
        }
        if !self.recent_hits.is_empty() {
            writeln!(f, "\n  recent actor hits:")?;
            for hit in &self.recent_hits {
                writeln!(
                    f,
                    "    {}  {:<20} {} via {} [{}]",
                    when(hit.updated_at),
                    hit.actor,
                    hit.observable,
                    hit.artifact,
                    hit.evidence_sources.join(", ")
                )?;
            }
        }
        writeln!(f, "\n  rejections by code:")?;
        if self.rejections.is_empty() {
            writeln!(f, "    none")?;
        }
        for rejection in &self.rejections {
            let input: String = rejection.latest_input.chars().take(40).collect();
            writeln!(
                f,
                "    {:<22} {:>5}  latest: {input:?}: {}",
                rejection.code, rejection.rejections, rejection.latest_reason
            )?;
        }
        Ok(())
    }
}
