//! A worker from its settings: the Graph client, the store, the pipeline over them, the intel
//! profile index, and the consumer, with what runs beside it (profile sync, stall watchdog,
//! operations listener, fleet lease). `mdti-worker worker`, `demo`, `bench` and the tests all
//! start their workers here, so what they run is what production runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chain::retro::sync_and_match;
use crate::chain::ProfileIndex;
use crate::config::{redact_url, BrokerArgs, DatabaseArgs, GraphArgs, WorkerArgs};
use crate::consumer::{self, ConsumerSettings, WorkerStats};
use crate::fleet::{Coordinator, FleetSettings};
use crate::graph::GraphClient;
use crate::lane::Lane;
use crate::observable::NormaliseOptions;
use crate::ops;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::queue::message::DecodeLimits;
use crate::service::FIRST_ANSWER_WITHIN;
use crate::sim;
use crate::store::Store;

/// A Graph client from settings, or from an in-process simulator (kept alive by the handle).
pub async fn graph_client(
    graph: &mut GraphArgs,
    simulator: bool,
) -> anyhow::Result<(GraphClient, Option<sim::SimHandle>)> {
    let handle = if simulator {
        let handle = sim::spawn(sim::SimConfig::default()).await?;
        graph.use_simulator(handle.graph_base_url(), handle.login_base_url());
        tracing::info!(url = %handle.graph_base_url(), "using the in-process Graph simulator");
        Some(handle)
    } else {
        None
    };
    let settings = graph.to_settings().map_err(anyhow::Error::msg)?;
    let client = GraphClient::new(settings)?;
    Ok((client, handle))
}

/// The database created if missing and migrated, then connected. Postgres missing is said at
/// once, as a [`crate::service::Unavailable`].
pub async fn migrate(database: &DatabaseArgs) -> anyhow::Result<Store> {
    let url = database.database_url.expose();
    Store::create_database_if_missing(url).await?;
    let store = Store::open(url, database.db_max_connections, FIRST_ANSWER_WITHIN).await?;
    store
        .migrate()
        .await
        .with_context(|| format!("migrating {}", redact_url(url)))?;
    tracing::info!(database = %redact_url(url), "migrations applied");
    Ok(store)
}

/// How a worker works, whatever started it.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub pipeline: PipelineSettings,
    pub consumer: ConsumerSettings,
    /// Messages whose writes are committed in one transaction, at most.
    pub group_commit: usize,
    /// How long a transaction of bulk messages waits for more to join it.
    pub bulk_commit_linger: Duration,
    /// Resync intel profiles this often; zero: never, take what is stored.
    pub profile_sync_interval: Duration,
    /// With messages in hand and nothing moving for this long, the worker is stalled.
    pub stall_after: Duration,
}

impl WorkerSettings {
    /// The settings the command line gives.
    pub fn from_args(graph: &GraphArgs, broker: &BrokerArgs, worker: &WorkerArgs) -> Self {
        WorkerSettings {
            pipeline: PipelineSettings {
                default_enrichers: worker.enrichers.0.clone(),
                cache_ttl: worker.cache_ttl,
                normalise: NormaliseOptions {
                    allow_non_public: worker.allow_non_public,
                },
                page_limits: graph.page_limits(),
                decode: DecodeLimits {
                    max_body_bytes: worker.max_body_bytes,
                    ..DecodeLimits::default()
                },
                item_concurrency: worker.item_concurrency,
                chain_by_default: worker.chain,
                chain: worker.chain_settings(),
            },
            consumer: ConsumerSettings {
                amqp_url: broker.amqp_url.clone(),
                topology: broker.topology(),
                concurrency: worker.concurrency,
                live_prefetch: worker.live_prefetch,
                max_deliveries: worker.max_deliveries,
                shutdown_timeout: worker.shutdown_timeout,
                exit_when_idle: worker.exit_when_idle,
            },
            group_commit: worker.group_commit,
            bulk_commit_linger: worker.bulk_commit_linger,
            profile_sync_interval: worker.profile_sync_interval,
            stall_after: worker.stall_after,
        }
    }
}

