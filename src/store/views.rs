//! The `report` command's picture, read from the dashboard views (`migrations/0004_views.sql`,
//! `migrations/0010_attribution_views.sql`, `migrations/0012_lane_views.sql`), so the terminal
//! and Grafana show the same numbers.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};
use crate::model::Band;

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
    /// Attributions (observable and actor) written since then, by band: high, medium, low,
    /// each present.
    pub bands: Vec<(String, i64)>,
    /// Actors with a hit updated since then, by observables attributed with high confidence,
    /// then medium, then all (all-time counts).
    pub top_actors: Vec<TopActor>,
    /// Attributions written since then, strongest first.
    pub attributions: Vec<AttributionLine>,
    /// Hits updated since then, newest first.
    pub recent_hits: Vec<RecentHit>,
    /// Rejections since then by code, most frequent first.
    pub rejections: Vec<RejectionCount>,
    /// What waits in each lane now (not bound to `since`): live, then bulk, both always present.
    pub lane_backlog: Vec<LaneBacklog>,
}

/// What waits in one lane's work and retry queues, as a consuming worker last counted it
/// (`dash_lane_backlog`).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct LaneBacklog {
    pub lane: String,
    /// Messages ready; `null` when no worker has counted this lane yet.
    pub ready_messages: Option<i64>,
    /// When the count was taken, and how many seconds ago: a count that stops getting younger
    /// means no worker consumes the lane any more.
    pub observed_at: Option<DateTime<Utc>>,
    pub age_seconds: Option<f64>,
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
    /// Of `observables`, those in each band: an observable counts in the band of its
    /// attribution to this actor (the best of its hits).
    pub high_observables: i64,
    pub medium_observables: i64,
    pub low_observables: i64,
    /// The best confidence of the actor's hits, 0-100.
    pub best_confidence: i16,
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
    /// The hit's own confidence, 0-100, and its band.
    pub confidence: i16,
    pub band: String,
}

/// One attribution (observable and actor), from `dash_attributions`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AttributionLine {
    pub updated_at: DateTime<Utc>,
    pub actor: String,
    pub kind: String,
    pub observable: String,
    /// The best confidence of the pair's hits, 0-100, and its band.
    pub confidence: i16,
    pub band: String,
    /// Distinct evidence kinds over the pair's hits, sorted.
    pub evidence_kinds: Vec<String>,
    /// Distinct linking artifacts.
    pub artifacts: i32,
    /// Events sent for the pair so far, and whether one is due.
    pub announcements: i32,
    pub event_owed: bool,
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

        let counted: Vec<(String, i64)> = sqlx::query_as(
            "SELECT band, count(*) FROM dash_attributions WHERE updated_at >= $1 GROUP BY band",
        )
        .bind(since)
        .fetch_all(pool)
        .await?;
        let bands = Band::ALL
            .iter()
            .rev()
            .map(|band| {
                let n = counted
                    .iter()
                    .find(|(name, _)| name == band.as_str())
                    .map_or(0, |(_, n)| *n);
                (band.as_str().to_owned(), n)
            })
            .collect();

        let top_actors = sqlx::query_as::<_, TopActor>(
            "SELECT actor, observables, high_observables, medium_observables, low_observables, \
                    best_confidence, artifacts, hits, last_hit_at FROM dash_top_actors \
             WHERE last_hit_at >= $1 \
             ORDER BY high_observables DESC, medium_observables DESC, observables DESC, \
                      hits DESC, actor LIMIT $2",
        )
        .bind(since)
        .bind(top)
        .fetch_all(pool)
        .await?;

        let attributions = sqlx::query_as::<_, AttributionLine>(
            "SELECT updated_at, actor, kind, observable, confidence, band, evidence_kinds, \
                    artifacts, announcements, event_owed FROM dash_attributions \
             WHERE updated_at >= $1 \
             ORDER BY confidence DESC, updated_at DESC, actor, observable LIMIT $2",
        )
        .bind(since)
        .bind(top)
        .fetch_all(pool)
        .await?;

        let recent_hits = sqlx::query_as::<_, RecentHit>(
            "SELECT updated_at, actor, observable, artifact, evidence_sources, confidence, band \
             FROM dash_actor_hits \
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

        let lane_backlog = sqlx::query_as::<_, LaneBacklog>(
            "SELECT lane, ready_messages, observed_at, age_seconds FROM dash_lane_backlog \
             ORDER BY lane = 'bulk', lane",
        )
        .fetch_all(pool)
        .await?;

        Ok(Report {
            since,
            outcomes,
            graph_requests: totals.try_get("graph_requests")?,
            cache_hits,
            daily,
            bands,
            top_actors,
            attributions,
            recent_hits,
            rejections,
            lane_backlog,
        })
    }
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The age of a count, as people say it: `12 s`, `4 min`, `3 h`.
fn age(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7199 => format!("{} min", seconds / 60),
        _ => format!("{} h", seconds / 3600),
    }
}

impl fmt::Display for LaneBacklog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ready_messages, self.observed_at, self.age_seconds) {
            (Some(ready), Some(at), Some(seconds)) => write!(
                f,
                "{:<5} {ready:>9} message(s) ready, counted {} ago ({})",
                self.lane,
                age(seconds),
                when(at)
            ),
            _ => write!(
                f,
                "{:<5} not counted yet (no worker has consumed this lane)",
                self.lane
            ),
        }
    }
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
        writeln!(
            f,
            "\n  backlog now (ready in each lane's work and retry queues, as a worker last counted):"
        )?;
        for lane in &self.lane_backlog {
            writeln!(f, "    {lane}")?;
        }
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
            "\n  top actors, by observables attributed with high, medium, low confidence:"
        )?;
        if self.top_actors.is_empty() {
            writeln!(f, "    none")?;
        } else {
            writeln!(
                f,
                "    {:<24} {:>4} {:>6} {:>4} {:>5}  {:>4} {:>9} {:>5}  last hit",
                "actor", "high", "medium", "low", "all", "best", "artifacts", "hits"
            )?;
        }
        for actor in &self.top_actors {
            writeln!(
                f,
                "    {:<24} {:>4} {:>6} {:>4} {:>5}  {:>4} {:>9} {:>5}  {}",
                actor.actor,
                actor.high_observables,
                actor.medium_observables,
                actor.low_observables,
                actor.observables,
                actor.best_confidence,
                actor.artifacts,
                actor.hits,
                when(actor.last_hit_at)
            )?;
        }
        let bands: Vec<String> = self
            .bands
            .iter()
            .map(|(band, n)| format!("{n} {band}"))
            .collect();
        writeln!(
            f,
            "\n  attributions (observable and actor): {}",
            bands.join(", ")
        )?;
        for line in &self.attributions {
            let event = if line.event_owed {
                "event owed".to_owned()
            } else if line.announcements > 0 {
                format!("announced {}x", line.announcements)
            } else {
                "not announced".to_owned()
            };
            writeln!(
                f,
                "    {:>3} {:<6}  {:<20} {}  {} artifact(s) [{}]  {event}",
                line.confidence,
                line.band,
                line.actor,
                line.observable,
                line.artifacts,
                line.evidence_kinds.join(", ")
            )?;
        }
        if !self.recent_hits.is_empty() {
            writeln!(f, "\n  recent actor hits:")?;
            for hit in &self.recent_hits {
                writeln!(
                    f,
                    "    {}  {:>3} {:<6}  {:<20} {} via {} [{}]",
                    when(hit.updated_at),
                    hit.confidence,
                    hit.band,
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
