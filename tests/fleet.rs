//! Several workers sharing one tenant's Graph quota through leases in Postgres: the shares
//! follow the live workers (join, clean leave, kill), one worker's 429 holds them all back, and
//! real worker processes draining one queue under a tenant quota stay within it and write every
//! result once.

use std::time::Duration;

use mdti_worker::fleet::{Coordinator, FleetSettings, Share, WorkerProcesses};
use mdti_worker::graph::GraphClient;
use mdti_worker::queue::{Publisher, Topology};
use mdti_worker::sim::{self, SimConfig, SimHandle};
use tokio::sync::watch;
use tokio::time::Instant;

mod support;
use support::{delete_topology, eventually, graph_settings, TestDb, AMQP};

const QUOTA: f64 = 30.0;

fn settings(lease_expiry: Duration) -> FleetSettings {
    FleetSettings {
        tenant_id: "sim-tenant".into(),
        tenant_quota: QUOTA,
        tenant_burst: 9,
        heartbeat_interval: Duration::from_millis(200),
        lease_expiry,
    }
}

/// A worker's coordinator with a Graph client of its own (each worker process has one).
async fn join(db: &TestDb, sim: &SimHandle, lease_expiry: Duration) -> Coordinator {
    let graph = GraphClient::new(graph_settings(sim)).expect("a Graph client");
    Coordinator::join(db.store.clone(), graph, settings(lease_expiry))
        .await
        .expect("join the fleet")
}

async fn beat(coordinators: &[&Coordinator]) -> Vec<Share> {
    let mut shares = Vec::new();
    for coordinator in coordinators {
        shares.push(coordinator.heartbeat().await.expect("a heartbeat"));
    }
    shares
}

fn rates(shares: &[Share]) -> Vec<f64> {
    shares.iter().map(|s| s.requests_per_second).collect()
}

/// Heartbeat every coordinator, round after round, until each took `rate`, at most `rounds`
/// rounds; returns the last round's shares.
async fn beat_until(coordinators: &[&Coordinator], rate: f64, rounds: usize) -> Vec<Share> {
    let mut shares = Vec::new();
    for _ in 0..rounds {
        shares = beat(coordinators).await;
        if rates(&shares).iter().all(|r| *r == rate) {
            break;
        }
    }
    shares
}

/// A test database and a simulator for coordinators that stay in this process. Leases expire
/// after a minute: never between two heartbeats of these tests (a kill is simulated by ageing
/// a lease in the database instead of waiting).
async fn in_process_fleet() -> (TestDb, SimHandle, Duration) {
    let db = TestDb::new().await;
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    (db, sim, Duration::from_secs(60))
}

#[tokio::test]
async fn shares_follow_the_live_workers_through_a_join_a_clean_leave_and_a_kill() {
    let (db, sim, expiry) = in_process_fleet().await;

    let a = join(&db, &sim, expiry).await;
    let b = join(&db, &sim, expiry).await;
    let c = join(&db, &sim, expiry).await;
    // Joiners start below their third until the ones before them give theirs up; one round of
    // heartbeats settles it.
    let shares = beat(&[&a, &b, &c]).await;
    assert_eq!(rates(&shares), vec![QUOTA / 3.0; 3]);
    assert!(shares.iter().all(|s| s.live_workers == 3 && s.burst == 3));
    assert_eq!(a.graph().throttle().rate(), (QUOTA / 3.0, 3));
    assert_eq!(
        db.query_count("SELECT count(*) FROM worker_leases WHERE share = 10 AND live_workers = 3")
            .await,
        3
    );

    // A clean leave deletes the lease; the others reach half within two heartbeats.
    c.leave().await.unwrap();
    assert_eq!(db.count("worker_leases").await, 2);
    let shares = beat_until(&[&a, &b], QUOTA / 2.0, 2).await;
    assert_eq!(rates(&shares), vec![QUOTA / 2.0; 2]);

    // A third joins again, then is killed: it stops heartbeating but its lease stays.
    let d = join(&db, &sim, expiry).await;
    let killed = d.lease_id();
    drop(d);
    let shares = beat(&[&a, &b]).await;
    assert_eq!(
        rates(&shares),
        vec![QUOTA / 3.0; 2],
        "its lease still counts"
    );

    // Once its lease is older than the expiry (by the database's clock), it no longer counts,
    // the next heartbeat deletes it, and the two move to half.
    sqlx::query(
        "UPDATE worker_leases SET heartbeat_at = now() - interval '61 seconds' WHERE id = $1",
    )
    .bind(killed)
    .execute(db.store.pool())
    .await
    .unwrap();
    let shares = beat_until(&[&a, &b], QUOTA / 2.0, 2).await;
    assert_eq!(rates(&shares), vec![QUOTA / 2.0; 2]);
    assert_eq!(
        db.count("worker_leases").await,
        2,
        "the expired lease is gone"
    );

    a.leave().await.unwrap();
    b.leave().await.unwrap();
    assert_eq!(db.count("worker_leases").await, 0);
}

