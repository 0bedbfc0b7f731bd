//! Group commit against a real Postgres: the results of messages that finish while a
//! transaction is being written share the next one, each message is still answered only once
//! the transaction holding its rows committed, and a message the database refuses fails alone.
//!
//! Batches are made deterministic by holding a lock on `enrichment_runs` from another session:
//! both writers block on it with one message each, the rest queue behind them, and when the lock
//! is released the first free writer takes everything queued. The bulk linger is pinned with an
//! hour-long one: a batch that waited out the linger would never be answered within the test.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mdti_worker::chain::{ActorHit, Evidence};
use mdti_worker::enrich::{EnricherKind, Enrichment, Extract, ExtractKind};
use mdti_worker::lane::Lane;
use mdti_worker::observable::Observable;
use mdti_worker::progress;
use mdti_worker::store::{
    run_id, GroupCommitStats, MessageResults, Pending, RunRecord, RunStatus, Store, StoreError,
    WalkHits,
};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod support;
use support::{enricher_result, eventually, observable, TestDb};

const WAIT: Duration = Duration::from_secs(20);

/// Held by each test that puts messages in hand: a lingering batch asks the process-wide
/// progress whether any message in hand may still join it, so one test's messages would hold
/// another's batch.
static IN_HAND: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One enriched observable with one extract, and a walk that found one actor hit.
fn message(message_id: &str, value: &str) -> MessageResults {
    let observable = observable(value);
    let mut whois = enricher_result(EnricherKind::Whois);
    whois.extracts = vec![Extract {
        kind: ExtractKind::Email,
        value: format!("abuse@{value}"),
        field: "abuse.email".into(),
        country_code: None,
    }];
    let run = RunRecord {
        message_id: message_id.to_owned(),
        item_index: 0,
        source: Some("feed".into()),
        context: None,
        observable: observable.clone(),
        status: RunStatus::Enriched,
        detail: None,
        enrichers: vec![EnricherKind::Whois],
        graph_requests: 1,
        duration: Duration::from_millis(5),
        enrichment: Some(Enrichment {
            observable: observable.clone(),
            results: vec![whois],
            graph_requests: 1,
        }),
        lane: Lane::Bulk,
    };
    MessageResults {
        runs: vec![run],
        rejected: Vec::new(),
        walks: vec![WalkHits {
            observable: observable.clone(),
            run_id: Some(run_id(message_id, 0)),
            context: Some(json!({"message": message_id})),
            hits: vec![hit(&observable)],
            min_event_confidence: 40,
        }],
    }
}

fn hit(observable: &Observable) -> ActorHit {
    ActorHit {
        actor: "Aqua Blizzard".into(),
        profile_id: None,
        aliases: Vec::new(),
        artifact: observable.value().to_owned(),
        path: vec![observable.value().to_owned()],
        evidence: vec![Evidence::ProfileIndicator {
            profile_id: "p-aqua".into(),
            source: None,
            first_seen: None,
            last_seen: None,
        }],
        first_seen: None,
        last_seen: None,
        confidence: 60,
        factors: Vec::new(),
    }
}

type Answer = JoinHandle<(MessageResults, Result<Pending, StoreError>)>;

fn submit(store: &Store, results: MessageResults) -> Answer {
    let store = store.clone();
    tokio::spawn(async move { store.commit_results(results).await })
}

/// Messages `m-0`.. of hosts `host-0.com`..
fn submit_many(store: &Store, n: usize) -> Vec<Answer> {
    (0..n)
        .map(|i| submit(store, message(&format!("m-{i}"), &format!("host-{i}.com"))))
        .collect()
}

/// A session holding `enrichment_runs` against writers until it is dropped or committed.
async fn lock_runs(db: &TestDb) -> PgConnection {
    let mut session = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut session).await.unwrap();
    sqlx::query("LOCK TABLE enrichment_runs IN EXCLUSIVE MODE")
        .execute(&mut session)
        .await
        .unwrap();
    session
}

async fn writers_blocked(db: &TestDb, n: i64) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
        db.name
    );
    eventually(WAIT, &format!("{n} writers waiting on the lock"), || {
        let sql = sql.clone();
        async move { db.query_count(&sql).await == n }
    })
    .await;
}

