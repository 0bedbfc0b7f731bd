//! One delivery, start to end: the pipeline's outcome, the disposition [`decide`] makes of it,
//! and carrying that out: publish the retry or dead-letter copy, then ack; or hand the
//! delivery back. A delivery is acked only once its copy (if any) is confirmed: a message is
//! never acked without a home.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::BasicProperties;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::stats::WorkerStats;
use crate::lane::Lane;
use crate::pipeline::{
    decide, Dependency, Disposition, Incoming, Letter, Outcome, Pipeline, INTERNAL_ERROR,
};
use crate::progress;
use crate::queue::{attempt_of, PublishError, Publisher};
use crate::store::RejectedInput;

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

/// What message tasks work with, owned so that each task runs on its own.
#[derive(Clone)]
pub(super) struct Settler {
    pub pipeline: Pipeline,
    pub publisher: Arc<Publisher>,
    pub stats: Arc<WorkerStats>,
    /// Tells the session that a service is down for everybody.
    pub suspend: Arc<watch::Sender<Option<(Dependency, String)>>>,
    /// Tells the session that its broker connection is gone: nothing can be handed over on it.
    pub lose: Arc<watch::Sender<Option<String>>>,
    pub max_deliveries: u32,
}

impl Settler {
    /// Settle `delivery` on a task of its own in `tasks`, tracked as in progress under its
    /// message id.
    pub fn spawn(&self, tasks: &mut JoinSet<()>, lane: Lane, delivery: Delivery) {
        let settler = self.clone();
        let id = message_id(&delivery.properties, &delivery.data);
        let tracked_as = id.clone();
        // Boxed where it is made: the whole processing of a message is one large future, and
        // each move on its way into the task would copy all of it.
        let settling = Box::pin(async move {
            settle(&settler, Taken { delivery, lane, id }).await;
        });
        tasks.spawn(progress::global().track(&tracked_as, settling));
    }
}

/// The pipeline's outcome, or a retry with [`INTERNAL_ERROR`] if it panicked: a bug in one
/// message's processing must not take its delivery (and a prefetch slot) with it.
async fn outcome_of(pipeline: &Pipeline, incoming: &Incoming<'_>, stats: &WorkerStats) -> Outcome {
    match AssertUnwindSafe(pipeline.handle(incoming))
        .catch_unwind()
        .await
    {
        Ok(outcome) => outcome,
        Err(panic) => {
            stats.panics.fetch_add(1, Ordering::Relaxed);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(message_id = incoming.message_id, panic = %what, "processing the message panicked; it goes to the retry queue");
            Outcome::Retry {
                code: INTERNAL_ERROR,
                reason: format!("internal error: {what}"),
            }
        }
    }
}

/// A delivery taken from a lane's queue, under its message id.
struct Taken {
    delivery: Delivery,
    lane: Lane,
    id: String,
}

/// Process one delivery and carry out the disposition its outcome decides.
async fn settle(task: &Settler, taken: Taken) {
    task.stats.messages.fetch_add(1, Ordering::Relaxed);
    let attempt = attempt_of(&taken.delivery.properties);
    let content_type = taken
        .delivery
        .properties
        .content_type()
        .as_ref()
        .map(|t| t.as_str().to_owned());
    let incoming = Incoming {
        message_id: &taken.id,
        body: &taken.delivery.data,
        content_type: content_type.as_deref(),
        attempt,
        lane: taken.lane,
    };
    let outcome = taken
        .lane
        .scope(outcome_of(&task.pipeline, &incoming, &task.stats))
        .await;
    count_done(&task.stats, taken.lane, &outcome);
    match decide(outcome, attempt, task.max_deliveries) {
        Disposition::Suspend { dependency, reason } => {
            suspend(task, &taken, dependency, reason).await
        }
        disposition => {
            let handed_over = hand_over(task, &taken, attempt, disposition).await;
            acknowledge(task, &taken, handed_over).await;
        }
    }
}

/// Add a done message's counts to the stats.
fn count_done(stats: &WorkerStats, lane: Lane, outcome: &Outcome) {
    let Outcome::Done {
        enriched,
        cached,
        skipped,
        rejected,
        reputation_cache_hits,
    } = outcome
    else {
        return;
    };
    stats.done_by_lane[lane.index()].fetch_add(1, Ordering::Relaxed);
    stats
        .reputation_cache_hits
        .fetch_add(*reputation_cache_hits, Ordering::Relaxed);
    stats
        .enriched
        .fetch_add(*enriched as u64, Ordering::Relaxed);
    stats.cached.fetch_add(*cached as u64, Ordering::Relaxed);
    stats.skipped.fetch_add(*skipped as u64, Ordering::Relaxed);
    stats
        .rejected_items
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
}

