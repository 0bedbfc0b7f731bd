//! Actor-hit events are owed by the rows that hold the hits: every stored hit is announced on
//! the events exchange at least once, whatever fails between its commit and the broker's
//! confirm, and relays running at once send each event once.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mdti_worker::chain::{ActorHit, Evidence};
use mdti_worker::outbox::{self, OutboxStats};
use mdti_worker::queue::consumer::WorkerStats;
use mdti_worker::queue::Publisher;
use serde_json::json;
use support::harness::{
    fresh_topology, spawn_app, wait_for_exit, worker_command, EventsTap, Options,
};
use support::{broker_connection, delete_topology, eventually, observable, TestDb, AMQP};

async fn owed(db: &TestDb) -> i64 {
    db.query_count("SELECT count(*) FROM actor_hits WHERE notified_at IS NULL")
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
    let hits = app.count("SELECT count(*) FROM actor_hits").await;
    assert!(hits >= 2, "the evil host links at least two actors: {hits}");
    assert_eq!(owed(&app.db).await, hits, "no exchange, nothing announced");

    // The exchange comes back (a fresh worker or an operator declares it) with a subscriber.
    let events = EventsTap::bind(&app.topology).await;
    // A refused publish was never routed: no event twice.
    events.assert_every_hit_announced(&app.db, 0).await;
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
    let hits = db.query_count("SELECT count(*) FROM actor_hits").await;
    assert!(
        hits >= 2,
        "the hits were committed before the crash: {hits}"
    );
    assert_eq!(owed(&db).await, hits, "and none was announced");

    let mut restarted = worker(None);
    let exit = wait_for_exit(&mut restarted, Duration::from_secs(120), "the batch run").await;
    assert!(exit.success(), "{exit}");
    events.assert_every_hit_announced(&db, 0).await;
    assert_eq!(
        db.query_count("SELECT count(*) FROM enrichment_runs").await,
        1,
        "the redelivered message was answered, once"
    );
    events.close().await;
    let _ = publisher.close().await;
    delete_topology(&topology).await;
}

fn hit(actor: &str, artifact: &str) -> ActorHit {
    ActorHit {
        actor: actor.into(),
        profile_id: None,
        aliases: Vec::new(),
        artifact: artifact.into(),
        path: vec![artifact.into()],
        evidence: vec![Evidence::ProfileIndicator {
            profile_id: "p-1".into(),
            source: None,
        }],
        first_seen: None,
        last_seen: None,
    }
}

#[tokio::test]
async fn three_relays_at_once_send_each_owed_event_once() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let events = EventsTap::bind(&topology).await;
    for n in 0..150 {
        let ioc = observable(&format!("host-{n}.example.org"));
        let hits = [
            hit("Aqua Blizzard", &format!("a-{n}.example.net")),
            hit("Forest Blizzard", &format!("b-{n}.example.net")),
        ];
        db.store
            .record_actor_hits(&ioc, None, None, &hits)
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
    let sent = events.assert_every_hit_announced(&db, 0).await;
    assert_eq!(sent, 300);
    let distinct: BTreeSet<String> = events.take_ids().await.into_iter().collect();
    assert!(distinct.is_empty(), "nothing more arrived");
    events.close().await;
    delete_topology(&topology).await;
}
