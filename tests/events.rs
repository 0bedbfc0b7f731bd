//! Actor events go out per (observable, actor), owed by the attribution rows written with the
//! hits: every attribution worth an event is announced at least once, whatever fails between
//! its commit and the broker's confirm; relays running at once send each event once; a pair is
//! announced again only when its band changes or a new kind of evidence arrives; and a pair
//! below `--min-event-confidence` is stored without an event.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mdti_worker::chain::{ActorHit, Evidence};
use mdti_worker::consumer::WorkerStats;
use mdti_worker::outbox::{self, OutboxStats, RelayChannels, RelayHandle};
use mdti_worker::queue::{Publisher, Topology};
use mdti_worker::store::WalkHits;
use serde_json::json;
use support::harness::{
    fresh_topology, spawn_app, wait_for_exit, worker_command, EventsTap, Options,
};
use support::{broker_connection, delete_topology, eventually, observable, TestDb, AMQP};

async fn owed(db: &TestDb) -> i64 {
    db.query_count("SELECT count(*) FROM actor_attributions WHERE owed")
        .await
}

/// Attributions at or above the default `--min-event-confidence`.
async fn worth_an_event(db: &TestDb) -> i64 {
    db.query_count("SELECT count(*) FROM actor_attributions WHERE confidence >= 40")
        .await
}

#[tokio::test]
async fn hits_stored_while_the_events_exchange_is_missing_are_announced_once_it_is_back() {
    let app = spawn_app(Options::default()).await;
    // The worker's session declares the topology when it starts: delete after that.
    eventually(Duration::from_secs(30), "the worker consuming", || async {
        WorkerStats::is(&app.stats.consuming)
    })
    .await;
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_delete(
            app.topology.events_exchange().as_str().into(),
            Default::default(),
        )
        .await
        .unwrap();

    app.publish("hits-1", json!({"value": "evil.phish-kit[.]net"}))
        .await;
    eventually(Duration::from_secs(60), "the message done", || async {
        app.count("SELECT count(*) FROM enrichment_runs WHERE status = 'enriched'")
            .await
            == 1
            && app.queue_depths().await.work == 0
    })
    .await;
    let pairs = worth_an_event(&app.db).await;
    assert!(pairs >= 1, "the evil host is attributed: {pairs}");
    assert_eq!(owed(&app.db).await, pairs, "no exchange, nothing announced");

    // The exchange comes back (a fresh worker or an operator declares it) with a subscriber.
    let events = EventsTap::bind(&app.topology).await;
    // A refused publish was never routed: no event twice.
    events.assert_every_attribution_announced(&app.db, 0).await;
    assert_eq!(
        app.drain_dead_letters().await.len(),
        0,
        "the message is done, not dead"
    );
    events.close().await;
    let _ = connection.close(200, "done".into()).await;
    app.teardown().await;
}

#[tokio::test]
async fn a_worker_killed_between_commit_and_announcement_announces_after_its_restart() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let events = EventsTap::bind(&topology).await;
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let body = serde_json::to_vec(&json!({"value": "evil.phish-kit.net"})).unwrap();
    publisher
        .publish_observables("test", &body, "application/json", "killed-1")
        .await
        .unwrap();
    let worker = |failpoints: Option<&str>| {
        let mut command = worker_command(&db, &topology.prefix);
        command.args(["--retry-delay", "1s", "--exit-when-idle", "2s"]);
        if let Some(failpoints) = failpoints {
            command.env("MDTI_FAILPOINTS", failpoints);
        }
        command.spawn().expect("the worker binary starts")
    };

    let mut crashing = worker(Some("after_results_commit=abort"));
    let exit = wait_for_exit(&mut crashing, Duration::from_secs(120), "the crash").await;
    assert!(!exit.success(), "the failpoint kills the worker: {exit}");
    let pairs = worth_an_event(&db).await;
    assert!(
        pairs >= 1,
        "the attributions were committed before the crash: {pairs}"
    );
    assert_eq!(owed(&db).await, pairs, "and none was announced");

    let mut restarted = worker(None);
    let exit = wait_for_exit(&mut restarted, Duration::from_secs(120), "the batch run").await;
    assert!(exit.success(), "{exit}");
    events.assert_every_attribution_announced(&db, 0).await;
    assert_eq!(
        db.query_count("SELECT count(*) FROM enrichment_runs").await,
        1,
        "the redelivered message was answered, once"
    );
    events.close().await;
    let _ = publisher.close().await;
    delete_topology(&topology).await;
}

fn hit(actor: &str, artifact: &str, confidence: u8) -> ActorHit {
    ActorHit {
        actor: actor.into(),
        profile_id: None,
        aliases: Vec::new(),
        artifact: artifact.into(),
        path: vec!["ioc".into(), artifact.into()],
        evidence: vec![Evidence::ProfileIndicator {
            profile_id: "p-1".into(),
            source: None,
            first_seen: None,
            last_seen: None,
        }],
        first_seen: None,
        last_seen: None,
        confidence,
        factors: Vec::new(),
    }
}

