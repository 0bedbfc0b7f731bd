//! JSON lines and CSV: one line per export row (an actor hit, or a flagged observable without
//! one), the same columns in both, in [`COLUMNS`] order.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::ExportRow;
use crate::chain::Band;

/// The columns, in order. Lists (`aliases`, `path`, `evidence_sources`) are JSON arrays in JSON
/// lines and `;`-joined in CSV; absent values are `null` and empty cells. `confidence` (0-100)
/// and `band` (`low`, `medium`, `high`) are the hit's own. New columns go at the end, so a
/// reader that takes CSV columns by position keeps reading the old ones right.
pub const COLUMNS: [&str; 18] = [
    "observable",
    "kind",
    "classification",
    "score",
    "actor",
    "profile_id",
    "aliases",
    "artifact",
    "path",
    "evidence_sources",
    "hit_first_seen",
    "hit_last_seen",
    "observable_first_seen_at",
    "last_enriched_at",
    "runs",
    "last_activity",
    "confidence",
    "band",
];

fn time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |at| {
        Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    })
}

/// The row's values, in [`COLUMNS`] order.
fn values(row: &ExportRow) -> [Value; COLUMNS.len()] {
    let hit = row.hit.as_ref();
    let sources: Vec<&str> = hit
        .and_then(|h| h.evidence.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("source").and_then(Value::as_str))
        .collect();
    [
        json!(row.value),
        json!(row.kind.as_str()),
        json!(row.classification),
        json!(row.score),
        json!(hit.map(|h| &h.actor)),
        json!(hit.and_then(|h| h.profile_id.as_ref())),
        json!(hit.map(|h| &h.aliases)),
        json!(hit.map(|h| &h.artifact)),
        json!(hit.map(|h| &h.path)),
        if hit.is_some() {
            json!(sources)
        } else {
            Value::Null
        },
        time(hit.and_then(|h| h.first_seen)),
        time(hit.and_then(|h| h.last_seen)),
        time(Some(row.first_seen_at)),
        time(row.last_enriched_at),
        json!(row.runs),
        time(Some(row.last_activity)),
        json!(hit.map(|h| h.confidence)),
        json!(hit.map(|h| Band::of(h.confidence).as_str())),
    ]
}

/// One JSON object a line.
pub fn jsonl(rows: &[ExportRow]) -> String {
    let mut out = String::new();
    for row in rows {
        let object: Map<String, Value> = COLUMNS
            .iter()
            .map(|c| c.to_string())
            .zip(values(row))
            .collect();
        out.push_str(&Value::Object(object).to_string());
        out.push('\n');
    }
    out
}

/// A header line, then one line per row, written by the `csv` crate (RFC 4180 quoting where a
/// cell needs it; lines end with `\n`, not CRLF).
pub fn csv(rows: &[ExportRow]) -> String {
    // Writing into memory has no I/O to fail; should the crate still refuse, what was written
    // before is kept rather than the whole export lost.
    let mut writer = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let _ = writer.write_record(COLUMNS);
    for row in rows {
        let _ = writer.write_record(values(row).iter().map(cell));
    }
    let bytes = writer
        .into_inner()
        .unwrap_or_else(|e| e.into_inner().get_ref().clone());
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A cell's text: empty for null, `;`-joined for lists.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::ExportHit;
    use crate::observable::ObservableKind;
    use chrono::TimeZone;

    fn row() -> ExportRow {
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
        ExportRow {
            kind: ObservableKind::Domain,
            value: "evil.example".into(),
            first_seen_at: at,
            last_enriched_at: None,
            runs: 1,
            first_run_at: Some(at),
            last_run_at: Some(at),
            classification: Some("malicious".into()),
            score: Some(90),
            hit: Some(ExportHit {
                actor: "Storm, \"0558\"".into(),
                profile_id: None,
                aliases: vec!["a".into(), "b".into()],
                artifact: "198.51.100.7".into(),
                path: vec!["evil.example".into(), "198.51.100.7".into()],
                evidence: json!([{"source": "reputation_rule"}, {"source": "intel_article"}]),
                first_seen: None,
                last_seen: Some(at),
                created_at: at,
                confidence: 55,
                attribution_confidence: 85,
            }),
            last_activity: at,
        }
    }

    #[test]
    fn csv_has_the_documented_header_and_quotes_what_needs_it() {
        let text = csv(&[row()]);
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
        assert_eq!(
            lines.next().unwrap(),
            "evil.example,domain,malicious,90,\"Storm, \"\"0558\"\"\",,a;b,198.51.100.7,\
             evil.example;198.51.100.7,reputation_rule;intel_article,,2024-05-01T00:00:00.000Z,\
             2024-05-01T00:00:00.000Z,,1,2024-05-01T00:00:00.000Z,55,medium"
        );
        assert!(lines.next().is_none());
    }

    #[test]
    fn jsonl_has_one_object_a_line_with_every_column() {
        let mut flagged = row();
        flagged.hit = None;
        let text = jsonl(&[row(), flagged]);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for line in &lines {
            assert_eq!(line.as_object().unwrap().len(), COLUMNS.len());
        }
        assert_eq!(lines[0]["aliases"], json!(["a", "b"]));
        assert_eq!(
            lines[0]["evidence_sources"],
            json!(["reputation_rule", "intel_article"])
        );
        assert_eq!(
            lines[0]["confidence"], 55,
            "the hit's, not its attribution's"
        );
        assert_eq!(lines[0]["band"], "medium");
        assert_eq!(lines[1]["actor"], Value::Null);
        assert_eq!(lines[1]["evidence_sources"], Value::Null);
        assert_eq!(lines[1]["confidence"], Value::Null);
        assert_eq!(lines[1]["band"], Value::Null);
    }
}