/// A worker ready to run: its connections, its settings and where it reports.
pub struct Worker {
    pub graph: GraphClient,
    pub store: Store,
    pub settings: WorkerSettings,
    /// Counters the work keeps; shared with whoever reads them (ops, a test, a bench).
    pub stats: Arc<WorkerStats>,
    /// In a fleet, the tenant's quota is shared with the other workers through leases.
    pub fleet: Option<FleetSettings>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` for as long as the worker runs.
    pub ops_listener: Option<TcpListener>,
}

impl Worker {
    /// Consume until `shutdown` turns true (or, with `exit_when_idle`, the queues stay empty).
    /// In a fleet the lease is taken, and the limiter set to this worker's share, before the
    /// first message is consumed; it is given back after the last one is settled.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Worker {
            graph,
            store,
            settings,
            stats,
            fleet,
            ops_listener,
        } = self;
        let fleet = match fleet {
            Some(fleet) => Some(join_fleet(&store, &graph, fleet).await?),
            None => None,
        };
        let result = consume(graph, store, settings, stats, ops_listener, shutdown).await;
        if let Some(fleet) = fleet {
            leave_fleet(fleet).await;
        }
        result
    }
}

/// The worker built from command-line settings, without a fleet: `demo`, `bench` and tests
/// that start a worker the way `mdti-worker worker` does.
#[allow(clippy::too_many_arguments)]
pub async fn run_worker(
    graph_args: &GraphArgs,
    broker: &BrokerArgs,
    worker: &WorkerArgs,
    graph: GraphClient,
    store: Store,
    shutdown: watch::Receiver<bool>,
    stats: Arc<WorkerStats>,
    ops_listener: Option<TcpListener>,
) -> anyhow::Result<()> {
    Worker {
        graph,
        store,
        settings: WorkerSettings::from_args(graph_args, broker, worker),
        stats,
        fleet: None,
        ops_listener,
    }
    .run(shutdown)
    .await
}

/// A fleet lease held, and the task that keeps it until told to leave.
struct FleetMember {
    leave: watch::Sender<bool>,
    coordinator: JoinHandle<()>,
}

async fn join_fleet(
    store: &Store,
    graph: &GraphClient,
    settings: FleetSettings,
) -> anyhow::Result<FleetMember> {
    let coordinator = Coordinator::join(store.clone(), graph.clone(), settings)
        .await
        .context("joining the fleet sharing the tenant quota (worker_leases in Postgres)")?;
    let (leave, leaving) = watch::channel(false);
    Ok(FleetMember {
        leave,
        coordinator: tokio::spawn(coordinator.run(leaving)),
    })
}

async fn leave_fleet(member: FleetMember) {
    let _ = member.leave.send(true);
    if let Err(error) = member.coordinator.await {
        tracing::warn!(%error, "the fleet coordinator ended abnormally");
    }
}

/// The pipeline over the store's group commit, its profile index in place, consuming until
/// shutdown with the profile sync, the stall watchdog and the ops listener beside it.
async fn consume(
    graph: GraphClient,
    store: Store,
    settings: WorkerSettings,
    stats: Arc<WorkerStats>,
    ops_listener: Option<TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pipeline = Pipeline::new(
        graph,
        store
            .remembering_leads(Arc::clone(&stats.kept_rows))
            .with_group_commit(
                settings.group_commit,
                settings.bulk_commit_linger,
                Arc::clone(&stats.group_commit),
            ),
        settings.pipeline,
    );
    let interval = settings.profile_sync_interval;
    // No delivery is taken before the profile index is in place: a message chained without it
    // would miss every profile-indicator hit, and as a cached observable it is not chained
    // again for the cache TTL.
    let synced = load_profiles(&pipeline, &stats, !interval.is_zero()).await;
    let sync = (!interval.is_zero()).then(|| {
        tokio::spawn(profile_sync_loop(
            pipeline.clone(),
            interval,
            synced,
            Arc::clone(&stats),
        ))
    });
    let watchdog = tokio::spawn(crate::progress::watch(settings.stall_after));
    let ops_server = ops_listener.map(|listener| serve_ops(listener, &pipeline, &stats));
    let result = consumer::run(pipeline, settings.consumer, shutdown, stats).await;
    watchdog.abort();
    for task in [sync, ops_server].into_iter().flatten() {
        task.abort();
    }
    result
}

fn serve_ops(
    listener: TcpListener,
    pipeline: &Pipeline,
    stats: &Arc<WorkerStats>,
) -> JoinHandle<()> {
    ops::spawn(
        listener,
        ops::Ops {
            graph: pipeline.graph().clone(),
            store: pipeline.store().clone(),
            stats: Arc::clone(stats),
        },
    )
}

/// The profile index from Postgres when a sync completed there, else from a first sync of its
/// own (a sync another worker is still running has stored only part of the index); returns
/// whether that sync ran. Should it fail, the worker goes on matching reputation rules only,
/// and says so on `/readyz` and in `mdti_intel_profiles_loaded` until a later sync succeeds.
/// A worker that may not sync (`--profile-sync-interval 0`) takes whatever is stored.
async fn load_profiles(pipeline: &Pipeline, stats: &WorkerStats, may_sync: bool) -> bool {
    let store = pipeline.store();
    let stored = match store.profile_sync_completed().await {
        Ok(None) if may_sync => Ok(None),
        Ok(_) => ProfileIndex::load(store).await.map(Some),
        Err(error) => Err(error),
    };
    match stored {
        Ok(Some(index)) => {
            pipeline.set_profiles(index);
            stats.set_profiles_loaded(None);
            return false;
        }
        Ok(None) => {
            tracing::info!("no completed intel profile sync stored; syncing before consuming")
        }
        Err(error) => tracing::warn!(%error, "intel profiles not loaded from Postgres"),
    }
    if !may_sync {
        stats.set_profiles_loaded(Some("--profile-sync-interval 0 and none stored".into()));
        return false;
    }
    sync_and_reload(pipeline, stats).await;
    true
}

/// Sync intel profiles into Postgres and swap the reloaded index in; a failure keeps the
/// previous index (or none) and is reported.
async fn sync_and_reload(pipeline: &Pipeline, stats: &WorkerStats) {
    let settings = pipeline.chain_settings();
    let outcome = match sync_and_match(pipeline.graph(), pipeline.store(), settings).await {
        Ok((summary, index, retro)) => {
            tracing::info!(?summary, "intel profiles synced");
            pipeline.set_profiles(index);
            stats.retro.add(&retro);
            if retro.owed > 0 {
                pipeline.relay().wake();
            }
            Ok(())
        }
        Err(error) => Err(format!("intel profile sync failed: {error}")),
    };
    match outcome {
        Ok(()) => stats.set_profiles_loaded(None),
        Err(problem) => {
            tracing::warn!(%problem, "keeping the previous intel profile index");
            if !WorkerStats::is(&stats.profiles_loaded) {
                stats.set_profiles_loaded(Some(problem));
            }
        }
    }
}

/// Resync intel profiles every `interval` (the first right away unless `synced` just now), in
/// the bulk lane.
/// While no index could be loaded at all, a failed sync is tried again after
/// [`PROFILE_RETRY`] rather than a whole interval.
async fn profile_sync_loop(
    pipeline: Pipeline,
    interval: Duration,
    synced: bool,
    stats: Arc<WorkerStats>,
) {
    if synced {
        tokio::time::sleep(next_profile_sync(interval, &stats)).await;
    }
    loop {
        // Background upkeep: its pages wait behind live requests, as bulk work does.
        Lane::Bulk.scope(sync_and_reload(&pipeline, &stats)).await;
        tokio::time::sleep(next_profile_sync(interval, &stats)).await;
    }
}

/// How soon a worker without any profile index tries its sync again.
const PROFILE_RETRY: Duration = Duration::from_secs(60);

fn next_profile_sync(interval: Duration, stats: &WorkerStats) -> Duration {
    if WorkerStats::is(&stats.profiles_loaded) {
        interval
    } else {
        interval.min(PROFILE_RETRY)
    }
}
