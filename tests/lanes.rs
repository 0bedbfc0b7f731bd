//! Lanes: a live message published behind a bulk backlog waits neither for the backlog's
//! prefetch slots nor for its Graph quota. Pinned by order, never by duration: the bulk
//! messages that commit between a live message's publish and its commit are at most those the
//! worker already had in hand.

mod support;

use std::time::Duration;

use mdti_worker::graph::GraphSettings;
use mdti_worker::lane::Lane;
use mdti_worker::queue::{lane_of, Publisher, Topology};
use serde_json::{json, Value};
use support::harness::{
    eventually, fresh_topology, spawn_app, wait_for_exit, worker_command, App, Options, AMQP,
};
use support::TestDb;

/// Bulk messages in the backlog, and observables in each.
const BULK: usize = 16;
const PER_BULK: usize = 4;
const LIVE: usize = 3;
/// Each lane's prefetch in these tests: the bulk messages a worker may hold in hand.
const PREFETCH: u16 = 2;

/// Two Graph requests per observable (whois and reputation, no chaining), so that a bulk
/// message holds eight requests and the backlog takes seconds at 20 requests a second.
fn observables(values: impl IntoIterator<Item = String>) -> Value {
    let items: Vec<Value> = values
        .into_iter()
        .map(|value| json!({"value": value, "enrichers": ["whois", "reputation"], "chain": false}))
        .collect();
    Value::Array(items)
}

fn bulk_body(i: usize) -> Value {
    observables((0..PER_BULK).map(|j| format!("b{i}-{j}.contoso.com")))
}

fn live_body(i: usize) -> Value {
    observables([format!("l{i}.contoso.com")])
}

async fn spawn_slow_app() -> App {
    spawn_app(Options {
        concurrency: PREFETCH,
        graph: |settings| GraphSettings {
            requests_per_second: 20.0,
            burst: 1,
            ..settings
        },
        ..Options::default()
    })
    .await
}

/// The database's clock now: commit times are the database's too.
async fn db_now(db: &TestDb) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(db.store.pool())
        .await
        .unwrap()
}

/// Bulk messages whose results were committed after `after` and no later than the last commit
/// of live message `live`.
async fn bulk_committed_before(
    db: &TestDb,
    live: &str,
    after: chrono::DateTime<chrono::Utc>,
) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT message_id) FROM enrichment_runs \
         WHERE lane = 'bulk' AND created_at > $2 \
           AND created_at <= (SELECT max(created_at) FROM enrichment_runs WHERE message_id = $1)",
    )
    .bind(live)
    .bind(after)
    .fetch_one(db.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn live_messages_published_behind_a_bulk_backlog_are_committed_before_it() {
    let mut app = spawn_slow_app().await;
    for i in 0..BULK {
        app.publish_to(Lane::Bulk, &format!("bulk-{i}"), bulk_body(i))
            .await;
    }
    for i in 0..LIVE {
        app.publish_to(Lane::Live, &format!("live-{i}"), live_body(i))
            .await;
    }
    let published = db_now(&app.db).await;
    let total = (BULK * PER_BULK + LIVE) as i64;
    eventually(
        Duration::from_secs(120),
        "every observable done",
        || async { app.count("SELECT count(*) FROM enrichment_runs").await == total },
    )
    .await;

    for i in 0..LIVE {
        let overtaking = bulk_committed_before(&app.db, &format!("live-{i}"), published).await;
        assert!(
            overtaking <= i64::from(PREFETCH),
            "live-{i} waited for {overtaking} bulk messages, more than the {PREFETCH} in hand"
        );
    }
    let later_bulk = app
        .count(
            "SELECT count(DISTINCT message_id) FROM enrichment_runs WHERE lane = 'bulk' \
             AND created_at > (SELECT max(created_at) FROM enrichment_runs WHERE lane = 'live')",
        )
        .await;
    assert!(
        later_bulk >= (BULK - 2 * usize::from(PREFETCH)) as i64,
        "only {later_bulk} of {BULK} bulk messages came after the live ones"
    );

    // Every output the lanes touch: runs carry their lane, nothing is left or dead.
    assert_eq!(
        app.count("SELECT count(*) FROM enrichment_runs WHERE lane = 'live'")
            .await,
        LIVE as i64
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enrichment_runs WHERE lane = 'live' AND message_id NOT LIKE 'live-%'")
            .await,
        0
    );
    let depths = app.queue_depths().await;
    assert_eq!((depths.work, depths.retry, depths.dead_letter), (0, 0, 0));
    let done = |lane: Lane| {
        app.stats.done_by_lane[lane.index()].load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        (done(Lane::Live), done(Lane::Bulk)),
        (LIVE as u64, BULK as u64)
    );
    let requests = |lane: Lane| app.stats_graph_requests(lane);
    // Two requests per observable, each made in its message's lane.
    assert_eq!(requests(Lane::Live), 2 * LIVE as u64);
    assert_eq!(requests(Lane::Bulk), (2 * BULK * PER_BULK) as u64);
    app.stop_worker().await;
    app.teardown().await;
}

/// A live message retried comes back to the live lane, and a live dead letter replays there.
#[tokio::test]
async fn retries_and_replays_keep_the_lane() {
    let topology = Topology {
        retry_delay: Duration::from_millis(200),
        ..fresh_topology()
    };
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let props = lapin::BasicProperties::default().with_message_id("m-live".into());
    publisher
        .send_to_retry(
            Lane::Live,
            b"l.contoso.com",
            &props,
            2,
            "graph_unavailable",
            "503",
        )
        .await
        .unwrap();
    let live_queue = topology.lane_queue(Lane::Live);
    eventually(
        Duration::from_secs(10),
        "the retry back in the live queue",
        || async { support::harness::ready_in(&live_queue).await == 1 },
    )
    .await;
    assert_eq!(support::harness::ready_in(&topology.work_queue()).await, 0);

    publisher
        .send_to_dead_letter(
            Lane::Live,
            b"l.contoso.com",
            &props,
            5,
            "gave_up",
            "gave up",
        )
        .await
        .unwrap();
    let dlq = mdti_worker::queue::dlq::DeadLetterQueue::connect(AMQP, topology.clone())
        .await
        .unwrap();
    let listed = dlq.list(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].lane, Lane::Live);
    let replayed = dlq
        .replay(&mdti_worker::queue::dlq::ReplayFilter::default())
        .await
        .unwrap();
    assert_eq!(replayed.replayed, 1);
    assert_eq!(support::harness::ready_in(&live_queue).await, 2);
    assert_eq!(support::harness::ready_in(&topology.work_queue()).await, 0);
    dlq.close().await.unwrap();
    publisher.close().await.unwrap();
    support::harness::delete_topology(&topology).await;
    // A dead letter from before lanes (no header) is bulk work.
    assert_eq!(lane_of(&lapin::BasicProperties::default()), Lane::Bulk);
}

