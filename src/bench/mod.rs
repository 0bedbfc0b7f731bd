//! `bench`: the real path, measured. RabbitMQ in, the worker (in-process, through
//! [`app::run_worker`]), Graph (the simulator), Postgres out.
//!
//! A run has its own database (`mdti_bench_<uuid>`, dropped at the end unless `--keep`) and its
//! own queue prefix (`bench-<uuid>`, queues and exchanges deleted at the end). In order:
//!
//! 1. Start the simulator on a tokio runtime of its own (threads `mdti-sim`, so their CPU can be
//!    told apart), or use `--sim-external URL`; create and migrate the database; sync intel
//!    profiles (as a worker does at start) so chaining matches them.
//! 2. Start the worker (prefetch = `--concurrency`) and wait until it consumes.
//! 3. Snapshot counters (client, simulator, CPU per thread, Postgres, RabbitMQ), reset the peak
//!    RSS, then publish the mix (`mix.rs`) from a runtime of its own (threads `mdti-bench-pub`): the first
//!    message alone (its confirm starts the clock), the rest pipelined in chunks, at
//!    `--publish-rate` messages/s or as fast as the broker confirms (a backlog, like a feed dump).
//!    Each item carries `{"bench_published_us": ...}` in its `context`.
//! 4. Poll the worker's counters until every message is settled (or `--max-duration`), snapshot
//!    again, stop the worker.
//! 5. Latency per observable from SQL: `enrichment_runs.created_at` (Postgres `now()`, i.e. the
//!    start of the result transaction) minus `context.bench_published_us`.
//!
//! With `--workers N` above 1, step 2 starts N worker processes instead and step 4 reads the
//! drain from Postgres and the dead-letter queue (see `fleet.rs`).

mod fleet;
mod lanes;
mod measure;
mod mix;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use sqlx::{Connection as _, PgConnection, Row};
use tokio::sync::watch;

pub use measure::{percentile, Spread};
pub use mix::{distinct_count, observable_mix};

use crate::app;
use crate::chain::sync_profiles;
use crate::config::{
    parse_duration, redact_url, BrokerArgs, DatabaseArgs, EnricherList, GraphArgs, WorkerArgs,
    BULK_COMMIT_LINGER,
};
use crate::consumer::WorkerStats;
use crate::graph::adaptive::GraphRate;
use crate::graph::throttle::GraphBurst;
use crate::graph::GraphClient;
use crate::lane::Lane;
use crate::queue::publisher::Publisher;
use crate::queue::topology::Topology;
use crate::secret::Secret;
use crate::sim::{self, SimConfig, SimHandle};
use crate::store::Store;
use crate::terminal::Progress;

use report::{
    Attribution, Breakdown, Config, Graph, Latency, Machine, Postgres, Resources, Runs, Throughput,
};
pub use report::{Report, WorkerProcess};

/// Messages per pipelined publish (one wait for all their confirms).
const PUBLISH_CHUNK: usize = 250;

/// How often the drain of worker processes is checked in Postgres and RabbitMQ.
const FLEET_POLL: Duration = Duration::from_millis(100);

