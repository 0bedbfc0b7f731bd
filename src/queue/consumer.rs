//! The consumer loop: deliveries in, one deliberate acknowledgement each.
//!
//! - Acknowledgement follows the [`Outcome`]: `Done` is acked after the Postgres commit (inside
//!   the pipeline); `Retry` and `Reject` are first republished to the retry or dead-letter queue
//!   and acked only when the broker has confirmed that copy. If that publish fails, the delivery
//!   is handed back (nack with requeue): a message is never acked without a home.
//! - Each lane has its own consumer on the session's channel, with its own prefetch: the bulk
//!   lane's equals the concurrency, the live lane's is `live_prefetch`. The broker never hands
//!   this worker more unacked messages than it processes at once, so the in-flight set is
//!   bounded by construction, and a live message never waits for a slot that bulk work holds.
//!   Each message's work runs in its lane ([`Lane::scope`]), which the Graph limiter reads.
//! - After losing the connection, the loop rebuilds connection, channel, QoS and consumer with
//!   capped backoff. Deliveries that were in flight on the dead channel are redelivered by the
//!   broker; writes are idempotent, so processing them twice changes nothing.
//! - On shutdown it cancels the consumer, gives in-flight messages `shutdown_timeout` to finish,
//!   then closes the channel, which returns anything unfinished to the queue.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::publisher::{PublishError, Publisher};
use super::topology::{attempt_of, Topology};
use crate::backoff::backoff_delay;
use crate::config::redact_url;
use crate::lane::Lane;
use crate::outbox::{self, OutboxStats, RelayChannels};
use crate::pipeline::{
    decide, Dependency, Disposition, Incoming, Letter, Outcome, Pipeline, INTERNAL_ERROR,
};
use crate::progress;
use crate::secret::Secret;
use crate::store::{GroupCommitStats, RejectedInput};

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub amqp_url: Secret,
    pub topology: Topology,
    /// Prefetch of the bulk lane: bulk messages processed at once.
    pub concurrency: u16,
    /// Prefetch of the live lane: live messages processed at once, beside the bulk ones.
    pub live_prefetch: u16,
    pub max_deliveries: u32,
    pub shutdown_timeout: Duration,
    pub exit_when_idle: Option<Duration>,
}

impl ConsumerSettings {
    /// How many unacked messages of `lane` the broker may hand this worker at once.
    pub fn prefetch(&self, lane: Lane) -> u16 {
        match lane {
            Lane::Live => self.live_prefetch,
            Lane::Bulk => self.concurrency,
        }
        .max(1)
    }
}

/// What the worker did, for logs, the demo and the benchmark.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub messages: AtomicU64,
    /// Messages done, by lane ([`Lane::index`]); [`WorkerStats::done`] sums them.
    pub done_by_lane: [AtomicU64; 2],
    /// Messages ready in each lane's work queue (its retry queue included) at the last look,
    /// every few seconds while consuming.
    pub queued_by_lane: [AtomicU64; 2],
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub requeued: AtomicU64,
    /// Deliveries handed back uncounted because a service was down for every message.
    pub suspended: AtomicU64,
    pub enriched: AtomicU64,
    pub cached: AtomicU64,
    pub skipped: AtomicU64,
    pub rejected_items: AtomicU64,
    /// What the outbox relay announced (see [`crate::outbox`]).
    pub outbox: Arc<OutboxStats>,
    /// Message tasks that panicked; each delivery went to the retry queue (`internal_error`).
    pub panics: AtomicU64,
    /// What profile syncs matched back (see [`crate::chain::retro`]).
    pub retro: crate::chain::retro::RetroStats,
    /// Counterpart reputations the chaining read from Postgres instead of asking Graph.
    pub reputation_cache_hits: AtomicU64,
    pub reconnects: AtomicU64,
    /// Transactions and messages of the results' group commit.
    pub group_commit: Arc<GroupCommitStats>,
    /// The broker connection of the current session is open.
    pub broker_connected: AtomicBool,
    /// The consumer is registered and taking deliveries (false once shutdown began, and while
    /// paused).
    pub consuming: AtomicBool,
    /// The intel profile index is loaded (from Postgres or a sync).
    pub profiles_loaded: AtomicBool,
    /// Why the worker runs without a profile index, while it does.
    pub profiles_problem: Mutex<Option<String>>,
    /// While consumption is paused: the service that is down, why, and since when.
    pub paused: Mutex<Option<PauseState>>,
    /// Microseconds consumption spent paused in finished pauses.
    pub paused_micros: AtomicU64,
}

