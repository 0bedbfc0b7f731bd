//! `export`: what the worker found, for other tools. The rows come from
//! [`crate::store::Store::export_rows`] (one per actor hit, one per flagged observable without a
//! hit); this module only turns them into text and knows no database:
//!
//! - [`stix::bundle`]: a STIX 2.1 bundle (indicators, observables, intrusion sets, relationships)
//!   with deterministic ids, so exporting the same data twice gives the same bytes;
//! - [`tabular`]: JSON lines or CSV, one line per row, the columns in [`tabular::COLUMNS`].

pub mod stix;
pub mod tabular;

use chrono::{DateTime, Utc};

pub use crate::store::{ExportFilter, ExportHit, ExportRow};

/// The `--format` of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A STIX 2.1 bundle (JSON)
    Stix,
    /// One JSON object a line
    Jsonl,
    /// Comma-separated values with a header line
    Csv,
}

/// The rows in `format`.
pub fn render(rows: &[ExportRow], format: ExportFormat) -> String {
    match format {
        ExportFormat::Stix => {
            let mut text = serde_json::to_string_pretty(&stix::bundle(rows))
                .unwrap_or_else(|_| String::from("{}"));
            text.push('\n');
            text
        }
        ExportFormat::Jsonl => tabular::jsonl(rows),
        ExportFormat::Csv => tabular::csv(rows),
    }
}

/// A `--since` value: a duration back from `now` (`7d`, `24h`, `90m`) or an RFC 3339 instant
/// (`2024-05-01T00:00:00Z`).
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(instant.with_timezone(&Utc));
    }
    let duration = crate::config::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither a duration (7d, 24h, 30m) nor an RFC 3339 time (2024-05-01T00:00:00Z)")
    })?;
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|back| now.checked_sub_signed(back))
        .ok_or_else(|| format!("--since {text:?} reaches before the calendar starts"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn since_reads_durations_back_from_now_and_rfc3339_instants() {
        let now = Utc.with_ymd_and_hms(2024, 5, 8, 12, 0, 0).unwrap();
        assert_eq!(
            parse_since("7d", now).unwrap(),
            Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
        );
        assert_eq!(
            parse_since("90m", now).unwrap(),
            Utc.with_ymd_and_hms(2024, 5, 8, 10, 30, 0).unwrap()
        );
        assert_eq!(
            parse_since("2024-05-01T02:00:00+02:00", now).unwrap(),
            Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap()
        );
        let error = parse_since("last tuesday", now).unwrap_err();
        assert!(
            error.contains("last tuesday") && error.contains("RFC 3339"),
            "{error}"
        );
        assert!(parse_since("99999999999d", now).is_err());
    }
}
