//! The consumer loop: deliveries in, one deliberate acknowledgement each.
//!
//! - Each delivery is settled on a task of its own ([`settle`]) as its disposition says
//!   ([`crate::pipeline::decide`]): acked after the Postgres commit (inside the pipeline), or
//!   after the broker confirmed its retry or dead-letter copy; handed back (nack with requeue)
//!   when that publish fails or a service is down for everybody: a message is never acked
//!   without a home.
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

mod settle;
mod stats;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::backoff_delay;
use crate::lane::Lane;
use crate::outbox::{self, RelayChannels};
use crate::pipeline::{Dependency, Pipeline};
use crate::queue::{self, Publisher, Topology};
use crate::secret::redact_url;
use crate::secret::Secret;
pub use settle::message_id;
use settle::{Settler, REQUEUE};
pub use stats::{PauseState, WorkerStats};

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

/// What a session runs on: the broker connection, its channel and the publisher on it.
struct Broker {
    /// Shared, so that the publisher can open a new channel when the broker closes its own.
    connection: Arc<lapin::Connection>,
    channel: lapin::Channel,
    publisher: Arc<Publisher>,
}

/// One broker session: connect, consume both lanes until the session ends, then let the
/// messages in hand finish and close.
async fn session(
    pipeline: &Pipeline,
    settings: &ConsumerSettings,
    shutdown: &mut watch::Receiver<bool>,
    stats: &Arc<WorkerStats>,
) -> anyhow::Result<SessionEnd> {
    let _flags = SessionFlags(stats);
    let broker = open_broker(settings, stats).await?;
    let mut consumers = consume(&broker.channel, settings).await?;
    tracing::info!(
        live_queue = %settings.topology.lane_queue(Lane::Live),
        live_prefetch = settings.prefetch(Lane::Live),
        bulk_queue = %settings.topology.lane_queue(Lane::Bulk),
        bulk_prefetch = settings.prefetch(Lane::Bulk),
        runtime_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "consuming"
    );
    stats.consuming.store(true, Ordering::Relaxed);
    // Owed events go out on this session's connection, from its start on.
    let relay = Relay::start(pipeline, stats, &broker, settings);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let session = Session {
        pipeline,
        settings,
        stats,
        broker: &broker,
    };
    let end = session.serve(&mut consumers, &mut tasks, shutdown).await;

    // Not ready from here on: in-flight messages finish, new ones wait for another worker.
    stats.consuming.store(false, Ordering::Relaxed);
    if !matches!(end, SessionEnd::Lost(_)) {
        // Stop new deliveries first, then let the ones in hand finish.
        consumers.cancel(&broker.channel).await;
    }
    drain(&mut tasks, settings.shutdown_timeout).await;
    relay.stop(&end, pipeline, stats).await;
    // Closing returns every unacked delivery to the queue.
    let _ = broker.channel.close(200, "worker stopping".into()).await;
    let _ = broker.connection.close(200, "worker stopping".into()).await;
    Ok(end)
}

/// Connect, declare the topology and open the publisher.
async fn open_broker(settings: &ConsumerSettings, stats: &WorkerStats) -> anyhow::Result<Broker> {
    // The first line of the guide only: the reconnect log line names the broker already, and
    // repeats while the broker is away.
    let connection = queue::connect(settings.amqp_url.expose())
        .await
        .map_err(|unavailable| anyhow::anyhow!(unavailable.summary()))?;
    let connection = Arc::new(connection);
    stats.broker_connected.store(true, Ordering::Relaxed);
    let channel = connection.create_channel().await?;
    settings.topology.declare(&channel).await?;
    let publisher =
        Arc::new(Publisher::on_connection(&connection, settings.topology.clone()).await?);
    Ok(Broker {
        connection,
        channel,
        publisher,
    })
}

/// Give the messages in hand `limit` to finish; past it, abort them (their deliveries go back
/// to the queue when the channel closes).
async fn drain(tasks: &mut JoinSet<()>, limit: Duration) {
    let drained =
        tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            unfinished = tasks.len(),
            "shutdown timeout reached; unfinished messages go back to the queue"
        );
        tasks.abort_all();
    }
}

/// The session's outbox relay and how to stop it.
struct Relay {
    task: AbortOnDrop,
    stop: watch::Sender<bool>,
    channels: RelayChannels,
}

impl Relay {
    fn start(
        pipeline: &Pipeline,
        stats: &WorkerStats,
        broker: &Broker,
        settings: &ConsumerSettings,
    ) -> Self {
        let channels = RelayChannels {
            connection: Arc::clone(&broker.connection),
            topology: settings.topology.clone(),
        };
        let (stop, stopped) = watch::channel(false);
        let task = AbortOnDrop(tokio::spawn(outbox::run(
            pipeline.store().clone(),
            pipeline.relay().clone(),
            Arc::clone(&stats.outbox),
            channels.clone(),
            stopped,
        )));
        Relay {
            task,
            stop,
            channels,
        }
    }

    /// A lost connection takes the relay with it; otherwise the relay ends its pass in
    /// progress, then the last pass sends what is still owed.
    async fn stop(self, end: &SessionEnd, pipeline: &Pipeline, stats: &WorkerStats) {
        if matches!(end, SessionEnd::Lost(_)) {
            return;
        }
        let _ = self.stop.send(true);
        self.task.finish(RELAY_STOP_LIMIT).await;
        outbox::last_pass(pipeline.store(), &stats.outbox, &self.channels).await;
    }
}

