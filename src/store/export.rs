//! What `export` reads: one row per actor hit, and one per flagged observable without a hit.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;

use super::{Store, StoreError};
use crate::observable::ObservableKind;

/// Which rows [`Store::export_rows`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// Only rows active at or after this instant (see [`ExportRow::last_activity`]).
    pub since: Option<DateTime<Utc>>,
    /// Only hits of this actor: its name or one of its aliases, case-insensitively.
    pub actor: Option<String>,
}

/// One actor hit of an observable, or a flagged observable without one (`hit` is `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    pub kind: ObservableKind,
    /// Canonical value.
    pub value: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_enriched_at: Option<DateTime<Utc>>,
    /// Runs of the observable, and the first and last of them.
    pub runs: i64,
    pub first_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    /// The observable's own reputation, if fetched.
    pub classification: Option<String>,
    pub score: Option<i32>,
    pub hit: Option<ExportHit>,
    /// The hit's last update; for a row without a hit, the observable's last run (or its first
    /// sighting). What `since` compares with.
    pub last_activity: DateTime<Utc>,
}

/// The `actor_hits` columns of an [`ExportRow`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExportHit {
    pub actor: String,
    pub profile_id: Option<String>,
    pub aliases: Vec<String>,
    pub artifact: String,
    pub path: Vec<String>,
    /// As stored: `[{"source": "reputation_rule" | "intel_article" | "profile_indicator", ...}]`.
    pub evidence: Value,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The hit's own confidence, 0-100 (its band is `Band::of` it).
    pub confidence: u8,
    /// The confidence of the hit's attribution (its observable and actor): the best of all the
    /// pair's hits, whether or not the filter kept them.
    pub attribution_confidence: u8,
}

impl Store {
    /// Observables with an actor hit or a malicious or suspicious reputation: one row per hit,
    /// one row for a flagged observable without a hit. Ordered by kind, value, actor
    /// (case-insensitively) and artifact, so the same data exports the same way.
    pub async fn export_rows(&self, filter: &ExportFilter) -> Result<Vec<ExportRow>, StoreError> {
        let rows = sqlx::query(
            "WITH runs AS ( \
                 SELECT observable_id, count(*) AS runs, min(created_at) AS first_run_at, \
                        max(created_at) AS last_run_at \
                 FROM enrichment_runs GROUP BY observable_id \
             ) \
             SELECT o.kind, o.value, o.first_seen_at, o.last_enriched_at, \
                    coalesce(runs.runs, 0) AS runs, runs.first_run_at, runs.last_run_at, \
                    rep.classification, rep.score, \
                    h.actor, h.profile_id, h.aliases, h.artifact, h.path, h.evidence, \
                    h.first_seen, h.last_seen, h.created_at AS hit_created_at, \
                    h.confidence, coalesce(a.confidence, h.confidence) AS attribution_confidence, \
                    coalesce(h.updated_at, runs.last_run_at, o.first_seen_at) AS last_activity \
             FROM observables o \
             LEFT JOIN actor_hits h ON h.observable_id = o.id \
             LEFT JOIN actor_attributions a \
                    ON a.observable_id = h.observable_id AND a.actor = h.actor \
             LEFT JOIN reputations rep ON rep.host = o.value \
             LEFT JOIN runs ON runs.observable_id = o.id \
             WHERE (h.id IS NOT NULL OR rep.classification IN ('malicious', 'suspicious')) \
               AND ($1::timestamptz IS NULL \
                    OR coalesce(h.updated_at, runs.last_run_at, o.first_seen_at) >= $1) \
               AND ($2::text IS NULL OR lower(h.actor) = lower($2) \
                    OR lower($2) = ANY (SELECT lower(a) FROM unnest(h.aliases) AS a)) \
             ORDER BY o.kind, o.value, lower(h.actor) NULLS FIRST, h.artifact NULLS FIRST",
        )
        .bind(filter.since)
        .bind(filter.actor.as_deref())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(export_row).collect()
    }
}

fn export_row(row: &sqlx::postgres::PgRow) -> Result<ExportRow, StoreError> {
    let kind: String = row.try_get("kind")?;
    let kind = kind
        .parse::<ObservableKind>()
        .map_err(|error| StoreError::Decode {
            what: "observable kind",
            detail: error.to_string(),
        })?;
    let actor: Option<String> = row.try_get("actor")?;
    let hit = match actor {
        None => None,
        Some(actor) => Some(ExportHit {
            actor,
            profile_id: row.try_get("profile_id")?,
            aliases: row.try_get("aliases")?,
            artifact: row.try_get("artifact")?,
            path: row.try_get("path")?,
            evidence: row.try_get("evidence")?,
            first_seen: row.try_get("first_seen")?,
            last_seen: row.try_get("last_seen")?,
            created_at: row.try_get("hit_created_at")?,
            confidence: confidence(row, "confidence")?,
            attribution_confidence: confidence(row, "attribution_confidence")?,
        }),
    };
    Ok(ExportRow {
        kind,
        value: row.try_get("value")?,
        first_seen_at: row.try_get("first_seen_at")?,
        last_enriched_at: row.try_get("last_enriched_at")?,
        runs: row.try_get("runs")?,
        first_run_at: row.try_get("first_run_at")?,
        last_run_at: row.try_get("last_run_at")?,
        classification: row.try_get("classification")?,
        score: row.try_get("score")?,
        hit,
        last_activity: row.try_get("last_activity")?,
    })
}

/// A stored confidence (`smallint`, checked 0-100 by the table) as the model's `u8`.
fn confidence(row: &sqlx::postgres::PgRow, column: &'static str) -> Result<u8, StoreError> {
    let stored: i16 = row.try_get(column)?;
    u8::try_from(stored)
        .ok()
        .filter(|c| *c <= 100)
        .ok_or_else(|| StoreError::Decode {
            what: column,
            detail: format!("{stored} is not a confidence (0-100)"),
        })
}
