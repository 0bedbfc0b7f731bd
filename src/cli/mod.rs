//! Subcommands: `worker`, `publish`, `enrich`, `migrate`, `sim`, `sync-profiles`, `demo`,
//! `bench`, `dlq list` / `dlq replay`, `export`, `report`, `status`. Each lives in a file of its
//! own, with its arguments; what several share is in [`common`].

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub mod bench;
pub mod common;
pub mod demo;
pub mod dlq;
pub mod enrich;
pub mod export;
pub mod migrate;
pub mod publish;
pub mod publish_taxii;
pub mod report;
pub mod sim;
pub mod status;
pub mod sync_profiles;
pub mod worker;

// Starting a worker from parsed flags, as `worker` does, is also how tests start one.
pub use crate::app::run_worker;

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
    Worker(Box<worker::WorkerCmd>),
    /// Publish observables from files or stdin to a lane (stdin alone: live; files: bulk)
    Publish(publish::PublishCmd),
    /// Enrich observables now and print the mapped result (no broker, no database)
    Enrich(enrich::EnrichCmd),
    /// Create the database if missing and apply migrations
    Migrate(migrate::MigrateCmd),
    /// Serve the Graph simulator
    Sim(sim::SimCmd),
    /// Sync intel profiles (actors) and their indicators from Graph into Postgres now
    SyncProfiles(sync_profiles::SyncProfilesCmd),
    /// Run the whole path on local defaults against the in-process simulator
    Demo(demo::DemoCmd),
    /// Benchmark the whole path (broker, worker, simulator, Postgres) and report the figures
    Bench(bench::BenchCmd),
    /// Look at the dead-letter queue, or send dead letters back to the work queue
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
    /// Export flagged observables and actor hits as a STIX 2.1 bundle, JSON lines or CSV
    Export(export::ExportCmd),
    /// Print what the worker did: runs by outcome, Graph use, top actors, rejections, backlog
    Report(report::ReportCmd),
    /// Show what waits in each lane, how fast it is done and when it will be through, per source
    Status(status::StatusCmd),
}

/// Run the command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Worker(cmd) => worker::run(*cmd).await,
        Command::Publish(cmd) => publish::command(cmd).await,
        Command::Enrich(cmd) => enrich::run(cmd).await,
        Command::Migrate(cmd) => migrate::run(cmd).await,
        Command::Sim(cmd) => sim::run(cmd).await,
        Command::SyncProfiles(cmd) => sync_profiles::run(cmd).await,
        Command::Demo(cmd) => demo::run(cmd).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Dlq(cmd) => dlq::run(cmd).await,
        Command::Export(cmd) => export::run(cmd).await,
        Command::Report(cmd) => report::run(cmd).await,
        Command::Status(cmd) => status::run(cmd).await,
    }
}