async fn submitted(stats: &GroupCommitStats, n: u64) {
    eventually(WAIT, &format!("{n} messages handed over"), || async {
        stats.submitted.load(Ordering::Relaxed) == n
    })
    .await;
}

/// A store with group commit whose two writers are each blocked on the lock with one message;
/// returns their answers.
async fn writers_held(db: &TestDb, stats: &Arc<GroupCommitStats>) -> (Store, Vec<Answer>) {
    let store = db
        .store
        .clone()
        .with_group_commit(64, Duration::ZERO, Arc::clone(stats));
    let mut answers = Vec::new();
    for n in 1..=2 {
        answers.push(submit(
            &store,
            message(&format!("opener-{n}"), &format!("opener-{n}.com")),
        ));
        writers_blocked(db, n).await;
    }
    (store, answers)
}

#[tokio::test]
async fn messages_finishing_together_share_one_transaction_and_each_gets_its_hits() {
    let db = TestDb::new().await;
    let stats = Arc::new(GroupCommitStats::default());
    let lock = lock_runs(&db).await;
    let (store, openers) = writers_held(&db, &stats).await;

    let queued = submit_many(&store, 38);
    submitted(&stats, 40).await;
    lock.close().await.unwrap();

    for (i, answer) in queued.into_iter().enumerate() {
        let (results, pending) = answer.await.unwrap();
        let pending = pending.expect("committed");
        assert_eq!(
            results.runs[0].message_id,
            format!("m-{i}"),
            "its own results back"
        );
        assert_eq!(pending.len(), 1, "one walk");
        assert_eq!(pending[0].len(), 1, "its one new attribution, to announce");
        assert_eq!(pending[0][0].actor, "Aqua Blizzard");
    }
    for answer in openers {
        assert!(answer.await.unwrap().1.is_ok());
    }
    assert_eq!(stats.committed.load(Ordering::Relaxed), 40);
    assert_eq!(
        stats.transactions.load(Ordering::Relaxed),
        3,
        "the two held openers, then the 38 queued behind them in one"
    );
    assert_eq!(db.count("enrichment_runs").await, 40);
    assert_eq!(db.count("extracts").await, 40);
    assert_eq!(db.count("actor_hits").await, 40);
}

#[tokio::test]
async fn a_message_the_database_refuses_fails_alone_and_the_rest_of_its_batch_commits() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF NEW.message_id = 'poison' THEN \
                 RAISE EXCEPTION 'poison refused' USING ERRCODE = 'check_violation'; \
             END IF; \
             RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT ON enrichment_runs \
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let stats = Arc::new(GroupCommitStats::default());
    let lock = lock_runs(&db).await;
    let (store, openers) = writers_held(&db, &stats).await;

    let good = submit_many(&store, 10);
    let poison = submit(&store, message("poison", "poison.com"));
    submitted(&stats, 13).await;
    lock.close().await.unwrap();

    let (_, refused) = poison.await.unwrap();
    let error = refused.expect_err("the poisoned message fails");
    assert!(!error.is_transient(), "{error}");
    assert_eq!(error.sqlstate().as_deref(), Some("23514"));
    for answer in good.into_iter().chain(openers) {
        let (results, outcome) = answer.await.unwrap();
        assert!(
            outcome.is_ok(),
            "{}: {outcome:?}",
            results.runs[0].message_id
        );
    }
    assert_eq!(
        stats.split.load(Ordering::Relaxed),
        1,
        "the batch of 11 split once"
    );
    assert_eq!(stats.committed.load(Ordering::Relaxed), 12);
    assert_eq!(db.count("enrichment_runs").await, 12);
    assert_eq!(
        db.query_count("SELECT count(*) FROM observables WHERE value = 'poison.com'")
            .await,
        0,
        "nothing of the refused message was kept"
    );
}

