//! `status` against a real RabbitMQ and Postgres: messages published to each lane with no
//! worker running, runs and rejections seeded with their lanes and sources, and publications in
//! the ledger; then what each lane and source waits for, has done, and when it will be through.
//! A part whose service is unreachable is reported missing while the other is still shown.

use std::time::{Duration, Instant};

use mdti_worker::lane::Lane;
use mdti_worker::queue::{Publisher, Topology};
use mdti_worker::secret::Secret;
use mdti_worker::status::{self, Status};
use mdti_worker::store::{RejectedInput, RunRecord, RunStatus, Store};
use serde_json::{json, Value};

mod support;
use support::{amqp_url, observable, test_topology, with_cleanup, TestDb};

const WINDOW: Duration = Duration::from_secs(300);

/// Publish one message per entry of `sizes` to `lane`, each with that many observables of
/// `source`.
async fn publish(publisher: &Publisher, lane: Lane, source: &str, sizes: &[usize]) {
    let items = sizes
        .iter()
        .enumerate()
        .map(|(m, size)| {
            let body: Vec<Value> = (0..*size)
                .map(|i| json!({"value": format!("10{m}.{i}.0.1"), "source": source}))
                .collect();
            (
                source.to_owned(),
                serde_json::to_vec(&body).unwrap(),
                "application/json".to_owned(),
                uuid::Uuid::new_v4().to_string(),
            )
        })
        .collect();
    publisher.publish_batch_to(lane, items).await.unwrap();
}

/// A run of item `index` of `message`, four Graph requests.
fn run(lane: Lane, source: Option<&str>, message: &str, index: i32) -> RunRecord {
    RunRecord {
        message_id: message.into(),
        item_index: index,
        source: source.map(str::to_owned),
        context: None,
        observable: observable(&format!("8.8.{}.{index}", message.len())),
        status: RunStatus::Enriched,
        detail: None,
        enrichers: Vec::new(),
        graph_requests: 4,
        duration: Duration::from_millis(10),
        enrichment: None,
        lane,
    }
}

fn rejection(lane: Lane, source: &str, message: &str, index: i32) -> RejectedInput {
    RejectedInput {
        message_id: message.into(),
        item_index: index,
        input: "not an observable".into(),
        code: if index < 0 {
            "gave_up"
        } else {
            "invalid_observable"
        }
        .into(),
        reason: "as seeded".into(),
        source: Some(source.into()),
        context: None,
        attempts: 1,
        lane,
    }
}

async fn sql(store: &Store, statement: &str) {
    sqlx::query(statement).execute(store.pool()).await.unwrap();
}

/// - live: `alerts`, one message of two items done now (no publication);
/// - bulk: `backfill` published 10 observables two hours ago; one message of two items done an
///   hour ago, one of four items done now with a fifth item rejected, and a message
///   dead-lettered now; `old-feed` published 5 an hour ago, 2 done 30 minutes ago (no rate).
async fn seed(store: &Store) {
    let live: Vec<RunRecord> = (0..2)
        .map(|i| run(Lane::Live, Some("alerts"), "live-1", i))
        .collect();
    store.record_message(&live, &[]).await.unwrap();

    store
        .record_publication("backfill", Lane::Bulk, 10, 3)
        .await
        .unwrap();
    store
        .record_publication("old-feed", Lane::Bulk, 5, 1)
        .await
        .unwrap();
    sql(store, "UPDATE publications SET published_at = now() - interval '2 hours' WHERE source = 'backfill'").await;
    sql(store, "UPDATE publications SET published_at = now() - interval '1 hour' WHERE source = 'old-feed'").await;

    let old: Vec<RunRecord> = (0..2)
        .map(|i| run(Lane::Bulk, Some("backfill"), "bulk-0", i))
        .collect();
    store.record_message(&old, &[]).await.unwrap();
    let older: Vec<RunRecord> = (0..2)
        .map(|i| run(Lane::Bulk, Some("old-feed"), "old-0", i))
        .collect();
    store.record_message(&older, &[]).await.unwrap();
    sql(store, "UPDATE enrichment_runs SET created_at = now() - interval '1 hour' WHERE message_id = 'bulk-0'").await;
    sql(store, "UPDATE enrichment_runs SET created_at = now() - interval '30 minutes' WHERE message_id = 'old-0'").await;

    let recent: Vec<RunRecord> = (0..4)
        .map(|i| run(Lane::Bulk, Some("backfill"), "bulk-1", i))
        .collect();
    let rejected = [rejection(Lane::Bulk, "backfill", "bulk-1", 4)];
    store.record_message(&recent, &rejected).await.unwrap();
    store
        .record_rejection(&rejection(Lane::Bulk, "backfill", "bulk-dead", -1))
        .await
        .unwrap();
}

