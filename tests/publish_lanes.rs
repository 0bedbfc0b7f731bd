//! The `publish` binary's lanes against a real RabbitMQ and Postgres: stdin alone goes to the
//! live lane, a file (alone or with stdin) to the bulk lane, `--lane` overrides both; each run
//! is recorded in the `publications` ledger and ends with the lane's estimate; without Postgres
//! one warning is printed and the publish stands. `status --json` reads the same ledger.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use mdti_worker::lane::Lane;
use mdti_worker::queue::Topology;
use serde_json::Value;

mod support;
use support::{amqp_url, broker_connection, test_topology, with_cleanup, TestDb};

/// Run the binary's `command` (`publish` or `status`) with the test's broker, prefix and
/// `database_url`, feeding it `stdin`.
fn binary(
    command: &str,
    topology: &Topology,
    database_url: &str,
    args: &[&str],
    stdin: &str,
) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mdti-worker"))
        .arg(command)
        .args([
            "--queue-prefix",
            &topology.prefix,
            "--amqp-url",
            &amqp_url(),
        ])
        .args(["--database-url", database_url])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn publish(topology: &Topology, db: &TestDb, args: &[&str], stdin: &str) -> String {
    let mut all = vec!["--no-progress"];
    all.extend(args);
    let output = binary("publish", topology, &db.url, &all, stdin);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "publish {args:?}: {stderr}");
    stderr
}

/// Messages ready in each lane's work queue: (live, bulk).
async fn ready(topology: &Topology) -> (u32, u32) {
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut counts = [0; 2];
    for lane in Lane::ALL {
        counts[lane.index()] = channel
            .queue_declare(
                topology.lane_queue(lane).as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
    }
    let _ = connection.close(200, "done".into()).await;
    (counts[Lane::Live.index()], counts[Lane::Bulk.index()])
}

/// A file of `values`, one a line, removed when dropped.
struct InputFile(std::path::PathBuf);

impl InputFile {
    fn new(values: &[&str]) -> InputFile {
        let path = std::env::temp_dir().join(format!("iocs-{}.txt", uuid::Uuid::new_v4()));
        std::fs::write(&path, values.join("\n")).unwrap();
        InputFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for InputFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The estimate line `publish` ends with, for `lane`.
fn estimate<'a>(stderr: &'a str, lane: &str) -> &'a str {
    stderr
        .lines()
        .find(|line| line.starts_with(&format!("{lane} lane: ")))
        .unwrap_or_else(|| panic!("no {lane} estimate in:\n{stderr}"))
}

#[tokio::test]
async fn stdin_goes_live_files_go_bulk_and_the_flag_decides_over_both() {
    let db = TestDb::new().await;
    let topology = test_topology();
    let file = InputFile::new(&["evil[.]com", "9.9.9.9", "1.1.1.1"]);
    with_cleanup(&[&topology], async {
        let stderr = publish(&topology, &db, &[], "8.8.8.8\n8.8.4.4\n");
        assert_eq!(ready(&topology).await, (1, 0), "stdin alone: live");
        assert!(stderr.contains("published 2 in 1 message(s)"), "{stderr}");
        assert_eq!(
            estimate(&stderr, "live"),
            "live lane: 1 message waiting; no rate measured yet"
        );

        publish(&topology, &db, &[file.path()], "");
        assert_eq!(ready(&topology).await, (1, 1), "a file: bulk");
        publish(&topology, &db, &[file.path(), "-"], "4.4.4.4\n");
        assert_eq!(ready(&topology).await, (1, 2), "a file and stdin: bulk");
        publish(&topology, &db, &["--lane", "bulk"], "5.5.5.5\n");
        assert_eq!(ready(&topology).await, (1, 3), "--lane bulk over stdin");
        let stderr = publish(
            &topology,
            &db,
            &["--lane", "live", "--source", "feed-x", file.path()],
            "",
        );
        assert_eq!(ready(&topology).await, (2, 3), "--lane live over a file");
        assert_eq!(
            estimate(&stderr, "live"),
            "live lane: 2 messages waiting; no rate measured yet"
        );

        let ledger: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT source, lane, observables, messages FROM publications ORDER BY id",
        )
        .fetch_all(db.store.pool())
        .await
        .unwrap();
        let row = |source: &str, lane: &str, observables: i64| {
            (source.to_owned(), lane.to_owned(), observables, 1_i64)
        };
        assert_eq!(
            ledger,
            [
                row("publish", "live", 2),
                row("publish", "bulk", 3),
                row("publish", "bulk", 4),
                row("publish", "bulk", 1),
                row("feed-x", "live", 3),
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn without_postgres_publish_warns_once_and_the_messages_are_sent() {
    let db = TestDb::new().await;
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let started = Instant::now();
        let output = binary(
            "publish",
            &topology,
            "postgres://postgres@127.0.0.1:1/none",
            &["--no-progress"],
            "8.8.8.8\n",
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .collect();
        assert_eq!(warnings.len(), 1, "{stderr}");
        assert!(
            warnings[0].contains("publications ledger was not updated"),
            "{stderr}"
        );
        assert_eq!(
            estimate(&stderr, "live"),
            "live lane: 1 message waiting; no rate (Postgres is missing)"
        );
        assert_eq!(ready(&topology).await, (1, 0));
        assert_eq!(db.count("publications").await, 0);
    })
    .await;
}

#[tokio::test]
async fn status_reads_what_publish_recorded() {
    let db = TestDb::new().await;
    let topology = test_topology();
    let file = InputFile::new(&["evil[.]com", "9.9.9.9", "1.1.1.1"]);
    with_cleanup(&[&topology], async {
        publish(&topology, &db, &["--source", "feed-x", file.path()], "");
        let output = binary(
            "status",
            &topology,
            &db.url,
            &["--json", "--window", "10m"],
            "",
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        let status: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(status["window_seconds"], 600.0);
        let bulk = &status["lanes"][1];
        assert_eq!(bulk["lane"], "bulk");
        assert_eq!(bulk["ready_messages"], 1);
        let feed = &bulk["sources"][0];
        assert_eq!(feed["source"], "feed-x");
        assert_eq!(feed["ledger"]["published"], 3);
        assert_eq!(feed["ledger"]["waiting"], 3);
        assert!(feed["eta_seconds"].is_null(), "no worker, no rate: {feed}");

        let output = binary("status", &topology, &db.url, &[], "");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(stdout.contains("bulk lane by source"), "{stdout}");
        assert!(
            stdout.contains("bulk lane: 1 message waiting; no rate measured yet"),
            "{stdout}"
        );
    })
    .await;
}
