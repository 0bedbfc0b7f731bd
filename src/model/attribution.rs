//! What is announced of an actor: one (observable, actor) pair with its strongest links, as
//! stored in `actor_attributions`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