/// Why and since when consumption is paused.
#[derive(Debug, Clone)]
pub struct PauseState {
    pub dependency: Dependency,
    pub reason: String,
    pub since: Instant,
}

impl WorkerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Messages done, in both lanes.
    pub fn done(&self) -> u64 {
        self.done_by_lane.iter().map(Self::get).sum()
    }

    /// Record that the profile index is loaded (`None`) or why it is not.
    pub fn set_profiles_loaded(&self, problem: Option<String>) {
        self.profiles_loaded
            .store(problem.is_none(), Ordering::Relaxed);
        if let Ok(mut slot) = self.profiles_problem.lock() {
            *slot = problem;
        }
    }

    /// Why the worker runs without a profile index, if it does.
    pub fn profiles_problem(&self) -> Option<String> {
        self.profiles_problem
            .lock()
            .map(|p| p.clone())
            .unwrap_or(None)
    }

    /// The current pause, if consumption is paused.
    pub fn pause(&self) -> Option<PauseState> {
        self.paused.lock().map(|p| p.clone()).unwrap_or(None)
    }

    /// Seconds spent paused in all, the current pause included.
    pub fn paused_seconds(&self) -> f64 {
        let current = self
            .pause()
            .map_or(0.0, |p| p.since.elapsed().as_secs_f64());
        Self::get(&self.paused_micros) as f64 / 1e6 + current
    }

    fn pause_begin(&self, dependency: Dependency, reason: &str) {
        if let Ok(mut paused) = self.paused.lock() {
            *paused = Some(PauseState {
                dependency,
                reason: reason.to_owned(),
                since: Instant::now(),
            });
        }
    }

    fn pause_end(&self) {
        let ended = self.paused.lock().ok().and_then(|mut p| p.take());
        if let Some(ended) = ended {
            let micros = u64::try_from(ended.since.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.paused_micros.fetch_add(micros, Ordering::Relaxed);
        }
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
    let connection = super::connect(settings.amqp_url.expose())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the broker: {e}"))?;
    // Shared, so that the publisher can open a new channel when the broker closes its own.
    let connection = Arc::new(connection);
    let _flags = SessionFlags(stats);
    stats.broker_connected.store(true, Ordering::Relaxed);
    let channel = connection.create_channel().await?;
    settings.topology.declare(&channel).await?;
    let publisher =
        Arc::new(Publisher::on_connection(&connection, settings.topology.clone()).await?);
    let mut consumers = consume(&channel, settings).await?;
    tracing::info!(
        live_queue = %settings.topology.lane_queue(Lane::Live),
        live_prefetch = settings.prefetch(Lane::Live),
        bulk_queue = %settings.topology.lane_queue(Lane::Bulk),
        bulk_prefetch = settings.prefetch(Lane::Bulk),
        "consuming"
    );
    stats.consuming.store(true, Ordering::Relaxed);
    // Owed events go out on this session's connection, from its start on.
    let relay_channels = RelayChannels {
        connection: Arc::clone(&connection),
        topology: settings.topology.clone(),
    };
    let (stop_relay, relay_stopped) = watch::channel(false);
    let relay = AbortOnDrop(tokio::spawn(outbox::run(
        pipeline.store().clone(),
        pipeline.relay().clone(),
        Arc::clone(&stats.outbox),
        relay_channels.clone(),
        relay_stopped,
    )));

    let (suspend, mut suspended) = watch::channel(None::<(Dependency, String)>);
    let suspend = Arc::new(suspend);
    let (lose, mut lost) = watch::channel(None::<String>);
    let lose = Arc::new(lose);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut idle_since: Option<Instant> = None;
    let mut idle_tick = tokio::time::interval(Duration::from_millis(500));
    let mut depth_tick = tokio::time::interval(QUEUE_LOOK_INTERVAL);
    let end = loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break SessionEnd::Shutdown;
                }
            }
            next = consumers.deliveries.next() => match next {
                Some(Next::Delivery(lane, delivery)) => {
                    idle_since = None;
                    let pipeline = pipeline.clone();
                    let publisher = Arc::clone(&publisher);
                    let stats = Arc::clone(stats);
                    let suspend = Arc::clone(&suspend);
                    let lose = Arc::clone(&lose);
                    let max_deliveries = settings.max_deliveries;
                    let id = message_id(&delivery.properties, &delivery.data);
                    tasks.spawn(progress::global().track(&id.clone(), async move {
                        let task = Task { pipeline: &pipeline, publisher: &publisher, stats: &stats, suspend: &suspend, lose: &lose };
                        settle(task, Taken { delivery: *delivery, lane, id }, max_deliveries).await;
                    }));
                }
                Some(Next::Failed(error)) => break SessionEnd::Lost(error.to_string()),
                Some(Next::Ended(lane)) => break SessionEnd::Lost(format!("the {lane} lane's consumer was cancelled by the broker")),
                None => break SessionEnd::Lost("the consumers were cancelled by the broker".into()),
            },
            _ = lost.changed() => {
                if let Some(reason) = lost.borrow_and_update().clone() {
                    break SessionEnd::Lost(reason);
                }
            }
            _ = suspended.changed() => {
                let Some((dependency, reason)) = suspended.borrow_and_update().clone() else {
                    continue;
                };
                hand_back_buffered(&channel, &mut consumers).await;
                let paused = Paused { dependency, reason: &reason };
                if !pause(pipeline, paused, stats, shutdown).await {
                    break SessionEnd::Shutdown;
                }
                // Failures reported while paused were the same outage.
                suspended.borrow_and_update();
                match consume(&channel, settings).await {
                    Ok(resumed) => consumers = resumed,
                    Err(error) => break SessionEnd::Lost(error.to_string()),
                }
                stats.consuming.store(true, Ordering::Relaxed);
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "a message task failed; its delivery returns to the queue");
                }
            }
            _ = depth_tick.tick() => look_at_queues(&channel, &settings.topology, pipeline, stats).await,
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
        consumers.cancel(&channel).await;
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
    if matches!(end, SessionEnd::Lost(_)) {
        drop(relay);
    } else {
        // The relay ends its pass in progress, then the last pass sends what is still owed.
        let _ = stop_relay.send(true);
        relay.finish(RELAY_STOP_LIMIT).await;
        outbox::last_pass(pipeline.store(), &stats.outbox, &relay_channels).await;
    }
    // Closing returns every unacked delivery to the queue.
    let _ = channel.close(200, "worker stopping".into()).await;
    let _ = connection.close(200, "worker stopping".into()).await;
    Ok(end)
}