#[derive(Args, Debug)]
pub struct BenchCmd {
    /// Observables to publish
    #[arg(long, default_value_t = 10_000)]
    pub observables: usize,
    /// Observables per message (a JSON array); 1 = one observable per message, like a feed
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Bulk messages processed at once (the bulk lane's prefetch)
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Observables of one message enriched at once
    #[arg(long, default_value_t = 8)]
    pub item_concurrency: usize,
    /// Messages whose results may share one Postgres transaction (1 = one per message)
    #[arg(long, default_value_t = 64)]
    pub group_commit: usize,
    /// How long a transaction of bulk messages' results waits for more to join it
    #[arg(long, default_value = BULK_COMMIT_LINGER, value_parser = parse_duration)]
    pub bulk_commit_linger: Duration,
    /// Enrichers to run (comma-separated, or `all`)
    #[arg(long, default_value = "all")]
    pub enrichers: EnricherList,
    /// Chain every observable's infrastructure, as the worker does by default
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub chain: bool,
    /// Passive DNS hops of a chaining walk
    #[arg(long, default_value_t = 1)]
    pub chain_depth: u32,
    /// The client's rate limit, requests/s (the default is effectively no limit), or `auto`
    /// (learnt from the 429s, see the worker's --graph-rate); with --workers above 1, the
    /// tenant quota the worker processes share (`--tenant-quota`)
    #[arg(long, default_value = "1000000")]
    pub graph_rate: GraphRate,
    /// The client limiter's burst, or `auto` (see the worker's --graph-burst)
    #[arg(long, default_value = "auto")]
    pub graph_burst: GraphBurst,
    /// Graph requests open at once, per lane
    #[arg(long, default_value_t = 32)]
    pub graph_max_in_flight: usize,
    /// Part of the Graph rate bulk work leaves unspent for live bursts (0 to 0.9)
    #[arg(long, default_value_t = 0.0, value_parser = crate::config::parse_reserve)]
    pub live_reserve: f64,
    /// Live messages processed at once (the live lane's prefetch)
    #[arg(long, default_value_t = 16)]
    pub live_prefetch: u16,
    /// Requests/s the simulator allows; beyond it, 429 with Retry-After
    #[arg(long)]
    pub sim_rate: Option<f64>,
    /// Latency the simulator adds to every answer
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub sim_latency: Duration,
    /// Worker threads of the in-process simulator's runtime
    #[arg(long, default_value_t = 1)]
    pub sim_threads: usize,
    /// Graph base URL of a separate `mdti-worker sim` (e.g. http://127.0.0.1:8080/v1.0), so
    /// that RSS and CPU are the worker's alone; --sim-rate and --sim-latency then do not apply
    #[arg(long)]
    pub sim_external: Option<String>,
    /// Live observables published per second on the live lane while the bulk backlog (the
    /// mix, on the bulk lane) drains; 0 = no live stream. Reports each lane's latency and the
    /// share of the quota bulk work used of what live work left
    #[arg(long, default_value_t = 0.0)]
    pub live_rate: f64,
    /// Messages published per second; 0 = as fast as the broker confirms (a backlog)
    #[arg(long, default_value_t = 0.0)]
    pub publish_rate: f64,
    /// Share of distinct values among the observables
    #[arg(long, default_value_t = 0.8)]
    pub distinct: f64,
    /// How long a stored answer counts as fresh. `0s` with a low `--distinct` re-enriches every
    /// repeat, which measures what writing a re-enrichment costs
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// Seed of the observable mix
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the observables this run would publish, one a line, and exit: the same input for
    /// a worker run by hand (`mdti-worker publish --lane bulk`)
    #[arg(long)]
    pub print_mix: bool,
    /// Stop waiting for the drain after this long (the report then says incomplete)
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// Sync intel profiles before the run, as a worker does at start
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub profile_sync: bool,
    /// Postgres server; the bench database's name replaces the path
    #[arg(
        long,
        env = "MDTI_BENCH_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub database_url: Secret,
    /// Postgres connections of the worker's pool
    #[arg(long, default_value_t = 10)]
    pub db_max_connections: u32,
    /// AMQP URL of RabbitMQ
    #[arg(
        long,
        env = "MDTI_BENCH_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Secret,
    /// Keep the bench database (its name is printed)
    #[arg(long)]
    pub keep: bool,
    /// Where to write the JSON results (default bench-results/bench-<timestamp>.json)
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Worker processes: 1 = the worker runs in the bench's own process; above 1, separate
    /// `mdti-worker worker` processes sharing --graph-rate as their tenant quota, their output
    /// in <json file>-workers.log
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// The executable whose `worker` command --workers above 1 starts (default: this one)
    #[arg(long, hide = true)]
    pub worker_executable: Option<PathBuf>,
}

/// A finished run: its report, and where the JSON (and the workers' log, if any) went.
pub struct Recorded {
    pub report: Report,
    pub json: PathBuf,
    pub worker_log: Option<PathBuf>,
}

/// Run the benchmark, print the table, write the JSON. Exit code 0 when every message was
/// settled, 1 otherwise.
pub async fn run(cmd: BenchCmd) -> anyhow::Result<i32> {
    if cmd.print_mix {
        write_mix(&cmd, &mut std::io::stdout().lock())?;
        return Ok(0);
    }
    let recorded = run_and_record(cmd).await?;
    print!("{}", recorded.report.table());
    if let Some(log) = &recorded.worker_log {
        println!("\nWorker processes' output: {}", log.display());
    }
    println!("\nJSON: {}", recorded.json.display());
    Ok(if recorded.report.complete { 0 } else { 1 })
}

/// The observables a run with these settings publishes, one a line, in the order it publishes
/// them (`scripts/worker-throttled.sh` feeds them to a worker process).
pub fn write_mix(cmd: &BenchCmd, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for value in cmd.mix() {
        writeln!(out, "{value}")?;
    }
    out.flush()
}

impl BenchCmd {
    /// The observables this run publishes, in order: one place, so that `--print-mix` prints
    /// what a run publishes.
    fn mix(&self) -> Vec<String> {
        observable_mix(self.observables, self.distinct, self.seed)
    }
}

/// The queues and exchanges of a run whose queue prefix is `prefix`: a short retry delay, so a
/// retried message does not hold the run up.
pub fn topology(prefix: &str) -> Topology {
    Topology {
        prefix: prefix.to_owned(),
        retry_delay: Duration::from_secs(2),
    }
}

/// Run the benchmark and write the JSON.
pub async fn run_and_record(cmd: BenchCmd) -> anyhow::Result<Recorded> {
    check_args(&cmd)?;
    // Both services there before anything is started, created or declared.
    crate::queue::reach(cmd.amqp_url.expose()).await?;
    Store::reach_server(cmd.database_url.expose()).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db_name = format!("mdti_bench_{id}");
    let db_url = url_with_database(cmd.database_url.expose(), &db_name)?;
    let admin_url = url_with_database(cmd.database_url.expose(), "postgres")?;
    let topology = topology(&format!("bench-{id}"));
    let started_at = chrono::Utc::now();
    let json = cmd.json.clone().unwrap_or_else(|| {
        PathBuf::from("bench-results").join(format!(
            "bench-{}.json",
            started_at.format("%Y%m%dT%H%M%SZ")
        ))
    });
    let worker_log = (cmd.workers > 1).then(|| {
        let stem = json.file_stem().unwrap_or_default().to_string_lossy();
        json.with_file_name(format!("{stem}-workers.log"))
    });

    let sim = SimSide::start(&cmd).await?;
    eprintln!(
        "bench {id}: database {db_name}, queues {}.*, Graph simulator {} ({})",
        topology.prefix,
        sim.graph_url(),
        sim.mode()
    );
    let ctx = Ctx {
        cmd: &cmd,
        sim: &sim,
        db_url: &db_url,
        admin_url: &admin_url,
        db_name: &db_name,
        topology: &topology,
        started_at,
        worker_log: worker_log.as_deref(),
    };
    let outcome = measure_run(&ctx).await;

    // Clean up whatever happened.
    sim.stop();
    clean_up(&cmd, &topology, &admin_url, &db_name).await;

    let report = outcome?;
    write_json(&json, &report)?;
    Ok(Recorded {
        report,
        json,
        worker_log,
    })
}

fn check_args(cmd: &BenchCmd) -> anyhow::Result<()> {
    if cmd.observables == 0 || cmd.batch_size == 0 {
        bail!("--observables and --batch-size must be at least 1");
    }
    if cmd.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if !(cmd.publish_rate.is_finite() && cmd.publish_rate >= 0.0) {
        bail!("--publish-rate must be 0 or a positive number");
    }
    if !(cmd.live_rate.is_finite() && cmd.live_rate >= 0.0) {
        bail!("--live-rate must be 0 or a positive number");
    }
    if cmd.live_rate > 0.0 && cmd.workers > 1 {
        bail!("--live-rate runs the worker in this process: use it with --workers 1");
    }
    Ok(())
}

/// Delete the run's queues and exchanges, and drop its database unless `--keep`.
async fn clean_up(cmd: &BenchCmd, topology: &Topology, admin_url: &str, db_name: &str) {
    if let Err(error) = delete_broker_objects(cmd.amqp_url.expose(), topology).await {
        eprintln!(
            "could not delete the bench queues {}.*: {error:#}",
            topology.prefix
        );
    }
    if cmd.keep {
        eprintln!("kept database {db_name}");
    } else if let Err(error) = drop_database(admin_url, db_name).await {
        eprintln!("could not drop database {db_name}: {error:#}");
    }
}

fn write_json(json: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    if let Some(parent) = json.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(json, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(())
}

struct Ctx<'a> {
    cmd: &'a BenchCmd,
    sim: &'a SimSide,
    db_url: &'a str,
    admin_url: &'a str,
    db_name: &'a str,
    topology: &'a Topology,
    started_at: chrono::DateTime<chrono::Utc>,
    /// Where the worker processes' output goes (with --workers above 1).
    worker_log: Option<&'a std::path::Path>,
}

fn url_with_database(base: &str, database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(base)
        .map_err(|e| anyhow::anyhow!("--database-url {}: {e}", redact_url(base)))?;
    url.set_path(database);
    Ok(url.to_string())
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The Graph simulator: in this process on a runtime of its own, or another process.
enum SimSide {
    InProcess {
        handle: SimHandle,
        runtime: tokio::runtime::Runtime,
        latency: Duration,
    },
    External {
        graph_url: String,
        root: String,
        http: reqwest::Client,
    },
}

impl SimSide {
    async fn start(cmd: &BenchCmd) -> anyhow::Result<SimSide> {
        if let Some(url) = &cmd.sim_external {
            let graph_url = url.trim_end_matches('/').to_owned();
            let root = graph_url
                .strip_suffix("/v1.0")
                .unwrap_or(&graph_url)
                .to_owned();
            if cmd.sim_rate.is_some() || !cmd.sim_latency.is_zero() {
                eprintln!("--sim-rate and --sim-latency do not apply to an external simulator: start it with `mdti-worker sim --rate-limit Q --latency D`");
            }
            let side = SimSide::External {
                graph_url,
                root,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?,
            };
            side.counters()
                .await
                .context("reading the external simulator's counters (is it running?)")?;
            return Ok(side);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cmd.sim_threads.max(1))
            .thread_name(SIM_THREADS)
            .enable_all()
            .build()?;
        let config = SimConfig {
            rate_limit: cmd.sim_rate,
            latency: cmd.sim_latency,
            ..SimConfig::default()
        };
        let handle = runtime.spawn(sim::spawn(config)).await??;
        Ok(SimSide::InProcess {
            handle,
            runtime,
            latency: cmd.sim_latency,
        })
    }

    fn mode(&self) -> &'static str {
        match self {
            SimSide::InProcess { .. } => "in-process",
            SimSide::External { .. } => "external",
        }
    }

    fn graph_url(&self) -> String {
        match self {
            SimSide::InProcess { handle, .. } => handle.graph_base_url(),
            SimSide::External { graph_url, .. } => graph_url.clone(),
        }
    }

    fn login_url(&self) -> String {
        match self {
            SimSide::InProcess { handle, .. } => handle.login_base_url(),
            SimSide::External { root, .. } => root.clone(),
        }
    }

    async fn counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        match self {
            SimSide::InProcess { handle, .. } => Ok(handle.counters()),
            SimSide::External { root, http, .. } => Ok(http
                .get(format!("{root}/_sim/counters"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?),
        }
    }

    fn stop(self) {
        if let SimSide::InProcess {
            handle, runtime, ..
        } = self
        {
            drop(handle);
            // Dropping a runtime inside another one's context would panic.
            runtime.shutdown_background();
        }
    }
}

/// The client's counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct GraphCounts {
    requests: u64,
    throttled: u64,
    retries: u64,
    gave_up: u64,
    retry_after_micros: u64,
    limiter_micros: u64,
    limiter_sleeps: u64,
    hold_micros: u64,
    /// Cuts Graph's 429s made to the learnt rate, and the rate (at this instant).
    rate_cuts: u64,
    learnt_rate: f64,
}

impl GraphCounts {
    fn of(graph: &GraphClient) -> GraphCounts {
        let s = graph.stats();
        let (limiter_micros, hold_micros) = graph.wait_micros();
        let learnt = graph.throttle().learnt();
        GraphCounts {
            requests: s.requests.load(Ordering::Relaxed),
            throttled: s.throttled.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            gave_up: s.gave_up.load(Ordering::Relaxed),
            retry_after_micros: s.retry_after_micros.load(Ordering::Relaxed),
            limiter_micros,
            limiter_sleeps: graph.throttle().limiter_sleeps(),
            hold_micros,
            rate_cuts: learnt.cuts,
            learnt_rate: learnt.requests_per_second,
        }
    }

