//! Subcommands: `worker`, `publish`, `enrich`, `migrate`, `sim`, `sync-profiles`, `demo`,
//! `bench`, `dlq list` / `dlq replay`, `export`, `report`, `status`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use crate::chain::retro::sync_and_match;
use crate::chain::{ChainSettings, Chainer, ProfileIndex};
use crate::config::{
    parse_duration, redact_url, BrokerArgs, DatabaseArgs, EnricherList, FleetArgs, GraphArgs,
    WorkerArgs,
};
use crate::enrich::{self, Enrichment};
use crate::fleet::Coordinator;
use crate::graph::GraphClient;
use crate::lane::Lane;
use crate::observable::{self, NormaliseOptions, Normalised, ObservableKind};
use crate::ops::{self, ListenAddr};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::queue::consumer::{self, ConsumerSettings, WorkerStats};
use crate::queue::message::DecodeLimits;
use crate::sim;
use crate::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "mdti-worker",
    version,
    about = "Enrich observables with Microsoft Defender Threat Intelligence, from RabbitMQ into Postgres"
)]
pub struct Cli {
    /// File of KEY=VALUE lines (MDTI_* settings) read before the environment
    #[arg(long, env = "MDTI_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(
        long,
        env = "MDTI_LOG_FORMAT",
        value_enum,
        default_value = "human",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Consume observables from RabbitMQ, enrich them, write the results to Postgres
    Worker(Box<WorkerCmd>),
    /// Publish observables from files or stdin to a lane (stdin alone: live; files: bulk)
    Publish(PublishCmd),
    /// Enrich observables now and print the mapped result (no broker, no database)
    Enrich(EnrichCmd),
    /// Create the database if missing and apply migrations
    Migrate(MigrateCmd),
    /// Serve the Graph simulator
    Sim(SimCmd),
    /// Sync intel profiles (actors) and their indicators from Graph into Postgres now
    SyncProfiles(SyncProfilesCmd),
    /// Run the whole path on local defaults against the in-process simulator
    Demo(DemoCmd),
    /// Benchmark the whole path (broker, worker, simulator, Postgres) and report the figures
    Bench(crate::bench::BenchCmd),
    /// Look at the dead-letter queue, or send dead letters back to the work queue
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Export flagged observables and actor hits as a STIX 2.1 bundle, JSON lines or CSV
    Export(ExportCmd),
    /// Print what the worker did: runs by outcome, Graph use, top actors, rejections, backlog
    Report(ReportCmd),
    /// Show what waits in each lane, how fast it is done and when it will be through, per source
    Status(StatusCmd),
}

#[derive(Args, Debug)]
pub struct StatusCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub args: crate::status::StatusArgs,
}

#[derive(Args, Debug)]
pub struct ReportCmd {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The window: a duration back from now (7d, 24h) or an RFC 3339 time
    #[arg(long, default_value = "7d", value_parser = since_arg)]
    pub since: DateTime<Utc>,
    /// Actors and recent hits shown, at most
    #[arg(long, default_value_t = 10)]
    pub top: u32,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct ExportCmd {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(long, value_enum, default_value = "stix")]
    pub format: crate::export::ExportFormat,
    /// Only what was active since: a duration back from now (7d, 24h) or an RFC 3339 time
    #[arg(long, value_parser = since_arg)]
    pub since: Option<DateTime<Utc>>,
    /// Only hits of this actor (its name or an alias, case-insensitive)
    #[arg(long)]
    pub actor: Option<String>,
    /// Write here instead of standard output (`-`: standard output)
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// Show each dead letter (id, reason code, reason, attempt, body preview); consumes nothing
    List(DlqListCmd),
    /// Move dead letters back to the work queue with fresh attempts; the others stay
    Replay(DlqReplayCmd),
}

#[derive(Args, Debug)]
pub struct DlqListCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Show at most this many (oldest first)
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct DlqReplayCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Only dead letters with this reason code (`x-mdti-reason-code`), e.g. `gave_up`
    #[arg(long = "reason")]
    pub reason_code: Option<String>,
    /// Replay at most this many
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Args, Debug)]
pub struct WorkerCmd {
    #[command(flatten)]
    pub graph: GraphArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Use an in-process Graph simulator instead of Microsoft Graph
    #[arg(long, env = "MDTI_SIMULATOR")]
    pub simulator: bool,
    /// Address of /metrics, /healthz and /readyz (empty or `off`: no listener)
    #[arg(long, env = "MDTI_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: ListenAddr,
}