/// What the loop of a session works with.
struct Session<'a> {
    pipeline: &'a Pipeline,
    settings: &'a ConsumerSettings,
    stats: &'a Arc<WorkerStats>,
    broker: &'a Broker,
}

impl Session<'_> {
    /// Take deliveries and settle each on a task of its own, until shutdown, idleness, a lost
    /// connection, or a pause that ends in shutdown.
    async fn serve(
        &self,
        consumers: &mut Consumers,
        tasks: &mut JoinSet<()>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let (suspend, mut suspended) = watch::channel(None::<(Dependency, String)>);
        let (lose, mut lost) = watch::channel(None::<String>);
        let settler = self.settler(suspend, lose);
        let mut idle_since: Option<Instant> = None;
        let mut idle_tick = tokio::time::interval(Duration::from_millis(500));
        let mut depth_tick = tokio::time::interval(QUEUE_LOOK_INTERVAL);
        let channel = &self.broker.channel;
        let topology = &self.settings.topology;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return SessionEnd::Shutdown;
                    }
                }
                next = consumers.deliveries.next() => match next {
                    Some(Next::Delivery(lane, delivery)) => {
                        idle_since = None;
                        settler.spawn(tasks, lane, *delivery);
                    }
                    Some(Next::Failed(error)) => return SessionEnd::Lost(error.to_string()),
                    Some(Next::Ended(lane)) => return SessionEnd::Lost(format!("the {lane} lane's consumer was cancelled by the broker")),
                    None => return SessionEnd::Lost("the consumers were cancelled by the broker".into()),
                },
                _ = lost.changed() => {
                    if let Some(reason) = lost.borrow_and_update().clone() {
                        return SessionEnd::Lost(reason);
                    }
                }
                _ = suspended.changed() => {
                    if let Err(end) = self.pause_for(&mut suspended, consumers, shutdown).await {
                        return end;
                    }
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(error) = joined {
                        tracing::error!(%error, "a message task failed; its delivery returns to the queue");
                    }
                }
                _ = depth_tick.tick() => look_at_queues(channel, topology, self.pipeline, self.stats).await,
                _ = idle_tick.tick(), if self.settings.exit_when_idle.is_some() => {
                    if self.idle_long_enough(tasks.is_empty(), &mut idle_since).await {
                        return SessionEnd::Idle;
                    }
                }
            }
        }
    }

    fn settler(
        &self,
        suspend: watch::Sender<Option<(Dependency, String)>>,
        lose: watch::Sender<Option<String>>,
    ) -> Settler {
        Settler {
            pipeline: self.pipeline.clone(),
            publisher: Arc::clone(&self.broker.publisher),
            stats: Arc::clone(self.stats),
            suspend: Arc::new(suspend),
            lose: Arc::new(lose),
            max_deliveries: self.settings.max_deliveries,
        }
    }

    /// A message found a service down for everybody: give back what the consumers hold, pause
    /// until the service answers, then consume again. `Err` with how the session ends when it
    /// cannot go on.
    async fn pause_for(
        &self,
        suspended: &mut watch::Receiver<Option<(Dependency, String)>>,
        consumers: &mut Consumers,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionEnd> {
        let Some((dependency, reason)) = suspended.borrow_and_update().clone() else {
            return Ok(());
        };
        let channel = &self.broker.channel;
        hand_back_buffered(channel, consumers).await;
        let paused = Paused {
            dependency,
            reason: &reason,
        };
        if !pause(self.pipeline, paused, self.stats, shutdown).await {
            return Err(SessionEnd::Shutdown);
        }
        // Failures reported while paused were the same outage.
        suspended.borrow_and_update();
        *consumers = consume(channel, self.settings)
            .await
            .map_err(|error| SessionEnd::Lost(error.to_string()))?;
        self.stats.consuming.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether nothing was in hand and the queues stayed empty for `exit_when_idle`.
    async fn idle_long_enough(&self, nothing_in_hand: bool, since: &mut Option<Instant>) -> bool {
        let limit = self.settings.exit_when_idle.unwrap_or_default();
        if nothing_in_hand && queues_empty(&self.broker.channel, &self.settings.topology).await {
            since.get_or_insert_with(Instant::now).elapsed() >= limit
        } else {
            *since = None;
            false
        }
    }
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
    let state = queue::inspect(channel, queue).await.ok()?;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Sets its flag when dropped: a task holding one was aborted or ended.
    struct Ended(Arc<AtomicBool>);

    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    // Paused clock: the limit passes without the test waiting for it.
    #[tokio::test(start_paused = true)]
    async fn a_relay_pass_that_outlasts_its_limit_is_aborted_at_the_limit() {
        let ended = Arc::new(AtomicBool::new(false));
        let guard = Ended(Arc::clone(&ended));
        let pass = AbortOnDrop(tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }));
        let started = tokio::time::Instant::now();
        pass.finish(RELAY_STOP_LIMIT).await;
        assert_eq!(started.elapsed(), RELAY_STOP_LIMIT);
        tokio::task::yield_now().await;
        assert!(ended.load(Ordering::SeqCst), "the pass was not aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_pass_that_ends_in_time_is_waited_for_not_cut() {
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        let pass = AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            done.store(true, Ordering::SeqCst);
        }));
        let started = tokio::time::Instant::now();
        pass.finish(RELAY_STOP_LIMIT).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(finished.load(Ordering::SeqCst));
    }
}
