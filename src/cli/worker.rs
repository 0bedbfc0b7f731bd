//! `worker`: consume observables from RabbitMQ, enrich them, write the results to Postgres,
//! until SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::common::shutdown_signal;
use crate::app::{self, Worker, WorkerSettings};
use crate::config::{BrokerArgs, DatabaseArgs, FleetArgs, GraphArgs, WorkerArgs};
use crate::ops::ListenAddr;
use crate::queue;
use crate::service::FIRST_ANSWER_WITHIN;
use crate::store::Store;

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

impl WorkerCmd {
    /// The most Graph requests a second this worker makes: its `--graph-rate`, or with
    /// `--tenant-quota` the quota, since its share of the quota replaces `--graph-rate` as its
    /// limiter's ceiling (a worker alone takes the whole quota).
    pub fn graph_rate_ceiling(&self) -> f64 {
        self.fleet
            .tenant_quota
            .unwrap_or_else(|| self.graph.graph_rate.ceiling())
    }
}

pub async fn run(mut cmd: WorkerCmd) -> anyhow::Result<i32> {
    // Bound first: a taken port is a configuration error, reported before any work starts.
    let ops_listener = bind_ops(&cmd.metrics_listen).await?;
    let (graph, _sim) = app::graph_client(&mut cmd.graph, cmd.simulator).await?;
    let fleet = cmd
        .fleet
        .settings(&cmd.graph.tenant_id, cmd.graph.graph_burst)
        .map_err(anyhow::Error::msg)?;
    // Workers sharing a quota share their lookups in flight too: a duplicate costs the quota.
    cmd.worker.share_lookups |= fleet.is_some();
    // Both services are there at the start, or the worker says which is not and stops; once
    // running, it rides out their outages (reconnects, pauses).
    queue::reach(cmd.broker.amqp_url.expose()).await?;
    let store = store(&cmd.database, cmd.worker.migrate).await?;
    let worker = Worker {
        graph,
        store,
        settings: WorkerSettings::from_args(&cmd.graph, &cmd.broker, &cmd.worker),
        stats: Arc::default(),
        fleet,
        ops_listener,
    };
    worker.run(stop_on_signal()).await?;
    Ok(0)
}

async fn bind_ops(listen: &ListenAddr) -> anyhow::Result<Option<TcpListener>> {
    match listen.0 {
        Some(addr) => Ok(Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?,
        )),
        None => Ok(None),
    }
}

async fn store(database: &DatabaseArgs, migrate: bool) -> anyhow::Result<Store> {
    if migrate {
        return app::migrate(database).await;
    }
    let url = database.database_url.expose();
    Ok(Store::open(url, database.db_max_connections, FIRST_ANSWER_WITHIN).await?)
}

/// Turns true on SIGINT or SIGTERM.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; finishing in-flight messages");
        let _ = stop.send(true);
    });
    stopped
}