    fn since(&self, e: &GraphCounts) -> GraphCounts {
        GraphCounts {
            requests: self.requests - e.requests,
            throttled: self.throttled - e.throttled,
            retries: self.retries - e.retries,
            gave_up: self.gave_up - e.gave_up,
            retry_after_micros: self.retry_after_micros - e.retry_after_micros,
            limiter_micros: self.limiter_micros - e.limiter_micros,
            limiter_sleeps: self.limiter_sleeps - e.limiter_sleeps,
            hold_micros: self.hold_micros - e.hold_micros,
            rate_cuts: self.rate_cuts - e.rate_cuts,
            learnt_rate: self.learnt_rate,
        }
    }
}

/// Everything read at the start and at the end of the measured window.
struct Snapshot {
    at: Instant,
    graph: GraphCounts,
    sim: BTreeMap<String, u64>,
    cpu: Option<measure::Cpu>,
    threads: measure::Threads,
    machine: Option<measure::MachineCpu>,
    load: Option<[f64; 3]>,
    rabbitmq: BTreeMap<u32, f64>,
    postgres_all: BTreeMap<u32, f64>,
    postgres_backends: BTreeMap<u32, f64>,
}

impl Snapshot {
    async fn take(ctx: &Ctx<'_>, graph: &GraphClient) -> Snapshot {
        let sim = match ctx.sim.counters().await {
            Ok(counters) => counters,
            Err(error) => {
                eprintln!("simulator counters unreadable: {error:#}");
                BTreeMap::new()
            }
        };
        let postgres_backends = match backend_pids(ctx.admin_url, ctx.db_name).await {
            Ok(pids) => pids
                .into_iter()
                .filter_map(|pid| measure::pid_cpu(pid).map(|cpu| (pid, cpu)))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
        Snapshot {
            at: Instant::now(),
            graph: GraphCounts::of(graph),
            sim,
            cpu: measure::process_cpu(),
            threads: measure::threads(),
            machine: measure::machine_cpu(),
            load: measure::loadavg(),
            rabbitmq: measure::processes_named("beam.smp"),
            postgres_all: measure::processes_named("postgres"),
            postgres_backends,
        }
    }
}

async fn admin_connection(admin_url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(admin_url)))
}