#[derive(Args, Debug)]
pub struct EnrichCmd {
    /// Observables (IPv4, IPv6, domains, hosts; defanged forms are fine)
    #[arg(required = true)]
    pub observables: Vec<String>,
    /// Kind of every observable given (auto-detected when absent)
    #[arg(long)]
    pub kind: Option<String>,
    /// Enrichers to run (comma-separated, or `all`)
    #[arg(long, default_value = "all")]
    pub enrichers: EnricherList,
    #[arg(long, value_enum, default_value = "json")]
    pub format: OutputFormat,
    /// Enrich private, loopback and reserved addresses and internal names too
    #[arg(long)]
    pub allow_non_public: bool,
    /// Use an in-process Graph simulator instead of Microsoft Graph
    #[arg(long)]
    pub simulator: bool,
    /// Chain instead of enriching: walk passive DNS, take the reputations, print the actors
    /// with the domains and IPs that link them
    #[arg(long)]
    pub chain: bool,
    /// Passive DNS hops of the walk
    #[arg(long, default_value_t = 1)]
    pub chain_depth: u32,
    #[command(flatten)]
    pub graph: GraphArgs,
}

#[derive(Args, Debug)]
pub struct SyncProfilesCmd {
    #[command(flatten)]
    pub graph: GraphArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Use an in-process Graph simulator instead of Microsoft Graph
    #[arg(long)]
    pub simulator: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Json,
    Table,
}

#[derive(Args, Debug)]
pub struct MigrateCmd {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Args, Debug)]
pub struct SimCmd {
    /// Address to listen on
    #[arg(long, env = "MDTI_SIM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Items per page when the client gives no $top
    #[arg(long, default_value_t = 50)]
    pub page_size: usize,
    /// Enforced requests per second; beyond it, 429 with Retry-After
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Share of Graph requests answered with a 5xx
    #[arg(long, default_value_t = 0.0)]
    pub error_ratio: f64,
    /// Latency added to every answer
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key
    #[arg(long, env = "MDTI_SIM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, env = "MDTI_SIM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub graph: GraphArgs,
}

#[derive(Args, Debug)]
pub struct PublishCmd {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Where the publication is recorded (optional: without it the publish still happens)
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub options: crate::publish::PublishArgs,
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Enrich(cmd) => enrich_command(cmd).await,
        Command::Migrate(cmd) => {
            migrate(&cmd.database).await?;
            Ok(0)
        }
        Command::Sim(cmd) => {
            let config = sim::SimConfig {
                page_size: cmd.page_size,
                rate_limit: cmd.rate_limit,
                error_ratio: cmd.error_ratio,
                latency: cmd.latency,
                ..sim::SimConfig::default()
            };
            let tls = match (&cmd.tls_cert, &cmd.tls_key) {
                (Some(cert), Some(key)) => Some(sim::TlsIdentity::from_files(cert, key)?),
                _ => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            eprintln!(
                "Graph simulator on {scheme}://{0}/v1.0 (token: {scheme}://{0}/<tenant>/oauth2/v2.0/token, client sim-client / sim-secret)",
                cmd.listen
            );
            sim::serve(config, cmd.listen, tls.as_ref(), shutdown_signal()).await?;
            Ok(0)
        }
        Command::Worker(cmd) => worker_command(*cmd).await,
        Command::SyncProfiles(mut cmd) => {
            let (graph, _sim) = graph_client(&mut cmd.graph, cmd.simulator).await?;
            let store = migrate(&cmd.database).await?;
            let settings = ChainSettings::default();
            let (summary, _, retro) = sync_and_match(&graph, &store, &settings).await?;
            println!("{summary:#?}\n{retro:#?}");
            Ok(0)
        }
        Command::Publish(cmd) => {
            crate::publish::command(
                cmd.broker.topology(),
                cmd.broker.amqp_url,
                cmd.database.database_url,
                cmd.options,
            )
            .await
        }
        Command::Status(cmd) => {
            crate::status::command(
                cmd.broker.topology(),
                &cmd.broker.amqp_url,
                &cmd.database.database_url,
                cmd.args,
            )
            .await
        }
        Command::Demo(cmd) => crate::demo::run(cmd).await,
        Command::Bench(cmd) => crate::bench::run(cmd).await,
        Command::Dlq(cmd) => dlq_command(cmd).await,
        Command::Export(cmd) => export_command(cmd).await,
        Command::Report(cmd) => {
            let store = read_store(&cmd.database).await?;
            let report = store.report(cmd.since, i64::from(cmd.top)).await?;
            match cmd.format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                OutputFormat::Table => print!("{report}"),
            }
            Ok(0)
        }
    }
}

