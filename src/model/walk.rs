//! A walk's hits as they are written, and a stored observable's links as they are read back
//! to rebuild its walk.

use serde_json::Value;
use uuid::Uuid;

use super::ActorHit;
use crate::observable::Observable;

/// The hits one walk found for one observable, to be written with the message's results.
#[derive(Debug, Clone, PartialEq)]
pub struct WalkHits {
    pub observable: Observable,
    /// The run of the message item that walked, if any.
    pub run_id: Option<Uuid>,
    /// The producer's context, echoed into the rows and the events.
    pub context: Option<Value>,
    pub hits: Vec<ActorHit>,
    /// Attributions of this walk below this confidence are stored but not announced.
    pub min_event_confidence: u8,
}

/// An observable already stored, and the hosts its passive DNS named (the `passive_dns`
/// enricher's extracts): what a walk of it found one hop out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLinks {
    pub observable: Observable,
    pub counterparts: Vec<String>,
}
