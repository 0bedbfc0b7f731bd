//! The event announced for an attribution: one per (observable, actor), sent when the pair
//! first reaches the worker's `--min-event-confidence` and again when its band changes or a new
//! kind of evidence arrives (see [`crate::outbox`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::model::{Attribution, AttributionLink, Band};

/// The body of an attribution event on the outbound exchange, borrowed from the attribution and
/// serialised straight to the message (no JSON tree built per event). Keys in alphabetical
/// order: the bytes are those a `serde_json::Value` of the same event would give.
#[derive(Serialize)]
pub struct AttributionEvent<'a> {
    actor: &'a str,
    aliases: &'a [String],
    artifact_count: u32,
    artifacts: Vec<EventLink<'a>>,
    band: Band,
    confidence: u8,
    context: &'a Option<Value>,
    evidence_kinds: &'a [String],
    #[serde(serialize_with = "time")]
    first_seen: Option<DateTime<Utc>>,
    #[serde(serialize_with = "time")]
    last_seen: Option<DateTime<Utc>>,
    observable: EventObservable<'a>,
    previous_band: Option<Band>,
    profile_id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct EventObservable<'a> {
    kind: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct EventLink<'a> {
    artifact: &'a str,
    confidence: u8,
    evidence_kinds: &'a [String],
    #[serde(serialize_with = "time")]
    first_seen: Option<DateTime<Utc>>,
    #[serde(serialize_with = "time")]
    last_seen: Option<DateTime<Utc>>,
    path: &'a [String],
}

/// Whole seconds, UTC, `Z`: `2026-01-02T03:04:05Z`.
fn time<S: Serializer>(t: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        None => serializer.serialize_none(),
    }
}

/// The body of an attribution event on the outbound exchange.
pub fn attribution_event(attribution: &Attribution) -> AttributionEvent<'_> {
    AttributionEvent {
        actor: &attribution.actor,
        aliases: &attribution.aliases,
        artifact_count: attribution.artifact_count,
        artifacts: attribution.links.iter().map(event_link).collect(),
        band: attribution.band,
        confidence: attribution.confidence,
        context: &attribution.context,
        evidence_kinds: &attribution.evidence_kinds,
        first_seen: attribution.first_seen,
        last_seen: attribution.last_seen,
        observable: EventObservable {
            kind: &attribution.kind,
            value: &attribution.value,
        },
        previous_band: attribution.previous_band,
        profile_id: attribution.profile_id.as_deref(),
        kind: "actor_attribution",
    }
}

fn event_link(link: &AttributionLink) -> EventLink<'_> {
    EventLink {
        artifact: &link.artifact,
        confidence: link.confidence,
        evidence_kinds: &link.evidence_kinds,
        first_seen: link.first_seen,
        last_seen: link.last_seen,
        path: &link.path,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    #[test]
    fn an_event_carries_the_attribution_in_sorted_keys() {
        let seen = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single();
        let attribution = Attribution {
            kind: "domain".into(),
            value: "a.example".into(),
            actor: "Storm-0001".into(),
            profile_id: Some("p1".into()),
            aliases: vec!["Alias".into()],
            confidence: 80,
            band: Band::High,
            previous_band: Some(Band::Medium),
            evidence_kinds: vec!["passive_dns".into()],
            links: vec![AttributionLink {
                artifact: "198.51.100.7".into(),
                path: vec!["a.example".into(), "198.51.100.7".into()],
                confidence: 80,
                evidence_kinds: vec!["passive_dns".into()],
                first_seen: seen,
                last_seen: None,
            }],
            artifact_count: 1,
            first_seen: seen,
            last_seen: seen,
            context: Some(json!({"ticket": 7})),
        };
        let expected = json!({
            "type": "actor_attribution",
            "observable": {"kind": "domain", "value": "a.example"},
            "actor": "Storm-0001",
            "profile_id": "p1",
            "aliases": ["Alias"],
            "confidence": 80,
            "band": "high",
            "previous_band": "medium",
            "evidence_kinds": ["passive_dns"],
            "artifacts": [{
                "artifact": "198.51.100.7",
                "path": ["a.example", "198.51.100.7"],
                "confidence": 80,
                "evidence_kinds": ["passive_dns"],
                "first_seen": "2026-01-02T03:04:05Z",
                "last_seen": null,
            }],
            "artifact_count": 1,
            "first_seen": "2026-01-02T03:04:05Z",
            "last_seen": "2026-01-02T03:04:05Z",
            "context": {"ticket": 7},
        });
        let body = serde_json::to_string(&attribution_event(&attribution)).unwrap();
        assert_eq!(body, expected.to_string());
    }
}
