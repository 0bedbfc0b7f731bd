//! The `report` command's picture, read from the dashboard views (`migrations/0004_views.sql`,
//! `migrations/0010_attribution_views.sql`, `migrations/0012_lane_views.sql`), so the terminal
//! and Grafana show the same numbers.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{PgPool, Postgres};

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

/// Runs and Graph requests summed over whole hours.
#[derive(sqlx::FromRow)]
struct Throughput {
    enriched: i64,
    cached: i64,
    skipped: i64,
    graph_requests: i64,
}

impl Throughput {
    /// Runs by outcome, in the order the report prints them.
    fn outcomes(&self) -> Vec<(String, i64)> {
        vec![
            ("cached".to_owned(), self.cached),
            ("enriched".to_owned(), self.enriched),
            ("skipped".to_owned(), self.skipped),
        ]
    }
}

const THROUGHPUT_SQL: &str = "\
    SELECT coalesce(sum(enriched), 0)::bigint AS enriched, \
           coalesce(sum(cached), 0)::bigint AS cached, \
           coalesce(sum(skipped), 0)::bigint AS skipped, \
           coalesce(sum(graph_requests), 0)::bigint AS graph_requests \
    FROM dash_throughput_hourly WHERE hour >= date_trunc('hour', $1, 'UTC')";

const DAILY_SQL: &str = "\
    SELECT day, \
           coalesce(sum(runs) FILTER (WHERE status = 'enriched'), 0)::bigint AS enriched, \
           coalesce(sum(runs) FILTER (WHERE status = 'cached'), 0)::bigint AS cached, \
           coalesce(sum(runs) FILTER (WHERE status = 'skipped'), 0)::bigint AS skipped, \
           sum(graph_requests)::bigint AS graph_requests \
    FROM dash_enrichments_daily WHERE day >= date_trunc('day', $1, 'UTC') \
    GROUP BY day ORDER BY day";

const BANDS_SQL: &str =
    "SELECT band, count(*) FROM dash_attributions WHERE updated_at >= $1 GROUP BY band";

const TOP_ACTORS_SQL: &str = "\
    SELECT actor, observables, high_observables, medium_observables, low_observables, \
           best_confidence, artifacts, hits, last_hit_at FROM dash_top_actors \
    WHERE last_hit_at >= $1 \
    ORDER BY high_observables DESC, medium_observables DESC, observables DESC, \
             hits DESC, actor LIMIT $2";

const ATTRIBUTIONS_SQL: &str = "\
    SELECT updated_at, actor, kind, observable, confidence, band, evidence_kinds, \
           artifacts, announcements, event_owed FROM dash_attributions \
    WHERE updated_at >= $1 \
    ORDER BY confidence DESC, updated_at DESC, actor, observable LIMIT $2";

const RECENT_HITS_SQL: &str = "\
    SELECT updated_at, actor, observable, artifact, evidence_sources, confidence, band \
    FROM dash_actor_hits \
    WHERE updated_at >= $1 ORDER BY updated_at DESC, actor, observable, artifact LIMIT $2";

const REJECTIONS_SQL: &str = "\
    SELECT code, count(*) AS rejections, \
           (array_agg(reason ORDER BY rejected_at DESC))[1] AS latest_reason, \
           (array_agg(input ORDER BY rejected_at DESC))[1] AS latest_input \
    FROM dash_rejections WHERE rejected_at >= $1 \
    GROUP BY code ORDER BY count(*) DESC, code";

const LANE_BACKLOG_SQL: &str = "\
    SELECT lane, ready_messages, observed_at, age_seconds FROM dash_lane_backlog \
    ORDER BY lane = 'bulk', lane";

impl Store {
    /// The report since `since`, with at most `top` actors and `top` recent hits.
    pub async fn report(&self, since: DateTime<Utc>, top: i64) -> Result<Report, StoreError> {
        let pool = self.pool();
        let totals: Throughput = sqlx::query_as(THROUGHPUT_SQL)
            .bind(since)
            .fetch_one(pool)
            .await?;
        Ok(Report {
            since,
            outcomes: totals.outcomes(),
            graph_requests: totals.graph_requests,
            cache_hits: totals.cached,
            daily: since_query(DAILY_SQL, since).fetch_all(pool).await?,
            bands: band_counts(pool, since).await?,
            top_actors: top_query(TOP_ACTORS_SQL, since, top)
                .fetch_all(pool)
                .await?,
            attributions: top_query(ATTRIBUTIONS_SQL, since, top)
                .fetch_all(pool)
                .await?,
            recent_hits: top_query(RECENT_HITS_SQL, since, top)
                .fetch_all(pool)
                .await?,
            rejections: since_query(REJECTIONS_SQL, since).fetch_all(pool).await?,
            lane_backlog: sqlx::query_as(LANE_BACKLOG_SQL).fetch_all(pool).await?,
        })
    }
}

type RowsQuery<T> = sqlx::query::QueryAs<'static, Postgres, T, PgArguments>;

/// Rows of `T` written since `since` (the query's `$1`).
fn since_query<T>(sql: &'static str, since: DateTime<Utc>) -> RowsQuery<T>
where
    T: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).bind(since)
}

/// The first `top` rows of `T` written since `since` (the query's `$1` and `$2`).
fn top_query<T>(sql: &'static str, since: DateTime<Utc>, top: i64) -> RowsQuery<T>
where
    T: for<'r> sqlx::FromRow<'r, PgRow>,
{
    since_query(sql, since).bind(top)
}

/// Attributions written since `since` by band: high, medium, low, each present.
async fn band_counts(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let counted: Vec<(String, i64)> = since_query(BANDS_SQL, since).fetch_all(pool).await?;
    let count = |band: &Band| {
        counted
            .iter()
            .find(|(name, _)| name == band.as_str())
            .map_or(0, |(_, n)| *n)
    };
    Ok(Band::ALL
        .iter()
        .rev()
        .map(|band| (band.as_str().to_owned(), count(band)))
        .collect())
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
        self.write_totals(f)?;
        self.write_lane_backlog(f)?;
        self.write_daily(f)?;
        self.write_top_actors(f)?;
        self.write_attributions(f)?;
        self.write_recent_hits(f)?;
        self.write_rejections(f)
    }
}

impl Report {
    fn write_totals(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        )
    }

    fn write_lane_backlog(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\n  backlog now (ready in each lane's work and retry queues, as a worker last counted):"
        )?;
        for lane in &self.lane_backlog {
            writeln!(f, "    {lane}")?;
        }
        Ok(())
    }

    fn write_daily(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.daily.is_empty() {
            return Ok(());
        }
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
        Ok(())
    }

    fn write_top_actors(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        Ok(())
    }

    fn write_attributions(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            writeln!(
                f,
                "    {:>3} {:<6}  {:<20} {}  {} artifact(s) [{}]  {}",
                line.confidence,
                line.band,
                line.actor,
                line.observable,
                line.artifacts,
                line.evidence_kinds.join(", "),
                line.event()
            )?;
        }
        Ok(())
    }

    fn write_recent_hits(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.recent_hits.is_empty() {
            return Ok(());
        }
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
        Ok(())
    }

    fn write_rejections(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

impl AttributionLine {
    /// Where the pair's event stands: owed, sent how many times, or never sent.
    fn event(&self) -> String {
        if self.event_owed {
            "event owed".to_owned()
        } else if self.announcements > 0 {
            format!("announced {}x", self.announcements)
        } else {
            "not announced".to_owned()
        }
    }
}
