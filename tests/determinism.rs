//! Same input, same output: one mix of observables, published one per message into a fresh
//! database, gives the same actor hits, confidences, attributions and reputations whatever the
//! concurrency, the
//! group commit and the number of workers sharing their lookups. A worker takes no delivery
//! before its intel profile index is in place, so the first messages are chained like the rest.

mod support;

use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

use mdti_worker::bench::observable_mix;
use mdti_worker::queue::Publisher;
use serde_json::json;
use support::harness::{delete_topology, fresh_topology, wait_for_exit, worker_command};
use support::{TestDb, AMQP};

/// Distinct observables of the mix (the bench's generator, so shared counterparts and profile
/// indicators are among them).
fn mix() -> Vec<String> {
    let mut seen = BTreeSet::new();
    observable_mix(400, 1.0, 17)
        .into_iter()
        .filter(|value| seen.insert(value.clone()))
        .collect()
}

type Hit = (String, String, String, String, i16);
type Attribution = (String, String, String, i16, String, Vec<String>, i32);

/// What a run leaves: its hits as (kind, value, actor, artifact, confidence), its attributions
/// as (kind, value, actor, confidence, band, evidence kinds, artifacts), its reputations as
/// (host, classification, score).
#[derive(Debug)]
struct Results {
    hits: BTreeSet<Hit>,
    attributions: BTreeSet<Attribution>,
    reputations: BTreeSet<(String, Option<String>, Option<i32>)>,
}

async fn results(db: &TestDb) -> Results {
    let hits = sqlx::query_as(
        "SELECT o.kind, o.value, h.actor, h.artifact, h.confidence \
         FROM actor_hits h JOIN observables o ON o.id = h.observable_id",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    let attributions = sqlx::query_as(
        "SELECT o.kind, o.value, a.actor, a.confidence, a.band, a.evidence_kinds, a.artifacts \
         FROM actor_attributions a JOIN observables o ON o.id = a.observable_id",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    let reputations = sqlx::query_as("SELECT host, classification, score FROM reputations")
        .fetch_all(db.store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
    Results {
        hits,
        attributions,
        reputations,
    }
}

/// Publish the mix one per message, run `workers` worker processes with `args` until the
/// queues stay empty, and read what they stored.
async fn run(workers: usize, args: &[&str]) -> Results {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let batch = mix()
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let body = serde_json::to_vec(&json!({ "value": value })).unwrap();
            (
                "test".to_owned(),
                body,
                "application/json".to_owned(),
                format!("m-{i}"),
            )
        })
        .collect();
    publisher.publish_batch(batch).await.unwrap();

    let mut children: Vec<Child> = (0..workers)
        .map(|_| {
            worker_command(&db, &topology.prefix)
                .args(["--enrichers", "passive_dns,reputation"])
                .args(["--graph-rate", "100000", "--graph-burst", "1000"])
                .args(["--retry-delay", "1s", "--exit-when-idle", "3s"])
                .args(args)
                .spawn()
                .expect("the worker binary starts")
        })
        .collect();
    for child in &mut children {
        let exit = wait_for_exit(child, Duration::from_secs(180), "the batch run").await;
        assert!(exit.success(), "{exit}");
    }
    assert_eq!(
        db.query_count("SELECT count(*) FROM enrichment_runs").await,
        mix().len() as i64,
        "every message done once"
    );
    let _ = publisher.close().await;
    delete_topology(&topology).await;
    results(&db).await
}

/// Results compared row for row; a difference names the rows, not the whole sets.
fn assert_same(got: &Results, want: &Results, what: &str) {
    same_rows(&got.hits, &want.hits, what, "hits");
    same_rows(&got.attributions, &want.attributions, what, "attributions");
    same_rows(&got.reputations, &want.reputations, what, "reputations");
}

/// One table's rows compared; a difference names at most 20 rows each way.
fn same_rows<T: Ord + std::fmt::Debug>(
    got: &BTreeSet<T>,
    want: &BTreeSet<T>,
    what: &str,
    table: &str,
) {
    let missing: Vec<_> = want.difference(got).take(20).collect();
    let extra: Vec<_> = got.difference(want).take(20).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {table} missing {missing:?}, {table} extra {extra:?}"
    );
}

#[tokio::test]
async fn the_same_mix_gives_the_same_hits_at_any_concurrency_and_with_several_workers() {
    let one_at_a_time = run(1, &["--concurrency", "1", "--item-concurrency", "1"]).await;
    assert!(
        one_at_a_time.hits.len() > 50,
        "the mix finds hits: {}",
        one_at_a_time.hits.len()
    );

    let wide = run(1, &["--concurrency", "64", "--group-commit", "1"]).await;
    assert_same(
        &wide,
        &one_at_a_time,
        "concurrency 64, a transaction per message",
    );

    let fleet = run(3, &["--concurrency", "32", "--share-lookups", "true"]).await;
    assert_same(
        &fleet,
        &one_at_a_time,
        "three workers sharing their lookups",
    );
}
