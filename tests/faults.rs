//! Faults under load, against the real RabbitMQ and Postgres: the worker killed outright, its
//! Postgres sessions ended again and again, its broker connection closed by the broker, and a
//! Graph that errs, stalls, cuts answers short and throttles in bursts. Each test is bounded in
//! time and ends by checking that nothing was lost and nothing was written twice.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use mdti_worker::consumer::WorkerStats;
use mdti_worker::graph::GraphSettings;
use mdti_worker::queue::{Publisher, Topology};
use mdti_worker::sim::SimConfig;

mod support;
use support::harness::{
    delete_topology, eventually, fresh_topology, queue_depths, run_binary_until_idle, spawn_app,
    wait_for_exit, worker_binary, App, EventsTap, Options, QueueDepths, AMQP,
    WORKER_APPLICATION_NAME,
};
use support::TestDb;

const EMPTY: QueueDepths = QueueDepths {
    work: 0,
    retry: 0,
    dead_letter: 0,
};

/// `n` messages of one observable each: ids `{tag}-{i}`, values `host{i}.{tag}-fault.com`.
fn load(tag: &str, n: usize) -> Vec<(String, Vec<u8>, String, String)> {
    (0..n)
        .map(|i| {
            (
                "test".to_owned(),
                format!("{{\"value\": \"host{i}.{tag}-fault.com\"}}").into_bytes(),
                "application/json".to_owned(),
                format!("{tag}-{i}"),
            )
        })
        .collect()
}

async fn publish_load(publisher: &Publisher, tag: &str, n: usize) {
    publisher.publish_batch(load(tag, n)).await.unwrap();
}

async fn runs(db: &TestDb) -> i64 {
    db.count("enrichment_runs").await
}

#[tokio::test]
async fn a_worker_killed_mid_run_and_restarted_finishes_everything_once() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let total = 40;
    publish_load(&publisher, "sigkill", total).await;

    let mut child = worker_binary(&db, &topology.prefix, &[]);
    eventually(Duration::from_secs(60), "some progress", || async {
        runs(&db).await >= 3
    })
    .await;
    // SIGKILL: no shutdown path runs; the broker learns of it only from the closed socket.
    child.kill().unwrap();
    let exit = wait_for_exit(&mut child, Duration::from_secs(10), "the killed worker").await;
    assert_eq!(exit.signal(), Some(9), "{exit}");
    let done_at_kill = runs(&db).await;
    assert!(
        done_at_kill < total as i64,
        "the kill came too late to test anything"
    );

    run_binary_until_idle(&db, &topology.prefix).await;
    db.assert_each_item_once(total as i64).await;
    assert_eq!(db.count("observables").await, total as i64);
    assert_eq!(db.count("rejected_inputs").await, 0);
    assert_eq!(queue_depths(&topology).await, EMPTY);
    delete_topology(&topology).await;
}