async fn backend_pids(admin_url: &str, db_name: &str) -> anyhow::Result<Vec<u32>> {
    let mut conn = admin_connection(admin_url).await?;
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(db_name)
        .fetch_all(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

async fn pg_stats(admin_url: &str, db_name: &str) -> anyhow::Result<Postgres> {
    let mut conn = admin_connection(admin_url).await?;
    let row = sqlx::query(
        "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched, blks_hit, \
         blks_read, active_time FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db_name)
    .fetch_optional(&mut conn)
    .await?;
    let _ = conn.close().await;
    let Some(row) = row else {
        return Ok(Postgres::default());
    };
    Ok(Postgres {
        commits: row.try_get("xact_commit")?,
        rollbacks: row.try_get("xact_rollback")?,
        rows_inserted: row.try_get("tup_inserted")?,
        rows_updated: row.try_get("tup_updated")?,
        rows_fetched: row.try_get("tup_fetched")?,
        blocks_hit: row.try_get("blks_hit")?,
        blocks_read: row.try_get("blks_read")?,
        active_s: row.try_get::<Option<f64>, _>("active_time")?.unwrap_or(0.0) / 1000.0,
        ..Postgres::default()
    })
}

fn pg_delta(after: &Postgres, before: &Postgres) -> Postgres {
    Postgres {
        commits: after.commits - before.commits,
        rollbacks: after.rollbacks - before.rollbacks,
        rows_inserted: after.rows_inserted - before.rows_inserted,
        rows_updated: after.rows_updated - before.rows_updated,
        rows_fetched: after.rows_fetched - before.rows_fetched,
        blocks_hit: after.blocks_hit - before.blocks_hit,
        blocks_read: after.blocks_read - before.blocks_read,
        active_s: after.active_s - before.active_s,
        ..Postgres::default()
    }
}

async fn drop_database(admin_url: &str, db_name: &str) -> anyhow::Result<()> {
    let mut conn = admin_connection(admin_url).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    ))
    .execute(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(())
}

async fn delete_broker_objects(amqp_url: &str, topology: &Topology) -> anyhow::Result<()> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for queue in topology.queues() {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in topology.exchanges() {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = channel.close(200, "bench done".into()).await;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(())
}

/// One message body: a single object, or an array when `batch_size` > 1.
fn message_body(mix: &[String], message: usize, batch_size: usize, published_us: i64) -> Vec<u8> {
    let from = message * batch_size;
    let to = (from + batch_size).min(mix.len());
    let items: Vec<serde_json::Value> = (from..to)
        .map(|seq| {
            serde_json::json!({
                "value": mix[seq],
                "source": "bench",
                "context": {"bench_published_us": published_us, "bench_seq": seq},
            })
        })
        .collect();
    let body = if batch_size == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        serde_json::Value::Array(items)
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Connect the publisher and wait until every worker consumes from the work queue.
async fn ready_publisher(
    amqp_url: String,
    topology: Topology,
    workers: usize,
) -> anyhow::Result<Publisher> {
    let publisher = Publisher::connect(&amqp_url, topology.clone()).await?;
    let started = Instant::now();
    loop {
        let queue = crate::queue::inspect(&publisher.channel(), &topology.work_queue()).await?;
        if queue.consumer_count() as usize >= workers {
            return Ok(publisher);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} of {workers} worker(s) consuming after 60 s",
                queue.consumer_count()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct PublishTimes {
    first_confirmed: Instant,
    last_confirmed: Instant,
}

async fn publish_all(
    publisher: Publisher,
    mix: Arc<Vec<String>>,
    batch_size: usize,
    rate: f64,
    run: String,
    published: Arc<AtomicU64>,
) -> anyhow::Result<PublishTimes> {
    let total = mix.len().div_ceil(batch_size);
    let message_id = |m: usize| format!("bench-{run}-{m}");
    // The first message alone: its confirm starts the clock.
    publisher
        .publish_observables(
            "bench",
            &message_body(&mix, 0, batch_size, now_micros()),
            "application/json",
            &message_id(0),
        )
        .await?;
    let first_confirmed = Instant::now();
    published.store(1, Ordering::Relaxed);
    let mut next = 1;
    while next < total {
        let mut n = PUBLISH_CHUNK.min(total - next);
        if rate > 0.0 {
            let elapsed = first_confirmed.elapsed().as_secs_f64();
            let due = (elapsed * rate) as usize + 1;
            if due <= next {
                let at = next as f64 / rate;
                tokio::time::sleep(Duration::from_secs_f64((at - elapsed).max(0.0005))).await;
                continue;
            }
            n = n.min(due - next);
        }
        let stamp = now_micros();
        let items = (next..next + n)
            .map(|m| {
                (
                    "bench".to_owned(),
                    message_body(&mix, m, batch_size, stamp),
                    "application/json".to_owned(),
                    message_id(m),
                )
            })
            .collect();
        publisher.publish_batch(items).await?;
        next += n;
        published.store(next as u64, Ordering::Relaxed);
    }
    let last_confirmed = Instant::now();
    let _ = publisher.close().await;
    Ok(PublishTimes {
        first_confirmed,
        last_confirmed,
    })
}

/// Hits and attributions by band, and the events they cost, from the bench database.
async fn read_attribution(conn: &mut PgConnection) -> anyhow::Result<Attribution> {
    let by_band = |table: &str| {
        format!(
            "SELECT band, count(*)::bigint FROM (SELECT confidence_band(confidence) AS band \
             FROM {table}) t GROUP BY band"
        )
    };
    let bands = |rows: Vec<(String, i64)>| -> BTreeMap<String, u64> {
        rows.into_iter()
            .map(|(band, n)| (band, n.max(0) as u64))
            .collect()
    };
    let hits = bands(
        sqlx::query_as(&by_band("actor_hits"))
            .fetch_all(&mut *conn)
            .await?,
    );
    let attributions = bands(
        sqlx::query_as(&by_band("actor_attributions"))
            .fetch_all(&mut *conn)
            .await?,
    );
    let (events, owed): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(announcements), 0)::bigint, count(*) FILTER (WHERE owed) \
         FROM actor_attributions",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Attribution {
        hits: hits.values().sum(),
        attributions: attributions.values().sum(),
        hits_by_band: hits,
        attributions_by_band: attributions,
        events: events.max(0) as u64,
        events_owed: owed.max(0) as u64,
    })
}

/// Per-observable figures from the bench database.
struct RunRows {
    latency_all: Vec<i64>,
    latency_enriched: Vec<i64>,
    latency_cached: Vec<i64>,
    service_all: Vec<i64>,
    service_enriched: Vec<i64>,
    enriched: u64,
    cached: u64,
    skipped: u64,
    graph_requests: u64,
    attribution: Attribution,
}

async fn read_runs(db_url: &str) -> anyhow::Result<RunRows> {
    let mut conn = PgConnection::connect(db_url).await?;
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT status, \
                (extract(epoch FROM created_at) * 1000000)::bigint \
                  - (context ->> 'bench_published_us')::bigint, \
                duration_ms::bigint * 1000, \
                graph_requests::bigint \
         FROM enrichment_runs \
         WHERE context ->> 'bench_published_us' IS NOT NULL",
    )
    .fetch_all(&mut conn)
    .await?;
    let attribution = read_attribution(&mut conn).await?;
    let _ = conn.close().await;
    let mut out = RunRows {
        latency_all: Vec::with_capacity(rows.len()),
        latency_enriched: Vec::new(),
        latency_cached: Vec::new(),
        service_all: Vec::with_capacity(rows.len()),
        service_enriched: Vec::new(),
        enriched: 0,
        cached: 0,
        skipped: 0,
        graph_requests: 0,
        attribution,
    };
    for (status, latency, service, requests) in rows {
        out.latency_all.push(latency);
        out.service_all.push(service);
        out.graph_requests += requests.max(0) as u64;
        match status.as_str() {
            "enriched" => {
                out.enriched += 1;
                out.latency_enriched.push(latency);
                out.service_enriched.push(service);
            }
            "cached" => {
                out.cached += 1;
                out.latency_cached.push(latency);
            }
            _ => out.skipped += 1,
        }
    }
    Ok(out)
}

/// Graph requests the client made so far, per lane.
fn lane_requests(graph: &GraphClient) -> [u64; 2] {
    let by_lane = &graph.stats().requests_by_lane;
    [0, 1].map(|i| by_lane[i].load(Ordering::Relaxed))
}

fn git_rev() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The Graph settings of the run: the bench's limits, the simulator's address set later.
fn bench_graph_args(cmd: &BenchCmd) -> GraphArgs {
    GraphArgs {
        graph_url: String::new(),
        login_url: String::new(),
        tenant_id: String::new(),
        client_id: String::new(),
        client_secret: Secret::default(),
        client_secret_file: None,
        graph_rate: cmd.graph_rate,
        graph_burst: cmd.graph_burst,
        live_reserve: cmd.live_reserve,
        graph_max_in_flight: cmd.graph_max_in_flight,
        graph_max_attempts: 6,
        graph_timeout: Duration::from_secs(30),
        graph_max_retry_after: Duration::from_secs(300),
        page_size: 100,
        max_pages: 50,
        ca_cert: None,
        insecure_skip_tls_verify: false,
    }
}

/// The worker settings of the run, the same in this process or in worker processes.
fn bench_worker_args(cmd: &BenchCmd) -> WorkerArgs {
    WorkerArgs {
        concurrency: cmd.concurrency,
        live_prefetch: cmd.live_prefetch,
        enrichers: cmd.enrichers.clone(),
        cache_ttl: cmd.cache_ttl,
        allow_non_public: false,
        max_deliveries: 5,
        max_body_bytes: 1 << 20,
        item_concurrency: cmd.item_concurrency,
        group_commit: cmd.group_commit,
        bulk_commit_linger: cmd.bulk_commit_linger,
        shutdown_timeout: Duration::from_secs(30),
        stall_after: Duration::from_secs(600),
        migrate: false,
        chain: cmd.chain,
        chain_depth: cmd.chain_depth,
        chain_max_artifacts: 500,
        chain_request_budget: 2000,
        reputation_ttl: Duration::from_secs(24 * 3600),
        // Worker processes share a tenant quota, which turns it on.
        share_lookups: false,
        measure_sharing: true,
        min_event_confidence: crate::chain::Band::MEDIUM,
        // Synced before the run; a sync inside the window would be counted as the observables'
        // cost.
        profile_sync_interval: Duration::ZERO,
        // The bench stops the worker itself, the moment the last message is settled.
        exit_when_idle: None,
    }
}

/// The worker under measurement: a task in this process, or processes of their own.
struct Workers {
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The in-process worker's pool.
    store: Option<Store>,
    fleet: Option<fleet::Fleet>,
    stats: Arc<WorkerStats>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Each worker process's peak RSS and CPU so far (none with the in-process worker).
    fn read_processes(&self) -> Vec<WorkerProcess> {
        self.fleet
            .as_ref()
            .map(fleet::Fleet::read_processes)
            .unwrap_or_default()
    }

    /// Why the run cannot drain any more, if a worker stopped on its own.
    fn stopped_early(&mut self, ctx: &Ctx<'_>) -> Option<String> {
        if self.task.as_ref().is_some_and(|w| w.is_finished()) {
            return Some("the worker stopped before the queues were drained".into());
        }
        let cmd = ctx.cmd;
        let running = self.fleet.as_mut()?.running();
        (running < cmd.workers).then(|| {
            format!(
                "{} of {} worker processes stopped before the queues were drained (see {})",
                cmd.workers - running,
                cmd.workers,
                ctx.worker_log
                    .map_or("their log".into(), |p| p.display().to_string())
            )
        })
    }

    /// Stop the worker (bounded), the first failure going to `error`; then close the pool,
    /// which ends its backends and so flushes their statistics (the worker processes' backends
    /// ended with them).
    async fn stop(&mut self, error: &mut Option<String>) {
        let _ = self.stop.send(true);
        if let Some(worker) = self.task.as_mut() {
            match tokio::time::timeout(Duration::from_secs(60), &mut *worker).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    error.get_or_insert(format!("the worker failed: {e:#}"));
                }
                Ok(Err(e)) => {
                    error.get_or_insert(format!("the worker task failed: {e}"));
                }
                Err(_) => {
                    worker.abort();
                    error.get_or_insert("the worker did not stop within 60 s".into());
                }
            }
        }
        if let Some(fleet) = self.fleet.take() {
            if let Err(e) = fleet.stop().await {
                error.get_or_insert(e);
            }
        }
        if let Some(store) = &self.store {
            store.close().await;
        }
    }
}

