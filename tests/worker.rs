//! The worker end to end: RabbitMQ in, Postgres out, against the real services and the Graph
//! simulator. Each test has its own database and its own queue names.

use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use mdti_worker::consumer::WorkerStats;
use mdti_worker::sim::SimConfig;
use serde_json::json;

mod support;
use support::harness::{eventually, spawn_app, App, Options, AMQP};

#[tokio::test]
async fn a_mixed_batch_lands_in_postgres_in_canonical_form() {
    let app = spawn_app(Options::default()).await;
    app.publish(
        "mixed-1",
        json!([
            {"value": "8.8.8.8"},
            {"value": "2001:4860:4860:0:0:0:0:8888"},
            {"value": "contoso[.]com", "kind": "domain"},
            {"value": "WWW.Fabrikam.com."},
            {"value": "hxxps://login.contoso-payroll[.]com/owa?user=x", "source": "feed-x",
             "context": {"incident": "INC-7"}}
        ]),
    )
    .await;
    eventually(Duration::from_secs(30), "five runs", || async {
        app.count("SELECT count(*) FROM enrichment_runs").await == 5
    })
    .await;
    let values: Vec<String> =
        sqlx::query_scalar("SELECT kind || ':' || value FROM observables ORDER BY value")
            .fetch_all(app.db.store.pool())
            .await
            .unwrap();
    assert_eq!(
        values,
        vec![
            "ipv6:2001:4860:4860::8888",
            "ipv4:8.8.8.8",
            "domain:contoso.com",
            "host:login.contoso-payroll.com",
            "host:www.fabrikam.com",
        ]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enrichment_runs WHERE status = 'enriched'")
            .await,
        5
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enricher_results").await,
        5 * 6,
        "every enricher recorded for every observable"
    );
    assert!(app.count("SELECT count(*) FROM extracts").await > 0);
    assert!(app.count("SELECT count(*) FROM indicators").await >= 1);
    let context: serde_json::Value = sqlx::query_scalar(
        "SELECT r.context FROM enrichment_runs r JOIN observables o ON o.id = r.observable_id WHERE o.value = 'login.contoso-payroll.com'",
    )
    .fetch_one(app.db.store.pool())
    .await
    .unwrap();
    assert_eq!(context, json!({"incident": "INC-7"}));
    app.teardown().await;
}

#[tokio::test]
async fn the_same_message_delivered_twice_leaves_the_same_rows() {
    let app = spawn_app(Options::default()).await;
    let body = json!([{"value": "contoso.com", "force": true}, {"value": "20.53.203.50", "force": true}, {"value": "10.0.0.1"}, {"value": "not a host"}]);
    app.publish("twice", body.clone()).await;
    eventually(Duration::from_secs(30), "first delivery done", || async {
        app.stats.done() == 1
    })
    .await;
    let before = app.table_counts().await;
    app.publish("twice", body).await;
    eventually(Duration::from_secs(30), "second delivery done", || async {
        app.stats.done() == 2
    })
    .await;
    assert_eq!(app.table_counts().await, before);
    assert!(
        app.sim.count("whois") >= 2,
        "`force` made the second delivery call Graph again"
    );
    app.teardown().await;
}

#[tokio::test]
async fn an_observable_enriched_recently_is_answered_from_postgres() {
    let app = spawn_app(Options::default()).await;
    app.publish("first", json!({"value": "contoso.com"})).await;
    eventually(Duration::from_secs(30), "first done", || async {
        app.stats.done() == 1
    })
    .await;
    let graph_calls = app.sim.count("graph");
    app.publish("second", json!({"value": "contoso.com"})).await;
    eventually(Duration::from_secs(30), "second done", || async {
        app.stats.done() == 2
    })
    .await;
    assert_eq!(
        app.sim.count("graph"),
        graph_calls,
        "no Graph call for a cached observable"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enrichment_runs WHERE status = 'cached'")
            .await,
        1
    );
    app.teardown().await;
}