/// End every Postgres session the in-process worker has open; how many were ended.
async fn end_worker_sessions(app: &App) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = $2",
    )
    .bind(&app.db.name)
    .bind(WORKER_APPLICATION_NAME)
    .fetch_one(app.db.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn postgres_sessions_ended_again_and_again_lose_nothing_and_write_once() {
    let app = spawn_app(Options {
        max_deliveries: 100,
        // Each message commits as it finishes, so that the sessions ended meet writes in
        // progress; with a linger the writers mostly wait, holding no session.
        bulk_commit_linger: Duration::ZERO,
        ..Options::default()
    })
    .await;
    app.sim.control().set_latency(Duration::from_millis(20));
    let events = EventsTap::bind(&app.topology).await;
    let total = 40;
    publish_load(&app.publisher, "pgterm", total).await;

    let mut ended = 0;
    for _ in 0..300 {
        if runs(&app.db).await == total as i64 {
            break;
        }
        ended += end_worker_sessions(&app).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended > 0, "no worker session was ever ended");
    eventually(Duration::from_secs(120), "every message done", || async {
        runs(&app.db).await == total as i64 && app.queue_depths().await == EMPTY
    })
    .await;
    assert!(
        WorkerStats::get(&app.stats.retried) > 0,
        "{ended} sessions ended but no message was ever retried"
    );
    assert_eq!(WorkerStats::get(&app.stats.dead_lettered), 0);
    app.db.assert_each_item_once(total as i64).await;
    assert_eq!(app.db.count("observables").await, total as i64);
    assert_eq!(app.db.count("rejected_inputs").await, 0);
    let hits = events.assert_app_announced(&app).await;
    assert!(hits > 0, "the load finds actor hits");
    events.close().await;
    app.teardown().await;
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Rows of a `rabbitmqctl list_*` listing, TAB-separated columns.
fn listing(what: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec![what, "--no-table-headers", "--quiet"];
    args.extend_from_slice(columns);
    rabbitmqctl(&args)
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

/// The broker connection (its Erlang pid, what `close_connection` takes) consuming from this
/// topology's work queue, found through its consumer and channel: only this test's worker, never
/// another test's connection.
fn consumer_connection(topology: &Topology) -> Option<String> {
    let queue = topology.work_queue();
    let channel = listing("list_consumers", &["queue_name", "channel_pid"])
        .into_iter()
        .find(|row| row.first() == Some(&queue))?
        .get(1)?
        .clone();
    listing("list_channels", &["pid", "connection"])
        .into_iter()
        .find(|row| row.first() == Some(&channel))?
        .get(1)
        .cloned()
}

#[tokio::test]
async fn broker_connections_closed_under_load_are_rebuilt_and_nothing_is_lost() {
    // Graph at 40 requests a second keeps messages in flight while the connection is closed.
    let app = spawn_app(Options {
        graph: |settings| GraphSettings {
            requests_per_second: 40.0,
            burst: 5,
            ..settings
        },
        ..Options::default()
    })
    .await;
    let events = EventsTap::bind(&app.topology).await;
    let total = 40;
    publish_load(&app.publisher, "amqpclose", total).await;

    let closes = 3;
    for close in 0..closes {
        let progress = 2 + 4 * close as i64;
        eventually(
            Duration::from_secs(60),
            "progress before a close",
            || async { runs(&app.db).await >= progress },
        )
        .await;
        let mut connection = None;
        eventually(Duration::from_secs(30), "the worker consuming", || {
            connection = consumer_connection(&app.topology);
            std::future::ready(connection.is_some())
        })
        .await;
        let connection = connection.unwrap();
        assert!(
            runs(&app.db).await < total as i64,
            "the close came too late to test anything"
        );
        rabbitmqctl(&["close_connection", &connection, "fault test"]);
        eventually(Duration::from_secs(30), "the worker noticing", || async {
            WorkerStats::get(&app.stats.reconnects) > close
        })
        .await;
    }
    eventually(Duration::from_secs(180), "every message done", || async {
        runs(&app.db).await == total as i64 && app.queue_depths().await == EMPTY
    })
    .await;
    assert_eq!(WorkerStats::get(&app.stats.reconnects), closes);
    assert_eq!(WorkerStats::get(&app.stats.dead_lettered), 0);
    app.db.assert_each_item_once(total as i64).await;
    assert_eq!(app.db.count("observables").await, total as i64);
    let hits = events.assert_app_announced(&app).await;
    assert!(hits > 0, "the load finds actor hits");
    events.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_chaotic_graph_leaves_every_message_done_or_dead_lettered_with_a_reason() {
    let app = spawn_app(Options {
        // Few attempts, so that some messages run out of them and are dead-lettered.
        graph_attempts: 2,
        max_deliveries: 2,
        sim: SimConfig {
            error_ratio: 0.15,
            slow_ratio: 0.05,
            // Slower than the client waits.
            slow_latency: Duration::from_secs(2),
            truncate_ratio: 0.05,
            seed: 7,
            ..SimConfig::default()
        },
        graph: |settings| GraphSettings {
            request_timeout: Duration::from_millis(500),
            ..settings
        },
        ..Options::default()
    })
    .await;
    let events = EventsTap::bind(&app.topology).await;
    let total = 40;
    publish_load(&app.publisher, "chaos", total).await;

    // Bursts of 429 while the work goes on; then wait for the queues to settle.
    for _ in 0..5 {
        app.sim.control().inject_429(20, Duration::from_millis(200));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let done_messages = "SELECT count(DISTINCT message_id) FROM enrichment_runs";
    let gave_up = "SELECT count(*) FROM rejected_inputs WHERE code = 'gave_up'";
    eventually(
        Duration::from_secs(300),
        "every message done or dead-lettered",
        || async {
            let depths = app.queue_depths().await;
            depths.work == 0
                && depths.retry == 0
                && app.count(done_messages).await + app.count(gave_up).await == total as i64
        },
    )
    .await;

    for counter in ["errors", "throttled", "slow", "truncated"] {
        assert!(app.sim.count(counter) > 0, "the simulator never {counter}");
    }
    let done = app.count(done_messages).await;
    let dead = app.count(gave_up).await;
    assert_eq!(
        done + dead,
        total as i64,
        "{done} done + {dead} dead-lettered"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM rejected_inputs r WHERE EXISTS \
             (SELECT 1 FROM enrichment_runs e WHERE e.message_id = r.message_id)"
        )
        .await,
        0,
        "no message both done and dead-lettered"
    );
    app.db.assert_each_item_once(done).await;
    let letters = app.drain_dead_letters().await;
    assert_eq!(letters.len() as i64, dead);
    for letter in &letters {
        assert_eq!(letter.code, "gave_up", "{letter:?}");
        assert!(
            letter.reason.starts_with("gave up after 2 deliveries: "),
            "{}",
            letter.reason
        );
    }
    assert_eq!(app.queue_depths().await, EMPTY);
    events.assert_app_announced(&app).await;
    events.close().await;
    app.teardown().await;
}
