//! Actor-hit events are owed by the rows that hold the hits: every stored hit is announced on
//! the events exchange at least once, whatever fails between its commit and the broker's
//! confirm, and relays running at once send each event once.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use mdti_worker::chain::{ActorHit, Evidence};
use mdti_worker::outbox::{self, OutboxStats};
use mdti_worker::queue::consumer::WorkerStats;
use mdti_worker::queue::{Publisher, Topology};
use serde_json::json;
use support::harness::{fresh_topology, spawn_app, wait_for_exit, worker_command, Options};
use support::{broker_connection, delete_topology, eventually, observable, TestDb, AMQP};

/// A queue of the test's own bound to the events exchange, as a SOAR playbook would bind one.
async fn bind_events_queue(channel: &Channel, topology: &Topology) -> String {
    let queue = format!("{}.test-events", topology.prefix);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            topology.events_exchange().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
}

/// The message ids of every event waiting in `queue`, taken off it.
async fn take_event_ids(channel: &Channel, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let event: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
        assert_eq!(event["type"], "actor_hit");
        ids.push(
            message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default(),
        );
    }
    ids
}

/// `actor-hit-<id>` for every stored hit: the ids its events carry.
async fn hit_event_ids(db: &TestDb) -> BTreeSet<String> {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM actor_hits")
        .fetch_all(db.store.pool())
        .await
        .unwrap();
    ids.into_iter()
        .map(|id| format!("actor-hit-{id}"))
        .collect()
}

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
    app.topology.declare(&channel).await.unwrap();
    let queue = bind_events_queue(&channel, &app.topology).await;
    eventually(
        Duration::from_secs(30),
        "every owed event announced",
        || async { owed(&app.db).await == 0 },
    )
    .await;
    let sent: BTreeSet<String> = take_event_ids(&channel, &queue).await.into_iter().collect();
    assert_eq!(
        sent,
        hit_event_ids(&app.db).await,
        "one event per stored hit"
    );
    assert_eq!(
        app.drain_dead_letters().await.len(),
        0,
        "the message is done, not dead"
    );
    let _ = connection.close(200, "done".into()).await;
    app.teardown().await;
}

#[tokio::test]
async fn a_worker_killed_between_commit_and_announcement_announces_after_its_restart() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.unwrap();
    topology.declare(&channel).await.unwrap();
    let queue = bind_events_queue(&channel, &topology).await;
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
    assert_eq!(
        owed(&db).await,
        0,
        "every owed event announced after the restart"
    );
    let sent: BTreeSet<String> = take_event_ids(&channel, &queue).await.into_iter().collect();
    assert_eq!(sent, hit_event_ids(&db).await);
    assert_eq!(
        db.query_count("SELECT count(*) FROM enrichment_runs").await,
        1,
        "the redelivered message was answered, once"
    );
    let _ = publisher.close().await;
    let _ = connection.close(200, "done".into()).await;
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
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.unwrap();
    topology.declare(&channel).await.unwrap();
    let queue = bind_events_queue(&channel, &topology).await;
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
    assert_eq!(owed(&db).await, 0);
    let sent = take_event_ids(&channel, &queue).await;
    assert_eq!(sent.len(), 300, "no event sent twice");
    let distinct: BTreeSet<String> = sent.into_iter().collect();
    assert_eq!(distinct, hit_event_ids(&db).await);
    let _ = connection.close(200, "done".into()).await;
    delete_topology(&topology).await;
}
