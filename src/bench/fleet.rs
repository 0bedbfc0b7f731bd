//! `bench --workers N`: the worker as N processes of this executable (through
//! [`WorkerProcesses`]) instead of a task of the bench's own runtime. The simulator, the
//! publisher and the measuring stay in the bench process.
//!
//! The workers share the bench's `--graph-rate` as a tenant quota (`--tenant-quota`), through
//! their leases in Postgres, as a fleet on several machines would. Their counters live in their
//! own memory, so the bench knows a run is drained from Postgres and RabbitMQ instead: the
//! observables with a result in `enrichment_runs`, plus the messages waiting in the dead-letter
//! queue. What only a worker knows (its client's limiter and 429 waits, retries) is reported as
//! not measured.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use lapin::{Channel, Connection, ConnectionProperties};
use sqlx::{Connection as _, PgConnection};

use super::measure;
use super::report::WorkerProcess;
use crate::config::{BrokerArgs, DatabaseArgs, GraphArgs, WorkerArgs};
use crate::fleet::WorkerProcesses;
use crate::queue::topology::Topology;

/// How long the workers get to stop after SIGTERM before they are killed: their own shutdown
/// timeout and a margin for leaving the fleet and closing connections.
fn stop_timeout(worker: &WorkerArgs) -> Duration {
    worker.shutdown_timeout + Duration::from_secs(15)
}