/// Not the message's failure: back to the queue as it was, its attempts untouched, and the
/// session told to pause.
async fn suspend(task: &Settler, taken: &Taken, dependency: Dependency, reason: String) {
    task.stats.suspended.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(message_id = %taken.id, dependency = dependency.as_str(), %reason, "handed back uncounted");
    let _ = task.suspend.send(Some((dependency, reason)));
    hand_back(&taken.delivery, &taken.id).await;
}

/// Send the message where its disposition says before it may be acked; `Ok(())` means
/// "nowhere else" or "the broker confirmed the copy".
async fn hand_over(
    task: &Settler,
    taken: &Taken,
    attempt: u32,
    disposition: Disposition,
) -> Result<(), PublishError> {
    let Taken { delivery, lane, id } = taken;
    match disposition {
        Disposition::Ack | Disposition::Suspend { .. } => Ok(()),
        Disposition::Retry {
            code,
            reason,
            next_attempt,
        } => {
            task.stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(message_id = %id, attempt, code, %reason, "retrying later");
            let (body, props) = (&delivery.data, &delivery.properties);
            task.publisher
                .send_to_retry(*lane, body, props, next_attempt, code, &reason)
                .await
        }
        Disposition::DeadLetter {
            letter,
            code,
            reason,
            record,
        } => {
            task.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            if record {
                record_dead_letter(task, taken, attempt, &code, &reason).await;
            }
            let (body, props) = letter_of(taken, &letter, &code, &reason);
            task.publisher
                .send_to_dead_letter(*lane, body, &props, attempt, &code, &reason)
                .await
        }
    }
}

/// The body and properties of a dead letter, logged as what it is.
fn letter_of<'a>(
    taken: &'a Taken,
    letter: &'a Letter,
    code: &str,
    reason: &str,
) -> (&'a [u8], BasicProperties) {
    let Taken { delivery, id, .. } = taken;
    match letter {
        Letter::Message => {
            tracing::info!(message_id = %id, %code, %reason, "message dead-lettered");
            (&delivery.data, delivery.properties.clone())
        }
        Letter::Items { body, items } => {
            tracing::info!(message_id = %id, rejected = items, %reason, "bad items dead-lettered");
            let props = delivery
                .properties
                .clone()
                .with_content_type("application/json".into());
            (body, props)
        }
    }
}

/// The `rejected_inputs` row of a message dead-lettered without one. Best effort: the row helps
/// dashboards, but Postgres may be the very thing failing, and the dead-letter queue holds the
/// message either way.
async fn record_dead_letter(task: &Settler, taken: &Taken, attempt: u32, code: &str, reason: &str) {
    let Taken { delivery, lane, id } = taken;
    tracing::error!(message_id = %id, %reason, "dead-lettering");
    let row =
        RejectedInput::whole_message(id, &delivery.data, code, reason.to_owned(), attempt, *lane);
    if let Err(error) = task.pipeline.store().record_rejection(&row).await {
        tracing::warn!(message_id = %id, %error, "could not record the dead-lettered message in Postgres");
    }
}

/// Ack a delivery whose copy (if any) the broker confirmed; hand it back otherwise.
async fn acknowledge(task: &Settler, taken: &Taken, handed_over: Result<(), PublishError>) {
    let Taken { delivery, id, .. } = taken;
    match handed_over {
        Ok(()) => match delivery.ack(BasicAckOptions::default()).await {
            Ok(true) => {
                task.stats.settled.fetch_add(1, Ordering::Relaxed);
                progress::global().advanced()
            }
            Ok(false) => {
                tracing::warn!(message_id = %id, "ack not sent: channel closed; the broker will redeliver (results are idempotent)")
            }
            Err(error) => {
                tracing::warn!(message_id = %id, %error, "ack failed; the broker will redeliver")
            }
        },
        Err(error) => {
            task.stats.requeued.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(message_id = %id, %error, "could not hand the message over; returning it to the queue");
            hand_back(delivery, id).await;
            // Every later hand-over would fail the same way, each after spending its message's
            // Graph requests: the session is rebuilt instead.
            if error.is_connection_lost() {
                let _ = task
                    .lose
                    .send(Some(format!("handing a message over: {error}")));
            }
        }
    }
}

/// A nack that returns the delivery to its queue.
pub(super) const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// Return a delivery to the queue (nack with requeue); its attempt count is unchanged.
async fn hand_back(delivery: &Delivery, id: &str) {
    match delivery.nack(REQUEUE).await {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            tracing::warn!(message_id = %id, "nack not sent: channel closed; the broker will redeliver")
        }
    }
}
