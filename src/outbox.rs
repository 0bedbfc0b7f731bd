//! Announcing actor hits: the relay from the `actor_hits` outbox to the events exchange.
//!
//! A hit is stored in the transaction of the message that found it, not yet marked notified:
//! that row is the promise of an event. The relay claims owed rows (`FOR UPDATE SKIP LOCKED`),
//! publishes their events with publisher confirms, and marks them in the transaction that
//! claimed them. So, whatever fails between a message's commit and the broker's confirm (the
//! broker, a missing exchange, the process itself), the rows stay owed and a later pass sends
//! them, independently of what happens to the message:
//! - passes run when a message committed new hits ([`RelayHandle::wake`]), when a broker
//!   session starts, and every [`RELAY_INTERVAL`];
//! - relays of several workers never hold the same row at once. An event is sent twice only
//!   when a relay dies between the broker's confirm and its commit: at least once, and the
//!   event's message id (`actor-hit-<row id>`) lets a subscriber drop the repeat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::chain::{actor_hit_event_of, event_routing_key};
use crate::queue::{PublishError, Publisher};
use crate::store::{Store, StoreError};

/// How often the relay looks for owed events when nothing woke it.
pub const RELAY_INTERVAL: Duration = Duration::from_secs(3);

/// Events claimed and published per round trip.
const BATCH: i64 = 500;

/// What the relays of this process did.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Events the broker confirmed and that were marked announced.
    pub announced: AtomicU64,
    /// Passes that stopped on a failure (broker or Postgres); their events stay owed.
    pub failed_passes: AtomicU64,
}

/// Wakes the relay when a message committed new hits.
#[derive(Debug, Clone, Default)]
pub struct RelayHandle {
    wake: Arc<Notify>,
}

impl RelayHandle {
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Why a pass stopped; the events it held stay owed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading or marking owed events: {0}")]
    Store(#[from] StoreError),
    #[error("publishing events: {0}")]
    Publish(#[from] PublishError),
}

/// Relay owed events until the task is dropped or aborted: one pass at once, then one whenever
/// woken or every [`RELAY_INTERVAL`]. `publisher` makes a fresh publisher (a channel with
/// confirms) whenever the last one failed, since the broker closes a channel on a refused
/// publish.
pub async fn run<P, F>(store: Store, handle: RelayHandle, stats: Arc<OutboxStats>, publisher: P)
where
    P: Fn() -> F,
    F: std::future::Future<Output = Result<Publisher, PublishError>>,
{
    let mut current: Option<Publisher> = None;
    let mut tick = tokio::time::interval(RELAY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = handle.wake.notified() => {}
        }
        if current.is_none() {
            current = match publisher().await {
                Ok(made) => Some(made),
                Err(error) => {
                    stats.failed_passes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "event relay: no channel to publish on; events stay owed");
                    continue;
                }
            };
        }
        let Some(publisher) = current.as_ref() else {
            continue;
        };
        if let Err(error) = drain(&store, publisher, &stats).await {
            stats.failed_passes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "event relay pass failed; its events stay owed and are sent on a later pass");
            if matches!(error, RelayError::Publish(_)) {
                current = None;
            }
        }
    }
}

/// Send owed events until none is left (or another relay holds the rest); returns how many
/// this pass announced.
pub async fn drain(
    store: &Store,
    publisher: &Publisher,
    stats: &OutboxStats,
) -> Result<u64, RelayError> {
    let mut announced = 0;
    loop {
        let claimed = store.claim_owed_events(BATCH).await?;
        let n = claimed.events.len();
        if n == 0 {
            return Ok(announced);
        }
        let events: Vec<(String, String, serde_json::Value)> = claimed
            .events
            .iter()
            .map(|e| {
                let body = actor_hit_event_of(&e.kind, &e.value, &e.hit, e.context.as_ref());
                (
                    format!("actor-hit-{}", e.hit_id),
                    event_routing_key(&e.hit.actor),
                    body,
                )
            })
            .collect();
        let batch: Vec<(&str, &str, &serde_json::Value)> = events
            .iter()
            .map(|(id, key, body)| (id.as_str(), key.as_str(), body))
            .collect();
        publisher.publish_identified_events(&batch).await?;
        claimed.mark_announced().await?;
        stats.announced.fetch_add(n as u64, Ordering::Relaxed);
        announced += n as u64;
        if (n as i64) < BATCH {
            return Ok(announced);
        }
    }
}