/// `--since`, read when the command line is: relative to the moment the command started.
fn since_arg(text: &str) -> Result<DateTime<Utc>, String> {
    crate::export::parse_since(text, Utc::now())
}

async fn export_command(cmd: ExportCmd) -> anyhow::Result<i32> {
    let filter = crate::export::ExportFilter {
        since: cmd.since,
        actor: cmd.actor,
    };
    let store = read_store(&cmd.database).await?;
    let rows = store.export_rows(&filter).await?;
    let text = crate::export::render(&rows, cmd.format);
    if cmd.output.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().write_all(text.as_bytes())?;
    } else {
        std::fs::write(&cmd.output, text)
            .with_context(|| format!("writing {}", cmd.output.display()))?;
        eprintln!("{} row(s) exported to {}", rows.len(), cmd.output.display());
    }
    Ok(0)
}

/// A store for reading what the worker wrote: one connection, no migrations.
async fn read_store(database: &DatabaseArgs) -> anyhow::Result<Store> {
    let url = database.database_url.expose();
    Store::connect(url, 1)
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))
}

async fn dlq_command(cmd: DlqCmd) -> anyhow::Result<i32> {
    use crate::queue::dlq::{DeadLetterQueue, ReplayFilter};
    let broker = match &cmd {
        DlqCmd::List(list) => &list.broker,
        DlqCmd::Replay(replay) => &replay.broker,
    };
    let url = broker.amqp_url.expose();
    let dlq = DeadLetterQueue::connect(url, broker.topology())
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))?;
    let queue = dlq.topology().dead_letter_queue();
    match cmd {
        DlqCmd::List(list) => {
            let letters = dlq.list(list.limit).await?;
            match list.format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&letters)?),
                OutputFormat::Table => {
                    println!("{queue}: {} dead letter(s) shown", letters.len());
                    for letter in &letters {
                        println!("{letter}");
                    }
                }
            }
        }
        DlqCmd::Replay(replay) => {
            let filter = ReplayFilter {
                reason_code: replay.reason_code,
                limit: replay.limit,
            };
            let summary = dlq.replay(&filter).await?;
            println!("{queue}: {summary}");
        }
    }
    dlq.close().await?;
    Ok(0)
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

pub async fn migrate(database: &DatabaseArgs) -> anyhow::Result<Store> {
    let url = database.database_url.expose();
    Store::create_database_if_missing(url)
        .await
        .with_context(|| format!("creating database {}", redact_url(url)))?;
    let store = Store::connect(url, database.db_max_connections).await?;
    store
        .migrate()
        .await
        .with_context(|| format!("migrating {}", redact_url(url)))?;
    tracing::info!(database = %redact_url(url), "migrations applied");
    Ok(store)
}

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

