//! A service every message needs, down for everybody: the worker stops taking messages instead
//! of spending their attempts, says why, and finishes everything once the service is back.
//! Attempts count failures of the message, not of the infrastructure.

mod support;

use std::time::Duration;

use mdti_worker::consumer::WorkerStats;
use serde_json::json;
use support::eventually;
use support::harness::{spawn_app, App, Options};

const MESSAGES: usize = 12;
const MAX_DELIVERIES: u32 = 2;

async fn publish_backlog(app: &App, tag: &str) {
    for i in 0..MESSAGES {
        app.publish(
            &format!("{tag}-{i}"),
            json!({"value": format!("host{i}.{tag}-outage.com")}),
        )
        .await;
    }
}

/// The outage lasts longer than the messages' attempts would: each delivery waits out the pool
/// timeout (5 s) and the retry delay (1 s), so two deliveries take about 12 s.
const OUTAGE: Duration = Duration::from_secs(25);

async fn assert_all_done_and_none_dead(app: &App) {
    eventually(Duration::from_secs(120), "every message done", || async {
        app.stats.done() >= MESSAGES as u64 && app.queue_depths().await.work == 0
    })
    .await;
    assert_eq!(
        app.drain_dead_letters().await.len(),
        0,
        "no message was dead-lettered"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM rejected_inputs").await,
        0,
        "nothing gave up"
    );
    app.db.assert_each_item_once(MESSAGES as i64).await;
    assert!(app.stats.pause().is_none(), "consumption resumed");
}

#[tokio::test]
async fn postgres_down_longer_than_the_attempts_last_dead_letters_nothing() {
    let app = spawn_app(Options {
        through_relay: true,
        max_deliveries: MAX_DELIVERIES,
        ..Options::default()
    })
    .await;
    app.relay.as_ref().unwrap().cut();
    publish_backlog(&app, "pg").await;

    eventually(Duration::from_secs(60), "consumption paused", || async {
        app.stats.pause().is_some()
    })
    .await;
    tokio::time::sleep(OUTAGE).await;
    let pause = app
        .stats
        .pause()
        .expect("still paused while Postgres is down");
    assert_eq!(pause.dependency.as_str(), "postgres");
    assert!(
        !WorkerStats::is(&app.stats.consuming),
        "no deliveries taken while paused"
    );
    assert!(WorkerStats::get(&app.stats.suspended) >= 1);
    assert_eq!(
        WorkerStats::get(&app.stats.retried) + WorkerStats::get(&app.stats.dead_lettered),
        0,
        "no attempt was spent on the outage"
    );

    app.relay.as_ref().unwrap().restore();
    assert_all_done_and_none_dead(&app).await;
    assert!(app.stats.paused_seconds() > 0.0);
    app.teardown().await;
}

#[tokio::test]
async fn graph_failing_every_request_dead_letters_nothing() {
    let app = spawn_app(Options {
        max_deliveries: MAX_DELIVERIES,
        graph_attempts: 2,
        ..Options::default()
    })
    .await;
    app.sim.control().set_fail_all(Some(503));
    publish_backlog(&app, "graph").await;

    eventually(Duration::from_secs(60), "consumption paused", || async {
        app.stats.pause().is_some()
    })
    .await;
    tokio::time::sleep(OUTAGE).await;
    let pause = app.stats.pause().expect("still paused while Graph fails");
    assert_eq!(pause.dependency.as_str(), "graph");
    assert_eq!(
        WorkerStats::get(&app.stats.retried) + WorkerStats::get(&app.stats.dead_lettered),
        0,
        "no attempt was spent on the outage"
    );

    app.sim.control().set_fail_all(None);
    assert_all_done_and_none_dead(&app).await;
    app.teardown().await;
}

#[tokio::test]
async fn a_graph_failure_of_one_message_while_graph_serves_counts_its_attempts() {
    let app = spawn_app(Options {
        max_deliveries: MAX_DELIVERIES,
        graph_attempts: 2,
        ..Options::default()
    })
    .await;
    // Only this host's reputation fails; the probe's answers.
    app.sim
        .control()
        .fail_path("hosts/sick.example.com/reputation", Some(503));
    app.publish(
        "sick",
        json!({"value": "sick.example.com", "enrichers": ["reputation"]}),
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the message dead-lettered",
        || async { WorkerStats::get(&app.stats.dead_lettered) == 1 },
    )
    .await;
    let dead = app.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].code, "gave_up");
    assert!(app.stats.pause().is_none(), "Graph serves: no pause");
    assert_eq!(WorkerStats::get(&app.stats.retried), 1);
    app.teardown().await;
}
