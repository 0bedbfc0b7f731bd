//! The Postgres store against a real server: each test gets its own freshly created and
//! migrated database (`mdti_test_<uuid>`), dropped when the test ends, passed or not.
//!
//! The server is `MDTI_TEST_DATABASE_URL` (its path, if any, is replaced by the test database's
//! name), by default `postgres://postgres@127.0.0.1:5432`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use foldhash::HashMap;
use mdti_worker::enrich::{
    EnricherKind, Enrichment, Extract, ExtractKind, Indicator, Reputation, ReputationRule,
};
use mdti_worker::lane::Lane;
use mdti_worker::model::Fanout;
use mdti_worker::observable::Observable;
use mdti_worker::service::Problem;
use mdti_worker::store::{
    run_id, KeptRowsStats, RejectedInput, RunRecord, RunStatus, Store, StoreError, PING_AFTER_IDLE,
};
use serde_json::json;
use uuid::Uuid;

mod support;
use support::{enricher_result as result, observable, seed, TestDb, TABLES};

const HOUR: Duration = Duration::from_secs(3600);

fn extract(kind: ExtractKind, value: &str, field: &str) -> Extract {
    Extract {
        kind,
        value: value.to_owned(),
        field: field.to_owned(),
        country_code: None,
    }
}

fn reputation() -> Reputation {
    Reputation {
        classification: Some("malicious".into()),
        score: Some(92),
        rules: vec![ReputationRule {
            name: Some("Cyber Threat Intelligence".into()),
            description: Some(json!(["seen in a campaign", "listed"])),
            severity: Some("high".into()),
            related_details_url: Some("https://example.test/rule".into()),
        }]
        .into(),
    }
}

/// A whois, host and reputation enrichment of `observable`.
fn enrichment(observable: &Observable) -> Enrichment {
    let mut whois = result(EnricherKind::Whois);
    whois.indicator = Some(Indicator {
        id: format!(
            "{{https://graph.microsoft.com}}Indicator-{}",
            Uuid::new_v5(&Uuid::NAMESPACE_DNS, observable.value().as_bytes())
        ),
        title: format!("whois {}", observable.value()),
        description: Some("registered by Contoso".into()),
        threat_start_time: Some(Utc.with_ymd_and_hms(2020, 1, 2, 3, 4, 5).unwrap()),
        threat_end_time: None,
        observed_time: Some(Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()),
        timestamp: None,
        labels: vec!["whois".into(), "registrar:markmonitor".into()],
    });
    whois.extracts = vec![
        extract(ExtractKind::Email, "abuse@contoso.com", "abuse.email"),
        extract(ExtractKind::Email, "admin@contoso.com", "registrant.email"),
        // The same mailbox under another field is another extract.
        extract(ExtractKind::Email, "admin@contoso.com", "admin.email"),
        Extract {
            country_code: Some("US".into()),
            ..extract(ExtractKind::Country, "United States", "registrant.country")
        },
        extract(ExtractKind::Registrar, "MarkMonitor Inc.", "registrar.name"),
    ];
    let mut host = result(EnricherKind::Host);
    host.truncated = true;
    host.extracts = vec![
        extract(ExtractKind::Asn, "8075", "asn"),
        Extract {
            country_code: Some("IE".into()),
            ..extract(ExtractKind::Country, "Ireland", "location.countryName")
        },
    ];
    let mut rep = result(EnricherKind::Reputation);
    rep.reputation = Some(reputation());
    Enrichment {
        observable: observable.clone(),
        results: vec![whois, host, rep],
        graph_requests: 3,
    }
}

const ENRICHERS: [EnricherKind; 3] = [
    EnricherKind::Whois,
    EnricherKind::Host,
    EnricherKind::Reputation,
];

fn run(message_id: &str, item_index: i32, observable: &Observable, status: RunStatus) -> RunRecord {
    let enriched = status == RunStatus::Enriched;
    RunRecord {
        message_id: message_id.to_owned(),
        item_index,
        source: Some("feed-a".into()),
        context: Some(json!({"ticket": 42, "tags": ["x"]})),
        observable: observable.clone(),
        status,
        detail: (status == RunStatus::Skipped).then(|| "private address".to_owned()),
        enrichers: ENRICHERS.to_vec(),
        graph_requests: if enriched { 3 } else { 0 },
        duration: Duration::from_millis(250),
        enrichment: enriched.then(|| enrichment(observable)),
        lane: Lane::Bulk,
    }
}

fn rejection(message_id: &str, item_index: i32, attempts: i32) -> RejectedInput {
    RejectedInput {
        message_id: message_id.to_owned(),
        item_index,
        input: "not an observable".into(),
        code: "invalid_observable".into(),
        reason: "not an IP address or a DNS name".into(),
        source: Some("feed-a".into()),
        context: None,
        attempts,
        lane: Lane::Bulk,
    }
}

#[tokio::test]
async fn migrations_apply_on_a_fresh_database() {
    let db = TestDb::new().await;
    for table in TABLES {
        assert_eq!(db.count(table).await, 0, "{table}");
    }
    // Applying again is a no-op.
    db.store.migrate().await.unwrap();
    assert_eq!(db.store.run_count().await.unwrap(), 0);
}