async fn measure_run(ctx: &Ctx<'_>) -> anyhow::Result<Report> {
    let cmd = ctx.cmd;
    let database = DatabaseArgs {
        database_url: Secret::new(ctx.db_url),
        db_max_connections: cmd.db_max_connections,
    };
    let setup_store = app::migrate(&database).await?;
    let mut graph_args = bench_graph_args(cmd);
    graph_args.use_simulator(ctx.sim.graph_url(), ctx.sim.login_url());
    let graph = GraphClient::new(graph_args.to_settings().map_err(anyhow::Error::msg)?)?;
    if cmd.profile_sync {
        sync_before_the_run(&graph, &setup_store).await?;
    }
    setup_store.close().await;
    end_setup_backends(ctx).await?;

    let worker_args = bench_worker_args(cmd);
    let broker = BrokerArgs {
        amqp_url: cmd.amqp_url.clone(),
        queue_prefix: ctx.topology.prefix.clone(),
        retry_delay: ctx.topology.retry_delay,
    };
    let (stop, stopped) = watch::channel(false);
    let mut workers = Workers {
        task: None,
        store: None,
        fleet: None,
        stats: Arc::new(WorkerStats::default()),
        stop,
    };
    // One of the two: the worker as a task here, or as processes of their own.
    if cmd.workers > 1 {
        let fleet = start_fleet(ctx, &graph_args, &broker, &database, &worker_args).await?;
        workers.fleet = Some(fleet);
    } else {
        let pool = Store::connect(ctx.db_url, cmd.db_max_connections).await?;
        workers.store = Some(pool.clone());
        workers.task = Some(tokio::spawn({
            let (graph, stats) = (graph.clone(), Arc::clone(&workers.stats));
            let graph_args = graph_args.clone();
            async move {
                app::run_worker(
                    &graph_args,
                    &broker,
                    &worker_args,
                    graph,
                    pool,
                    stopped,
                    stats,
                    None,
                )
                .await
            }
        }));
    }

    let publish_runtime = publish_runtime()?;
    let result = measure_window(ctx, &graph, &publish_runtime, &mut workers).await;
    if let Some(mut worker) = workers.task.filter(|w| !w.is_finished()) {
        let _ = workers.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut worker).await;
        worker.abort();
    }
    // Worker processes still there after a failure are killed when dropped.
    drop(workers.fleet);
    publish_runtime.shutdown_background();
    result
}

/// How long the drain sleeps before it looks again: 5 ms near the end, where the look decides
/// the drain's measured end, and 100 ms before it. Its sleeps are timers of the publishers'
/// runtime ([`Drain::looks`]), so that they wake no worker thread.
fn next_look(remaining: u64, total: u64) -> Duration {
    if remaining <= (total / 100).max(8) {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(100)
    }
}

/// See the setup's connections (migrations, profile sync) out of Postgres before the run. A
/// backend flushes its statistics to `pg_stat_database` as it exits, or some 10 s after its
/// last statement, so a setup backend still there when the baseline is read can count the
/// setup's ~2,000 catalog and profile rows, and its commits, in the run's figures.
/// [`Store::close`] closes the straggler sqlx's `Pool::close` can leave; should one still be
/// there, every backend of the run's own database is the setup's at this point, so it is ended
/// here.
async fn end_setup_backends(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut ended = false;
    while !backend_pids(ctx.admin_url, ctx.db_name).await?.is_empty() {
        if started.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("the setup's Postgres connections did not leave within 10 s");
        }
        if !ended && started.elapsed() > Duration::from_millis(200) {
            let mut conn = admin_connection(ctx.admin_url).await?;
            let left = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(ctx.db_name)
            .execute(&mut conn)
            .await?
            .rows_affected();
            let _ = conn.close().await;
            eprintln!("ended {left} setup connection(s) the pool left open");
            ended = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Sync intel profiles as a worker does at start, so that chaining matches them.
async fn sync_before_the_run(graph: &GraphClient, store: &Store) -> anyhow::Result<()> {
    let summary = sync_profiles(graph, store)
        .await
        .context("syncing intel profiles")?;
    eprintln!(
        "intel profiles synced: {} profiles, {} indicators",
        summary.profiles, summary.indicators
    );
    Ok(())
}

/// The names of the in-process simulator's and the publishers' threads: their CPU and wake-ups
/// are told apart from the worker's by them.
const SIM_THREADS: &str = "mdti-sim";
const PUBLISHER_THREADS: &str = "mdti-bench-pub";

/// The publishers' runtime: threads of their own ([`PUBLISHER_THREADS`]), so their CPU can be
/// told apart from the worker's.
fn publish_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(PUBLISHER_THREADS)
        .enable_all()
        .build()?)
}

async fn start_fleet(
    ctx: &Ctx<'_>,
    graph_args: &GraphArgs,
    broker: &BrokerArgs,
    database: &DatabaseArgs,
    worker_args: &WorkerArgs,
) -> anyhow::Result<fleet::Fleet> {
    let cmd = ctx.cmd;
    let executable = match &cmd.worker_executable {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding this executable")?,
    };
    let log = ctx
        .worker_log
        .context("no log file for the worker processes")?;
    fleet::Fleet::start(
        &executable,
        cmd.workers,
        log,
        graph_args,
        broker,
        database,
        worker_args,
        cmd.batch_size,
    )
    .await
}

/// Publish the mix (and the live stream), wait for the drain, stop the worker, and report on
/// the window between the two snapshots.
async fn measure_window(
    ctx: &Ctx<'_>,
    graph: &GraphClient,
    publish_runtime: &tokio::runtime::Runtime,
    workers: &mut Workers,
) -> anyhow::Result<Report> {
    let cmd = ctx.cmd;
    let mix = Arc::new(cmd.mix());
    let messages = cmd.observables.div_ceil(cmd.batch_size);
    let publisher = publish_runtime
        .spawn(ready_publisher(
            cmd.amqp_url.expose().to_owned(),
            ctx.topology.clone(),
            cmd.workers,
        ))
        .await??;
    // The setup's backends are gone ([`end_setup_backends`]); let the worker's start-up
    // statements reach pg_stat_database (a busy backend flushes at most once a second) before
    // reading the baseline.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pg_before = pg_stats(ctx.admin_url, ctx.db_name).await?;
    let before = Snapshot::take(ctx, graph).await;
    let peak_reset = measure::reset_peak_rss();

    let published = Arc::new(AtomicU64::new(0));
    let publishing = publish_runtime.spawn(publish_all(
        publisher,
        Arc::clone(&mix),
        cmd.batch_size,
        cmd.publish_rate,
        ctx.topology.prefix.clone(),
        Arc::clone(&published),
    ));
    let live = start_live(ctx, publish_runtime, &mix).await?;
    let looks = publish_runtime.handle().clone();
    let mut drain = Drain::new(publishing, live, lane_requests(graph), looks);
    drain.wait(ctx, graph, workers, messages, before.at).await;
    let drained_at = Instant::now();
    let after = Snapshot::take(ctx, graph).await;
    let (peak_kib, end_kib) = measure::rss_kib();
    // Just before stopping: a process that exited has no /proc entry left.
    let processes = workers.read_processes();
    drain.stop_publishing();
    workers.stop(&mut drain.error).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pg = pg_delta(&pg_stats(ctx.admin_url, ctx.db_name).await?, &pg_before);
    let rows = read_runs(ctx.db_url).await?;
    let lanes = read_lanes(ctx.db_url, drain.lanes_measured).await?;
    let mut report = assemble(Assembly {
        ctx,
        before,
        after,
        times: drain.times,
        drained_at,
        error: drain.error,
        peak_reset,
        peak_kib,
        end_kib,
        pg,
        rows,
        stats: drain.fleet_settled.is_none().then_some(&*workers.stats),
        fleet_settled: drain.fleet_settled,
        processes,
        published: published.load(Ordering::Relaxed),
        distinct: mix::distinct_count(cmd.observables, cmd.distinct),
        messages,
    });
    report.lanes = lanes;
    Ok(report)
}

/// The live stream of the lanes mode (`--live-rate`), on the publishers' runtime.
async fn start_live(
    ctx: &Ctx<'_>,
    publish_runtime: &tokio::runtime::Runtime,
    mix: &Arc<Vec<String>>,
) -> anyhow::Result<Option<lanes::LiveStream>> {
    let cmd = ctx.cmd;
    if cmd.live_rate <= 0.0 {
        return Ok(None);
    }
    let (url, topology) = (cmd.amqp_url.expose().to_owned(), ctx.topology.clone());
    let publisher = publish_runtime
        .spawn(async move { Publisher::connect(&url, topology).await })
        .await??;
    let run = ctx.topology.prefix.clone();
    Ok(Some(lanes::LiveStream::start(
        publish_runtime,
        publisher,
        cmd.live_rate,
        mix,
        run,
    )))
}

