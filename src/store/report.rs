//! Read-side summaries for people: what the runs produced and what was rejected.

use std::fmt;

use sqlx::Row;

use super::{Store, StoreError};
use crate::model::Band;

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
    /// Attributions (observable and actor) per band, high first, each band present.
    pub bands: Vec<BandCount>,
    /// The strongest attributions, strongest first.
    pub attributions: Vec<SummaryAttribution>,
}

/// How many attributions are in a band, and how many of them were announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandCount {
    pub band: Band,
    pub attributions: i64,
    /// Of `attributions`, those an event went out for.
    pub announced: i64,
}

/// One attribution and the hits that make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryAttribution {
    pub actor: String,
    pub observable: String,
    /// The best of the hits' confidences, 0-100.
    pub confidence: i16,
    pub band: Band,
    pub announcements: i32,
    /// (linking artifact, the hit's confidence), strongest first.
    pub hits: Vec<(String, i16)>,
}

/// At most this many attributions are listed.
const SUMMARY_ATTRIBUTIONS: i64 = 20;
/// At most this many linking artifacts are printed per attribution.
const SUMMARY_HITS: usize = 3;

fn band(name: &str) -> Result<Band, StoreError> {
    Band::named(name).ok_or_else(|| StoreError::Decode {
        what: "confidence band",
        detail: format!("{name:?} is not a band"),
    })
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
        let counted = sqlx::query(
            "SELECT band, count(*), count(*) FILTER (WHERE announcements > 0) FROM actor_attributions
             GROUP BY band",
        )
        .fetch_all(pool)
        .await?;
        let mut bands = Vec::new();
        for band in Band::ALL.into_iter().rev() {
            let row = counted
                .iter()
                .find(|r| r.get::<String, _>(0) == band.as_str());
            bands.push(BandCount {
                band,
                attributions: row.map_or(0, |r| r.get(1)),
                announced: row.map_or(0, |r| r.get(2)),
            });
        }
        let mut attributions = Vec::new();
        for row in sqlx::query(
            "SELECT a.actor, o.value, a.confidence, a.band, a.announcements,
                    array_agg(h.artifact ORDER BY h.confidence DESC, h.artifact) AS artifacts,
                    array_agg(h.confidence ORDER BY h.confidence DESC, h.artifact) AS confidences
             FROM actor_attributions a
             JOIN observables o ON o.id = a.observable_id
             JOIN actor_hits h ON h.observable_id = a.observable_id AND h.actor = a.actor
             GROUP BY a.id, o.value
             ORDER BY a.confidence DESC, lower(a.actor), o.value LIMIT $1",
        )
        .bind(SUMMARY_ATTRIBUTIONS)
        .fetch_all(pool)
        .await?
        {
            let artifacts: Vec<String> = row.try_get("artifacts")?;
            let confidences: Vec<i16> = row.try_get("confidences")?;
            attributions.push(SummaryAttribution {
                actor: row.try_get("actor")?,
                observable: row.try_get("value")?,
                confidence: row.try_get("confidence")?,
                band: band(row.try_get("band")?)?,
                announcements: row.try_get("announcements")?,
                hits: artifacts.into_iter().zip(confidences).collect(),
            });
        }
        Ok(Summary {
            bands,
            attributions,
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
        let total: i64 = self.bands.iter().map(|b| b.attributions).sum();
        if total > 0 {
            let bands: Vec<String> = self
                .bands
                .iter()
                .map(|b| format!("{} {}", b.attributions, b.band))
                .collect();
            let announced: i64 = self.bands.iter().map(|b| b.announced).sum();
            writeln!(
                f,
                "  attributions (observable and actor): {}; {announced} announced",
                bands.join(", ")
            )?;
            writeln!(
                f,
                "  strongest first (confidence, band, actor, observable via each linking artifact and its hit's confidence):"
            )?;
            for a in &self.attributions {
                // The strongest few: a shared observable can be linked through dozens.
                let mut hits: Vec<String> = a
                    .hits
                    .iter()
                    .take(SUMMARY_HITS)
                    .map(|(artifact, confidence)| format!("{artifact} {confidence}"))
                    .collect();
                if a.hits.len() > SUMMARY_HITS {
                    hits.push(format!("{} more", a.hits.len() - SUMMARY_HITS));
                }
                let announced = if a.announcements > 0 {
                    "  [announced]"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "    {:>3} {:<6}  {:<18} {} via {}{announced}",
                    a.confidence,
                    a.band.as_str(),
                    a.actor,
                    a.observable,
                    hits.join(", ")
                )?;
            }
            if total > self.attributions.len() as i64 {
                writeln!(
                    f,
                    "    ... and {} more (report, or the dash_attributions view)",
                    total - self.attributions.len() as i64
                )?;
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