/// Checks on `enricher_results.enricher`: the enricher names are known to the code alone.
async fn enricher_checks(db: &TestDb) -> i64 {
    db.query_count(
        "SELECT count(*) FROM pg_constraint \
         WHERE conrelid = 'enricher_results'::regclass AND contype = 'c' \
           AND pg_get_constraintdef(oid) LIKE '%enricher%'",
    )
    .await
}

/// A result stored under an enricher name the first schema did not list.
async fn store_result_of_an_unlisted_enricher(db: &TestDb) {
    let pool = db.store.pool();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO observables (kind, value) VALUES ('domain', 'contoso.com') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO enricher_results (observable_id, enricher, found) VALUES ($1, $2, true)",
    )
    .bind(id)
    .bind("certificates")
    .execute(pool)
    .await
    .expect("any enricher name is stored");
    assert_eq!(
        db.query_count("SELECT count(*) FROM enricher_results WHERE enricher = 'certificates'")
            .await,
        1
    );
}

#[tokio::test]
async fn the_latest_schema_stores_any_enricher_name() {
    let db = TestDb::new().await;
    assert_eq!(enricher_checks(&db).await, 0);
    store_result_of_an_unlisted_enricher(&db).await;
}

#[tokio::test]
async fn a_database_at_the_previous_schema_drops_its_enricher_check() {
    // A database of its own, migrated only up to 0012, as one deployed before 0013 is.
    let db = TestDb::new().await;
    let mut url = url::Url::parse(&db.url).unwrap();
    let name = format!("{}_old", db.name);
    url.set_path(&name);
    Store::create_database_if_missing(url.as_str())
        .await
        .unwrap();
    let old = TestDb {
        store: Store::connect(url.as_str(), 2).await.unwrap(),
        name,
        url: url.to_string(),
        admin_url: db.admin_url.clone(),
    };
    let mut before = sqlx::migrate::Migrator::new(std::path::Path::new("./migrations"))
        .await
        .unwrap();
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 13)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(old.store.pool()).await.unwrap();
    assert_eq!(
        old.query_count(
            "SELECT count(*) FROM pg_constraint \
             WHERE conname = 'enricher_results_enricher_check'"
        )
        .await,
        1,
        "0001's check, under the name Postgres gave it"
    );

    old.store.migrate().await.unwrap();
    assert_eq!(enricher_checks(&old).await, 0);
    store_result_of_an_unlisted_enricher(&old).await;
}

#[tokio::test]
async fn create_database_if_missing_is_idempotent() {
    let db = TestDb::new().await;
    let mut url = url::Url::parse(&db.admin_url).unwrap();
    url.set_path(&db.name);
    Store::create_database_if_missing(url.as_str())
        .await
        .unwrap();
}