async fn worker_command(mut cmd: WorkerCmd) -> anyhow::Result<i32> {
    // Bound first: a taken port is a configuration error, reported before any work starts.
    let ops_listener = match cmd.metrics_listen.0 {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?,
        ),
        None => None,
    };
    let (graph, _sim) = graph_client(&mut cmd.graph, cmd.simulator).await?;
    let fleet = cmd
        .fleet
        .settings(&cmd.graph.tenant_id, cmd.graph.graph_burst)
        .map_err(anyhow::Error::msg)?;
    // Workers sharing a quota share their lookups in flight too: a duplicate costs the quota.
    cmd.worker.share_lookups |= fleet.is_some();
    let store = if cmd.worker.migrate {
        migrate(&cmd.database).await?
    } else {
        Store::connect(
            cmd.database.database_url.expose(),
            cmd.database.db_max_connections,
        )
        .await?
    };
    let stats = Arc::new(WorkerStats::default());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; finishing in-flight messages");
        let _ = stop.send(true);
    });
    // In a fleet the lease is taken, and the limiter set to this worker's share, before the
    // first message is consumed; it is given back after the last one is settled.
    let coordinator = match fleet {
        Some(settings) => {
            let coordinator = Coordinator::join(store.clone(), graph.clone(), settings)
                .await
                .context(
                    "joining the fleet sharing the tenant quota (worker_leases in Postgres)",
                )?;
            let (leave, leaving) = watch::channel(false);
            Some((leave, tokio::spawn(coordinator.run(leaving))))
        }
        None => None,
    };
    let result = run_worker(
        &cmd.graph,
        &cmd.broker,
        &cmd.worker,
        graph,
        store,
        stopped,
        Arc::clone(&stats),
        ops_listener,
    )
    .await;
    if let Some((leave, coordinator)) = coordinator {
        let _ = leave.send(true);
        if let Err(error) = coordinator.await {
            tracing::warn!(%error, "the fleet coordinator ended abnormally");
        }
    }
    result?;
    Ok(0)
}

/// The worker's main job, shared by `worker`, `demo` and `bench`. With `ops_listener`, it also
/// serves `/metrics`, `/healthz` and `/readyz` there for as long as it runs.
#[allow(clippy::too_many_arguments)]
pub async fn run_worker(
    graph_args: &GraphArgs,
    broker: &BrokerArgs,
    worker: &WorkerArgs,
    graph: GraphClient,
    store: Store,
    shutdown: watch::Receiver<bool>,
    stats: Arc<WorkerStats>,
    ops_listener: Option<tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    let pipeline = Pipeline::new(
        graph,
        store.with_group_commit(worker.group_commit, Arc::clone(&stats.group_commit)),
        PipelineSettings {
            default_enrichers: worker.enrichers.0.clone(),
            cache_ttl: worker.cache_ttl,
            normalise: NormaliseOptions {
                allow_non_public: worker.allow_non_public,
            },
            page_limits: graph_args.page_limits(),
            decode: DecodeLimits {
                max_body_bytes: worker.max_body_bytes,
                ..DecodeLimits::default()
            },
            item_concurrency: worker.item_concurrency,
            chain_by_default: worker.chain,
            chain: worker.chain_settings(),
        },
    );
    // No delivery is taken before the profile index is in place: a message chained without it
    // would miss every profile-indicator hit, and as a cached observable it is not chained
    // again for the cache TTL.
    let synced = load_profiles(&pipeline, &stats, !worker.profile_sync_interval.is_zero()).await;
    let sync = (!worker.profile_sync_interval.is_zero()).then(|| {
        tokio::spawn(profile_sync_loop(
            pipeline.clone(),
            worker.profile_sync_interval,
            synced,
            Arc::clone(&stats),
        ))
    });
    let watchdog = tokio::spawn(crate::progress::watch(worker.stall_after));
    let ops_server = ops_listener.map(|listener| {
        ops::spawn(
            listener,
            ops::Ops {
                graph: pipeline.graph().clone(),
                store: pipeline.store().clone(),
                stats: Arc::clone(&stats),
            },
        )
    });
    let settings = ConsumerSettings {
        amqp_url: broker.amqp_url.clone(),
        topology: broker.topology(),
        concurrency: worker.concurrency,
        live_prefetch: worker.live_prefetch,
        max_deliveries: worker.max_deliveries,
        shutdown_timeout: worker.shutdown_timeout,
        exit_when_idle: worker.exit_when_idle,
    };
    let result = consumer::run(pipeline, settings, shutdown, stats).await;
    watchdog.abort();
    for task in [sync, ops_server].into_iter().flatten() {
        task.abort();
    }
    result
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

async fn enrich_command(mut cmd: EnrichCmd) -> anyhow::Result<i32> {
    let options = NormaliseOptions {
        allow_non_public: cmd.allow_non_public,
    };
    let declared = match cmd.kind.as_deref().map(str::parse::<ObservableKind>) {
        None => None,
        Some(Ok(kind)) => Some(kind),
        Some(Err(error)) => bail!("--kind: {error}"),
    };
    let mut observables = Vec::new();
    let mut invalid = 0;
    for raw in &cmd.observables {
        match observable::normalise(raw, declared, &options) {
            Ok(Normalised::Ready(observable)) => observables.push(observable),
            Ok(Normalised::Skipped { observable, reason }) => {
                eprintln!("skipped {observable}: {reason} (use --allow-non-public to enrich it)");
            }
            Err(error) => {
                eprintln!(
                    "invalid observable {:?}: {error}",
                    raw.chars().take(100).collect::<String>()
                );
                invalid += 1;
            }
        }
    }
    if invalid > 0 {
        return Ok(2);
    }
    if !cmd.simulator && !cmd.graph.has_credentials() {
        bail!(
            "no Graph credentials: set MDTI_TENANT_ID, MDTI_CLIENT_ID and MDTI_CLIENT_SECRET (or MDTI_CLIENT_SECRET_FILE), or pass --simulator"
        );
    }
    let (graph, _sim) = graph_client(&mut cmd.graph, cmd.simulator).await?;
    if cmd.chain {
        return chain_command(&cmd, graph, &observables).await;
    }
    let limits = cmd.graph.page_limits();
    let mut results = Vec::new();
    for observable in &observables {
        results.push(enrich::enrich(&graph, observable, &cmd.enrichers.0, limits).await?);
    }
    match cmd.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        OutputFormat::Table => print!("{}", table(&results, std::io::stdout().is_terminal())),
    }
    Ok(0)
}