/// What a lane's consumer gives next.
enum Next {
    Delivery(Lane, Box<Delivery>),
    Failed(lapin::Error),
    /// The lane's consumer ended (the broker cancelled it): the session must not go on with one
    /// lane silently unserved.
    Ended(Lane),
}

/// Both lanes' consumers on the session's channel, their deliveries in one stream, each tagged
/// with its lane.
struct Consumers {
    tags: Vec<String>,
    deliveries: SelectAll<BoxStream<'static, Next>>,
}

impl Consumers {
    /// `&mut`: the delivery stream is not `Sync`, so a shared borrow could not be held across
    /// the awaits of a task that must be `Send`.
    async fn cancel(&mut self, channel: &lapin::Channel) {
        for tag in &self.tags {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }
}

/// Start consuming each lane's work queue under a fresh consumer tag, with the lane's prefetch:
/// a `basic.qos` that is not global applies to the consumers started after it on the channel,
/// so each consumer keeps the one set just before it.
async fn consume(
    channel: &lapin::Channel,
    settings: &ConsumerSettings,
) -> Result<Consumers, lapin::Error> {
    let mut consumers = Consumers {
        tags: Vec::new(),
        deliveries: SelectAll::new(),
    };
    let session = uuid::Uuid::new_v4().simple();
    for lane in Lane::ALL {
        channel
            .basic_qos(settings.prefetch(lane), BasicQosOptions::default())
            .await?;
        let tag = format!("mdti-worker-{session}-{lane}");
        let consumer = channel
            .basic_consume(
                settings.topology.lane_queue(lane).as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.tags.push(tag);
        let deliveries = consumer.map(move |delivery| match delivery {
            Ok(delivery) => Next::Delivery(lane, Box::new(delivery)),
            Err(error) => Next::Failed(error),
        });
        let end = futures::stream::once(async move { Next::Ended(lane) });
        consumers.deliveries.push(deliveries.chain(end).boxed());
    }
    Ok(consumers)
}

/// Cancel the consumers and give back, uncounted, the deliveries the broker had already sent
/// them but the loop had not taken yet: they must not sit unacked while the worker is paused.
async fn hand_back_buffered(channel: &lapin::Channel, consumers: &mut Consumers) {
    consumers.cancel(channel).await;
    // The stream ends once the broker confirmed the cancels; bounded in case it never does.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(next) = consumers.deliveries.next().await {
            if let Next::Delivery(_, delivery) = next {
                let _ = delivery.nack(REQUEUE).await;
            }
        }
    })
    .await;
}