/// The lanes mode's figures, read once the run is over.
async fn read_lanes(
    db_url: &str,
    measured: Option<lanes::Measured>,
) -> anyhow::Result<Option<lanes::Lanes>> {
    let Some(measured) = measured else {
        return Ok(None);
    };
    let mut conn = PgConnection::connect(db_url).await?;
    let lanes = lanes::read(&mut conn, measured).await?;
    let _ = conn.close().await;
    Ok(Some(lanes))
}

/// Publishing and draining, watched until every message is settled or the run fails.
struct Drain {
    publishing: Option<tokio::task::JoinHandle<anyhow::Result<PublishTimes>>>,
    live: Option<lanes::LiveStream>,
    lane_requests_before: [u64; 2],
    times: Option<PublishTimes>,
    error: Option<String>,
    /// With worker processes: what Postgres and the dead-letter queue said last.
    fleet_settled: Option<fleet::Settled>,
    lanes_measured: Option<lanes::Measured>,
    /// The runtime whose timers the drain sleeps on between looks: not the worker's. A timer
    /// of the worker's runtime wakes its thread to fire (and once more before that, to move a
    /// deadline over 64 ms away down tokio's timer wheel), which a throttled run charged to
    /// the worker: two wake-ups per look, some 20 a second, that a worker in production never
    /// has.
    looks: tokio::runtime::Handle,
}

impl Drain {
    fn new(
        publishing: tokio::task::JoinHandle<anyhow::Result<PublishTimes>>,
        live: Option<lanes::LiveStream>,
        lane_requests_before: [u64; 2],
        looks: tokio::runtime::Handle,
    ) -> Drain {
        Drain {
            publishing: Some(publishing),
            live,
            lane_requests_before,
            times: None,
            error: None,
            fleet_settled: None,
            lanes_measured: None,
            looks,
        }
    }

    async fn wait(
        &mut self,
        ctx: &Ctx<'_>,
        graph: &GraphClient,
        workers: &mut Workers,
        messages: usize,
        started: Instant,
    ) {
        let cmd = ctx.cmd;
        let deadline = started + cmd.max_duration;
        let mut next_fleet_check = Instant::now();
        let (total, unit) = match workers.fleet {
            None => (messages as u64, "messages"),
            Some(_) => (cmd.observables as u64, "observables"),
        };
        let progress = Progress::towards(total, unit, true);
        loop {
            let so_far = self.settled_so_far(workers);
            progress.set_position(so_far);
            self.collect_publishing().await;
            let Some(settled) = self
                .bulk_settled(cmd, workers, messages, &mut next_fleet_check)
                .await
            else {
                break;
            };
            if self.times.is_some() && settled {
                self.stop_live(cmd, graph, started).await;
            }
            let live_settled = self.lanes_measured.as_ref().is_none_or(|m| {
                WorkerStats::get(&workers.stats.done_by_lane[Lane::Live.index()])
                    >= m.live_published
            });
            if self.error.is_some() || (self.times.is_some() && settled && live_settled) {
                break;
            }
            if let Some(error) = workers.stopped_early(ctx) {
                self.error = Some(error);
                break;
            }
            if Instant::now() >= deadline {
                self.error = Some(format!(
                    "not drained within --max-duration {:?}",
                    cmd.max_duration
                ));
                break;
            }
            let look = next_look(total.saturating_sub(so_far), total);
            // A sleep belongs to the runtime current where it is made.
            let sleep = {
                let _publishers = self.looks.enter();
                tokio::time::sleep(look)
            };
            sleep.await;
        }
        progress.finish();
    }

    /// What the progress bar counts: bulk messages settled in process, or the observables the
    /// worker processes' drain last read.
    fn settled_so_far(&self, workers: &Workers) -> u64 {
        match workers.fleet {
            None => {
                let stats = &workers.stats;
                WorkerStats::get(&stats.done_by_lane[Lane::Bulk.index()])
                    + WorkerStats::get(&stats.dead_lettered)
            }
            Some(_) => self.fleet_settled.map_or(0, |s| s.observables()),
        }
    }

    /// Publishing that has not finished by the end of the run goes no further.
    fn stop_publishing(&mut self) {
        if let Some(p) = self.publishing.take() {
            p.abort();
        }
    }

    /// The publish times once publishing has finished, or why it failed.
    async fn collect_publishing(&mut self) {
        if !self.publishing.as_ref().is_some_and(|p| p.is_finished()) {
            return;
        }
        match self.publishing.take().expect("checked").await {
            Ok(Ok(t)) => self.times = Some(t),
            Ok(Err(e)) => self.error = Some(format!("publishing failed: {e:#}")),
            Err(e) => self.error = Some(format!("publisher task failed: {e}")),
        }
    }

    /// Whether every bulk message is settled; `None` when the worker processes' drain could
    /// not be read (the error is recorded).
    async fn bulk_settled(
        &mut self,
        cmd: &BenchCmd,
        workers: &mut Workers,
        messages: usize,
        next_fleet_check: &mut Instant,
    ) -> Option<bool> {
        let Some(fleet) = workers.fleet.as_mut() else {
            return Some(self.settled_so_far(workers) >= messages as u64);
        };
        // A query, not an atomic load: asked at most every FLEET_POLL.
        if self.times.is_none() || Instant::now() < *next_fleet_check {
            return Some(false);
        }
        *next_fleet_check = Instant::now() + FLEET_POLL;
        match fleet.settled_observables().await {
            Ok(settled) => {
                self.fleet_settled = Some(settled);
                Some(settled.observables() >= cmd.observables as u64)
            }
            Err(e) => {
                self.error = Some(format!("{e:#}"));
                None
            }
        }
    }

    /// Stop the live stream once the bulk backlog is settled, and measure the lanes over it.
    async fn stop_live(&mut self, cmd: &BenchCmd, graph: &GraphClient, started: Instant) {
        let Some(stream) = self.live.take() else {
            return;
        };
        let requests = lane_requests(graph);
        match stream.stop().await {
            Ok(published) => {
                self.lanes_measured = Some(lanes::Measured {
                    live_rate: cmd.live_rate,
                    live_reserve: cmd.live_reserve,
                    quota: cmd
                        .sim_rate
                        .unwrap_or(f64::INFINITY)
                        .min(cmd.graph_rate.ceiling()),
                    live_published: published,
                    bulk_drain: started.elapsed(),
                    requests: [0, 1].map(|i| requests[i] - self.lane_requests_before[i]),
                })
            }
            Err(e) => self.error = Some(format!("the live stream failed: {e:#}")),
        }
    }
}

struct Assembly<'a> {
    ctx: &'a Ctx<'a>,
    before: Snapshot,
    after: Snapshot,
    times: Option<PublishTimes>,
    drained_at: Instant,
    error: Option<String>,
    peak_reset: bool,
    peak_kib: Option<u64>,
    end_kib: Option<u64>,
    pg: Postgres,
    rows: RunRows,
    /// The in-process worker's counters (`None` with worker processes).
    stats: Option<&'a WorkerStats>,
    /// With worker processes: what Postgres and the dead-letter queue said last.
    fleet_settled: Option<fleet::Settled>,
    processes: Vec<WorkerProcess>,
    published: u64,
    distinct: usize,
    messages: usize,
}

fn per(value: f64, over: f64) -> f64 {
    if over > 0.0 {
        value / over
    } else {
        0.0
    }
}

/// Figures of the run that several parts of the report are computed from.
struct Figures {
    /// Seconds between the two snapshots.
    window: f64,
    /// First message confirmed → every message settled.
    end_to_end: f64,
    publish_s: f64,
    observables_done: u64,
    /// The simulator ran in this process.
    in_process: bool,
    /// Worker processes rather than the in-process worker.
    multi_process: bool,
    /// The client's counters over the window.
    client: GraphCounts,
    /// The client's count, or the simulator's with worker processes.
    requests: u64,
}

