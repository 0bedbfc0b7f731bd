//! Announcing attributions: the relay from the `actor_attributions` outbox to the events
//! exchange.
//!
//! A message that stores hits brings their (observable, actor) pairs up to date in the same
//! transaction, and marks a pair owed an event when it first reaches the worker's
//! `--min-event-confidence`, or when its band changes or a new kind of evidence arrives: that
//! mark is the promise of an event. The relay claims owed rows (`FOR UPDATE SKIP LOCKED`),
//! publishes their events with publisher confirms, and clears them in the transaction that
//! claimed them. So, whatever fails between a message's commit and the broker's confirm (the
//! broker, a missing exchange, the process itself), the rows stay owed and a later pass sends
//! them, independently of what happens to the message:
//! - passes run when a message left pairs owed ([`RelayHandle::wake`]), when a broker session
//!   starts, [`RELAY_INTERVAL`] after the last pass, and once more when a worker stops;
//! - relays of several workers never hold the same row at once. An event is sent twice only
//!   when a relay dies between the broker's confirm and its commit: at least once, and the
//!   event's message id (`actor-attribution-<row id>-<announcement>`) lets a subscriber drop
//!   the repeat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use lapin::Connection;
use tokio::sync::watch;
use tokio::sync::Notify;

use crate::chain::{attribution_event, event_routing_key};
use crate::queue::{PublishError, Publisher, Topology};
use crate::store::{Store, StoreError};

/// How long the relay waits after a pass before it looks for owed events unbidden.
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
    /// Passes run. Each claims owed events (a transaction and a few round trips), unless it
    /// ran on the clock and one plain read found none owed.
    pub passes: AtomicU64,
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

/// Where a relay publishes: channels of its own on the worker's connection, opened as needed.
/// They declare nothing, so that while the events exchange is missing a publish fails and the
/// events stay owed, instead of going to a fresh exchange nobody is bound to yet.
#[derive(Clone)]
pub struct RelayChannels {
    pub connection: Arc<Connection>,
    pub topology: Topology,
}

impl RelayChannels {
    async fn open(&self) -> Result<Publisher, PublishError> {
        Ok(Publisher::on_connection_undeclared(&self.connection, self.topology.clone()).await?)
    }
}

/// Relay owed events until `stop` turns true (or the task is aborted): one pass at once, then
/// one whenever woken or [`RELAY_INTERVAL`] after the last. A stop is taken between passes, never inside
/// one: a pass cut short would leave its claimed events locked by a transaction not yet rolled
/// back, and the stopping worker's last pass would skip them. A channel that failed is
/// replaced at the next pass, since the broker closes a channel on a refused publish.
pub async fn run(
    store: Store,
    handle: RelayHandle,
    stats: Arc<OutboxStats>,
    channels: RelayChannels,
    mut stop: watch::Receiver<bool>,
) {
    let mut current: Option<Publisher> = None;
    let mut tick = tokio::time::interval(RELAY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let woken = tokio::select! {
            _ = tick.tick() => false,
            _ = handle.wake.notified() => true,
            _ = stop.changed() => false,
        };
        if *stop.borrow() {
            return;
        }
        // This pass claims whatever the commits before it left owed, so the wakes they sent are
        // all answered by it. Every message of a group commit wakes the relay, and the permit
        // the later ones leave would otherwise run a pass right after this one that finds
        // nothing (throttled, one in two passes).
        let woken = handle.wake.notified().now_or_never().is_some() || woken;
        stats.passes.fetch_add(1, Ordering::Relaxed);
        // A pass on the clock mostly finds nothing owed: one plain read says so, where a claim
        // costs a transaction of four round trips. A wake follows a commit that left pairs owed.
        if !woken && matches!(store.any_owed_events().await, Ok(false)) {
            tick.reset();
            continue;
        }
        let publisher = match current.take() {
            Some(publisher) => publisher,
            None => match channels.open().await {
                Ok(publisher) => publisher,
                Err(error) => {
                    stats.failed_passes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "event relay: no channel to publish on; events stay owed");
                    continue;
                }
            },
        };
        let pass = drain(&store, &publisher, &stats).await;
        // The interval counts from the last pass, however woken: a busy worker's relay passes
        // after its commits, and a pass on the clock as well would find nothing owed.
        tick.reset();
        match pass {
            Ok(_) => current = Some(publisher),
            Err(error) => {
                stats.failed_passes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "event relay pass failed; its events stay owed and are sent on a later pass");
                if !matches!(error, RelayError::Publish(_)) {
                    current = Some(publisher);
                }
            }
        }
    }
}

/// One last pass before a worker closes its connection, so that a batch run leaves no event
/// owed; bounded, since whatever it cannot send stays owed for the next worker's relay.
pub async fn last_pass(store: &Store, stats: &OutboxStats, channels: &RelayChannels) {
    let pass = async {
        let publisher = channels.open().await?;
        drain(store, &publisher, stats).await
    };
    match tokio::time::timeout(LAST_PASS_LIMIT, pass).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "last event relay pass failed; the events stay owed")
        }
        Err(_) => tracing::warn!("last event relay pass timed out; the rest stays owed"),
    }
}

/// How long a stopping worker gives its last relay pass.
const LAST_PASS_LIMIT: Duration = Duration::from_secs(10);

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
        let ids: Vec<(String, String)> = claimed
            .events
            .iter()
            .map(|e| (e.message_id(), event_routing_key(&e.attribution.actor)))
            .collect();
        let batch: Vec<_> = ids
            .iter()
            .zip(&claimed.events)
            .map(|((id, key), e)| (id.as_str(), key.as_str(), attribution_event(&e.attribution)))
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