/// Why consumption is paused.
struct Paused<'a> {
    dependency: Dependency,
    reason: &'a str,
}

/// Take no deliveries until `dependency` answers its probe again (probing with capped
/// backoff); false when shutdown came first. Messages in flight meanwhile finish or are handed
/// back uncounted, like the one that reported the outage.
async fn pause(
    pipeline: &Pipeline,
    paused: Paused<'_>,
    stats: &WorkerStats,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let dependency = paused.dependency.as_str();
    stats.pause_begin(paused.dependency, paused.reason);
    tracing::warn!(
        dependency,
        reason = paused.reason,
        "a service is down for every message; consumption paused until it answers"
    );
    stats.consuming.store(false, Ordering::Relaxed);
    let mut probes: u32 = 0;
    let resumed = loop {
        probes = probes.saturating_add(1);
        let wait = backoff_delay(
            probes.min(8),
            Duration::from_millis(500),
            Duration::from_secs(15),
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break false;
        }
        match pipeline.probe(paused.dependency).await {
            Ok(()) => break true,
            Err(error) => {
                tracing::info!(dependency, %error, "still down; consumption stays paused")
            }
        }
    };
    stats.pause_end();
    if resumed {
        tracing::info!(dependency, "answers again; consumption resumed");
    }
    resumed
}

/// How often a consuming worker looks at its queues' depths (for `/metrics`).
const QUEUE_LOOK_INTERVAL: Duration = Duration::from_secs(5);

/// Messages ready in `queue`, or `None` if the broker would not say.
async fn ready_in(channel: &lapin::Channel, queue: &str) -> Option<u64> {
    let state = super::inspect(channel, queue).await.ok()?;
    Some(u64::from(state.message_count()))
}

/// Messages ready in `lane`'s work and retry queues.
async fn ready_in_lane(channel: &lapin::Channel, topology: &Topology, lane: Lane) -> Option<u64> {
    let work = ready_in(channel, &topology.lane_queue(lane)).await?;
    let retry = ready_in(channel, &topology.lane_retry_queue(lane)).await?;
    Some(work + retry)
}