impl Figures {
    fn of(a: &Assembly<'_>, sim_delta: &BTreeMap<String, u64>) -> Figures {
        let (before, after) = (&a.before, &a.after);
        let first = a.times.as_ref().map_or(before.at, |t| t.first_confirmed);
        let multi_process = a.stats.is_none();
        let client = after.graph.since(&before.graph);
        Figures {
            window: after.at.duration_since(before.at).as_secs_f64(),
            end_to_end: a.drained_at.saturating_duration_since(first).as_secs_f64(),
            publish_s: a.times.as_ref().map_or(0.0, |t| {
                t.last_confirmed
                    .duration_since(t.first_confirmed)
                    .as_secs_f64()
            }),
            observables_done: a.rows.latency_all.len() as u64,
            in_process: matches!(a.ctx.sim, SimSide::InProcess { .. }),
            multi_process,
            requests: if multi_process {
                sim_delta.get("graph").copied().unwrap_or(0)
            } else {
                client.requests
            },
            client,
        }
    }

    /// A client-side figure: it exists only for the in-process worker's client.
    fn client_side<T>(&self, value: T) -> Option<T> {
        (!self.multi_process).then_some(value)
    }
}

/// Where this process's CPU went during the run.
struct CpuUse {
    process: measure::Cpu,
    by_thread: BTreeMap<String, f64>,
    simulator: f64,
    publisher: f64,
    worker: f64,
    /// Times the in-process worker's threads were put on a CPU: its wake-ups.
    worker_runs: Option<u64>,
}

impl CpuUse {
    fn of(a: &Assembly<'_>, multi_process: bool) -> CpuUse {
        let (before, after) = (&a.before, &a.after);
        let process = match (after.cpu, before.cpu) {
            (Some(a), Some(b)) => a.since(&b),
            _ => measure::Cpu::default(),
        };
        let by_thread = measure::thread_groups(&before.threads, &after.threads);
        let group = |name: &str| by_thread.get(name).copied().unwrap_or(0.0);
        let simulator = group(SIM_THREADS);
        let publisher = group(PUBLISHER_THREADS);
        // With worker processes, the bench process holds no worker: theirs is their own CPU.
        let (worker, worker_runs) = if multi_process {
            (a.processes.iter().filter_map(|p| p.cpu_s).sum(), None)
        } else {
            // The bench's own main thread only polls counters (the worker runs on the
            // runtime's worker threads); its name is the executable's, so it goes by its tid.
            let main_thread = std::process::id();
            let (bench_main, _) =
                measure::threads_since(&before.threads, &after.threads, |tid, _| {
                    tid == main_thread
                });
            let (_, runs) = measure::threads_since(&before.threads, &after.threads, |tid, name| {
                tid != main_thread && name != SIM_THREADS && name != PUBLISHER_THREADS
            });
            let worker = (process.total() - simulator - publisher - bench_main).max(0.0);
            (worker, Some(runs))
        };
        CpuUse {
            process,
            by_thread,
            simulator,
            publisher,
            worker,
            worker_runs,
        }
    }
}

/// What each simulator counter counted between the two snapshots.
fn counters_since(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect()
}

fn assemble(a: Assembly<'_>) -> Report {
    let sim_delta = counters_since(&a.before.sim, &a.after.sim);
    let f = Figures::of(&a, &sim_delta);
    let cpu = CpuUse::of(&a, f.multi_process);
    let latency = Latency {
        all: Spread::of_micros(a.rows.latency_all.clone()),
        enriched: Spread::of_micros(a.rows.latency_enriched.clone()),
        cached: Spread::of_micros(a.rows.latency_cached.clone()),
        service: Spread::of_micros(a.rows.service_all.clone()),
        service_enriched: Spread::of_micros(a.rows.service_enriched.clone()),
    };
    let machine_busy = match (a.after.machine, a.before.machine) {
        (Some(after), Some(before)) => measure::machine_busy_s(&before, &after),
        _ => 0.0,
    };
    Report {
        // Format 2: the client-side Graph figures may be null, `peak_rss_mib` is the bench
        // process's and the workers' are in `worker_processes`, as with worker processes.
        format: if f.multi_process { 2 } else { 1 },
        started_at: a.ctx.started_at.to_rfc3339(),
        git_rev: git_rev(),
        config: config(&a, f.in_process),
        machine: Machine {
            cpus: measure::cpus(),
            loadavg_start: a.before.load,
            loadavg_end: a.after.load,
            machine_busy_cores: per(machine_busy, f.window),
            process_cores: per(cpu.process.total(), f.window),
        },
        complete: a.error.is_none(),
        error: a.error.clone(),
        throughput: Throughput {
            published_messages: a.published,
            publish_s: f.publish_s,
            publish_messages_per_s: per(a.published.saturating_sub(1) as f64, f.publish_s),
            end_to_end_s: f.end_to_end,
            observables_done: f.observables_done,
            observables_per_s: per(f.observables_done as f64, f.end_to_end),
        },
        graph: graph_figures(&f, sim_delta, a.ctx.cmd.sim_rate),
        breakdown: breakdown(&a, &f, &latency),
        latency,
        runs: Runs {
            enriched: a.rows.enriched,
            cached: a.rows.cached,
            skipped: a.rows.skipped,
            graph_requests: a.rows.graph_requests,
            attribution: a.rows.attribution.clone(),
        },
        worker: worker_counters(&a),
        resources: resources(&a, &f, cpu),
        postgres: a.pg.clone().per(a.published as f64, a.rows.enriched as f64),
        lanes: None,
        notes: notes(&a, &f),
    }
}

fn config(a: &Assembly<'_>, in_process: bool) -> Config {
    let cmd = a.ctx.cmd;
    Config {
        observables: cmd.observables,
        distinct_values: a.distinct,
        cache_ttl_s: cmd.cache_ttl.as_secs_f64(),
        batch_size: cmd.batch_size,
        messages: a.messages,
        concurrency: cmd.concurrency,
        item_concurrency: cmd.item_concurrency,
        group_commit: cmd.group_commit,
        bulk_commit_linger_s: cmd.bulk_commit_linger.as_secs_f64(),
        enrichers: cmd.enrichers.0.iter().map(|e| e.to_string()).collect(),
        chain: cmd.chain,
        chain_depth: cmd.chain_depth,
        graph_rate: cmd.graph_rate.ceiling(),
        graph_burst: bench_graph_args(cmd).burst(),
        graph_max_in_flight: cmd.graph_max_in_flight,
        sim: a.ctx.sim.mode().to_owned(),
        sim_url: a.ctx.sim.graph_url(),
        sim_rate: if in_process { cmd.sim_rate } else { None },
        sim_latency_ms: if in_process {
            cmd.sim_latency.as_secs_f64() * 1000.0
        } else {
            0.0
        },
        sim_threads: cmd.sim_threads,
        publish_rate: cmd.publish_rate,
        seed: cmd.seed,
        db_max_connections: cmd.db_max_connections,
        database: a.ctx.db_name.to_owned(),
        queue_prefix: a.ctx.topology.prefix.clone(),
        profile_sync: cmd.profile_sync,
        workers: cmd.workers,
    }
}

fn graph_figures(f: &Figures, sim_delta: BTreeMap<String, u64>, sim_rate: Option<f64>) -> Graph {
    let g = &f.client;
    let sim_429 = sim_delta.get("throttled").copied();
    let sim_requests = sim_delta.get("graph").copied();
    let accepted = sim_requests
        .zip(sim_429)
        .map(|(seen, refused)| seen.saturating_sub(refused));
    Graph {
        requests: f.requests,
        requests_counted_by: if f.multi_process {
            "simulator"
        } else {
            "client"
        }
        .to_owned(),
        requests_per_observable: per(f.requests as f64, f.observables_done as f64),
        achieved_rate: per(f.requests as f64, f.end_to_end),
        sim_429,
        sim_requests,
        throttled_share: sim_requests
            .zip(sim_429)
            .filter(|(seen, _)| *seen > 0)
            .map(|(seen, refused)| refused as f64 / seen as f64),
        quota_accepted: accepted
            .zip(sim_rate.filter(|q| *q > 0.0))
            .map(|(accepted, quota)| per(accepted as f64, f.end_to_end) / quota),
        learnt_rate: f.client_side(g.learnt_rate),
        rate_cuts: f.client_side(g.rate_cuts),
        client_throttled: f.client_side(g.throttled),
        retries: f.client_side(g.retries),
        gave_up: f.client_side(g.gave_up),
        retry_after_asked_s: f.client_side(g.retry_after_micros as f64 / 1e6),
        limiter_wait_s: f.client_side(g.limiter_micros as f64 / 1e6),
        limiter_sleeps_per_request: f
            .client_side(g.requests)
            .filter(|sent| *sent > 0)
            .map(|sent| g.limiter_sleeps as f64 / sent as f64),
        hold_wait_s: f.client_side(g.hold_micros as f64 / 1e6),
        sim_endpoints: sim_delta,
    }
}

