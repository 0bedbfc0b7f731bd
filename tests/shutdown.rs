//! The worker binary under SIGTERM: it stops consuming, finishes or hands back what is in
//! flight, exits within its bound, and a restart finishes the rest: nothing lost, nothing twice.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mdti_worker::queue::{Publisher, Topology};

mod support;
use support::{delete_topology, TestDb, AMQP};

fn worker(db: &TestDb, prefix: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mdti-worker"))
        .args([
            "worker",
            "--simulator",
            "--migrate",
            "--queue-prefix",
            prefix,
        ])
        .args(["--database-url", &db.url, "--amqp-url", AMQP])
        // Slow enough that messages are in flight when the signal comes.
        .args([
            "--graph-rate",
            "40",
            "--graph-burst",
            "1",
            "--concurrency",
            "4",
        ])
        .args(["--chain", "false", "--shutdown-timeout", "15s"])
        // Any free port: a fixed one could be taken on a shared machine.
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the worker binary starts")
}

async fn runs(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM enrichment_runs")
        .fetch_one(db.store.pool())
        .await
        .unwrap_or(0)
}

#[tokio::test]
async fn sigterm_under_load_exits_in_bound_and_loses_nothing() {
    let db = TestDb::new().await;
    let prefix = format!("t-{}", uuid::Uuid::new_v4().simple());
    let topology = Topology {
        prefix: prefix.clone(),
        retry_delay: Duration::from_secs(1),
    };
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let total = 40;
    let batch = (0..total)
        .map(|i| {
            (
                "test".to_owned(),
                format!("{{\"value\": \"host{i}.shutdown-test.com\"}}").into_bytes(),
                "application/json".to_owned(),
                format!("sigterm-{i}"),
            )
        })
        .collect();
    publisher.publish_batch(batch).await.unwrap();

    let mut child = worker(&db, &prefix, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(&db).await < 3 {
        assert!(Instant::now() < deadline, "the worker made no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        db.count("worker_leases").await,
        0,
        "a worker without --tenant-quota takes no lease"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "the worker did not exit within its shutdown bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    let done_at_stop = runs(&db).await;
    assert!(
        done_at_stop < total,
        "the signal came too late to test anything"
    );

    // Everything not done is back in the queue (or its retry queue), none lost.
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut waiting = 0;
    for queue in [topology.work_queue(), topology.retry_queue()] {
        waiting += channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count() as i64;
    }
    assert_eq!(
        done_at_stop + waiting,
        total,
        "{done_at_stop} done + {waiting} waiting"
    );

    let mut restarted = worker(&db, &prefix, &["--exit-when-idle", "2s"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let exit = loop {
        if let Some(exit) = restarted.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted worker never went idle"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exit.success());
    assert_eq!(runs(&db).await, total, "every message done exactly once");

    let _ = connection.close(200, "done".into()).await;
    delete_topology(&topology).await;
}