fn walk(ioc: &str, hits: Vec<ActorHit>) -> WalkHits {
    WalkHits {
        observable: observable(ioc),
        run_id: None,
        context: Some(json!({"case": ioc})),
        hits,
        min_event_confidence: 40,
    }
}

#[tokio::test]
async fn three_relays_at_once_send_each_owed_event_once() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let events = EventsTap::bind(&topology).await;
    for n in 0..150 {
        let hits = vec![
            hit("Aqua Blizzard", &format!("a-{n}.example.net"), 60),
            hit("Forest Blizzard", &format!("b-{n}.example.net"), 60),
        ];
        db.store
            .record_actor_hits(walk(&format!("host-{n}.example.org"), hits))
            .await
            .unwrap();
    }
    assert_eq!(owed(&db).await, 300);

    let stats = Arc::new(OutboxStats::default());
    let mut relays = Vec::new();
    for _ in 0..3 {
        let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
        let (store, stats) = (db.store.clone(), Arc::clone(&stats));
        relays.push(tokio::spawn(async move {
            outbox::drain(&store, &publisher, &stats).await.unwrap()
        }));
    }
    let mut announced = 0;
    for relay in relays {
        announced += relay.await.unwrap();
    }

    assert_eq!(
        announced, 300,
        "together the relays announced every event once"
    );
    let sent = events.assert_every_attribution_announced(&db, 0).await;
    assert_eq!(sent, 300);
    let distinct: BTreeSet<String> = events.take_ids().await.into_iter().collect();
    assert!(distinct.is_empty(), "nothing more arrived");
    events.close().await;
    delete_topology(&topology).await;
}