/// A worker whose simulator takes `latency` over every answer.
async fn slow_app(latency: Duration) -> App {
    spawn_app(Options {
        sim: SimConfig {
            latency,
            ..SimConfig::default()
        },
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn repeats_arriving_while_an_observable_is_enriched_wait_for_it_instead_of_asking_again() {
    // Slow answers: the first message is still being enriched when the repeats arrive.
    let app = slow_app(Duration::from_millis(200)).await;
    for n in 0..6 {
        app.publish(&format!("repeat-{n}"), json!({"value": "contoso.com"}))
            .await;
    }
    eventually(Duration::from_secs(30), "all six done", || async {
        app.stats.done() == 6
    })
    .await;
    assert_eq!(app.sim.count("whois"), 1, "enriched once");
    assert_eq!(
        app.count("SELECT count(*) FROM enrichment_runs WHERE status = 'enriched'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM enrichment_runs WHERE status = 'cached'")
            .await,
        5,
        "the repeats read what the first one stored"
    );
    app.teardown().await;
}

#[tokio::test]
async fn messages_of_several_items_naming_the_same_observables_never_wait_for_each_other() {
    let app = slow_app(Duration::from_millis(100)).await;
    // Each leads one observable the other also needs: were either to wait for the other's
    // commit, both would wait for ever.
    app.publish(
        "ab",
        json!([{"value": "a.contoso.com"}, {"value": "b.contoso.com"}]),
    )
    .await;
    app.publish(
        "ba",
        json!([{"value": "b.contoso.com"}, {"value": "a.contoso.com"}]),
    )
    .await;
    eventually(Duration::from_secs(30), "both done", || async {
        app.stats.done() == 2
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM enrichment_runs").await, 4);
    app.teardown().await;
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_its_reason_and_recorded() {
    let app = spawn_app(Options::default()).await;
    app.publisher
        .publish_observables("test", b"{\"value\": ", "application/json", "broken")
        .await
        .unwrap();
    app.publish(
        "mixed",
        json!([{"value": "contoso.com"}, {"value": "d41d8cd98f00b204e9800b998ecf8427"}, {"value": 42}]),
    )
    .await;
    eventually(Duration::from_secs(30), "both messages settled", || async {
        WorkerStats::get(&app.stats.settled) == 2
            && app.count("SELECT count(*) FROM enrichment_runs").await == 1
    })
    .await;
    let mut dead = app.drain_dead_letters().await;
    dead.sort_by(|a, b| a.code.cmp(&b.code));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].code, "invalid_json");
    assert!(
        dead[0].reason.contains("not valid JSON"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].text(), "{\"value\": ");
    assert_eq!(dead[1].code, "mixed");
    assert!(
        dead[1].reason.contains("2 items rejected"),
        "{}",
        dead[1].reason
    );
    let items: serde_json::Value = serde_json::from_slice(&dead[1].body).unwrap();
    assert_eq!(
        items.as_array().unwrap().len(),
        2,
        "only the bad items are dead-lettered"
    );
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM rejected_inputs ORDER BY code")
        .fetch_all(app.db.store.pool())
        .await
        .unwrap();
    assert_eq!(codes, vec!["file_hash", "invalid_json", "wrong_type"]);
    app.teardown().await;
}

#[tokio::test]
async fn graph_failing_for_a_while_is_retried_later_and_then_done() {
    let app = spawn_app(Options {
        graph_attempts: 2,
        ..Options::default()
    })
    .await;
    // This host fails while Graph serves the rest: the message's failure, not an outage.
    app.sim.control().fail_path("hosts/contoso.com", Some(500));
    app.publish("flaky", json!({"value": "contoso.com"})).await;
    eventually(Duration::from_secs(30), "a delayed retry", || async {
        WorkerStats::get(&app.stats.retried) >= 1
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM enrichment_runs").await, 0);
    app.sim.control().fail_path("hosts/contoso.com", None);
    eventually(Duration::from_secs(30), "done after the retry", || async {
        app.count("SELECT count(*) FROM enrichment_runs WHERE status = 'enriched'")
            .await
            == 1
    })
    .await;
    assert_eq!(WorkerStats::get(&app.stats.dead_lettered), 0);
    app.teardown().await;
}

#[tokio::test]
async fn graph_failing_for_good_ends_in_the_dead_letter_queue_after_the_delivery_limit() {
    let app = spawn_app(Options {
        graph_attempts: 1,
        max_deliveries: 2,
        ..Options::default()
    })
    .await;
    app.sim.control().fail_path("hosts/contoso.com", Some(500));
    app.publish("doomed", json!({"value": "contoso.com"})).await;
    eventually(Duration::from_secs(30), "dead-lettered", || async {
        WorkerStats::get(&app.stats.dead_lettered) == 1
    })
    .await;
    let dead = app.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].code, "gave_up");
    assert!(
        dead[0].reason.contains("after 2 deliveries"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        app.count("SELECT count(*) FROM rejected_inputs WHERE code = 'gave_up'")
            .await,
        1
    );
    app.teardown().await;
}

#[tokio::test]
async fn graph_refusing_for_good_dead_letters_the_message_at_once_and_records_it() {
    let app = spawn_app(Options::default()).await;
    app.sim.control().set_fail_all(Some(403));
    app.publish("refused", json!({"value": "contoso.com"}))
        .await;
    eventually(Duration::from_secs(30), "dead-lettered", || async {
        WorkerStats::get(&app.stats.dead_lettered) == 1
    })
    .await;
    assert_eq!(WorkerStats::get(&app.stats.retried), 0, "no point waiting");
    let dead = app.drain_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].code, "graph_refused");
    assert!(dead[0].reason.contains("403"), "{}", dead[0].reason);
    let (index, reason): (i32, String) = sqlx::query_as(
        "SELECT item_index, reason FROM rejected_inputs WHERE message_id = 'refused' AND code = 'graph_refused'",
    )
    .fetch_one(app.db.store.pool())
    .await
    .unwrap();
    assert_eq!(index, -1, "the whole message");
    assert_eq!(reason, dead[0].reason);
    assert_eq!(app.count("SELECT count(*) FROM enrichment_runs").await, 0);
    app.teardown().await;
}

#[tokio::test]
async fn postgres_unreachable_keeps_the_message_until_it_is_back() {
    let app = spawn_app(Options {
        max_deliveries: 50,
        through_relay: true,
        ..Options::default()
    })
    .await;
    let relay = app.relay.as_ref().unwrap();
    relay.cut();
    app.publish("while-down", json!({"value": "contoso.com"}))
        .await;
    eventually(
        Duration::from_secs(60),
        "handed back while Postgres is away",
        || async { WorkerStats::get(&app.stats.suspended) >= 1 },
    )
    .await;
    assert_eq!(
        WorkerStats::get(&app.stats.retried),
        0,
        "an outage spends no attempt"
    );
    relay.restore();
    eventually(
        Duration::from_secs(60),
        "processed once Postgres is back",
        || async { app.count("SELECT count(*) FROM enrichment_runs").await == 1 },
    )
    .await;
    assert_eq!(WorkerStats::get(&app.stats.dead_lettered), 0);
    app.teardown().await;
}

#[tokio::test]
async fn a_worker_stopped_mid_batch_and_restarted_finishes_everything_once() {
    let mut app = spawn_app(Options::default()).await;
    app.sim.control().set_latency(Duration::from_millis(20));
    for i in 0..30 {
        app.publish(
            &format!("batch-{i}"),
            json!({"value": format!("host{i}.contoso.com")}),
        )
        .await;
    }
    eventually(Duration::from_secs(60), "some progress", || async {
        app.stats.done() >= 3
    })
    .await;
    app.stop_worker().await;
    let after_stop = app.count("SELECT count(*) FROM enrichment_runs").await;
    assert!(after_stop < 30, "the stop came too late to test anything");
    app.start_worker(5);
    eventually(Duration::from_secs(90), "all thirty", || async {
        app.count("SELECT count(*) FROM enrichment_runs").await == 30
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM observables").await, 30);
    assert_eq!(
        app.count("SELECT count(*) FROM (SELECT observable_id, enricher, kind, value, field FROM extracts GROUP BY 1,2,3,4,5 HAVING count(*) > 1) d").await,
        0
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_lost_broker_connection_is_rebuilt_and_the_work_goes_on() {
    let app = spawn_app(Options {
        broker_relay: true,
        ..Options::default()
    })
    .await;
    app.sim.control().set_latency(Duration::from_millis(20));
    for i in 0..20 {
        app.publish(
            &format!("lost-{i}"),
            json!({"value": format!("host{i}.fabrikam.com")}),
        )
        .await;
    }
    eventually(Duration::from_secs(60), "some progress", || async {
        app.stats.done() >= 2
    })
    .await;
    let relay = app.broker_relay.as_ref().unwrap();
    relay.cut();
    relay.restore();
    eventually(
        Duration::from_secs(90),
        "all twenty after the reconnect",
        || async { app.count("SELECT count(*) FROM enrichment_runs").await == 20 },
    )
    .await;
    assert!(
        WorkerStats::get(&app.stats.reconnects) >= 1,
        "the connection was never lost"
    );
    assert_eq!(app.count("SELECT count(*) FROM observables").await, 20);
    app.teardown().await;
}

#[tokio::test]
async fn actor_hits_are_stored_and_announced_once_per_new_hit() {
    let app = spawn_app(Options::default()).await;
    // A queue of our own on the events exchange, as a SOAR playbook would bind one.
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let events_queue = format!("{}.test-events", app.topology.prefix);
    channel
        .queue_declare(
            events_queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            events_queue.as_str().into(),
            app.topology.events_exchange().as_str().into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let body =
        json!({"value": "evil.phish-kit[.]net", "force": true, "context": {"incident": "INC-9"}});

    app.publish("hits-1", body.clone()).await;
    eventually(Duration::from_secs(30), "first run done", || async {
        app.stats.done() == 1
    })
    .await;
    let hits = app.count("SELECT count(*) FROM actor_hits").await;
    assert!(
        hits >= 2,
        "the simulator's evil host links at least two actors, got {hits}"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM actor_hits WHERE context = '{\"incident\": \"INC-9\"}'::jsonb"
        )
        .await,
        hits,
        "every hit carries the message's context"
    );

    app.publish("hits-2", body).await;
    eventually(Duration::from_secs(30), "second run done", || async {
        app.stats.done() == 2
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM actor_hits").await, hits);

    let mut events = Vec::new();
    while let Some(message) = channel
        .basic_get(
            events_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let event: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
        assert_eq!(event["context"], json!({"incident": "INC-9"}));
        assert_eq!(
            message.delivery.routing_key.as_str(),
            event["actor"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .replace(' ', "-")
        );
        events.push(event);
    }
    assert_eq!(
        events.len() as i64,
        hits,
        "one event per new hit, none for the repeated run"
    );
    let _ = channel
        .queue_delete(events_queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    app.teardown().await;
}

#[tokio::test]
async fn chaining_does_not_ask_again_what_the_enrichers_just_fetched() {
    let app = spawn_app(Options::default()).await;
    // No counterparts: the walk needs only the IOC's own reputation, which the reputation
    // enricher has just fetched.
    app.sim
        .control()
        .set_override("hosts/lonely.contoso.com/passiveDns", json!([]));
    app.publish("lonely", json!({"value": "lonely.contoso.com"}))
        .await;
    eventually(Duration::from_secs(30), "done", || async {
        app.stats.done() == 1
    })
    .await;
    assert_eq!(app.sim.count("reputation"), 1);
    assert_eq!(
        app.sim.count("passiveDns"),
        1,
        "the walk reused the enricher's passive DNS"
    );
    app.teardown().await;
}