#[tokio::test]
async fn two_deliveries_of_one_observable_in_a_batch_write_its_hit_and_attribution_once() {
    let db = TestDb::new().await;
    let stats = Arc::new(GroupCommitStats::default());
    let lock = lock_runs(&db).await;
    let (store, openers) = writers_held(&db, &stats).await;

    let first = submit(&store, message("a", "shared.com"));
    let second = submit(&store, message("b", "shared.com"));
    submitted(&stats, 4).await;
    lock.close().await.unwrap();

    let first = first.await.unwrap().1.expect("committed");
    let second = second.await.unwrap().1.expect("committed");
    for answer in openers {
        assert!(answer.await.unwrap().1.is_ok());
    }
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 3);
    assert_eq!(first[0], second[0], "both name the same attribution");
    assert_eq!(first[0].len(), 1);
    assert_eq!(
        db.query_count(
            "SELECT count(*) FROM actor_attributions a JOIN observables o \
             ON o.id = a.observable_id WHERE a.owed AND o.value = 'shared.com'"
        )
        .await,
        1,
        "one row, so one event"
    );
    assert_eq!(
        db.query_count("SELECT count(*) FROM actor_hits WHERE artifact = 'shared.com'")
            .await,
        1
    );
    assert_eq!(db.count("enrichment_runs").await, 4, "both runs kept");
}

/// A message of `lane` handed over from a task the process counts as a message in hand.
fn submit_in_hand(store: &Store, id: &str, lane: Lane, go: oneshot::Receiver<()>) -> Answer {
    let store = store.clone();
    let mut results = message(id, &format!("{id}.com"));
    results.runs[0].lane = lane;
    let id = id.to_owned();
    tokio::spawn(progress::global().track(&id.clone(), async move {
        let _ = go.await;
        store.commit_results(results).await
    }))
}

/// The hold on the process's messages in hand ([`IN_HAND`]), a test database, and a store on it
/// with group commit whose bulk batches linger an hour: a batch that waited out the linger would
/// never be answered within the test.
async fn lingering_an_hour() -> (
    tokio::sync::MutexGuard<'static, ()>,
    TestDb,
    Store,
    Arc<GroupCommitStats>,
) {
    let in_hand = IN_HAND.lock().await;
    let db = TestDb::new().await;
    let stats = Arc::new(GroupCommitStats::default());
    let hour = Duration::from_secs(3600);
    let store = db
        .store
        .clone()
        .with_group_commit(64, hour, Arc::clone(&stats));
    (in_hand, db, store, stats)
}

/// The answer, which must come within the test's wait and say committed.
async fn committed_within_the_test(answer: Answer, what: &str) {
    let (_, written) = tokio::time::timeout(WAIT, answer)
        .await
        .expect(what)
        .unwrap();
    written.unwrap();
}

#[tokio::test]
async fn bulk_messages_finishing_apart_share_a_transaction_and_a_live_one_waits_for_none() {
    let (_in_hand, db, store, stats) = lingering_an_hour().await;
    let (first_go, first) = oneshot::channel();
    let (second_go, second) = oneshot::channel();
    let bulk = [
        submit_in_hand(&store, "bulk-1", Lane::Bulk, first),
        submit_in_hand(&store, "bulk-2", Lane::Bulk, second),
    ];

    // Two bulk messages in hand, not finished: a live message is written at once.
    let (live_go, live) = oneshot::channel();
    let live = submit_in_hand(&store, "live-1", Lane::Live, live);
    live_go.send(()).unwrap();
    committed_within_the_test(live, "live waits for no one").await;
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 1);

    // The first bulk message waits for the second, handed over later; once every message in
    // hand is in the batch, it is written (an hour's linger is not waited out).
    first_go.send(()).unwrap();
    submitted(&stats, 2).await;
    assert_eq!(
        stats.committed.load(Ordering::Relaxed),
        1,
        "the first bulk one waits"
    );
    second_go.send(()).unwrap();
    for answer in bulk {
        committed_within_the_test(answer, "the batch is written").await;
    }
    assert_eq!(stats.committed.load(Ordering::Relaxed), 3);
    assert_eq!(
        stats.transactions.load(Ordering::Relaxed),
        2,
        "the two bulk ones together"
    );
    assert_eq!(
        db.query_count("SELECT count(*) FROM enrichment_runs").await,
        3
    );
}

