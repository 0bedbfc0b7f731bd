//! A human view of enrichments: one block per observable, one section per enricher.

use std::fmt::Write;

use super::{EnricherResult, Enrichment};

pub fn table(results: &[Enrichment], _terminal: bool) -> String {
    let mut out = String::new();
    for enrichment in results {
        let _ = writeln!(
            out,
            "{}  ({} Graph requests)",
            enrichment.observable, enrichment.graph_requests
        );
        for result in &enrichment.results {
            write_result(&mut out, result);
        }
    }
    out
}

fn write_result(out: &mut String, result: &EnricherResult) {
    let state = match (result.found, result.truncated) {
        (false, _) => " — MDTI has nothing on this host",
        (true, true) => " — cut short by the page cap",
        _ => "",
    };
    let _ = writeln!(out, "  [{}]{state}", result.enricher);
    if let Some(indicator) = &result.indicator {
        let _ = writeln!(out, "    indicator {}", indicator.id);
        let _ = writeln!(out, "      title      {}", indicator.title);
        for label in &indicator.labels {
            let _ = writeln!(out, "      label      {label}");
        }
    }
    write_reputation(out, result);
    for extract in &result.extracts {
        let code = extract
            .country_code
            .as_deref()
            .map(|c| format!(" [{c}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {:<13} {}{code}  ({})",
            extract.kind.as_str(),
            extract.value,
            extract.field
        );
    }
}

fn write_reputation(out: &mut String, result: &EnricherResult) {
    let Some(reputation) = &result.reputation else {
        return;
    };
    let _ = writeln!(
        out,
        "    classification {}  score {}",
        reputation.classification.as_deref().unwrap_or("-"),
        reputation.score.map_or("-".into(), |s| s.to_string())
    );
    for rule in reputation.rules.iter() {
        let description = match &rule.description {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "    rule {} [{}] {}",
            rule.name.as_deref().unwrap_or("-"),
            rule.severity.as_deref().unwrap_or("-"),
            description
        );
    }
}