fn lane(status: &Value, lane: &str) -> Value {
    status["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lane"] == lane)
        .unwrap_or_else(|| panic!("no lane {lane}: {status:#}"))
        .clone()
}

fn source(lane: &Value, name: &str) -> Value {
    lane["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == name)
        .unwrap_or_else(|| panic!("no source {name}: {lane:#}"))
        .clone()
}

/// `[all_time, window]` of a counts object.
fn counts(value: &Value) -> [u64; 2] {
    [
        value["all_time"].as_u64().unwrap(),
        value["window"].as_u64().unwrap(),
    ]
}

async fn gather(topology: &Topology, amqp: &str, store: Result<&Store, String>) -> Status {
    status::gather(topology, amqp, store, &Lane::ALL, WINDOW).await
}

#[tokio::test]
async fn status_shows_each_lanes_queues_work_sources_and_ledger() {
    let db = TestDb::new().await;
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let publisher = Publisher::connect(&amqp_url(), topology.clone())
            .await
            .unwrap();
        publish(&publisher, Lane::Live, "alerts", &[1, 1]).await;
        publish(&publisher, Lane::Bulk, "backfill", &[4, 3, 3]).await;
        publisher.close().await.unwrap();
        seed(&db.store).await;

        let gathered = gather(&topology, &amqp_url(), Ok(&db.store)).await;
        println!("{gathered}");
        let json = serde_json::to_value(&gathered).unwrap();
        assert!(json["broker_error"].is_null() && json["database_error"].is_null());
        assert_eq!(json["window_seconds"], 300.0);
        assert_eq!(json["dead_letter_queue"]["queue"], topology.dead_letter_queue());
        assert_eq!(json["dead_letter_queue"]["ready"], 0);

        // Live: two messages ready; one message of two items done now, 4 requests each.
        let live = lane(&json, "live");
        assert_eq!(live["work_queue"]["queue"], topology.lane_queue(Lane::Live));
        assert_eq!(live["work_queue"]["ready"], 2);
        assert_eq!(live["retry_queue"]["ready"], 0);
        assert_eq!(live["ready_messages"], 2);
        assert_eq!(live["observables_per_message"], 2.0);
        assert_eq!(live["waiting_observables"], 4);
        assert_eq!(counts(&live["activity"]["done"]), [2, 2]);
        assert_eq!(counts(&live["activity"]["rejected"]), [0, 0]);
        assert_eq!(counts(&live["activity"]["dead_lettered"]), [0, 0]);
        let rate = &live["activity"]["rate"];
        assert_eq!(rate["observables_per_second"], 2.0 / 300.0);
        assert_eq!(rate["graph_requests_per_second"], 8.0 / 300.0);
        // 4 observables at 2 per 300 s.
        assert_eq!(live["eta_seconds"], 600);
        let alerts = source(&live, "alerts");
        assert_eq!(counts(&alerts["activity"]["done"]), [2, 2]);
        assert!(alerts["ledger"].is_null(), "no publication: {alerts}");
        assert!(alerts["eta_seconds"].is_null(), "nothing known to wait: {alerts}");

        // Bulk: three messages ready; within the window one message of four items done.
        let bulk = lane(&json, "bulk");
        assert_eq!(bulk["ready_messages"], 3);
        assert_eq!(bulk["observables_per_message"], 4.0);
        assert_eq!(bulk["waiting_observables"], 12);
        assert_eq!(counts(&bulk["activity"]["done"]), [8, 4]);
        assert_eq!(counts(&bulk["activity"]["rejected"]), [1, 1]);
        assert_eq!(counts(&bulk["activity"]["dead_lettered"]), [1, 1]);
        assert_eq!(bulk["eta_seconds"], 900, "12 observables at 4 per 300 s");

        // backfill: 10 published two hours ago, 2 + 4 done and 1 rejected since: 3 wait, done
        // at 4 per 300 s. The dead-lettered message settles nothing.
        let backfill = source(&bulk, "backfill");
        assert_eq!(counts(&backfill["activity"]["done"]), [6, 4]);
        assert_eq!(counts(&backfill["activity"]["rejected"]), [1, 1]);
        assert_eq!(counts(&backfill["activity"]["dead_lettered"]), [1, 1]);
        let ledger = &backfill["ledger"];
        assert_eq!(
            (
                &ledger["publications"],
                &ledger["published"],
                &ledger["settled"],
                &ledger["waiting"]
            ),
            (&json!(1), &json!(10), &json!(7), &json!(3))
        );
        assert!(ledger["since"].is_string(), "{ledger}");
        assert_eq!(backfill["eta_seconds"], 225);

        // old-feed: 3 of its 5 wait, but nothing of it was done in the window: no ETA.
        let old = source(&bulk, "old-feed");
        assert_eq!(counts(&old["activity"]["done"]), [2, 0]);
        assert_eq!(old["ledger"]["waiting"], 3);
        assert_eq!(old["activity"]["rate"]["observables_per_second"], 0.0);
        assert!(old["eta_seconds"].is_null(), "no rate, no ETA: {old}");

        let text = gathered.to_string();
        assert!(
            text.contains("(one queue for both lanes; `dlq list` shows them)"),
            "{text}"
        );
        assert!(
            text.contains("bulk lane: 3 messages waiting (about 12 observables); at 0.01 observables/s measured over the last 5 min, about 15 min"),
            "{text}"
        );
        let backfill_row = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.starts_with("backfill "))
            .unwrap_or_else(|| panic!("no backfill row:\n{text}"));
        assert_eq!(
            backfill_row,
            "backfill 4 / 6 1 / 1 1 / 1 0.01 0.05 3 3 min 45 s"
        );
    })
    .await;
}