fn duration_arg(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The `worker` command line equivalent to the in-process worker's settings, plus the tenant
/// quota. Settings holding secrets (database and broker URLs, the client secret) go in the
/// environment, not in the arguments every user of the machine can read.
fn command_line(
    graph: &GraphArgs,
    broker: &BrokerArgs,
    database: &DatabaseArgs,
    worker: &WorkerArgs,
) -> (Vec<String>, Vec<(String, String)>) {
    let args = connection_flags(graph, broker, database)
        .into_iter()
        .chain(worker_flags(worker))
        .chain([
            // N workers on one host: each its own free port.
            ("--metrics-listen", "127.0.0.1:0".to_owned()),
            ("--tenant-quota", graph.graph_rate.ceiling().to_string()),
        ])
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect();
    let envs = vec![
        (
            "MDTI_DATABASE_URL".to_owned(),
            database.database_url.expose().to_owned(),
        ),
        (
            "MDTI_AMQP_URL".to_owned(),
            broker.amqp_url.expose().to_owned(),
        ),
        (
            "MDTI_CLIENT_SECRET".to_owned(),
            graph.client_secret.expose().to_owned(),
        ),
        // The log is a file: no terminal colour codes in it.
        ("NO_COLOR".to_owned(), "1".to_owned()),
    ];
    (args, envs)
}

/// Where Graph, the queues and the database are, and the limits on using them.
fn connection_flags(
    graph: &GraphArgs,
    broker: &BrokerArgs,
    database: &DatabaseArgs,
) -> Vec<(&'static str, String)> {
    vec![
        ("--graph-url", graph.graph_url.clone()),
        ("--login-url", graph.login_url.clone()),
        ("--tenant-id", graph.tenant_id.clone()),
        ("--client-id", graph.client_id.clone()),
        ("--graph-rate", graph.graph_rate.to_string()),
        ("--graph-burst", graph.graph_burst.to_string()),
        (
            "--graph-max-in-flight",
            graph.graph_max_in_flight.to_string(),
        ),
        ("--graph-max-attempts", graph.graph_max_attempts.to_string()),
        ("--graph-timeout", duration_arg(graph.graph_timeout)),
        ("--page-size", graph.page_size.to_string()),
        ("--max-pages", graph.max_pages.to_string()),
        ("--queue-prefix", broker.queue_prefix.clone()),
        ("--retry-delay", duration_arg(broker.retry_delay)),
        (
            "--db-max-connections",
            database.db_max_connections.to_string(),
        ),
    ]
}

/// How the worker processes its messages and chains its observables.
fn worker_flags(worker: &WorkerArgs) -> Vec<(&'static str, String)> {
    let enrichers: Vec<String> = worker.enrichers.0.iter().map(|e| e.to_string()).collect();
    vec![
        ("--concurrency", worker.concurrency.to_string()),
        ("--enrichers", enrichers.join(",")),
        ("--cache-ttl", duration_arg(worker.cache_ttl)),
        ("--max-deliveries", worker.max_deliveries.to_string()),
        ("--max-body-bytes", worker.max_body_bytes.to_string()),
        ("--item-concurrency", worker.item_concurrency.to_string()),
        ("--group-commit", worker.group_commit.to_string()),
        (
            "--bulk-commit-linger",
            duration_arg(worker.bulk_commit_linger),
        ),
        ("--shutdown-timeout", duration_arg(worker.shutdown_timeout)),
        ("--chain", worker.chain.to_string()),
        ("--chain-depth", worker.chain_depth.to_string()),
        (
            "--chain-max-artifacts",
            worker.chain_max_artifacts.to_string(),
        ),
        (
            "--chain-request-budget",
            worker.chain_request_budget.to_string(),
        ),
        ("--reputation-ttl", duration_arg(worker.reputation_ttl)),
        ("--measure-sharing", worker.measure_sharing.to_string()),
        (
            "--min-event-confidence",
            worker.min_event_confidence.to_string(),
        ),
        (
            "--profile-sync-interval",
            duration_arg(worker.profile_sync_interval),
        ),
    ]
}

/// The worker processes of one run and what the bench reads about them.
pub(super) struct Fleet {
    processes: WorkerProcesses,
    pids: Vec<u32>,
    stop_timeout: Duration,
    db: PgConnection,
    broker: Connection,
    channel: Channel,
    dead_letter_queue: String,
    batch_size: usize,
}

impl Fleet {
    /// Start `count` worker processes of `executable`, their output appended to `log`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start(
        executable: &Path,
        count: usize,
        log: &Path,
        graph: &GraphArgs,
        broker: &BrokerArgs,
        database: &DatabaseArgs,
        worker: &WorkerArgs,
        batch_size: usize,
    ) -> anyhow::Result<Fleet> {
        let db = PgConnection::connect(database.database_url.expose())
            .await
            .context("connecting to the bench database")?;
        let amqp = Connection::connect(broker.amqp_url.expose(), ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = amqp.create_channel().await?;
        if let Some(parent) = log.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let (args, envs) = command_line(graph, broker, database, worker);
        let processes = WorkerProcesses::spawn_logged(executable, count, args, &envs, &log_file)
            .with_context(|| {
                format!(
                    "starting {count} worker processes of {}",
                    executable.display()
                )
            })?;
        let pids = processes.pids().into_iter().flatten().collect();
        Ok(Fleet {
            processes,
            pids,
            stop_timeout: stop_timeout(worker),
            db,
            broker: amqp,
            channel,
            dead_letter_queue: Topology {
                prefix: broker.queue_prefix.clone(),
                retry_delay: broker.retry_delay,
            }
            .dead_letter_queue(),
            batch_size,
        })
    }

    /// Observables settled so far: those with a result, plus the items of the messages in the
    /// dead-letter queue (exact with one observable per message; with batches, a message
    /// dead-lettered after some of its items were written counts them twice).
    pub(super) async fn settled_observables(&mut self) -> anyhow::Result<Settled> {
        let runs: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM enrichment_runs \
             WHERE context ->> 'bench_published_us' IS NOT NULL",
        )
        .fetch_one(&mut self.db)
        .await
        .context("counting the bench's enrichment runs")?;
        let dead_letter = crate::queue::inspect(&self.channel, &self.dead_letter_queue)
            .await
            .context("reading the dead-letter queue's depth")?;
        Ok(Settled {
            runs: runs.max(0) as u64,
            dead_lettered_messages: u64::from(dead_letter.message_count()),
            batch_size: self.batch_size as u64,
        })
    }

    /// Workers still running.
    pub(super) fn running(&mut self) -> usize {
        self.processes.running()
    }

    /// Each worker's peak RSS and CPU so far, from `/proc`.
    pub(super) fn read_processes(&self) -> Vec<WorkerProcess> {
        self.pids
            .iter()
            .map(|&pid| WorkerProcess {
                pid,
                peak_rss_mib: measure::pid_peak_rss_kib(pid).map(|k| k as f64 / 1024.0),
                cpu_s: measure::pid_cpu(pid),
            })
            .collect()
    }

    /// SIGTERM every worker and wait for them (bounded); an error names what went wrong.
    pub(super) async fn stop(self) -> Result<(), String> {
        let _ = self.channel.close(200, "bench done".into()).await;
        let _ = self.broker.close(200, "bench done".into()).await;
        let _ = self.db.close().await;
        self.processes
            .terminate()
            .map_err(|e| format!("stopping the workers: {e}"))?;
        let statuses = self
            .processes
            .wait(self.stop_timeout)
            .await
            .map_err(|e| format!("stopping the workers: {e}"))?;
        let failed: Vec<String> = statuses
            .iter()
            .zip(&self.pids)
            .filter(|(status, _)| !status.success())
            .map(|(status, pid)| format!("pid {pid} {status}"))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "worker processes exited with failure: {}",
                failed.join(", ")
            ))
        }
    }
}

/// What Postgres and the dead-letter queue say is settled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settled {
    pub runs: u64,
    pub dead_lettered_messages: u64,
    batch_size: u64,
}

impl Settled {
    pub(super) fn observables(&self) -> u64 {
        self.runs + self.dead_lettered_messages * self.batch_size
    }
}