/// A relay of the test's own, on the test's database and topology.
struct TestRelay {
    handle: RelayHandle,
    stats: Arc<OutboxStats>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TestRelay {
    async fn start(db: &TestDb, topology: &Topology) -> TestRelay {
        let channels = RelayChannels {
            connection: Arc::new(broker_connection().await),
            topology: topology.clone(),
        };
        let (handle, stats) = (RelayHandle::default(), Arc::new(OutboxStats::default()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(outbox::run(
            db.store.clone(),
            handle.clone(),
            Arc::clone(&stats),
            channels,
            stopped,
        ));
        TestRelay {
            handle,
            stats,
            stop,
            task,
        }
    }

    fn passes(&self) -> u64 {
        self.stats.passes.load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn wakes_from_the_messages_of_one_commit_run_one_relay_pass() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let events = EventsTap::bind(&topology).await;
    let relay = TestRelay::start(&db, &topology).await;
    eventually(Duration::from_secs(10), "the pass at start", || async {
        relay.passes() == 1
    })
    .await;

    // One group commit of five messages, each of which left a pair owed and wakes the relay.
    for n in 0..5 {
        let hits = vec![hit("Aqua Blizzard", &format!("a-{n}.example.net"), 60)];
        db.store
            .record_actor_hits(walk(&format!("host-{n}.example.org"), hits))
            .await
            .unwrap();
    }
    for _ in 0..5 {
        relay.handle.wake();
    }
    eventually(Duration::from_secs(10), "the five announced", || async {
        relay.stats.announced.load(Ordering::Relaxed) == 5
    })
    .await;
    // Well within the relay's interval: a pass now would be one of the wakes'.
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(
        relay.passes(),
        2,
        "the pass at start, and one for the commit"
    );
    assert_eq!(events.assert_every_attribution_announced(&db, 0).await, 5);
    relay.stop().await;
    events.close().await;
    delete_topology(&topology).await;
}

#[tokio::test]
async fn relay_passes_on_the_clock_that_find_nothing_owed_open_no_transaction() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let relay = TestRelay::start(&db, &topology).await;
    eventually(
        Duration::from_secs(10),
        "the pass at start and one on the clock",
        || async { relay.passes() >= 2 },
    )
    .await;
    // A backend reports its transactions to the statistics once it has been idle a second.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let rollbacks = db
        .query_count(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
        )
        .await;
    assert_eq!(rollbacks, 0, "no claim was opened and given back");
    relay.stop().await;
    delete_topology(&topology).await;
}

/// The events a subscriber got, as JSON bodies, in order.
async fn bodies(events: &EventsTap) -> Vec<serde_json::Value> {
    events
        .take_bodies()
        .await
        .iter()
        .map(|body| serde_json::from_slice(body).unwrap())
        .collect()
}

#[tokio::test]
async fn an_observable_and_actor_are_announced_once_per_band_and_kind_of_evidence() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let events = EventsTap::bind(&topology).await;
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let stats = OutboxStats::default();
    let relay = || outbox::drain(&db.store, &publisher, &stats);
    let ioc = "case-1.example.org";

    // Seven artifacts link one actor: one event, the strongest artifacts first, all counted.
    let seven: Vec<ActorHit> = (0..7)
        .map(|n| hit("Aqua Blizzard", &format!("n{n}.example.net"), 45 + n))
        .collect();
    db.store
        .record_actor_hits(walk(ioc, seven.clone()))
        .await
        .unwrap();
    relay().await.unwrap();
    let first = bodies(&events).await;
    assert_eq!(
        first.len(),
        1,
        "one event for the pair, not one per artifact"
    );
    let event = &first[0];
    assert_eq!(event["type"], "actor_attribution");
    assert_eq!(event["observable"]["value"], ioc);
    assert_eq!(event["actor"], "Aqua Blizzard");
    assert_eq!(event["confidence"], 51);
    assert_eq!(event["band"], "medium");
    assert_eq!(event["previous_band"], serde_json::Value::Null);
    assert_eq!(event["evidence_kinds"], json!(["profile_indicator"]));
    assert_eq!(event["artifact_count"], 7);
    assert_eq!(event["context"], json!({"case": ioc}));
    let listed: Vec<&str> = event["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["artifact"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "n6.example.net",
            "n5.example.net",
            "n4.example.net",
            "n3.example.net",
            "n2.example.net"
        ]
    );

    // The same findings again, and a higher confidence within the band: nothing new to say.
    db.store
        .record_actor_hits(walk(ioc, seven.clone()))
        .await
        .unwrap();
    let mut stronger = seven.clone();
    stronger[0].confidence = 65;
    db.store
        .record_actor_hits(walk(ioc, stronger))
        .await
        .unwrap();
    relay().await.unwrap();
    assert!(
        bodies(&events).await.is_empty(),
        "no band crossed, no new evidence"
    );

    // Crossing into high: announced again, saying what it was.
    let mut high = seven.clone();
    high[0].confidence = 80;
    db.store
        .record_actor_hits(walk(ioc, high.clone()))
        .await
        .unwrap();
    relay().await.unwrap();
    let crossed = bodies(&events).await;
    assert_eq!(crossed.len(), 1);
    assert_eq!(
        (
            crossed[0]["band"].clone(),
            crossed[0]["previous_band"].clone()
        ),
        (json!("high"), json!("medium"))
    );

    // A new kind of evidence in the same band: announced again.
    high[1].evidence.push(Evidence::ReputationRule {
        rule: "Cyber Threat Intelligence".into(),
        severity: Some("high".into()),
        score: Some(90),
        classification: Some("malicious".into()),
    });
    db.store.record_actor_hits(walk(ioc, high)).await.unwrap();
    relay().await.unwrap();
    let evidence = bodies(&events).await;
    assert_eq!(evidence.len(), 1);
    assert_eq!(
        evidence[0]["evidence_kinds"],
        json!(["profile_indicator", "reputation_rule"])
    );

    let ids: Vec<i32> = sqlx::query_scalar("SELECT announcements FROM actor_attributions")
        .fetch_all(db.store.pool())
        .await
        .unwrap();
    assert_eq!(ids, [3], "three announcements of one pair");
    events.close().await;
    let _ = publisher.close().await;
    delete_topology(&topology).await;
}

#[tokio::test]
async fn a_weak_attribution_is_stored_without_an_event_until_it_is_worth_one() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let events = EventsTap::bind(&topology).await;
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let stats = OutboxStats::default();
    let ioc = "weak.example.org";

    db.store
        .record_actor_hits(walk(ioc, vec![hit("Lace Tempest", "cdn.example.net", 25)]))
        .await
        .unwrap();
    outbox::drain(&db.store, &publisher, &stats).await.unwrap();
    assert!(bodies(&events).await.is_empty(), "below 40: no page");
    assert_eq!(
        db.query_count("SELECT count(*) FROM actor_attributions WHERE band = 'low' AND NOT owed")
            .await,
        1,
        "but stored, in the low band"
    );

    let mut strict = walk(ioc, vec![hit("Lace Tempest", "cdn.example.net", 60)]);
    strict.min_event_confidence = 70;
    db.store.record_actor_hits(strict).await.unwrap();
    outbox::drain(&db.store, &publisher, &stats).await.unwrap();
    assert!(
        bodies(&events).await.is_empty(),
        "60 is below a threshold of 70"
    );

    db.store
        .record_actor_hits(walk(ioc, vec![hit("Lace Tempest", "cdn.example.net", 60)]))
        .await
        .unwrap();
    outbox::drain(&db.store, &publisher, &stats).await.unwrap();
    let announced = bodies(&events).await;
    assert_eq!(
        announced.len(),
        1,
        "at the default threshold, 60 is announced"
    );
    assert_eq!(announced[0]["band"], "medium");
    events.close().await;
    let _ = publisher.close().await;
    delete_topology(&topology).await;
}