#[tokio::test]
async fn a_429_seen_by_one_worker_holds_back_the_others() {
    let (db, sim, expiry) = in_process_fleet().await;
    let throttled = join(&db, &sim, expiry).await;
    let other = join(&db, &sim, expiry).await;
    assert_eq!(other.graph().throttle().held_until(), None);

    // Recorded directly: the other worker holds back from its next heartbeat on.
    throttled
        .share_throttle(Duration::from_secs(120))
        .await
        .unwrap();
    let until = |db: &TestDb| {
        let pool = db.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT throttled_until FROM tenant_quotas WHERE tenant_id = 'sim-tenant'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let recorded = until(&db).await;
    other.heartbeat().await.unwrap();
    let held = other
        .graph()
        .throttle()
        .held_until()
        .expect("the other worker holds back");
    assert!(held > Instant::now() + Duration::from_secs(60));

    // A shorter throttle seen later never shortens the tenant's hold.
    other.share_throttle(Duration::from_secs(1)).await.unwrap();
    assert_eq!(until(&db).await, recorded);

    throttled.leave().await.unwrap();
    other.leave().await.unwrap();
}

/// The tenant's learnt rate as recorded, if any.
async fn learnt_rate(db: &TestDb) -> Option<f64> {
    sqlx::query_scalar::<_, Option<f64>>(
        "SELECT learnt_rate FROM tenant_quotas WHERE tenant_id = 'sim-tenant'",
    )
    .fetch_optional(db.store.pool())
    .await
    .unwrap()
    .flatten()
}

#[tokio::test]
async fn one_workers_429_cuts_the_tenants_rate_and_every_share_follows_it() {
    let (db, sim, expiry) = in_process_fleet().await;
    let throttled = join(&db, &sim, expiry).await;
    let other = join(&db, &sim, expiry).await;
    beat_until(&[&throttled, &other], QUOTA / 2.0, 2).await;
    assert_eq!(learnt_rate(&db).await, None, "nothing learnt before a 429");

    throttled
        .share_throttle(Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(learnt_rate(&db).await, Some(QUOTA * 0.9));
    // The same overshoot seen by the other worker within the second cuts nothing more.
    other
        .share_throttle(Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(learnt_rate(&db).await, Some(QUOTA * 0.9));

    let shares = beat_until(&[&throttled, &other], QUOTA * 0.9 / 2.0, 3).await;
    assert_eq!(rates(&shares), vec![QUOTA * 0.9 / 2.0; 2]);
    let learnt = other.graph().throttle().learnt();
    assert_eq!(learnt.ceiling, QUOTA * 0.9 / 2.0);
    assert_eq!(learnt.requests_per_second, QUOTA * 0.9 / 2.0);

    throttled.leave().await.unwrap();
    other.leave().await.unwrap();
}

#[tokio::test]
async fn the_tenants_rate_grows_back_when_a_worker_waits_at_its_share() {
    let (db, sim, expiry) = in_process_fleet().await;
    let worker = join(&db, &sim, expiry).await;
    worker
        .share_throttle(Duration::from_millis(10))
        .await
        .unwrap();
    worker.heartbeat().await.unwrap();
    let cut_to = learnt_rate(&db).await.expect("a learnt rate");

    // More requests than its share lets through at once: they wait at the ceiling.
    let graph = worker.graph().clone();
    let asking: Vec<_> = (0..40)
        .map(|i| {
            let graph = graph.clone();
            tokio::spawn(async move { graph.whois(&format!("h{i}.contoso.com")).await })
        })
        .collect();
    for task in asking {
        task.await.unwrap().unwrap();
    }
    worker.heartbeat().await.unwrap();
    let grown = learnt_rate(&db).await.expect("a learnt rate");
    assert!(grown > cut_to, "{grown} after {cut_to}");
    assert!(grown <= QUOTA);
    worker.leave().await.unwrap();
}

#[tokio::test]
async fn a_429_reaches_the_other_workers_at_once_not_at_their_next_heartbeat() {
    let (db, sim, _) = in_process_fleet().await;
    // Heartbeats a minute apart: whatever the other worker learns within seconds, it did not
    // learn from one.
    let slow = FleetSettings {
        heartbeat_interval: Duration::from_secs(60),
        ..settings(Duration::from_secs(300))
    };
    let throttled_graph = GraphClient::new(graph_settings(&sim)).unwrap();
    let throttled = Coordinator::join(db.store.clone(), throttled_graph.clone(), slow.clone())
        .await
        .unwrap();
    let other_graph = GraphClient::new(graph_settings(&sim)).unwrap();
    let other = Coordinator::join(db.store.clone(), other_graph.clone(), slow)
        .await
        .unwrap();
    let shares = beat_until(&[&throttled, &other], QUOTA / 2.0, 3).await;
    assert_eq!(rates(&shares), [QUOTA / 2.0, QUOTA / 2.0]);
    let share = other_graph.throttle().learnt().ceiling;
    let (stop, stopping) = watch::channel(false);
    let running = [
        tokio::spawn(throttled.run(stopping.clone())),
        tokio::spawn(other.run(stopping)),
    ];

    // Graph answers the first worker's request with a 429 asking for two minutes.
    sim.control().inject_429(1, Duration::from_secs(120));
    let request = tokio::spawn(async move { throttled_graph.host("contoso.com").await });
    eventually(
        Duration::from_secs(10),
        "the other worker holds back",
        || {
            let held = other_graph.throttle().held_until();
            async move { held.is_some() }
        },
    )
    .await;
    assert_eq!(sim.count("throttled"), 1);
    assert!(
        other_graph.throttle().held_until().unwrap() > Instant::now() + Duration::from_secs(60)
    );
    assert!(
        other_graph.throttle().learnt().ceiling < share,
        "the tenant's cut rate is the other worker's too"
    );
    request.abort();

    // Stopping gives both leases back.
    stop.send(true).unwrap();
    for task in running {
        task.await.unwrap();
    }
    assert_eq!(db.count("worker_leases").await, 0);
}

/// The worker binary's arguments for a fleet sharing `QUOTA` on `sim`.
fn fleet_args(db: &TestDb, sim: &SimHandle, prefix: &str) -> Vec<String> {
    [
        "--graph-url",
        &sim.graph_base_url(),
        "--login-url",
        &sim.login_base_url(),
        "--tenant-id",
        "sim-tenant",
        "--client-id",
        "sim-client",
        "--client-secret",
        "sim-secret",
        "--database-url",
        &db.url,
        "--amqp-url",
        AMQP,
        "--queue-prefix",
        prefix,
        "--retry-delay",
        "1s",
        "--chain",
        "false",
        "--profile-sync-interval",
        "0",
        // Three workers on one host: each its own free port.
        "--metrics-listen",
        "127.0.0.1:0",
        "--tenant-quota",
        &QUOTA.to_string(),
        "--heartbeat-interval",
        "500ms",
        "--lease-expiry",
        "3s",
        "--exit-when-idle",
        "3s",
        // A small prefetch spreads the batch over all three, and a short linger commits soon:
        // with the defaults (16 in hand, 4 s), two workers can take every message while the
        // third, holding none, idles out before the first batch has lingered to its commit.
        "--concurrency",
        "4",
        "--bulk-commit-linger",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Batch {
    db: TestDb,
    sim: SimHandle,
    topology: Topology,
    messages: i64,
}

/// A database, a simulator enforcing the tenant quota (429 beyond it) and `messages` messages of
/// one observable each waiting in their own queue.
async fn batch(messages: i64) -> Batch {
    let db = TestDb::new().await;
    let sim = sim::spawn(SimConfig {
        rate_limit: Some(QUOTA),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let topology = Topology {
        prefix: format!("t-{}", uuid::Uuid::new_v4().simple()),
        retry_delay: Duration::from_secs(1),
    };
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let bodies = (0..messages)
        .map(|i| {
            (
                "test".to_owned(),
                format!("{{\"value\": \"host{i}.fleet-test.com\"}}").into_bytes(),
                "application/json".to_owned(),
                format!("fleet-{i}"),
            )
        })
        .collect();
    publisher.publish_batch(bodies).await.unwrap();
    Batch {
        db,
        sim,
        topology,
        messages,
    }
}

impl Batch {
    /// `count` worker binaries sharing the tenant quota on this batch's queue.
    fn start_workers(&self, count: usize) -> WorkerProcesses {
        WorkerProcesses::spawn(
            std::path::Path::new(env!("CARGO_BIN_EXE_mdti-worker")),
            count,
            fleet_args(&self.db, &self.sim, &self.topology.prefix),
            false,
        )
        .expect("the worker binary starts")
    }

    async fn runs(&self) -> i64 {
        self.db.count("enrichment_runs").await
    }

    /// Every message has exactly one run, none was rejected or dead-lettered.
    async fn assert_each_result_written_once(&self) {
        assert_eq!(self.runs().await, self.messages);
        assert_eq!(
            self.db
                .query_count("SELECT count(DISTINCT message_id) FROM enrichment_runs")
                .await,
            self.messages
        );
        assert_eq!(self.db.count("rejected_inputs").await, 0);
        assert_eq!(
            self.db
                .query_count("SELECT count(*) FROM observables WHERE last_enriched_at IS NOT NULL")
                .await,
            self.messages
        );
    }

    async fn teardown(self) {
        delete_topology(&self.topology).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_share_the_quota_without_a_429_and_write_each_result_once() {
    let batch = batch(30).await;
    let workers = batch.start_workers(3);

    eventually(
        Duration::from_secs(30),
        "three leases each at a third of the quota",
        || async {
            batch
                .db
                .query_count(
                    "SELECT count(*) FROM worker_leases WHERE share = 10 AND live_workers = 3",
                )
                .await
                == 3
        },
    )
    .await;
    let statuses = workers.wait(Duration::from_secs(120)).await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");

    assert!(batch.sim.count("graph") > 0);
    assert_eq!(
        batch.sim.count("throttled"),
        0,
        "the fleet stayed within the tenant quota"
    );
    batch.assert_each_result_written_once().await;
    assert_eq!(
        batch.db.count("worker_leases").await,
        0,
        "every worker gave its lease back"
    );
    batch.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_of_three_is_killed_the_other_two_finish_everything_once() {
    let batch = batch(30).await;
    let mut workers = batch.start_workers(3);
    eventually(
        Duration::from_secs(60),
        "the fleet made progress",
        || async { batch.runs().await >= 3 },
    )
    .await;
    assert!(
        batch.runs().await < batch.messages,
        "killed too late to test anything"
    );
    workers.kill(0).await.unwrap();

    let statuses = workers.wait(Duration::from_secs(120)).await.unwrap();
    assert!(!statuses[0].success(), "the first worker was killed");
    assert!(statuses[1..].iter().all(|s| s.success()), "{statuses:?}");
    batch.assert_each_result_written_once().await;
    batch.teardown().await;
}
