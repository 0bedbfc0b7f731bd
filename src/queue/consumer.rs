//! The consumer loop: deliveries in, one deliberate acknowledgement each.
//!
//! - Acknowledgement follows the [`Outcome`]: `Done` is acked after the Postgres commit (inside
//!   the pipeline); `Retry` and `Reject` are first republished to the retry or dead-letter queue
//!   and acked only when the broker has confirmed that copy. If that publish fails, the delivery
//!   is handed back (nack with requeue): a message is never acked without a home.
//! - Prefetch equals the concurrency: the broker never hands this worker more unacked messages
//!   than it processes at once, so the in-flight set is bounded by construction.
//! - After losing the connection, the loop rebuilds connection, channel, QoS and consumer with
//!   capped backoff. Deliveries that were in flight on the dead channel are redelivered by the
//!   broker; writes are idempotent, so processing them twice changes nothing.
//! - On shutdown it cancels the consumer, gives in-flight messages `shutdown_timeout` to finish,
//!   then closes the channel, which returns anything unfinished to the queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::publisher::Publisher;
use super::topology::{attempt_of, Topology};
use crate::config::redact_url;
use crate::graph::retry::backoff_delay;
use crate::pipeline::{HitEvent, Incoming, Outcome, Pipeline};
use crate::secret::Secret;
use crate::store::{GroupCommitStats, RejectedInput};

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub amqp_url: Secret,
    pub topology: Topology,
    pub concurrency: u16,
    pub max_deliveries: u32,
    pub shutdown_timeout: Duration,
    pub exit_when_idle: Option<Duration>,
}

/// What the worker did, for logs, the demo and the benchmark.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub messages: AtomicU64,
    pub done: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub requeued: AtomicU64,
    pub enriched: AtomicU64,
    pub cached: AtomicU64,
    pub skipped: AtomicU64,
    pub rejected_items: AtomicU64,
    /// New actor hits announced on the events exchange.
    pub actor_hits: AtomicU64,
    /// Counterpart reputations the chaining read from Postgres instead of asking Graph.
    pub reputation_cache_hits: AtomicU64,
    pub reconnects: AtomicU64,
    /// Transactions and messages of the results' group commit.
    pub group_commit: Arc<GroupCommitStats>,
    /// The broker connection of the current session is open.
    pub broker_connected: AtomicBool,
    /// The consumer is registered and taking deliveries (false once shutdown began).
    pub consuming: AtomicBool,
}

impl WorkerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn is(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }
}

/// Clears a session's readiness flags however the session ends (error, `?`, shutdown).
struct SessionFlags<'a>(&'a WorkerStats);

impl Drop for SessionFlags<'_> {
    fn drop(&mut self) {
        self.0.consuming.store(false, Ordering::Relaxed);
        self.0.broker_connected.store(false, Ordering::Relaxed);
    }
}

enum SessionEnd {
    Shutdown,
    Idle,
    Lost(String),
}

