//! Read-side summaries for people: what the runs produced and what was rejected.

use std::fmt;

use sqlx::Row;

use super::{Store, StoreError};

/// What the `demo` prints after a run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// (status, count) over all enrichment runs.
    pub runs_by_status: Vec<(String, i64)>,
    /// (kind, count) over all extracts.
    pub extracts_by_kind: Vec<(String, i64)>,
    pub indicators: i64,
    /// (host, classification, score) of hosts whose reputation is suspicious or malicious.
    pub flagged: Vec<(String, String, Option<i32>)>,
    /// (input, code, reason), each distinct input and code once, newest first.
    pub rejected: Vec<(String, String, String)>,
    /// (value, reason) of observables that were skipped.
    pub skipped: Vec<(String, String)>,
    /// (actor, observable, linking artifact), by actor.
    pub actor_hits: Vec<(String, String, String)>,
}

impl Store {
    pub async fn summary(&self) -> Result<Summary, StoreError> {
        let pool = self.pool();
        let runs_by_status = sqlx::query(
            "SELECT status, count(*) FROM enrichment_runs GROUP BY status ORDER BY status",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect();
        let extracts_by_kind = sqlx::query(
            "SELECT kind, count(*) FROM extracts GROUP BY kind ORDER BY count(*) DESC, kind",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect();
        let indicators: i64 = sqlx::query_scalar("SELECT count(*) FROM indicators")
            .fetch_one(pool)
            .await?;
        let flagged = sqlx::query(
            "SELECT host, coalesce(classification, ''), score FROM reputations
             WHERE classification IN ('malicious', 'suspicious') ORDER BY score DESC NULLS LAST, host LIMIT 20",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1), r.get::<Option<i32>, _>(2)))
        .collect();
        let rejected = sqlx::query(
            "SELECT input, code, reason FROM (
                 SELECT DISTINCT ON (input, code) input, code, reason, rejected_at, id
                 FROM rejected_inputs ORDER BY input, code, rejected_at DESC
             ) latest ORDER BY rejected_at DESC, id DESC LIMIT 20",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<String, _>(2),
            )
        })
        .collect();
        let skipped = sqlx::query(
            "SELECT DISTINCT o.value, coalesce(r.detail, '') FROM enrichment_runs r
             JOIN observables o ON o.id = r.observable_id WHERE r.status = 'skipped' ORDER BY 1 LIMIT 20",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect();
        let actor_hits = sqlx::query(
            "SELECT h.actor, o.value, h.artifact FROM actor_hits h JOIN observables o ON o.id = h.observable_id
             ORDER BY lower(h.actor), o.value, h.artifact LIMIT 50",
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1), r.get::<String, _>(2)))
        .collect();
        Ok(Summary {
            actor_hits,
            runs_by_status,
            extracts_by_kind,
            indicators,
            flagged,
            rejected,
            skipped,
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs: Vec<String> = self
            .runs_by_status
            .iter()
            .map(|(status, n)| format!("{n} {status}"))
            .collect();
        writeln!(f, "\nIn Postgres now:")?;
        writeln!(f, "  runs:        {}", runs.join(", "))?;
        writeln!(f, "  indicators:  {}", self.indicators)?;
        let extracts: Vec<String> = self
            .extracts_by_kind
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        writeln!(f, "  extracts:    {}", extracts.join(", "))?;
        if !self.flagged.is_empty() {
            writeln!(f, "  flagged by reputation:")?;
            for (host, classification, score) in &self.flagged {
                let score = score.map_or("-".into(), |s| s.to_string());
                writeln!(f, "    {host:<40} {classification} (score {score})")?;
            }
        }
        if !self.actor_hits.is_empty() {
            writeln!(f, "  actor hits (actor: observable via linking artifact):")?;
            for (actor, observable, artifact) in &self.actor_hits {
                writeln!(f, "    {actor:<18} {observable} via {artifact}")?;
            }
        }
        if !self.skipped.is_empty() {
            writeln!(f, "  skipped:")?;
            for (value, reason) in &self.skipped {
                writeln!(f, "    {value:<40} {reason}")?;
            }
        }
        if !self.rejected.is_empty() {
            writeln!(f, "  rejected:")?;
            for (input, code, reason) in &self.rejected {
                let input: String = input.chars().take(40).collect();
                writeln!(f, "    {input:<40} [{code}] {reason}")?;
            }
        }
        Ok(())
    }
}
