//! Subcommands: `worker`, `publish`, `enrich`, `migrate`, `sim`, `sync-profiles`, `demo`,
//! `bench`, `dlq list` / `dlq replay`, `export`, `report`, `status`. Each lives in a file of its
//! own, with its arguments; what several share is in [`common`].

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::RuntimeThreads;

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
    /// Threads of the async runtime: a number, or `auto` (one for a worker whose Graph rate is
    /// at most 1,000 requests/s, else one per CPU)
    #[arg(
        long,
        env = "MDTI_RUNTIME_THREADS",
        default_value = "auto",
        global = true
    )]
    pub runtime_threads: RuntimeThreads,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The async runtime the command runs on, its threads as `--runtime-threads` says.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        let rate_ceiling = self.command.graph_rate_ceiling();
        if let Some(threads) = self.runtime_threads.for_rate(rate_ceiling) {
            builder.worker_threads(threads);
        }
        builder.enable_all().build()
    }
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

impl Command {
    /// The most Graph requests a second the worker this command runs in its process makes;
    /// `None` for a command that runs none.
    fn graph_rate_ceiling(&self) -> Option<f64> {
        match self {
            Command::Worker(cmd) => Some(cmd.graph_rate_ceiling()),
            Command::Bench(cmd) => Some(cmd.graph_rate.ceiling()),
            _ => None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime_threads(args: &[&str]) -> usize {
        let cli = Cli::parse_from(args);
        let runtime = cli.runtime().expect("a runtime");
        runtime.metrics().num_workers()
    }

    #[test]
    fn a_worker_held_to_a_quota_one_thread_serves_runs_on_one_thread() {
        assert_eq!(runtime_threads(&["mdti-worker", "worker"]), 1);
        for rate in ["auto", "50", "1000"] {
            let args = ["mdti-worker", "worker", "--graph-rate", rate];
            assert_eq!(runtime_threads(&args), 1, "--graph-rate {rate}");
        }
        let shared = [
            "mdti-worker",
            "worker",
            "--graph-rate",
            "5000",
            "--tenant-quota",
            "100",
        ];
        assert_eq!(runtime_threads(&shared), 1);
        let bench = ["mdti-worker", "bench", "--graph-rate", "50"];
        assert_eq!(runtime_threads(&bench), 1);
    }

    #[test]
    fn a_faster_worker_and_the_other_commands_keep_tokios_default_unless_told() {
        let tokios_default = tokio::runtime::Runtime::new()
            .unwrap()
            .metrics()
            .num_workers();
        let fast = ["mdti-worker", "worker", "--graph-rate", "5000"];
        assert_eq!(runtime_threads(&fast), tokios_default);
        assert_eq!(runtime_threads(&["mdti-worker", "bench"]), tokios_default);
        assert_eq!(runtime_threads(&["mdti-worker", "report"]), tokios_default);
        let whole_quota = ["mdti-worker", "worker", "--tenant-quota", "5000"];
        assert_eq!(runtime_threads(&whole_quota), tokios_default);
        let told = ["mdti-worker", "--runtime-threads", "3", "worker"];
        assert_eq!(runtime_threads(&told), 3);
    }
}