/// Consume until `shutdown` turns true (or the queues stay idle, when so configured).
pub async fn run(
    pipeline: Pipeline,
    settings: ConsumerSettings,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<WorkerStats>,
) -> anyhow::Result<()> {
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let end = match session(&pipeline, &settings, &mut shutdown, &stats).await {
            Ok(end) => end,
            Err(error) => SessionEnd::Lost(error.to_string()),
        };
        match end {
            SessionEnd::Shutdown => {
                tracing::info!("worker stopped");
                return Ok(());
            }
            SessionEnd::Idle => {
                tracing::info!("queues idle; worker exiting");
                return Ok(());
            }
            SessionEnd::Lost(reason) => {
                failures = failures.saturating_add(1);
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                let wait = backoff_delay(
                    failures.min(8),
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                )
                .max(Duration::from_millis(200));
                tracing::warn!(
                    broker = %redact_url(settings.amqp_url.expose()),
                    %reason,
                    ?wait,
                    "broker session lost; reconnecting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

async fn session(
    pipeline: &Pipeline,
    settings: &ConsumerSettings,
    shutdown: &mut watch::Receiver<bool>,
    stats: &Arc<WorkerStats>,
) -> anyhow::Result<SessionEnd> {
    let connection =
        Connection::connect(settings.amqp_url.expose(), ConnectionProperties::default())
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the broker: {e}"))?;
    let _flags = SessionFlags(stats);
    stats.broker_connected.store(true, Ordering::Relaxed);
    let channel = connection.create_channel().await?;
    settings.topology.declare(&channel).await?;
    channel
        .basic_qos(settings.concurrency.max(1), BasicQosOptions::default())
        .await?;
    let publisher =
        Arc::new(Publisher::on_connection(&connection, settings.topology.clone()).await?);
    let tag = format!("mdti-worker-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            settings.topology.work_queue().as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(
        queue = %settings.topology.work_queue(),
        prefetch = settings.concurrency,
        "consuming"
    );
    stats.consuming.store(true, Ordering::Relaxed);

    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut idle_since: Option<Instant> = None;
    let mut idle_tick = tokio::time::interval(Duration::from_millis(500));
    let end = loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break SessionEnd::Shutdown;
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    idle_since = None;
                    let pipeline = pipeline.clone();
                    let publisher = Arc::clone(&publisher);
                    let stats = Arc::clone(stats);
                    let max_deliveries = settings.max_deliveries;
                    tasks.spawn(async move {
                        settle(&pipeline, &publisher, delivery, max_deliveries, &stats).await;
                    });
                }
                Some(Err(error)) => break SessionEnd::Lost(error.to_string()),
                None => break SessionEnd::Lost("the consumer was cancelled by the broker".into()),
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "a message task failed; its delivery returns to the queue");
                }
            }
            _ = idle_tick.tick(), if settings.exit_when_idle.is_some() => {
                let limit = settings.exit_when_idle.unwrap_or_default();
                if tasks.is_empty() && queues_empty(&channel, &settings.topology).await {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= limit {
                        break SessionEnd::Idle;
                    }
                } else {
                    idle_since = None;
                }
            }
        }
    };

    // Not ready from here on: in-flight messages finish, new ones wait for another worker.
    stats.consuming.store(false, Ordering::Relaxed);
    if !matches!(end, SessionEnd::Lost(_)) {
        // Stop new deliveries first, then let the ones in hand finish.
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    let drained = tokio::time::timeout(settings.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = tasks.len(),
            "shutdown timeout reached; unfinished messages go back to the queue"
        );
        tasks.abort_all();
    }
    // Closing returns every unacked delivery to the queue.
    let _ = channel.close(200, "worker stopping".into()).await;
    let _ = connection.close(200, "worker stopping".into()).await;
    Ok(end)
}

async fn queues_empty(channel: &lapin::Channel, topology: &Topology) -> bool {
    for queue in [topology.work_queue(), topology.retry_queue()] {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(state) if state.message_count() == 0 => {}
            _ => return false,
        }
    }
    true
}

/// A message id that survives redelivery: the publisher's, or one derived from the body, so a
/// redelivered message without an id still maps to the same result rows.
pub fn message_id(properties: &BasicProperties, body: &[u8]) -> String {
    match properties.message_id() {
        Some(id) if !id.as_str().is_empty() => id.as_str().chars().take(200).collect(),
        _ => format!(
            "body-{}",
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body).simple()
        ),
    }
}

