//! A bug that panics while one message is processed costs that message, not the worker: its
//! delivery goes to the retry queue with reason code `internal_error` (and, after its last
//! attempt, to the dead-letter queue), and the prefetch slot it held serves other messages.

mod support;

use std::time::Duration;

use mdti_worker::queue::Publisher;
use serde_json::json;
use support::harness::{
    delete_topology, drain_dead_letters, fresh_topology, queue_depths, wait_for_exit,
    worker_command,
};
use support::{TestDb, AMQP};

#[tokio::test]
async fn panicking_messages_go_to_the_retry_queue_and_the_others_are_done() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    // More panicking messages than prefetch slots: a leaked delivery per panic would leave the
    // worker taking nothing at all.
    let mut messages = Vec::new();
    for i in 0..6 {
        messages.push((
            format!("bad-{i}"),
            json!({"value": format!("panic-me-{i}.example.com")}),
        ));
    }
    for i in 0..4 {
        messages.push((
            format!("good-{i}"),
            json!({"value": format!("good-{i}.example.com")}),
        ));
    }
    for (id, body) in &messages {
        let body = serde_json::to_vec(body).unwrap();
        publisher
            .publish_observables("test", &body, "application/json", id)
            .await
            .unwrap();
    }

    let mut worker = worker_command(&db, &topology.prefix)
        .args(["--chain", "false", "--concurrency", "2"])
        .args(["--retry-delay", "1s", "--max-deliveries", "2"])
        .args(["--exit-when-idle", "3s"])
        .env("MDTI_FAILPOINTS", "message=panic@panic-me")
        .spawn()
        .expect("the worker binary starts");
    let exit = wait_for_exit(&mut worker, Duration::from_secs(120), "the batch run").await;
    assert!(exit.success(), "{exit}");

    assert_eq!(
        db.query_count("SELECT count(*) FROM enrichment_runs").await,
        4,
        "every good message done"
    );
    let dead = drain_dead_letters(&topology).await;
    assert_eq!(
        dead.len(),
        6,
        "each panicking message dead-lettered after its attempts"
    );
    for letter in &dead {
        assert!(letter.message_id.starts_with("bad-"), "{letter:?}");
        assert_eq!(letter.code, "gave_up");
        assert!(
            letter.reason.contains("internal error") && letter.reason.contains("failpoint"),
            "{}",
            letter.reason
        );
    }
    let depths = queue_depths(&topology).await;
    assert_eq!((depths.work, depths.retry), (0, 0), "nothing left pending");
    let _ = publisher.close().await;
    delete_topology(&topology).await;
}