/// Count what waits in each lane, for `/metrics` and for the dashboards (which read Postgres).
/// Best effort: a count that cannot be had or kept is tried again at the next look. The write
/// goes on a task of its own, bounded: the loop must not wait on a Postgres that is down.
async fn look_at_queues(
    channel: &lapin::Channel,
    topology: &Topology,
    pipeline: &Pipeline,
    stats: &WorkerStats,
) {
    let mut counted = Vec::with_capacity(Lane::ALL.len());
    for lane in Lane::ALL {
        if let Some(ready) = ready_in_lane(channel, topology, lane).await {
            stats.queued_by_lane[lane.index()].store(ready, Ordering::Relaxed);
            counted.push((lane, ready));
        }
    }
    if counted.is_empty() {
        return;
    }
    let store = pipeline.store().clone();
    tokio::spawn(async move {
        let write = store.record_lane_backlog(&counted);
        match tokio::time::timeout(QUEUE_LOOK_INTERVAL, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "could not record the lanes' backlog"),
            Err(_) => tracing::debug!("recording the lanes' backlog timed out"),
        }
    });
}

async fn queues_empty(channel: &lapin::Channel, topology: &Topology) -> bool {
    for lane in Lane::ALL {
        if ready_in_lane(channel, topology, lane).await != Some(0) {
            return false;
        }
    }
    true
}

/// How long a stopping session waits for the relay's pass in progress before aborting it.
const RELAY_STOP_LIMIT: Duration = Duration::from_secs(10);

/// Aborts the task when dropped, however the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Wait for the task to end by itself, for at most `limit`; aborted past it.
    async fn finish(mut self, limit: Duration) {
        if tokio::time::timeout(limit, &mut self.0).await.is_err() {
            tracing::warn!(
                "the event relay's pass did not end in time; aborted, its events stay owed"
            );
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

/// What a message task works with.
struct Task<'a> {
    pipeline: &'a Pipeline,
    publisher: &'a Publisher,
    stats: &'a WorkerStats,
    /// Tells the session that a service is down for everybody.
    suspend: &'a watch::Sender<Option<(Dependency, String)>>,
    /// Tells the session that its broker connection is gone: nothing can be handed over on it.
    lose: &'a watch::Sender<Option<String>>,
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
async fn settle(task: Task<'_>, taken: Taken, max_deliveries: u32) {
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
        .scope(outcome_of(task.pipeline, &incoming, task.stats))
        .await;
    count_done(task.stats, taken.lane, &outcome);
    match decide(outcome, attempt, max_deliveries) {
        Disposition::Suspend { dependency, reason } => {
            suspend(&task, &taken, dependency, reason).await
        }
        disposition => {
            let handed_over = hand_over(&task, &taken, attempt, disposition).await;
            acknowledge(&task, &taken, handed_over).await;
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
async fn suspend(task: &Task<'_>, taken: &Taken, dependency: Dependency, reason: String) {
    task.stats.suspended.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(message_id = %taken.id, dependency = dependency.as_str(), %reason, "handed back uncounted");
    let _ = task.suspend.send(Some((dependency, reason)));
    hand_back(&taken.delivery, &taken.id).await;
}

/// Send the message where its disposition says before it may be acked; `Ok(())` means
/// "nowhere else" or "the broker confirmed the copy".
async fn hand_over(
    task: &Task<'_>,
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
async fn record_dead_letter(
    task: &Task<'_>,
    taken: &Taken,
    attempt: u32,
    code: &str,
    reason: &str,
) {
    let Taken { delivery, lane, id } = taken;
    tracing::error!(message_id = %id, %reason, "dead-lettering");
    let row =
        RejectedInput::whole_message(id, &delivery.data, code, reason.to_owned(), attempt, *lane);
    if let Err(error) = task.pipeline.store().record_rejection(&row).await {
        tracing::warn!(message_id = %id, %error, "could not record the dead-lettered message in Postgres");
    }
}

/// Ack a delivery whose copy (if any) the broker confirmed; hand it back otherwise.
async fn acknowledge(task: &Task<'_>, taken: &Taken, handed_over: Result<(), PublishError>) {
    let Taken { delivery, id, .. } = taken;
    match handed_over {
        Ok(()) => match delivery.ack(BasicAckOptions::default()).await {
            Ok(true) => progress::global().advanced(),
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
const REQUEUE: BasicNackOptions = BasicNackOptions {
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