/// Process one delivery and acknowledge it exactly as its outcome says.
async fn settle(
    pipeline: &Pipeline,
    publisher: &Publisher,
    delivery: Delivery,
    max_deliveries: u32,
    stats: &WorkerStats,
) {
    stats.messages.fetch_add(1, Ordering::Relaxed);
    let attempt = attempt_of(&delivery.properties);
    let id = message_id(&delivery.properties, &delivery.data);
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|t| t.as_str().to_owned());
    let incoming = Incoming {
        message_id: &id,
        body: &delivery.data,
        content_type: content_type.as_deref(),
        attempt,
    };
    let outcome = pipeline.handle(&incoming).await;

    // Where the message goes before it may be acked; `Ok(())` means "nowhere else" or "confirmed".
    let handed_over = match &outcome {
        Outcome::Done {
            enriched,
            cached,
            skipped,
            rejected,
            events,
            reputation_cache_hits,
        } => {
            stats.done.fetch_add(1, Ordering::Relaxed);
            stats
                .reputation_cache_hits
                .fetch_add(*reputation_cache_hits, Ordering::Relaxed);
            stats
                .enriched
                .fetch_add(*enriched as u64, Ordering::Relaxed);
            stats.cached.fetch_add(*cached as u64, Ordering::Relaxed);
            stats.skipped.fetch_add(*skipped as u64, Ordering::Relaxed);
            match publish_events(pipeline, publisher, events, stats).await {
                Err(error) => Err(error),
                Ok(()) if rejected.is_empty() => Ok(()),
                Ok(()) => {
                    stats
                        .rejected_items
                        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
                    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let (body, code, reason) = rejected_items_message(rejected);
                    tracing::info!(message_id = %id, rejected = rejected.len(), %reason, "bad items dead-lettered");
                    let props = delivery
                        .properties
                        .clone()
                        .with_content_type("application/json".into());
                    publisher
                        .send_to_dead_letter(&body, &props, attempt, &code, &reason)
                        .await
                }
            }
        }
        Outcome::Retry { reason } if attempt < max_deliveries => {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(message_id = %id, attempt, %reason, "retrying later");
            publisher
                .send_to_retry(&delivery.data, &delivery.properties, attempt + 1, reason)
                .await
        }
        Outcome::Retry { reason } => {
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            let reason = format!("gave up after {attempt} deliveries: {reason}");
            tracing::error!(message_id = %id, %reason, "dead-lettering");
            // Best effort: the row helps dashboards, but Postgres may be the very thing failing,
            // and the dead-letter queue holds the message either way.
            let row = RejectedInput {
                message_id: id.clone(),
                item_index: -1,
                input: String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(1000)])
                    .into_owned(),
                code: "gave_up".into(),
                reason: reason.clone(),
                source: None,
                context: None,
                attempts: attempt as i32,
            };
            if let Err(error) = pipeline.store().record_rejection(&row).await {
                tracing::warn!(message_id = %id, %error, "could not record the dead-lettered message in Postgres");
            }
            publisher
                .send_to_dead_letter(
                    &delivery.data,
                    &delivery.properties,
                    attempt,
                    "gave_up",
                    &reason,
                )
                .await
        }
        Outcome::Reject { code, reason } => {
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(message_id = %id, %code, %reason, "message rejected");
            publisher
                .send_to_dead_letter(&delivery.data, &delivery.properties, attempt, code, reason)
                .await
        }
    };

    match handed_over {
        Ok(()) => match delivery.ack(BasicAckOptions::default()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(message_id = %id, "ack not sent: channel closed; the broker will redeliver (results are idempotent)")
            }
            Err(error) => {
                tracing::warn!(message_id = %id, %error, "ack failed; the broker will redeliver")
            }
        },
        Err(error) => {
            stats.requeued.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(message_id = %id, %error, "could not hand the message over; returning it to the queue");
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            match delivery.nack(requeue).await {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    tracing::warn!(message_id = %id, "nack not sent: channel closed; the broker will redeliver")
                }
            }
        }
    }
}

/// Actor-hit events of a processed message, each confirmed by the broker before the ack, then
/// marked announced. Should the marking fail, the hits stay pending and a later walk finding
/// them announces them again: events are at least once, never lost.
async fn publish_events(
    pipeline: &Pipeline,
    publisher: &Publisher,
    events: &[HitEvent],
    stats: &WorkerStats,
) -> Result<(), super::PublishError> {
    if events.is_empty() {
        return Ok(());
    }
    let batch: Vec<(&str, &serde_json::Value)> = events
        .iter()
        .map(|e| (e.routing_key.as_str(), &e.body))
        .collect();
    publisher.publish_events(&batch).await?;
    stats
        .actor_hits
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    let ids: Vec<i64> = events.iter().map(|e| e.hit_id).collect();
    if let Err(error) = pipeline.store().mark_hits_notified(&ids).await {
        tracing::warn!(%error, hits = ids.len(), "events sent but not marked; they may be announced again");
    }
    Ok(())
}

/// The dead-letter body for the bad items of a message that was otherwise processed.
fn rejected_items_message(rejected: &[RejectedInput]) -> (Vec<u8>, String, String) {
    let items: Vec<serde_json::Value> = rejected
        .iter()
        .map(|r| {
            serde_json::json!({
                "index": r.item_index,
                "value": r.input,
                "code": r.code,
                "reason": r.reason,
                "source": r.source,
                "context": r.context,
            })
        })
        .collect();
    let first = &rejected[0];
    let reason = if rejected.len() == 1 {
        format!("item {}: {}", first.item_index, first.reason)
    } else {
        format!(
            "{} items rejected; item {}: {}",
            rejected.len(),
            first.item_index,
            first.reason
        )
    };
    let code = if rejected.iter().all(|r| r.code == first.code) {
        first.code.clone()
    } else {
        "mixed".into()
    };
    (serde_json::to_vec(&items).unwrap_or_default(), code, reason)
}
