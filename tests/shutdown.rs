//! The worker binary under SIGTERM: it stops consuming, finishes or hands back what is in
//! flight, exits within its bound, and a restart finishes the rest: nothing lost, nothing twice.

use std::process::Command;
use std::time::{Duration, Instant};

use mdti_worker::queue::Publisher;

mod support;
use support::harness::{
    delete_topology, fresh_topology, queue_depths, run_binary_until_idle, wait_for_exit,
    worker_binary, AMQP,
};
use support::TestDb;

async fn runs(db: &TestDb) -> i64 {
    db.count("enrichment_runs").await
}

#[tokio::test]
async fn sigterm_under_load_exits_in_bound_and_loses_nothing() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let prefix = topology.prefix.clone();
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

    let mut child = worker_binary(&db, &prefix, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(&db).await < 3 {
        assert!(Instant::now() < deadline, "the worker made no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_for_exit(
        &mut child,
        Duration::from_secs(30),
        "the worker exits within its shutdown bound",
    )
    .await;
    assert!(exit.success(), "exit status {exit}");
    assert_eq!(
        db.count("worker_leases").await,
        0,
        "a worker without --tenant-quota takes no lease"
    );
    let done_at_stop = runs(&db).await;
    assert!(
        done_at_stop < total,
        "the signal came too late to test anything"
    );

    // Everything not done is back in the queue (or its retry queue), none lost.
    let depths = queue_depths(&topology).await;
    let waiting = i64::from(depths.work + depths.retry);
    assert_eq!(
        done_at_stop + waiting,
        total,
        "{done_at_stop} done + {waiting} waiting"
    );

    run_binary_until_idle(&db, &prefix).await;
    assert_eq!(runs(&db).await, total, "every message done exactly once");
    delete_topology(&topology).await;
}
