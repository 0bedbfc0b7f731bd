//! The event announced for an attribution: one per (observable, actor), sent when the pair
//! first reaches the worker's `--min-event-confidence` and again when its band changes or a new
//! kind of evidence arrives (see [`crate::outbox`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::model::Attribution;

fn time(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// The body of an attribution event on the outbound exchange.
pub fn attribution_event(attribution: &Attribution) -> Value {
    let links: Vec<Value> = attribution
        .links
        .iter()
        .map(|link| {
            json!({
                "artifact": link.artifact,
                "path": link.path,
                "confidence": link.confidence,
                "evidence_kinds": link.evidence_kinds,
                "first_seen": time(link.first_seen),
                "last_seen": time(link.last_seen),
            })
        })
        .collect();
    json!({
        "type": "actor_attribution",
        "observable": {"kind": attribution.kind, "value": attribution.value},
        "actor": attribution.actor,
        "profile_id": attribution.profile_id,
        "aliases": attribution.aliases,
        "confidence": attribution.confidence,
        "band": attribution.band,
        "previous_band": attribution.previous_band,
        "evidence_kinds": attribution.evidence_kinds,
        "artifacts": links,
        "artifact_count": attribution.artifact_count,
        "first_seen": time(attribution.first_seen),
        "last_seen": time(attribution.last_seen),
        "context": attribution.context,
    })
}