/// `enrich --chain`: the seed's answer, actors with their linking domains and IPs. It needs no
/// database, so it has no reputation cache and no synced profile index: attribution comes from
/// the reputation rules (the worker also matches intel profile indicators).
async fn chain_command(
    cmd: &EnrichCmd,
    graph: GraphClient,
    observables: &[crate::observable::Observable],
) -> anyhow::Result<i32> {
    let settings = ChainSettings {
        depth: cmd.chain_depth,
        ..ChainSettings::default()
    };
    let chainer = Chainer::new(graph, None, settings);
    let mut reports = Vec::new();
    for observable in observables {
        reports.push(chainer.walk(observable).await?);
    }
    match cmd.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        OutputFormat::Table => {
            for report in &reports {
                println!("{report}");
            }
        }
    }
    Ok(0)
}

/// A human view of enrichments: one block per observable, one section per enricher.
pub fn table(results: &[Enrichment], _terminal: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for enrichment in results {
        let _ = writeln!(
            out,
            "{}  ({} Graph requests)",
            enrichment.observable, enrichment.graph_requests
        );
        for result in &enrichment.results {
            let state = match (result.found, result.truncated) {
                (false, _) => " — MDTI has nothing on this host",
                (true, true) => " — cut short by the page cap",
                _ => "",
            };
            let _ = writeln!(out, "  [{}]{state}", result.enricher);
            if let Some(indicator) = &result.indicator {
                let _ = writeln!(out, "    indicator {}", indicator.id);
                let _ = writeln!(out, "      title      {}", indicator.title);
                for label in &indicator.labels {
                    let _ = writeln!(out, "      label      {label}");
                }
            }
            if let Some(reputation) = &result.reputation {
                let _ = writeln!(
                    out,
                    "    classification {}  score {}",
                    reputation.classification.as_deref().unwrap_or("-"),
                    reputation.score.map_or("-".into(), |s| s.to_string())
                );
                for rule in &reputation.rules {
                    let description = match &rule.description {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "    rule {} [{}] {}",
                        rule.name.as_deref().unwrap_or("-"),
                        rule.severity.as_deref().unwrap_or("-"),
                        description
                    );
                }
            }
            for extract in &result.extracts {
                let code = extract
                    .country_code
                    .as_deref()
                    .map(|c| format!(" [{c}]"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {:<13} {}{code}  ({})",
                    extract.kind.as_str(),
                    extract.value,
                    extract.field
                );
            }
        }
    }
    out
}