fn breakdown(a: &Assembly<'_>, f: &Figures, latency: &Latency) -> Breakdown {
    let g = &f.client;
    Breakdown {
        slot_capacity_s: f64::from(a.ctx.cmd.concurrency) * f.end_to_end,
        service_s: a.rows.service_all.iter().sum::<i64>() as f64 / 1e6,
        limiter_wait_s: f.client_side(g.limiter_micros as f64 / 1e6),
        hold_wait_s: f.client_side(g.hold_micros as f64 / 1e6),
        sim_latency_s: match a.ctx.sim {
            SimSide::InProcess { latency, .. } => Some(latency.as_secs_f64() * f.requests as f64),
            SimSide::External { .. } => None,
        },
        postgres_active_s: a.pg.active_s,
        mean_queue_and_write_ms: latency.all.mean_ms - latency.service.mean_ms,
    }
}

fn resources(a: &Assembly<'_>, f: &Figures, cpu: CpuUse) -> Resources {
    let (before, after) = (&a.before, &a.after);
    let postgres_backends_cpu_s =
        measure::processes_delta(&before.postgres_backends, &after.postgres_backends);
    Resources {
        peak_rss_mib: a.peak_kib.map(|k| k as f64 / 1024.0),
        end_rss_mib: a.end_kib.map(|k| k as f64 / 1024.0),
        peak_rss_window_only: a.peak_reset,
        rss_includes_simulator: f.in_process,
        process_cpu: cpu.process,
        cpu_by_thread: cpu.by_thread,
        simulator_cpu_s: cpu.simulator,
        publisher_cpu_s: cpu.publisher,
        worker_cpu_s: cpu.worker,
        worker_cpu_s_per_1000: per(cpu.worker * 1000.0, f.observables_done as f64),
        worker_thread_runs: cpu.worker_runs,
        worker_thread_runs_per_request: cpu
            .worker_runs
            .filter(|_| f.requests > 0)
            .map(|runs| per(runs as f64, f.requests as f64)),
        postgres_backends_cpu_s,
        postgres_backends_cpu_s_per_1000: per(
            postgres_backends_cpu_s * 1000.0,
            f.observables_done as f64,
        ),
        postgres_all_cpu_s: measure::processes_delta(&before.postgres_all, &after.postgres_all),
        rabbitmq_cpu_s: measure::processes_delta(&before.rabbitmq, &after.rabbitmq),
        worker_processes_peak_rss_mib: (!a.processes.is_empty())
            .then(|| a.processes.iter().filter_map(|p| p.peak_rss_mib).sum()),
        worker_processes: a.processes.clone(),
    }
}

/// The in-process worker's counters, or what the bench read in Postgres and RabbitMQ instead.
fn worker_counters(a: &Assembly<'_>) -> BTreeMap<String, u64> {
    match a.stats {
        Some(stats) => [
            ("messages", &stats.messages),
            ("retried", &stats.retried),
            ("dead_lettered", &stats.dead_lettered),
            ("requeued", &stats.requeued),
            ("enriched", &stats.enriched),
            ("cached", &stats.cached),
            ("skipped", &stats.skipped),
            ("rejected_items", &stats.rejected_items),
            ("attribution_events", &stats.outbox.announced),
            ("event_relay_passes", &stats.outbox.passes),
            ("reconnects", &stats.reconnects),
            ("results_committed", &stats.group_commit.committed),
            ("result_transactions", &stats.group_commit.transactions),
            ("result_batches_split", &stats.group_commit.split),
            ("cache_rows_kept_answered", &stats.kept_rows.answered),
            ("cache_rows_kept_read", &stats.kept_rows.read),
            ("cache_rows_kept_restarts", &stats.kept_rows.restarts),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), WorkerStats::get(v)))
        .chain([("done".to_owned(), stats.done())])
        .collect(),
        None => a
            .fleet_settled
            .map(|s| {
                BTreeMap::from([
                    ("enrichment_runs".to_owned(), s.runs),
                    ("dead_lettered".to_owned(), s.dead_lettered_messages),
                ])
            })
            .unwrap_or_default(),
    }
}

/// What the figures mean and what they leave out, for this kind of run.
fn notes(a: &Assembly<'_>, f: &Figures) -> Vec<String> {
    let cmd = a.ctx.cmd;
    let mut notes = vec![
        "publish→commit latency ends at enrichment_runs.created_at, Postgres now() = the start of the result transaction: the write itself, the commit, the ack and attribution events are after it".to_owned(),
        "service time is enrichment_runs.duration_ms (whole milliseconds): cache check, Graph requests (limiter and 429 waits included), chaining with its reputation cache; it excludes the queue wait and the result write".to_owned(),
        "not measured: time inside Graph HTTP requests client-side (the client has no timer; see simulator latency and CPU), Postgres pool acquire waits and client-side statement time (Postgres active time is server-side), broker publish/ack round trips".to_owned(),
    ];
    if cmd.publish_rate == 0.0 {
        notes.push("backlog mode (--publish-rate 0): everything is queued at once, so publish→commit latency is mostly queue wait; use --publish-rate below the worker's throughput for service latency under load".into());
    }
    if f.multi_process {
        notes.push(format!(
            "{} worker processes sharing --graph-rate {} as their tenant quota through Postgres leases; the bench process holds no worker, only the publisher (and the simulator unless external)",
            cmd.workers, cmd.graph_rate
        ));
        notes.push("with worker processes: Graph requests are the simulator's count; the client-side figures (limiter and 429 hold waits, retries, client-seen 429s, gave up) live in the workers and are not measured; `worker` holds what the bench read in Postgres (enrichment_runs) and RabbitMQ (dead-lettered messages), not the workers' counters".into());
        notes.push(format!(
            "with worker processes: the drain is read from Postgres and the dead-letter queue every {} ms, so end to end may include up to that; worker peak RSS (VmHWM) and CPU (utime + stime) are per process since it started, start-up included, read just before SIGTERM",
            FLEET_POLL.as_millis()
        ));
    } else {
        if f.in_process {
            notes.push("the simulator runs in this process (own runtime, threads mdti-sim): RSS includes it, its CPU is subtracted from the worker's; use --sim-external for a worker-only RSS".into());
        }
        notes.push(format!(
            "worker CPU = process CPU − simulator threads − publisher threads − the bench's main thread; Postgres and RabbitMQ CPU are other processes; the machine has {} CPUs shared with everything else",
            measure::cpus()
        ));
    }
    if a.stats
        .is_some_and(|s| WorkerStats::get(&s.rejected_items) > 0)
    {
        notes.push(
            "some items were rejected: the settled-message count may be reached early".into(),
        );
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bodies_carry_the_publish_time() {
        let mix: Vec<String> = ["a.com", "1.2.3.4", "b.net"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let one: serde_json::Value = serde_json::from_slice(&message_body(&mix, 1, 1, 42)).unwrap();
        assert_eq!(one["value"], "1.2.3.4");
        assert_eq!(one["context"]["bench_published_us"], 42);
        let batch: serde_json::Value =
            serde_json::from_slice(&message_body(&mix, 1, 2, 7)).unwrap();
        assert_eq!(batch.as_array().unwrap().len(), 1);
        assert_eq!(batch[0]["value"], "b.net");
        assert_eq!(batch[0]["context"]["bench_seq"], 2);
    }

    #[test]
    fn database_urls_get_the_bench_name() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432", "mdti_bench_x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/mdti_bench_x"
        );
        assert_eq!(
            url_with_database("postgres://u:p@h/other?sslmode=disable", "postgres").unwrap(),
            "postgres://u:p@h/postgres?sslmode=disable"
        );
    }
}
