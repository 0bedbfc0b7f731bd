//! The worker under test: the in-process worker against the simulator (`spawn_app`, started
//! through `app::Worker` as the `worker` command starts it), or the real binary
//! (`worker_binary`), each with its own database and queue prefix; relays that cut Postgres or
//! the broker; and the broker-side views tests assert on (queue depths, the dead-letter queue).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Future;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use mdti_worker::app::{Worker, WorkerSettings};
use mdti_worker::chain::ChainSettings;
use mdti_worker::consumer::{ConsumerSettings, WorkerStats};
use mdti_worker::enrich::EnricherKind;
use mdti_worker::graph::{GraphClient, GraphSettings, PageLimits};
use mdti_worker::lane::Lane;
use mdti_worker::observable::NormaliseOptions;
use mdti_worker::pipeline::PipelineSettings;
use mdti_worker::queue::inspect;
use mdti_worker::queue::{DecodeLimits, Publisher, Topology, REASON_CODE_HEADER, REASON_HEADER};
use mdti_worker::secret::Secret;
use mdti_worker::sim::{self, SimConfig, SimHandle};
use mdti_worker::store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{graph_settings, TestDb};

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `application_name` of the in-process worker's Postgres sessions.
pub const WORKER_APPLICATION_NAME: &str = "mdti-worker-under-test";

/// A topology of its own for one test: a unique prefix, a short retry delay.
pub fn fresh_topology() -> Topology {
    Topology {
        prefix: format!("t-{}", uuid::Uuid::new_v4().simple()),
        retry_delay: Duration::from_secs(1),
    }
}

/// A TCP relay in front of Postgres that a test can cut and restore, to make the database
/// unreachable for the worker without stopping the shared server.
pub struct Relay {
    pub port: u16,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(target: &'static str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (open2, links2) = (Arc::clone(&open), Arc::clone(&links));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links2.lock().unwrap().push(link);
            }
        });
        Relay { port, open, links }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// One message found on the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: Vec<u8>,
    /// `x-mdti-reason`
    pub reason: String,
    /// `x-mdti-reason-code`
    pub code: String,
}

