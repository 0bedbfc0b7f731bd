//! The summary `demo` prints: what the runs produced and what was rejected. (The `report`
//! command reads the dashboard views instead: [`super::report`].)

use std::fmt;

use sqlx::PgPool;

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

const RUNS_BY_STATUS_SQL: &str =
    "SELECT status, count(*) FROM enrichment_runs GROUP BY status ORDER BY status";

const EXTRACTS_BY_KIND_SQL: &str =
    "SELECT kind, count(*) FROM extracts GROUP BY kind ORDER BY count(*) DESC, kind";

const FLAGGED_SQL: &str = "
    SELECT host, coalesce(classification, ''), score FROM reputations
    WHERE classification IN ('malicious', 'suspicious') ORDER BY score DESC NULLS LAST, host LIMIT 20";

const REJECTED_SQL: &str = "
    SELECT input, code, reason FROM (
        SELECT DISTINCT ON (input, code) input, code, reason, rejected_at, id
        FROM rejected_inputs ORDER BY input, code, rejected_at DESC
    ) latest ORDER BY rejected_at DESC, id DESC LIMIT 20";

const SKIPPED_SQL: &str = "
    SELECT DISTINCT o.value, coalesce(r.detail, '') FROM enrichment_runs r
    JOIN observables o ON o.id = r.observable_id WHERE r.status = 'skipped' ORDER BY 1 LIMIT 20";

const BANDS_SQL: &str = "
    SELECT band, count(*), count(*) FILTER (WHERE announcements > 0) FROM actor_attributions
    GROUP BY band";

const ATTRIBUTIONS_SQL: &str = "
    SELECT a.actor, o.value, a.confidence, a.band, a.announcements,
           array_agg(h.artifact ORDER BY h.confidence DESC, h.artifact) AS artifacts,
           array_agg(h.confidence ORDER BY h.confidence DESC, h.artifact) AS confidences
    FROM actor_attributions a
    JOIN observables o ON o.id = a.observable_id
    JOIN actor_hits h ON h.observable_id = a.observable_id AND h.actor = a.actor
    GROUP BY a.id, o.value
    ORDER BY a.confidence DESC, lower(a.actor), o.value LIMIT $1";

/// One row of [`ATTRIBUTIONS_SQL`]: an attribution and its hits' artifacts and confidences,
/// strongest first.
#[derive(sqlx::FromRow)]
struct AttributionRow {
    actor: String,
    value: String,
    confidence: i16,
    band: String,
    announcements: i32,
    artifacts: Vec<String>,
    confidences: Vec<i16>,
}

impl AttributionRow {
    fn into_summary(self) -> Result<SummaryAttribution, StoreError> {
        Ok(SummaryAttribution {
            actor: self.actor,
            observable: self.value,
            confidence: self.confidence,
            band: band(&self.band)?,
            announcements: self.announcements,
            hits: self.artifacts.into_iter().zip(self.confidences).collect(),
        })
    }
}

impl Store {
    pub async fn summary(&self) -> Result<Summary, StoreError> {
        let pool = self.pool();
        Ok(Summary {
            runs_by_status: sqlx::query_as(RUNS_BY_STATUS_SQL).fetch_all(pool).await?,
            extracts_by_kind: sqlx::query_as(EXTRACTS_BY_KIND_SQL).fetch_all(pool).await?,
            indicators: sqlx::query_scalar("SELECT count(*) FROM indicators")
                .fetch_one(pool)
                .await?,
            flagged: sqlx::query_as(FLAGGED_SQL).fetch_all(pool).await?,
            rejected: sqlx::query_as(REJECTED_SQL).fetch_all(pool).await?,
            skipped: sqlx::query_as(SKIPPED_SQL).fetch_all(pool).await?,
            bands: band_counts(pool).await?,
            attributions: strongest_attributions(pool).await?,
        })
    }
}

/// Attributions per band, high first, each band present.
async fn band_counts(pool: &PgPool) -> Result<Vec<BandCount>, StoreError> {
    let counted: Vec<(String, i64, i64)> = sqlx::query_as(BANDS_SQL).fetch_all(pool).await?;
    Ok(Band::ALL
        .into_iter()
        .rev()
        .map(|band| {
            let row = counted.iter().find(|(name, ..)| name == band.as_str());
            BandCount {
                band,
                attributions: row.map_or(0, |r| r.1),
                announced: row.map_or(0, |r| r.2),
            }
        })
        .collect())
}

async fn strongest_attributions(pool: &PgPool) -> Result<Vec<SummaryAttribution>, StoreError> {
    let rows: Vec<AttributionRow> = sqlx::query_as(ATTRIBUTIONS_SQL)
        .bind(SUMMARY_ATTRIBUTIONS)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(AttributionRow::into_summary).collect()
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_counts(f)?;
        self.write_flagged(f)?;
        self.write_attributions(f)?;
        self.write_skipped(f)?;
        self.write_rejected(f)
    }
}

impl Summary {
    fn write_counts(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        writeln!(f, "  extracts:    {}", extracts.join(", "))
    }

    fn write_flagged(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.flagged.is_empty() {
            return Ok(());
        }
        writeln!(f, "  flagged by reputation:")?;
        for (host, classification, score) in &self.flagged {
            let score = score.map_or("-".into(), |s| s.to_string());
            writeln!(f, "    {host:<40} {classification} (score {score})")?;
        }
        Ok(())
    }

    fn write_attributions(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: i64 = self.bands.iter().map(|b| b.attributions).sum();
        if total == 0 {
            return Ok(());
        }
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
        for attribution in &self.attributions {
            writeln!(f, "    {attribution}")?;
        }
        let listed = self.attributions.len() as i64;
        if total > listed {
            writeln!(
                f,
                "    ... and {} more (report, or the dash_attributions view)",
                total - listed
            )?;
        }
        Ok(())
    }

    fn write_skipped(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.skipped.is_empty() {
            return Ok(());
        }
        writeln!(f, "  skipped:")?;
        for (value, reason) in &self.skipped {
            writeln!(f, "    {value:<40} {reason}")?;
        }
        Ok(())
    }

    fn write_rejected(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rejected.is_empty() {
            return Ok(());
        }
        writeln!(f, "  rejected:")?;
        for (input, code, reason) in &self.rejected {
            let input: String = input.chars().take(40).collect();
            writeln!(f, "    {input:<40} [{code}] {reason}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SummaryAttribution {
    /// One line: confidence, band, actor, and the observable via its strongest few linking
    /// artifacts (a shared observable can be linked through dozens).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hits: Vec<String> = self
            .hits
            .iter()
            .take(SUMMARY_HITS)
            .map(|(artifact, confidence)| format!("{artifact} {confidence}"))
            .collect();
        if self.hits.len() > SUMMARY_HITS {
            hits.push(format!("{} more", self.hits.len() - SUMMARY_HITS));
        }
        let announced = if self.announcements > 0 {
            "  [announced]"
        } else {
            ""
        };
        write!(
            f,
            "{:>3} {:<6}  {:<18} {} via {}{announced}",
            self.confidence,
            self.band.as_str(),
            self.actor,
            self.observable,
            hits.join(", ")
        )
    }
}
