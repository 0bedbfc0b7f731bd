//! `mdti-worker bench` on a tiny run against the real services: with the worker in the bench's
//! own process and with two worker processes sharing the tenant quota, every observable gets
//! exactly one run and the report's counts agree with each other and with the database.

use std::path::{Path, PathBuf};

use clap::Parser;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use mdti_worker::bench::{run_and_record, BenchCmd, Recorded};
use mdti_worker::store::Store;

mod support;
use support::{amqp_url, TestDb, AMQP};

const OBSERVABLES: usize = 40;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchCmd,
}

/// A bench of `OBSERVABLES` observables, chaining off, three enrichers, its database kept so
/// that the test can look at it, its JSON in a file of its own.
fn bench_cmd(workers: usize, json: &Path) -> BenchCmd {
    let database = std::env::var("MDTI_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let args = [
        "bench",
        "--observables",
        &OBSERVABLES.to_string(),
        "--chain",
        "false",
        "--enrichers",
        "whois,host,reputation",
        "--concurrency",
        "4",
        "--max-duration",
        "3m",
        "--database-url",
        &database,
        "--amqp-url",
        AMQP,
        "--keep",
        "--json",
        &json.display().to_string(),
        "--workers",
        &workers.to_string(),
        "--worker-executable",
        env!("CARGO_BIN_EXE_mdti-worker"),
    ]
    .map(str::to_owned);
    Cli::try_parse_from(args).expect("bench arguments").bench
}

/// The bench's kept database, dropped when the test is done with it.
async fn kept_database(recorded: &Recorded) -> TestDb {
    let name = recorded.report.config.database.clone();
    let base = std::env::var("MDTI_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut url = url::Url::parse(&base).expect("a database URL");
    url.set_path(&name);
    let database_url = url.to_string();
    url.set_path("postgres");
    TestDb {
        store: Store::connect(&database_url, 2)
            .await
            .expect("the kept bench database"),
        name,
        url: database_url,
        admin_url: url.to_string(),
    }
}

/// Run a tiny bench with `workers` and check what both modes must report: complete, every
/// observable published, settled and written once, the same count everywhere. Returns the
/// report and the kept database.
async fn tiny_bench(workers: usize) -> (Recorded, TestDb) {
    let json: PathBuf = std::env::temp_dir().join(format!(
        "mdti-bench-test-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let recorded = run_and_record(bench_cmd(workers, &json))
        .await
        .expect("a bench run");
    let report = &recorded.report;
    assert!(report.complete, "incomplete: {:?}", report.error);
    assert_eq!(report.config.workers, workers);
    assert_eq!(report.throughput.published_messages, OBSERVABLES as u64);
    assert_eq!(report.throughput.observables_done, OBSERVABLES as u64);
    let runs = &report.runs;
    assert_eq!(
        runs.enriched + runs.cached + runs.skipped,
        OBSERVABLES as u64
    );
    assert_eq!(report.latency.all.count, OBSERVABLES);
    assert!(report.graph.sim_requests.is_some_and(|n| n > 0));

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&recorded.json).expect("the JSON file"))
            .expect("JSON");
    assert_eq!(written["complete"], true);
    assert_eq!(written["throughput"]["observables_done"], OBSERVABLES);
    let _ = std::fs::remove_file(&json);

    let db = kept_database(&recorded).await;
    db.assert_each_item_once(OBSERVABLES as i64).await;
    (recorded, db)
}

#[tokio::test]
async fn the_in_process_worker_drains_a_tiny_run() {
    let (recorded, _db) = tiny_bench(1).await;
    let report = &recorded.report;

    assert_eq!(report.format, 1);
    assert!(recorded.worker_log.is_none());
    assert_eq!(report.graph.requests_counted_by, "client");
    assert!(report.graph.limiter_wait_s.is_some());
    assert_eq!(report.worker["done"], OBSERVABLES as u64);
    assert!(report.resources.worker_processes.is_empty());
    assert_nothing_left_on_the_broker(&report.config.queue_prefix).await;
}

/// None of the queues and exchanges a run with `prefix` declared (both lanes') is left.
async fn assert_nothing_left_on_the_broker(prefix: &str) {
    let topology = mdti_worker::bench::topology(prefix);
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("a broker connection");
    let passive_queue = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let passive_exchange = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    for queue in topology.queues() {
        // A failed passive declare closes its channel: one channel per look.
        let channel = connection.create_channel().await.expect("a channel");
        let found = channel
            .queue_declare(queue.as_str().into(), passive_queue, FieldTable::default())
            .await;
        assert!(found.is_err(), "queue {queue} was left behind");
    }
    for exchange in topology.exchanges() {
        let channel = connection.create_channel().await.expect("a channel");
        let found = channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                passive_exchange,
                FieldTable::default(),
            )
            .await;
        assert!(found.is_err(), "exchange {exchange} was left behind");
    }
    let _ = connection.close(200, "checked".into()).await;
}

#[tokio::test]
async fn two_worker_processes_drain_a_tiny_run_and_report_each_process() {
    let (recorded, db) = tiny_bench(2).await;
    let report = &recorded.report;

    assert_eq!(report.format, 2);
    // The simulator counts what the workers sent; what only a worker knows is not measured.
    assert_eq!(report.graph.requests_counted_by, "simulator");
    assert_eq!(Some(report.graph.requests), report.graph.sim_requests);
    assert_eq!(report.graph.limiter_wait_s, None);
    assert_eq!(report.graph.hold_wait_s, None);
    assert_eq!(report.graph.retries, None);
    assert_eq!(report.breakdown.limiter_wait_s, None);
    assert_eq!(report.worker["enrichment_runs"], OBSERVABLES as u64);
    assert!(report.table().contains("not measured"));

    let processes = &report.resources.worker_processes;
    assert_eq!(processes.len(), 2);
    assert_ne!(processes[0].pid, processes[1].pid);
    for process in processes {
        assert!(process.peak_rss_mib.is_some_and(|mib| mib > 0.0));
        assert!(process.cpu_s.is_some());
    }
    let summed: f64 = processes.iter().filter_map(|p| p.peak_rss_mib).sum();
    assert_eq!(report.resources.worker_processes_peak_rss_mib, Some(summed));

    // SIGTERM let each worker stop cleanly: it gave its lease back.
    assert_eq!(db.count("worker_leases").await, 0);
    let log = recorded.worker_log.clone().expect("the workers' log");
    assert!(log.exists());
    let _ = std::fs::remove_file(&log);
}

/// `--print-mix` prints the run's input and nothing else, without reaching any service: the
/// same observables, in the same order, as the run would publish.
#[test]
fn print_mix_prints_the_observables_a_run_publishes() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mdti-worker"))
        .args([
            "bench",
            "--observables",
            "300",
            "--seed",
            "7",
            "--print-mix",
        ])
        .env(
            "MDTI_BENCH_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .env("MDTI_BENCH_AMQP_URL", "amqp://nobody@127.0.0.1:1/%2f")
        .output()
        .expect("running mdti-worker bench --print-mix");
    assert!(output.status.success(), "{output:?}");
    let printed: Vec<String> = String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed, mdti_worker::bench::observable_mix(300, 0.8, 7));
}