#[tokio::test]
async fn recording_a_message_twice_leaves_the_same_rows() {
    let db = TestDb::new().await;
    let google = observable("8.8.8.8");
    let contoso = observable("contoso.com");
    let runs = vec![
        run("msg-1", 0, &google, RunStatus::Enriched),
        run("msg-1", 1, &contoso, RunStatus::Enriched),
        run(
            "msg-1",
            2,
            &observable("www.contoso.com"),
            RunStatus::Cached,
        ),
        run("msg-1", 3, &observable("1.1.1.1"), RunStatus::Skipped),
    ];
    let rejected = vec![rejection("msg-1", 4, 1)];

    db.store.record_message(&runs, &rejected).await.unwrap();
    let first = db.counts().await;
    assert_eq!(
        first,
        vec![
            ("observables", 4),
            ("enrichment_runs", 4),
            ("enricher_results", 6),
            ("indicators", 2),
            ("extracts", 14),
            ("reputations", 2),
            ("rejected_inputs", 1),
        ]
    );

    db.store.record_message(&runs, &rejected).await.unwrap();
    assert_eq!(db.counts().await, first);
    assert_eq!(db.store.run_count().await.unwrap(), 4);

    // The run ids are the deterministic ones, and the columns hold what was recorded.
    let row: (
        Uuid,
        String,
        String,
        Vec<String>,
        i32,
        i32,
        serde_json::Value,
    ) = sqlx::query_as(
        "SELECT id, status, source, enrichers, graph_requests, duration_ms, context \
         FROM enrichment_runs WHERE message_id = 'msg-1' AND item_index = 0",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(row.0, run_id("msg-1", 0));
    assert_eq!(row.1, "enriched");
    assert_eq!(row.2, "feed-a");
    assert_eq!(row.3, vec!["whois", "host", "reputation"]);
    assert_eq!((row.4, row.5), (3, 250));
    assert_eq!(row.6, json!({"ticket": 42, "tags": ["x"]}));

    let skipped: (String, Option<String>, Option<chrono::DateTime<Utc>>) = sqlx::query_as(
        "SELECT r.status, r.detail, o.last_enriched_at FROM enrichment_runs r \
         JOIN observables o ON o.id = r.observable_id WHERE r.item_index = 3",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(skipped.0, "skipped");
    assert_eq!(skipped.1.as_deref(), Some("private address"));
    assert_eq!(skipped.2, None);

    let indicator: (String, Vec<String>, Option<chrono::DateTime<Utc>>, Uuid) = sqlx::query_as(
        "SELECT i.title, i.labels, i.threat_start_time, i.run_id FROM indicators i \
         JOIN observables o ON o.id = i.observable_id WHERE o.value = 'contoso.com'",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(indicator.0, "whois contoso.com");
    assert_eq!(indicator.1, vec!["whois", "registrar:markmonitor"]);
    assert_eq!(
        indicator.2,
        Some(Utc.with_ymd_and_hms(2020, 1, 2, 3, 4, 5).unwrap())
    );
    assert_eq!(indicator.3, run_id("msg-1", 1));

    let truncated: bool = sqlx::query_scalar(
        "SELECT truncated FROM enricher_results e JOIN observables o ON o.id = e.observable_id \
         WHERE o.value = '8.8.8.8' AND e.enricher = 'host'",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(truncated);
}

#[tokio::test]
async fn extracts_are_written_in_bulk_and_read_back() {
    let db = TestDb::new().await;
    // Many observables in one message, each with its own extracts and some shared ones.
    let observables: Vec<Observable> = (1..=100)
        .map(|i| observable(&format!("20.{i}.0.1")))
        .collect();
    let runs: Vec<RunRecord> = observables
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut run = run("bulk", i as i32, o, RunStatus::Enriched);
            let enrichment = run.enrichment.as_mut().unwrap();
            let mut pdns = result(EnricherKind::PassiveDns);
            pdns.extracts = (0..10)
                .map(|j| extract(ExtractKind::Host, &format!("h{j}.{i}.example"), "hostname"))
                .collect();
            enrichment.results.push(pdns);
            run
        })
        .collect();
    db.store.record_message(&runs, &[]).await.unwrap();
    assert_eq!(db.count("observables").await, 100);
    assert_eq!(db.count("extracts").await, 100 * (7 + 10));

    let read = db.store.extracts_for(&observables[0]).await.unwrap();
    assert_eq!(read.len(), 17);
    let wanted = enrichment(&observables[0]);
    for written in wanted.results.iter().flat_map(|r| &r.extracts) {
        assert!(read.contains(written), "{written:?} not read back");
    }
    let country = read
        .iter()
        .find(|e| e.field == "registrant.country")
        .unwrap();
    assert_eq!(country.kind, ExtractKind::Country);
    assert_eq!(country.value, "United States");
    assert_eq!(country.country_code.as_deref(), Some("US"));
    assert!(read.iter().any(|e| e.kind == ExtractKind::Host
        && e.value == "h9.0.example"
        && e.field == "hostname"));

    let by_enricher = db
        .store
        .enricher_extracts_for(&observables[0])
        .await
        .unwrap();
    assert_eq!(
        by_enricher
            .iter()
            .filter(|(e, _)| *e == EnricherKind::PassiveDns)
            .count(),
        10
    );

    // Pivot: every observable sharing an abuse mailbox.
    let sharing: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT observable_id) FROM extracts \
         WHERE kind = 'EMAIL' AND value = 'abuse@contoso.com'",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(sharing, 100);

    // An observable with nothing stored reads back empty.
    assert!(db
        .store
        .extracts_for(&observable("9.9.9.9"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn repeats_within_one_message_are_merged() {
    let db = TestDb::new().await;
    let google = observable("8.8.8.8");
    let mut first = run("dup", 0, &google, RunStatus::Enriched);
    // The same extract twice in one result, and the same indicator in two results.
    let enrichment = first.enrichment.as_mut().unwrap();
    let repeated = enrichment.results[0].extracts[0].clone();
    enrichment.results[0].extracts.push(repeated);
    enrichment.results.push(enrichment.results[0].clone());
    let runs = vec![
        first,
        run("dup", 1, &google, RunStatus::Enriched),
        run("dup", 1, &google, RunStatus::Enriched),
    ];
    db.store
        .record_message(&runs, &[rejection("dup", 9, 1), rejection("dup", 9, 2)])
        .await
        .unwrap();
    assert_eq!(db.count("observables").await, 1);
    assert_eq!(db.count("enrichment_runs").await, 2);
    assert_eq!(db.count("indicators").await, 1);
    assert_eq!(db.count("extracts").await, 7);
    assert_eq!(db.count("rejected_inputs").await, 1);
}

#[tokio::test]
async fn freshness_follows_the_enrichers_fetched() {
    let db = TestDb::new().await;
    let google = observable("8.8.8.8");
    assert!(!db.store.is_fresh(&google, &ENRICHERS, HOUR).await.unwrap());

    db.store
        .record_message(&[run("m", 0, &google, RunStatus::Enriched)], &[])
        .await
        .unwrap();
    assert!(db.store.is_fresh(&google, &ENRICHERS, HOUR).await.unwrap());
    assert!(db
        .store
        .is_fresh(&google, &[EnricherKind::Whois, EnricherKind::Whois], HOUR)
        .await
        .unwrap());
    // An enricher never fetched.
    assert!(!db
        .store
        .is_fresh(
            &google,
            &[EnricherKind::Whois, EnricherKind::PassiveDns],
            HOUR
        )
        .await
        .unwrap());
    assert!(!db
        .store
        .is_fresh(&google, &ENRICHERS, Duration::ZERO)
        .await
        .unwrap());
    // Another observable.
    assert!(!db
        .store
        .is_fresh(&observable("contoso.com"), &ENRICHERS, HOUR)
        .await
        .unwrap());

    // A fetch older than the TTL is stale.
    sqlx::query("UPDATE enricher_results SET fetched_at = now() - interval '2 hours'")
        .execute(db.store.pool())
        .await
        .unwrap();
    assert!(!db.store.is_fresh(&google, &ENRICHERS, HOUR).await.unwrap());
    assert!(db
        .store
        .is_fresh(&google, &ENRICHERS, 3 * HOUR)
        .await
        .unwrap());
    assert!(db
        .store
        .is_fresh(&google, &ENRICHERS, Duration::MAX)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_redelivery_found_cached_keeps_the_enriched_run() {
    let db = TestDb::new().await;
    let google = observable("8.8.8.8");
    db.store
        .record_message(&[run("m", 0, &google, RunStatus::Enriched)], &[])
        .await
        .unwrap();
    db.store
        .record_message(&[run("m", 0, &google, RunStatus::Cached)], &[])
        .await
        .unwrap();
    let (status, requests): (String, i32) =
        sqlx::query_as("SELECT status, graph_requests FROM enrichment_runs WHERE message_id = 'm'")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), requests), ("enriched", 3));

    // Skipped, then enriched on redelivery: the later outcome wins.
    db.store
        .record_message(&[run("n", 0, &google, RunStatus::Skipped)], &[])
        .await
        .unwrap();
    db.store
        .record_message(&[run("n", 0, &google, RunStatus::Enriched)], &[])
        .await
        .unwrap();
    let status: String =
        sqlx::query_scalar("SELECT status FROM enrichment_runs WHERE message_id = 'n'")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(status, "enriched");
}

#[tokio::test]
async fn rejected_inputs_are_upserted_once() {
    let db = TestDb::new().await;
    let mut long = rejection("bad", -1, 1);
    long.input = format!("{}\0{}", "é".repeat(600), "x".repeat(600));
    long.context = Some(json!({"note": "nul \u{0} inside"}));
    db.store.record_rejection(&long).await.unwrap();
    db.store.record_rejection(&long).await.unwrap();
    db.store
        .record_rejection(&RejectedInput {
            attempts: 3,
            ..long.clone()
        })
        .await
        .unwrap();
    db.store
        .record_rejection(&rejection("bad", 2, 1))
        .await
        .unwrap();

    let rejected = db.store.rejected().await.unwrap();
    assert_eq!(rejected.len(), 2);
    let whole = rejected.iter().find(|r| r.item_index == -1).unwrap();
    assert_eq!(whole.attempts, 3);
    assert_eq!(whole.input.chars().count(), 1_000);
    assert_eq!(
        whole.input,
        format!("{}{}", "é".repeat(600), "x".repeat(400))
    );
    assert_eq!(whole.context, Some(json!({"note": "nul  inside"})));
    assert_eq!(whole.code, "invalid_observable");
    assert_eq!(whole.source.as_deref(), Some("feed-a"));

    // A later successful run of the item supersedes its rejection.
    db.store
        .record_message(
            &[run("bad", 2, &observable("8.8.4.4"), RunStatus::Cached)],
            &[],
        )
        .await
        .unwrap();
    let rejected = db.store.rejected().await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].item_index, -1);
}

#[tokio::test]
async fn cached_reputation_respects_the_ttl() {
    let db = TestDb::new().await;
    let host = "counterpart.example";
    assert_eq!(db.store.cached_reputation(host, HOUR).await.unwrap(), None);

    db.store.save_reputation(host, &reputation()).await.unwrap();
    assert_eq!(
        db.store.cached_reputation(host, HOUR).await.unwrap(),
        Some(reputation())
    );
    assert_eq!(
        db.store
            .cached_reputation(host, Duration::ZERO)
            .await
            .unwrap(),
        None
    );

    sqlx::query("UPDATE reputations SET fetched_at = now() - interval '2 hours'")
        .execute(db.store.pool())
        .await
        .unwrap();
    assert_eq!(db.store.cached_reputation(host, HOUR).await.unwrap(), None);
    assert_eq!(
        db.store.cached_reputation(host, 3 * HOUR).await.unwrap(),
        Some(reputation())
    );

    // Saving again refreshes it, and overwrites.
    let benign = Reputation {
        classification: Some("neutral".into()),
        score: None,
        rules: vec![].into(),
    };
    db.store.save_reputation(host, &benign).await.unwrap();
    assert_eq!(
        db.store.cached_reputation(host, HOUR).await.unwrap(),
        Some(benign)
    );
    assert_eq!(db.count("reputations").await, 1);

    // An enriched observable's reputation is cached under its value.
    let google = observable("8.8.8.8");
    db.store
        .record_message(&[run("m", 0, &google, RunStatus::Enriched)], &[])
        .await
        .unwrap();
    assert_eq!(
        db.store.cached_reputation("8.8.8.8", HOUR).await.unwrap(),
        Some(reputation())
    );
}

#[tokio::test]
async fn stored_reputation_rules_this_build_cannot_read_are_a_miss_not_an_error() {
    let db = TestDb::new().await;
    let host = "counterpart.example";
    db.store.save_reputation(host, &reputation()).await.unwrap();
    for unreadable in [r#"{"name": "not a list"}"#, r#"[{"name": 7}]"#, "null"] {
        sqlx::query("UPDATE reputations SET rules = $1::jsonb")
            .bind(unreadable)
            .execute(db.store.pool())
            .await
            .unwrap();
        assert_eq!(
            db.store.cached_reputation(host, HOUR).await.unwrap(),
            None,
            "{unreadable}"
        );
    }
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let url = "postgres://postgres@127.0.0.1:1/mdti";
    // At the start: PostgreSQL is missing, not refusing (the way forward is to start it).
    let error = Store::create_database_if_missing(url).await.unwrap_err();
    assert_eq!(error.problem(), Problem::Unreachable, "{error:?}");

    // Lazy: connecting succeeds, the first query fails (after the acquire timeout).
    let store = Store::connect(url, 1).await.unwrap();
    let error = store.run_count().await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
}

/// A store of its own on `db` that has used its one session and taken it back, then had it
/// ended from outside (from the test database's own pool), the session gone before this
/// returns.
async fn store_whose_session_was_ended(db: &TestDb) -> Store {
    let name = format!("store-sessions-{}", Uuid::new_v4().simple());
    let store = Store::connect(&format!("{}?application_name={name}", db.url), 2)
        .await
        .unwrap();
    store.run_count().await.unwrap();
    // Back in the pool (sqlx pings it there, in a task of its own) before it is ended.
    for _ in 0..100 {
        if store.pool().num_idle() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.pool().num_idle(),
        1,
        "the session went back to the pool"
    );
    let sessions = "FROM pg_stat_activity WHERE application_name = $1";
    let count = |sql: String| {
        let name = name.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .bind(name)
                .fetch_one(db.store.pool())
                .await
                .unwrap()
        }
    };
    let ended = format!("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) {sessions}");
    assert_eq!(count(ended).await, 1);
    for _ in 0..100 {
        if count(format!("SELECT count(*) {sessions}")).await == 0 {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the ended session is still listed after 2 s");
}

#[tokio::test]
async fn a_session_ended_moments_after_its_last_statement_fails_the_next_one_transiently() {
    let db = TestDb::new().await;
    let store = store_whose_session_was_ended(&db).await;

    // Not pinged again so soon after it answered: the statement meets the ended session,
    // fails in a way a message is retried for, and the pool replaces the session.
    let error = store.run_count().await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(store.run_count().await.unwrap(), 0);
}

#[tokio::test]
async fn a_session_ended_while_long_idle_is_replaced_before_a_statement_meets_it() {
    let db = TestDb::new().await;
    let store = store_whose_session_was_ended(&db).await;

    tokio::time::sleep(PING_AFTER_IDLE + Duration::from_secs(1)).await;
    assert_eq!(store.run_count().await.unwrap(), 0);
}

#[tokio::test]
async fn constraint_violations_are_not_transient() {
    let db = TestDb::new().await;
    let insert = "INSERT INTO observables (kind, value) VALUES ('ipv4', '8.8.8.8')";
    sqlx::query(insert).execute(db.store.pool()).await.unwrap();
    let error = StoreError::from(
        sqlx::query(insert)
            .execute(db.store.pool())
            .await
            .unwrap_err(),
    );
    assert_eq!(error.sqlstate().as_deref(), Some("23505"));
    assert!(!error.is_transient(), "{error:?}");

    let error = StoreError::from(
        sqlx::query("SELEKT 1")
            .execute(db.store.pool())
            .await
            .unwrap_err(),
    );
    assert!(!error.is_transient(), "{error:?}");
}

#[tokio::test]
async fn nothing_to_record_is_a_no_op() {
    let db = TestDb::new().await;
    db.store.record_message(&[], &[]).await.unwrap();
    assert_eq!(db.store.run_count().await.unwrap(), 0);
    assert!(db.store.rejected().await.unwrap().is_empty());
    assert!(db
        .store
        .is_fresh(&observable("8.8.8.8"), &[], HOUR)
        .await
        .unwrap());
}

#[tokio::test]
async fn concurrent_messages_sharing_observables_do_not_deadlock() {
    let db = TestDb::new().await;
    let observables: Vec<Observable> = (1..=20)
        .map(|i| observable(&format!("20.0.{i}.1")))
        .collect();
    let tasks: Vec<_> = (0..8)
        .map(|m| {
            let store = db.store.clone();
            let mut items = observables.clone();
            // Each message names the shared observables in another order.
            if m % 2 == 1 {
                items.reverse();
            }
            items.rotate_left(m * 3 % 20);
            tokio::spawn(async move {
                let runs: Vec<RunRecord> = items
                    .iter()
                    .enumerate()
                    .map(|(i, o)| run(&format!("c{m}"), i as i32, o, RunStatus::Enriched))
                    .collect();
                store.record_message(&runs, &[]).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(db.count("observables").await, 20);
    assert_eq!(db.count("enrichment_runs").await, 8 * 20);
    assert_eq!(db.count("extracts").await, 20 * 7);
}

#[tokio::test]
async fn a_reputation_lookup_is_claimed_by_one_worker_until_released_or_run_out() {
    let db = TestDb::new().await;
    let hosts = vec!["52.1.0.1".to_owned(), "52.1.0.2".to_owned()];
    let claim = |hold| db.store.claim_reputation_lookups(&hosts, hold);
    let held = || async {
        db.store
            .held_reputation_lookups(&hosts)
            .await
            .unwrap()
            .len()
    };

    let first = claim(HOUR).await.unwrap();
    assert_eq!(first.hosts.len(), 2, "nobody held them");
    assert!(
        claim(HOUR).await.unwrap().hosts.is_empty(),
        "held by the first claim"
    );
    assert_eq!(held().await, 2);
    db.store.release_reputation_lookups(&first).await.unwrap();
    assert_eq!(held().await, 0);

    // A holder that never released (it died): its claim runs out and is taken over; its late
    // release leaves the new holder's claim alone.
    let stale = claim(Duration::ZERO).await.unwrap();
    assert_eq!(stale.hosts.len(), 2);
    let taken_over = claim(HOUR).await.unwrap();
    assert_eq!(
        taken_over.hosts.len(),
        2,
        "a claim that ran out is taken over"
    );
    db.store.release_reputation_lookups(&stale).await.unwrap();
    assert_eq!(held().await, 2, "still the new holder's");
}

#[tokio::test]
async fn a_batch_of_new_and_stored_observables_writes_each_extract_once() {
    let db = TestDb::new().await;
    let stored = observable("20.1.0.1");
    let new = observable("20.2.0.1");
    db.store
        .record_message(&[run("first", 0, &stored, RunStatus::Enriched)], &[])
        .await
        .unwrap();
    let before = db.count("extracts").await;
    a_day_passes(&db).await;

    // One transaction: the stored observable's extracts are upserted, the new one's inserted.
    let runs = [
        run("second", 0, &stored, RunStatus::Enriched),
        run("second", 1, &new, RunStatus::Enriched),
    ];
    db.store.record_message(&runs, &[]).await.unwrap();
    assert_eq!(db.count("observables").await, 2);
    assert_eq!(db.count("extracts").await, 2 * before);
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM extracts_seen WHERE last_seen_at < now() - interval '1 hour'",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(stale, 0, "the stored observable's extracts were seen again");
    assert_eq!(
        db.store.extracts_for(&new).await.unwrap().len() as i64,
        before
    );
}

/// The tables holding what was written about an observable, each with its `observable_id`.
const DEPENDENTS: [&str; 6] = [
    "enrichment_runs",
    "enricher_results",
    "indicators",
    "extracts",
    "actor_hits",
    "actor_attributions",
];

/// The tables whose rows name the run that wrote them.
const RUN_LINKED: [&str; 3] = ["enricher_results", "indicators", "extracts"];

/// How many rows of each dependent table are about the observable `id`.
async fn rows_about(db: &TestDb, id: i64) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for table in DEPENDENTS {
        let sql = format!("SELECT count(*) FROM {table} WHERE observable_id = {id}");
        counts.push((table, db.query_count(&sql).await));
    }
    counts
}

/// The id of `observable`'s row.
async fn id_of(db: &TestDb, observable: &Observable) -> i64 {
    sqlx::query_scalar("SELECT id FROM observables WHERE value = $1")
        .bind(observable.value())
        .fetch_one(db.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn deleting_observables_and_runs_still_reaches_what_was_written_about_them() {
    let db = TestDb::new().await;
    let kept = observable("20.1.0.1");
    let dropped = observable("20.2.0.1");
    let runs = [
        run("m", 0, &dropped, RunStatus::Enriched),
        run("m", 1, &kept, RunStatus::Enriched),
    ];
    db.store.record_message(&runs, &[]).await.unwrap();
    for ioc in [&kept, &dropped] {
        let hit = seed::hit("Storm-0558", None, ioc.value(), ioc.value(), 50);
        db.store
            .record_actor_hits(seed::walk(ioc.value(), vec![hit]))
            .await
            .unwrap();
    }
    let (kept_id, dropped_id) = (id_of(&db, &kept).await, id_of(&db, &dropped).await);
    let kept_before = rows_about(&db, kept_id).await;
    assert!(kept_before.iter().all(|(_, n)| *n > 0), "{kept_before:?}");

    // A pruned run leaves the rows it wrote without a run, as a foreign key's SET NULL did.
    sqlx::query("DELETE FROM enrichment_runs WHERE id = $1")
        .bind(run_id("m", 0))
        .execute(db.store.pool())
        .await
        .unwrap();
    for table in RUN_LINKED {
        let sql = format!("SELECT count(*) FROM {table} WHERE observable_id = {dropped_id}");
        let unlinked = format!("{sql} AND run_id IS NULL");
        let all = db.query_count(&sql).await;
        assert!(all > 0, "{table}");
        assert_eq!(db.query_count(&unlinked).await, all, "{table}");
    }

    // A deleted observable takes everything written about it, as the foreign keys' CASCADE did.
    sqlx::query("DELETE FROM observables WHERE value = $1")
        .bind(dropped.value())
        .execute(db.store.pool())
        .await
        .unwrap();
    let left = rows_about(&db, dropped_id).await;
    assert!(left.iter().all(|(_, n)| *n == 0), "{left:?}");
    assert_eq!(rows_about(&db, kept_id).await, kept_before);
    assert!(db.store.extracts_for(&dropped).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_cache_reads_each_get_their_own_answer() {
    let db = TestDb::new().await;
    db.store
        .save_reputation("fresh.example", &reputation())
        .await
        .unwrap();
    db.store
        .save_reputation("old.example", &reputation())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE reputations SET fetched_at = now() - interval '2 hours' WHERE host = 'old.example'",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let enriched = observable("20.1.0.1");
    db.store
        .record_message(&[run("m", 0, &enriched, RunStatus::Enriched)], &[])
        .await
        .unwrap();

    // Asked all at once, so that they share statements: each ask keeps its own hosts and TTL.
    let hosts = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let asks = (0..60).map(|i| {
        let store = db.store.clone();
        let (names, ttl) = match i % 3 {
            0 => (hosts(&["fresh.example", "old.example"]), HOUR),
            1 => (
                hosts(&["fresh.example", "old.example", "unknown.example"]),
                3 * HOUR,
            ),
            _ => (hosts(&["old.example"]), HOUR),
        };
        async move { (i, store.cached_reputations(&names, ttl).await.unwrap()) }
    });
    for (i, found) in futures::future::join_all(asks).await {
        let mut found: Vec<String> = found.into_keys().collect();
        found.sort();
        let wanted = match i % 3 {
            0 => vec!["fresh.example"],
            1 => vec!["fresh.example", "old.example"],
            _ => vec![],
        };
        assert_eq!(found, wanted, "ask {i}");
    }

    let fresh = (0..60).map(|i| {
        let store = db.store.clone();
        let asked = if i % 2 == 0 {
            enriched.clone()
        } else {
            observable("20.9.0.1")
        };
        async move { (i, store.is_fresh(&asked, &ENRICHERS, HOUR).await.unwrap()) }
    });
    for (i, fresh) in futures::future::join_all(fresh).await {
        assert_eq!(fresh, i % 2 == 0, "ask {i}");
    }
}

#[tokio::test]
async fn leads_read_together_are_what_each_cache_holds_apart() {
    let db = TestDb::new().await;
    for host in [
        "both.example",
        "old-reputation.example",
        "reputation.example",
    ] {
        db.store.save_reputation(host, &reputation()).await.unwrap();
    }
    let fanouts: HashMap<String, Fanout> = [
        "both.example",
        "old-reputation.example",
        "old-fanout.example",
    ]
    .iter()
    .enumerate()
    .map(|(i, host)| {
        (
            host.to_string(),
            Fanout {
                names: i as u32 + 1,
                more: i == 2,
            },
        )
    })
    .collect();
    db.store.save_fanouts(&fanouts).await.unwrap();
    for (table, host) in [
        ("reputations", "old-reputation.example"),
        ("host_fanout", "old-fanout.example"),
    ] {
        sqlx::query(&format!(
            "UPDATE {table} SET fetched_at = now() - interval '2 hours' WHERE host = $1"
        ))
        .bind(host)
        .execute(db.store.pool())
        .await
        .unwrap();
    }

    // Asked all at once, so that they share statements, each with its own TTL.
    let hosts: Vec<String> = [
        "both.example",
        "old-reputation.example",
        "reputation.example",
        "old-fanout.example",
        "unknown.example",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let asks = (0..40).map(|i| {
        let (store, hosts) = (db.store.clone(), hosts.clone());
        let ttl = if i % 2 == 0 { HOUR } else { 3 * HOUR };
        async move { (ttl, store.cached_leads(&hosts, ttl).await.unwrap()) }
    });
    for (ttl, leads) in futures::future::join_all(asks).await {
        let apart = (
            db.store.cached_reputations(&hosts, ttl).await.unwrap(),
            db.store.cached_fanouts(&hosts, ttl).await.unwrap(),
        );
        assert_eq!((leads.reputations, leads.fanouts), apart, "TTL {ttl:?}");
    }
    let within_an_hour = db.store.cached_leads(&hosts, HOUR).await.unwrap();
    let mut reputations: Vec<_> = within_an_hour.reputations.into_keys().collect();
    reputations.sort();
    assert_eq!(reputations, ["both.example", "reputation.example"]);
    let mut fanouts: Vec<_> = within_an_hour.fanouts.into_iter().collect();
    fanouts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        fanouts,
        [
            (
                "both.example".to_string(),
                Fanout {
                    names: 1,
                    more: false
                }
            ),
            (
                "old-reputation.example".to_string(),
                Fanout {
                    names: 2,
                    more: false
                }
            ),
        ]
    );
    let unread = db.store.cached_leads(&hosts, Duration::ZERO).await.unwrap();
    assert_eq!(unread, Default::default());
}

/// Move every stored time a day back, as if the last fetch had been yesterday.
async fn a_day_passes(db: &TestDb) {
    for statement in [
        "UPDATE extracts SET first_seen_at = first_seen_at - interval '1 day', \
             last_seen_at = last_seen_at - interval '1 day'",
        "UPDATE enricher_results SET fetched_at = fetched_at - interval '1 day', \
             unchanged_since = unchanged_since - interval '1 day'",
    ] {
        sqlx::query(statement)
            .execute(db.store.pool())
            .await
            .unwrap();
    }
}

/// Each extract's row version (`xmin` changes whenever the row is written) and its last
/// sighting as `extracts_seen` gives it, by (enricher, value, field).
async fn extract_versions(db: &TestDb) -> Vec<(String, String, String, String, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT x.enricher, x.value, x.field, x.xmin::text, s.last_seen_at \
         FROM extracts x JOIN extracts_seen s USING (observable_id, enricher, kind, value, field) \
         ORDER BY 1, 2, 3",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap()
}

async fn whois_fetched_at(db: &TestDb) -> (DateTime<Utc>, DateTime<Utc>) {
    sqlx::query_as(
        "SELECT fetched_at, unchanged_since FROM enricher_results WHERE enricher = 'whois'",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn an_unchanged_answer_leaves_its_extracts_alone_yet_counts_as_seen() {
    let db = TestDb::new().await;
    let stored = observable("20.1.0.1");
    let enriched = |message: &str| run(message, 0, &stored, RunStatus::Enriched);
    db.store
        .record_message(&[enriched("first")], &[])
        .await
        .unwrap();
    a_day_passes(&db).await;
    let (first_fetch, _) = whois_fetched_at(&db).await;
    let before = extract_versions(&db).await;

    db.store
        .record_message(&[enriched("second")], &[])
        .await
        .unwrap();
    let after = extract_versions(&db).await;
    let (second_fetch, since) = whois_fetched_at(&db).await;
    assert_eq!(
        since, first_fetch,
        "the answer took its form at the first fetch"
    );
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.3, new.3, "{} {} was written again", new.1, new.2);
        assert_eq!(
            new.4, second_fetch,
            "{} {} was seen by the second fetch",
            new.1, new.2
        );
    }

    // The third answer drops one whois mailbox and brings another.
    let mut third = enriched("third");
    let whois = &mut third.enrichment.as_mut().unwrap().results[0];
    whois.extracts.retain(|e| e.value != "abuse@contoso.com");
    whois.extracts.push(extract(
        ExtractKind::Email,
        "new@contoso.com",
        "abuse.email",
    ));
    db.store.record_message(&[third], &[]).await.unwrap();
    let (third_fetch, since) = whois_fetched_at(&db).await;
    assert_eq!(since, third_fetch, "the whois answer changed");
    for (enricher, value, field, version, seen) in extract_versions(&db).await {
        let expected = match (enricher.as_str(), value.as_str()) {
            ("whois", "abuse@contoso.com") => second_fetch,
            ("whois", _) => third_fetch,
            // The host answer did not change: its rows stay as the first fetch wrote them.
            _ => {
                let old = before
                    .iter()
                    .find(|b| b.1 == value && b.2 == field)
                    .unwrap();
                assert_eq!(old.3, version, "{value} {field} was written again");
                third_fetch
            }
        };
        assert_eq!(
            seen, expected,
            "last sighting of {enricher} {value} {field}"
        );
    }
}

#[tokio::test]
async fn a_remembering_store_gives_back_what_it_read_within_the_ttl_and_reads_saved_hosts_again() {
    let db = TestDb::new().await;
    let stats = Arc::new(KeptRowsStats::default());
    let store = db.store.clone().remembering_leads(Arc::clone(&stats));
    let host = "counterpart.example".to_string();
    let wide = Fanout {
        names: 30,
        more: true,
    };
    store.save_reputation(&host, &reputation()).await.unwrap();
    store
        .save_fanouts(&HashMap::from_iter([(host.clone(), wide)]))
        .await
        .unwrap();
    for table in ["reputations", "host_fanout"] {
        sqlx::query(&format!(
            "UPDATE {table} SET fetched_at = now() - interval '2 hours'"
        ))
        .execute(db.store.pool())
        .await
        .unwrap();
    }
    let hosts = [host.clone()];
    let leads = store.cached_leads(&hosts, 3 * HOUR).await.unwrap();
    assert_eq!(leads.reputations[&host], reputation());
    assert_eq!(leads.fanouts[&host], wide);

    // Read once, the rows are kept with their age: gone from Postgres, they are still given
    // within a TTL they are younger than, and not within one they are older than.
    for table in ["reputations", "host_fanout"] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(db.store.pool())
            .await
            .unwrap();
    }
    assert_eq!(store.cached_leads(&hosts, 3 * HOUR).await.unwrap(), leads);
    let counted = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(
        (counted(&stats.answered), counted(&stats.read)),
        (1, 1),
        "read once from Postgres, then answered from memory"
    );
    assert_eq!(
        store.cached_reputation(&host, 3 * HOUR).await.unwrap(),
        Some(reputation())
    );
    assert_eq!(
        store.cached_fanouts(&hosts, 3 * HOUR).await.unwrap()[&host],
        wide
    );
    assert_eq!(
        store.cached_leads(&hosts, HOUR).await.unwrap(),
        Default::default()
    );
    assert_eq!(store.cached_reputation(&host, HOUR).await.unwrap(), None);

    // A host saved anew is read again: the new row, not the one kept.
    let benign = Reputation {
        classification: Some("neutral".into()),
        score: None,
        rules: vec![].into(),
    };
    store.save_reputation(&host, &benign).await.unwrap();
    assert_eq!(
        store.cached_reputation(&host, 3 * HOUR).await.unwrap(),
        Some(benign)
    );
    // The store it was made from keeps nothing: it reads Postgres every time.
    assert_eq!(
        db.store.cached_fanouts(&hosts, 3 * HOUR).await.unwrap(),
        HashMap::default()
    );
}