#[tokio::test]
async fn a_bulk_batch_does_not_wait_for_a_repeat_that_waits_for_its_commit() {
    let (_in_hand, _db, store, stats) = lingering_an_hour().await;
    // Another message in hand, a repeat of an observable being enriched: it waits for that
    // enrichment's rows, so it cannot join the batch before the batch commits.
    let (rows_go, rows) = oneshot::channel();
    let repeat = in_hand_waiting("repeat-1", progress::point::REPEAT, rows, async {});
    let (go, first) = oneshot::channel();
    let bulk = submit_in_hand(&store, "bulk-1", Lane::Bulk, first);

    go.send(()).unwrap();
    committed_within_the_test(bulk, "the batch is written without waiting out the linger").await;
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 1);
    rows_go.send(()).unwrap();
    repeat.await.unwrap();
}

#[tokio::test]
async fn a_bulk_batch_does_not_wait_for_a_message_whose_results_are_already_committed() {
    let (_in_hand, _db, store, stats) = lingering_an_hour().await;
    // A message whose rows are committed but which is still in hand (acking, say).
    let (committed_tx, committed) = oneshot::channel();
    let (acked_tx, acked) = oneshot::channel::<()>();
    let acking = {
        let store = store.clone();
        tokio::spawn(progress::global().track("acking-1", async move {
            let (_, written) = store
                .commit_results(message("acking-1", "acking-1.com"))
                .await;
            let _ = committed_tx.send(written.is_ok());
            let _ = acked.await;
        }))
    };
    assert!(tokio::time::timeout(WAIT, committed)
        .await
        .unwrap()
        .unwrap());

    let (go, next) = oneshot::channel();
    let bulk = submit_in_hand(&store, "bulk-1", Lane::Bulk, next);
    go.send(()).unwrap();
    committed_within_the_test(bulk, "the batch is written without waiting out the linger").await;
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 2);
    acked_tx.send(()).unwrap();
    acking.await.unwrap();
}

/// A message in hand that may still finish: it waits at `point` until `go`, and `then` decides
/// what it does next (nothing, when it leaves).
fn in_hand_waiting(
    id: &str,
    point: &'static str,
    go: oneshot::Receiver<()>,
    then: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(progress::global().track(id, async move {
        let _ = progress::wait_at(point, go).await;
        then.await
    }))
}

/// A bulk message in hand whose results were handed over: its batch lingers for company.
async fn bulk_lingering(store: &Store, stats: &GroupCommitStats) -> Answer {
    let (go, next) = oneshot::channel();
    let bulk = submit_in_hand(store, "bulk-1", Lane::Bulk, next);
    go.send(()).unwrap();
    submitted(stats, 1).await;
    bulk
}

#[tokio::test]
async fn a_lingering_bulk_batch_is_written_once_the_last_message_that_could_join_leaves() {
    let (_in_hand, _db, store, stats) = lingering_an_hour().await;
    // A message waiting for Graph that will fail and leave without results (retried later).
    let (fails_go, fails) = oneshot::channel();
    let failing = in_hand_waiting("failing-1", progress::point::GRAPH_ANSWER, fails, async {});
    let bulk = bulk_lingering(&store, &stats).await;

    fails_go.send(()).unwrap();
    failing.await.unwrap();
    committed_within_the_test(bulk, "the batch is written once nothing can join it").await;
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_lingering_bulk_batch_is_written_once_the_last_message_that_could_join_turns_repeat() {
    let (_in_hand, _db, store, stats) = lingering_an_hour().await;
    // A message waiting for Graph, then for another message's rows of its observable: once
    // it waits for those, it cannot join the batch before the batch commits.
    let (answer_go, answer) = oneshot::channel();
    let (rows_go, rows) = oneshot::channel::<()>();
    let repeat = in_hand_waiting("repeat-1", progress::point::GRAPH_ANSWER, answer, async {
        let _ = progress::wait_at(progress::point::REPEAT, rows).await;
    });
    let bulk = bulk_lingering(&store, &stats).await;

    answer_go.send(()).unwrap();
    committed_within_the_test(bulk, "the batch is written once nothing can join it").await;
    assert_eq!(stats.transactions.load(Ordering::Relaxed), 1);
    rows_go.send(()).unwrap();
    repeat.await.unwrap();
}