impl DeadLetter {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Messages waiting in the work queues, the retry queues (both lanes' each) and the
/// dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepths {
    pub work: u32,
    pub retry: u32,
    pub dead_letter: u32,
}

/// Every queue of a topology: both lanes' work and retry queues, and the dead-letter queue.
fn queues(topology: &Topology) -> Vec<String> {
    let mut queues: Vec<String> = Lane::ALL
        .into_iter()
        .flat_map(|lane| [topology.lane_queue(lane), topology.lane_retry_queue(lane)])
        .collect();
    queues.push(topology.dead_letter_queue());
    queues
}

/// The depths of a topology's queues (declared passively: the worker declares them).
pub async fn queue_depths(topology: &Topology) -> QueueDepths {
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut depths = Vec::new();
    for queue in queues(topology) {
        depths.push(inspect(&channel, &queue).await.unwrap().message_count());
    }
    let _ = connection.close(200, "done".into()).await;
    // Live work, live retry, bulk work, bulk retry, dead letters.
    QueueDepths {
        work: depths[0] + depths[2],
        retry: depths[1] + depths[3],
        dead_letter: depths[4],
    }
}

/// Messages ready in one queue (declared passively).
pub async fn ready_in(queue: &str) -> u32 {
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let depth = inspect(&channel, queue).await.unwrap().message_count();
    let _ = connection.close(200, "done".into()).await;
    depth
}

/// Every message in a topology's dead-letter queue, taken off it.
pub async fn drain_dead_letters(topology: &Topology) -> Vec<DeadLetter> {
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(
            topology.dead_letter_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let properties = &message.delivery.properties;
        let header = |name: &str| {
            properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(name).cloned())
                .map(|v| match v {
                    AMQPValue::LongString(s) => s.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default()
        };
        out.push(DeadLetter {
            message_id: properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            body: message.delivery.data.clone(),
            reason: header(REASON_HEADER),
            code: header(REASON_CODE_HEADER),
        });
    }
    let _ = connection.close(200, "done".into()).await;
    out
}

/// Delete a test's queues and exchanges, best effort.
pub async fn delete_topology(topology: &Topology) {
    let Ok(connection) = Connection::connect(AMQP, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    // A worker binary started without `--retry-delay` declares the default delay's retry
    // queues under the same prefix; the names carry the delay, so delete those too.
    let with_default_delay = Topology::with_prefix(topology.prefix.clone());
    let mut all = queues(topology);
    all.extend(queues(&with_default_delay));
    all.sort();
    all.dedup();
    for queue in all {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        topology.lane_exchange(Lane::Live),
        topology.lane_exchange(Lane::Bulk),
        topology.events_exchange(),
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

/// The worker binary against its in-process simulator, with the test's database and prefix.
/// Slow enough (40 Graph requests a second, 4 messages at once) that messages are in flight
/// whenever a test interrupts it.
pub fn worker_binary(db: &TestDb, prefix: &str, extra: &[&str]) -> Child {
    worker_command(db, prefix)
        .args([
            "--graph-rate",
            "40",
            "--graph-burst",
            "1",
            "--concurrency",
            "4",
        ])
        .args(["--chain", "false", "--shutdown-timeout", "15s"])
        .args(extra)
        .spawn()
        .expect("the worker binary starts")
}

/// The worker binary's command with only what every test needs (simulator, database, prefix,
/// broker, a free metrics port), for tests that set the rest themselves (chaining, failpoints).
pub fn worker_command(db: &TestDb, prefix: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mdti-worker"));
    command
        .args([
            "worker",
            "--simulator",
            "--migrate",
            "--queue-prefix",
            prefix,
        ])
        .args(["--database-url", &db.url, "--amqp-url", AMQP])
        // Any free port: a fixed one could be taken on a shared machine.
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Wait for a child process to exit, for at most `limit`.
pub async fn wait_for_exit(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gave up waiting: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The worker binary run as a batch job (`--exit-when-idle 2s`) until the queues stay empty;
/// panics unless it exits cleanly within two minutes.
pub async fn run_binary_until_idle(db: &TestDb, prefix: &str) {
    let mut child = worker_binary(db, prefix, &["--exit-when-idle", "2s"]);
    let exit = wait_for_exit(
        &mut child,
        Duration::from_secs(120),
        "the worker going idle",
    )
    .await;
    assert!(exit.success(), "exit status {exit}");
}

/// The in-process worker and everything around it.
pub struct App {
    pub sim: SimHandle,
    /// The store the worker writes through (possibly via the relay).
    pub store: Store,
    /// The test's database, with a direct store for the test's own reads.
    pub db: TestDb,
    pub topology: Topology,
    pub publisher: Publisher,
    pub stats: Arc<WorkerStats>,
    stop: Option<watch::Sender<bool>>,
    workers: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Consumers started by [`App::start_worker`], each with its own pipeline (its own lookups
    /// in flight), as separate worker processes would be.
    worker_count: usize,
    chain: ChainSettings,
    graph: GraphClient,
    pub relay: Option<Relay>,
    pub broker_relay: Option<Relay>,
    concurrency: u16,
    bulk_commit_linger: Duration,
}

pub struct Options {
    /// `--bulk-commit-linger` of the worker: 1 s unless a test says, shorter than the worker's
    /// default so that a test's bulk messages are not held for it (the linger's own tests pin it).
    pub bulk_commit_linger: Duration,
    pub graph_attempts: u32,
    pub max_deliveries: u32,
    /// Postgres through a relay the test can cut.
    pub through_relay: bool,
    /// RabbitMQ through a relay the test can cut.
    pub broker_relay: bool,
    /// The simulator's starting configuration.
    pub sim: SimConfig,
    /// Overrides of the Graph client's settings for the simulator.
    pub graph: fn(GraphSettings) -> GraphSettings,
    /// Messages processed at once.
    pub concurrency: u16,
    /// Chaining settings of the pipelines.
    pub chain: ChainSettings,
    /// Consumers on the same queue and database.
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            graph_attempts: 4,
            max_deliveries: 5,
            through_relay: false,
            broker_relay: false,
            sim: SimConfig::default(),
            graph: |settings| settings,
            concurrency: 8,
            bulk_commit_linger: Duration::from_secs(1),
            chain: ChainSettings::default(),
            workers: 1,
        }
    }
}

pub async fn spawn_app(options: Options) -> App {
    let sim = sim::spawn(options.sim.clone()).await.unwrap();
    let db = TestDb::new().await;
    let relay = if options.through_relay {
        Some(Relay::start("127.0.0.1:5432").await)
    } else {
        None
    };
    let worker_url = match &relay {
        Some(relay) => db.url_via_port(relay.port),
        None => db.url.clone(),
    };
    // Named, so a test can find (and end) exactly the worker's database sessions.
    let mut worker_url = url::Url::parse(&worker_url).unwrap();
    worker_url
        .query_pairs_mut()
        .append_pair("application_name", WORKER_APPLICATION_NAME);
    let store = Store::connect(worker_url.as_str(), 4).await.unwrap();
    let graph = GraphClient::new((options.graph)(GraphSettings {
        max_attempts: options.graph_attempts,
        ..graph_settings(&sim)
    }))
    .unwrap();
    let topology = fresh_topology();
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let broker_relay = if options.broker_relay {
        Some(Relay::start("127.0.0.1:5672").await)
    } else {
        None
    };
    let mut app = App {
        sim,
        store,
        db,
        topology,
        publisher,
        stats: Arc::default(),
        stop: None,
        workers: Vec::new(),
        worker_count: options.workers.max(1),
        chain: options.chain.clone(),
        graph,
        relay,
        broker_relay,
        concurrency: options.concurrency,
        bulk_commit_linger: options.bulk_commit_linger,
    };
    app.start_worker(options.max_deliveries);
    app
}

impl App {
    pub fn start_worker(&mut self, max_deliveries: u32) {
        let (stop, stopped) = watch::channel(false);
        for _ in 0..self.worker_count {
            let consumer = self.consumer(max_deliveries, stopped.clone());
            self.workers.push(tokio::spawn(consumer));
        }
        self.stop = Some(stop);
    }

    /// One worker with a pipeline of its own, sharing the app's store, Graph client and stats,
    /// started the way `mdti-worker worker` starts one, without profile sync (it takes the
    /// profiles stored) and without an ops listener.
    fn consumer(
        &self,
        max_deliveries: u32,
        stopped: watch::Receiver<bool>,
    ) -> impl Future<Output = anyhow::Result<()>> {
        let amqp_url = match &self.broker_relay {
            Some(relay) => format!("amqp://guest:guest@127.0.0.1:{}/%2f", relay.port),
            None => AMQP.to_owned(),
        };
        let settings = WorkerSettings {
            pipeline: PipelineSettings {
                default_enrichers: EnricherKind::ALL.to_vec(),
                cache_ttl: Duration::from_secs(3600),
                normalise: NormaliseOptions::default(),
                page_limits: PageLimits::default(),
                decode: DecodeLimits::default(),
                item_concurrency: 4,
                chain_by_default: true,
                chain: self.chain.clone(),
            },
            consumer: ConsumerSettings {
                amqp_url: Secret::new(amqp_url),
                topology: self.topology.clone(),
                concurrency: self.concurrency,
                live_prefetch: self.concurrency,
                max_deliveries,
                shutdown_timeout: Duration::from_secs(10),
                exit_when_idle: None,
            },
            group_commit: 64,
            bulk_commit_linger: self.bulk_commit_linger,
            profile_sync_interval: Duration::ZERO,
            stall_after: Duration::from_secs(600),
        };
        let worker = Worker {
            graph: self.graph.clone(),
            store: self.store.clone(),
            settings,
            stats: Arc::clone(&self.stats),
            fleet: None,
            ops_listener: None,
        };
        worker.run(stopped)
    }

    pub async fn stop_worker(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for worker in self.workers.drain(..) {
            tokio::time::timeout(Duration::from_secs(30), worker)
                .await
                .expect("the worker stops within its bound")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn publish(&self, message_id: &str, body: serde_json::Value) {
        self.publish_raw(
            message_id,
            &serde_json::to_vec(&body).unwrap(),
            "application/json",
        )
        .await;
    }

    /// Publish a body as it is; an empty content type publishes none (the worker sniffs).
    pub async fn publish_raw(&self, message_id: &str, body: &[u8], content_type: &str) {
        self.publisher
            .publish_observables("test", body, content_type, message_id)
            .await
            .unwrap();
    }

    /// Graph requests the worker's client made in `lane`.
    pub fn stats_graph_requests(&self, lane: Lane) -> u64 {
        self.graph.stats().requests_by_lane[lane.index()].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Publish a JSON body to `lane`.
    pub async fn publish_to(&self, lane: Lane, message_id: &str, body: serde_json::Value) {
        let body = serde_json::to_vec(&body).unwrap();
        self.publisher
            .publish_observables_to(lane, "test", &body, "application/json", message_id)
            .await
            .unwrap();
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db.query_count(sql).await
    }

    /// Row counts of every result table, to compare before and after a redelivery.
    pub async fn table_counts(&self) -> Vec<(&'static str, i64)> {
        self.db.counts().await
    }

    /// Every message in the dead-letter queue, taken off it.
    pub async fn drain_dead_letters(&self) -> Vec<DeadLetter> {
        drain_dead_letters(&self.topology).await
    }

    pub async fn queue_depths(&self) -> QueueDepths {
        queue_depths(&self.topology).await
    }

    pub async fn teardown(mut self) {
        self.stop_worker().await;
        delete_topology(&self.topology).await;
        self.store.close().await;
        // Dropping `db` drops the test database.
        drop(self.sim);
    }
}

/// A queue of a test's own bound to a topology's events exchange, as a SOAR would bind one.
pub struct EventsTap {
    connection: Connection,
    channel: lapin::Channel,
    queue: String,
}

impl EventsTap {
    pub async fn bind(topology: &Topology) -> EventsTap {
        let connection = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        topology.declare(&channel).await.unwrap();
        let queue = format!("{}.test-events", topology.prefix);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                topology.events_exchange().as_str().into(),
                "#".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        EventsTap {
            connection,
            channel,
            queue,
        }
    }

    /// The events received so far (message id, body), taken off the queue, in order.
    pub async fn take(&self) -> Vec<(String, Vec<u8>)> {
        let mut events = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let properties = &message.delivery.properties;
            let id = properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            events.push((id, message.delivery.data));
        }
        events
    }

    /// The message ids of the events received so far, taken off the queue, in order.
    pub async fn take_ids(&self) -> Vec<String> {
        self.take().await.into_iter().map(|(id, _)| id).collect()
    }

    /// The bodies of the events received so far, taken off the queue, in order.
    pub async fn take_bodies(&self) -> Vec<Vec<u8>> {
        self.take()
            .await
            .into_iter()
            .map(|(_, body)| body)
            .collect()
    }

    /// Every attribution at or above the default `--min-event-confidence` was announced
    /// (none is owed any more), each announcement reached this subscriber, and nothing else
    /// did; an event twice only where a relay pass failed after the broker's confirm (at
    /// least once). Returns how many attributions were announced.
    pub async fn assert_every_attribution_announced(
        &self,
        db: &TestDb,
        failed_passes: u64,
    ) -> usize {
        eventually(Duration::from_secs(60), "no event owed", || async {
            db.query_count("SELECT count(*) FROM actor_attributions WHERE owed")
                .await
                == 0
        })
        .await;
        let silent = db
            .query_count(&format!(
                "SELECT count(*) FROM actor_attributions WHERE announcements = 0 \
                 AND confidence >= {}",
                mdti_worker::chain::Band::MEDIUM
            ))
            .await;
        assert_eq!(silent, 0, "every attribution worth an event was announced");
        let announced: Vec<(i64, i32)> = sqlx::query_as(
            "SELECT id, announcements FROM actor_attributions WHERE announcements > 0",
        )
        .fetch_all(db.store.pool())
        .await
        .unwrap();
        let expected: std::collections::BTreeSet<String> = announced
            .iter()
            .flat_map(|(id, n)| (1..=*n).map(move |k| format!("actor-attribution-{id}-{k}")))
            .collect();
        let received = self.take_ids().await;
        let distinct: std::collections::BTreeSet<String> = received.iter().cloned().collect();
        assert_eq!(
            distinct, expected,
            "one event at least for every announcement, and no other"
        );
        if failed_passes == 0 {
            assert_eq!(
                received.len(),
                distinct.len(),
                "no event twice without a failed pass"
            );
        }
        announced.len()
    }

    /// [`EventsTap::assert_every_attribution_announced`] for the in-process worker's database
    /// and relays.
    pub async fn assert_app_announced(&self, app: &App) -> usize {
        let failed_passes = WorkerStats::get(&app.stats.outbox.failed_passes);
        self.assert_every_attribution_announced(&app.db, failed_passes)
            .await
    }

    pub async fn close(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Poll `check` until it holds, for at most `limit`; a bound on waiting, not a timing claim.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