#[tokio::test]
async fn a_source_without_one_is_counted_under_publish_and_settles_its_ledger() {
    let db = TestDb::new().await;
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        // What `publish` without --source records, and the items it sent, which carry none.
        db.store
            .record_publication("publish", Lane::Live, 3, 1)
            .await
            .unwrap();
        sql(
            &db.store,
            "UPDATE publications SET published_at = now() - interval '1 minute'",
        )
        .await;
        let runs = [run(Lane::Live, None, "anon", 0)];
        db.store.record_message(&runs, &[]).await.unwrap();

        let gathered = gather(&topology, &amqp_url(), Ok(&db.store)).await;
        let json = serde_json::to_value(&gathered).unwrap();
        let live = lane(&json, "live");
        let sources: Vec<&Value> = live["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["source"])
            .collect();
        assert_eq!(sources, [&json!("publish")]);
        let publish = source(&live, "publish");
        assert_eq!(counts(&publish["activity"]["done"]), [1, 1]);
        assert_eq!(publish["ledger"]["waiting"], 2);
        // Nothing was published to the broker here: the queues were never declared.
        assert!(live["ready_messages"].is_null(), "{live}");
        assert!(live["eta_seconds"].is_null(), "{live}");
        assert!(
            gathered.to_string().contains(&format!(
                "queue {} does not exist",
                topology.lane_queue(Lane::Live)
            )),
            "{gathered}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_missing_part_is_reported_and_the_other_still_shown() {
    let db = TestDb::new().await;
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let publisher = Publisher::connect(&amqp_url(), topology.clone())
            .await
            .unwrap();
        publish(&publisher, Lane::Live, "alerts", &[1]).await;
        publisher.close().await.unwrap();
        seed(&db.store).await;

        // No broker on port 1: Postgres is still read.
        let no_broker = gather(
            &topology,
            "amqp://guest:guest@127.0.0.1:1/%2f",
            Ok(&db.store),
        )
        .await;
        assert!(no_broker.broker_error.is_some());
        assert!(no_broker.database_error.is_none());
        let live = &no_broker.lanes[0];
        assert_eq!(
            (live.lane, live.ready_messages, live.eta_seconds),
            (Lane::Live, None, None)
        );
        assert_eq!(live.activity.unwrap().done.all_time, 2);
        assert_eq!(no_broker.dead_letter_queue.ready, None);
        let text = no_broker.to_string();
        assert!(text.contains("note: broker part missing"), "{text}");
        assert!(
            text.contains("live lane: messages waiting unknown"),
            "{text}"
        );

        // No Postgres on port 1: told within a few seconds, and the broker is still read.
        let started = Instant::now();
        let unreachable = Secret::new("postgres://postgres@127.0.0.1:1/none");
        let error = status::connect_store(&unreachable).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let no_database = gather(&topology, &amqp_url(), Err(error)).await;
        assert!(no_database.broker_error.is_none());
        assert!(no_database.database_error.is_some());
        let live = &no_database.lanes[0];
        assert_eq!(live.ready_messages, Some(1));
        assert!(live.activity.is_none() && live.sources.is_empty());
        assert_eq!(live.eta_seconds, None);
        let json = serde_json::to_value(&no_database).unwrap();
        assert!(json["lanes"][0]["activity"].is_null(), "{json}");
        let text = no_database.to_string();
        assert!(text.contains("note: Postgres part missing"), "{text}");
        assert!(
            text.contains("live lane: 1 message waiting; no rate (Postgres is missing)"),
            "{text}"
        );
    })
    .await;
}