/// Two worker processes sharing one tenant quota keep the lanes: each answers the live
/// messages it takes before the bulk messages it has not taken yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sharing_a_tenant_quota_answer_live_messages_before_the_backlog() {
    const WORKERS: usize = 2;
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let publish = |lane: Lane, id: String, body: Value| {
        let publisher = &publisher;
        async move {
            let body = serde_json::to_vec(&body).unwrap();
            publisher
                .publish_observables_to(lane, "test", &body, "application/json", &id)
                .await
                .unwrap();
        }
    };
    for i in 0..BULK {
        publish(Lane::Bulk, format!("bulk-{i}"), bulk_body(i)).await;
    }
    let prefetch = PREFETCH.to_string();
    let mut workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            worker_command(&db, &topology.prefix)
                .args(["--tenant-quota", "20", "--graph-burst", "1"])
                .args(["--heartbeat-interval", "500ms", "--lease-expiry", "3s"])
                .args(["--concurrency", &prefetch, "--live-prefetch", &prefetch])
                .args(["--chain", "false", "--profile-sync-interval", "0"])
                .args(["--exit-when-idle", "3s"])
                .spawn()
                .expect("the worker binary starts")
        })
        .collect();
    // Live work arrives once the fleet is busy with the backlog.
    eventually(Duration::from_secs(60), "the fleet at work", || async {
        db.count("enrichment_runs").await > 0
    })
    .await;
    for i in 0..LIVE {
        publish(Lane::Live, format!("live-{i}"), live_body(i)).await;
    }
    let published = db_now(&db).await;
    for worker in &mut workers {
        let exit = wait_for_exit(worker, Duration::from_secs(180), "the worker going idle").await;
        assert!(exit.success(), "exit status {exit}");
    }

    assert_eq!(
        db.count("enrichment_runs").await,
        (BULK * PER_BULK + LIVE) as i64
    );
    let in_hand = i64::from(PREFETCH) * WORKERS as i64;
    for i in 0..LIVE {
        let overtaking = bulk_committed_before(&db, &format!("live-{i}"), published).await;
        assert!(
            overtaking <= in_hand,
            "live-{i} waited for {overtaking} bulk messages, more than the {in_hand} in hand"
        );
    }
    assert_eq!(db.count("rejected_inputs").await, 0);
    assert_eq!(db.count("worker_leases").await, 0, "every lease given back");
    let depths = support::harness::queue_depths(&topology).await;
    assert_eq!((depths.work, depths.retry, depths.dead_letter), (0, 0, 0));
    publisher.close().await.unwrap();
    support::harness::delete_topology(&topology).await;
}
