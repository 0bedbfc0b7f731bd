//! The event announced for an attribution: one per (observable, actor), sent when the pair
//! first reaches the worker's `--min-event-confidence` and again when its band changes or a new
//! kind of evidence arrives (see [`crate::outbox`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Band;

/// At most this many linking artifacts are listed in an event, strongest first; the event
/// says how many there are in all.
pub const EVENT_ARTIFACTS: usize = 5;

/// One (observable, actor) pair as stored in `actor_attributions`, with its strongest links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// The observable's kind, as stored (`ipv4`, `domain`, ...).
    pub kind: String,
    pub value: String,
    pub actor: String,
    pub profile_id: Option<String>,
    pub aliases: Vec<String>,
    /// The best confidence of the pair's hits.
    pub confidence: u8,
    pub band: Band,
    /// The band the previous event of this pair announced, if there was one.
    pub previous_band: Option<Band>,
    /// Distinct evidence kinds over the pair's hits, sorted.
    pub evidence_kinds: Vec<String>,
    /// The strongest links, at most [`EVENT_ARTIFACTS`].
    pub links: Vec<AttributionLink>,
    /// Distinct linking artifacts in all.
    pub artifact_count: u32,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// The producer's context of the message that last changed the pair.
    pub context: Option<Value>,
}

/// One linking artifact of an attribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionLink {
    pub artifact: String,
    pub path: Vec<String>,
    pub confidence: u8,
    pub evidence_kinds: Vec<String>,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
}

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
