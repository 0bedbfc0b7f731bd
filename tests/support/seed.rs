//! A small, known picture written through the store's own write path, for the tests of what
//! reads it back (dashboards, `report`, `export`).
//!
//! - message `m-1` (now): `evil-kit.net` enriched (malicious, score 90, a whois indicator),
//!   `contoso.com` enriched (no reputation), `8.8.8.8` cached, `10.0.0.1` skipped;
//! - message `m-0` (moved ten days back): `login-update.info` enriched (suspicious, 55);
//! - actor hits: Forest Blizzard (profile `pid-forest`, alias APT28) on `evil-kit.net` itself
//!   (confidence 85, high) and via the counterpart `20.30.40.50` (55, medium); Storm-0558 (no
//!   profile) on `2a01:111:f400::1` itself (35, low; its hit and attribution moved ten days back; the
//!   observable has no run);
//! - rejections: two `invalid_observable` (m-1 items 4 and 5) and one `invalid_json` (m-2).

use std::time::Duration;

use chrono::{TimeZone, Utc};
use mdti_worker::chain::{ActorHit, Evidence, Factor};
use mdti_worker::enrich::{EnricherKind, Enrichment, Indicator, Reputation};
use mdti_worker::lane::Lane;
use mdti_worker::observable::{normalise, NormaliseOptions, Normalised, Observable};
use mdti_worker::store::{RejectedInput, RunRecord, RunStatus, Store, WalkHits};

use super::{enricher_result, observable};

/// Graph requests each enriched run of the seed cost.
pub const REQUESTS_PER_ENRICHED_RUN: u64 = 4;

fn enrichment(observable: &Observable, reputation: Option<(&str, i32)>) -> Enrichment {
    let mut whois = enricher_result(EnricherKind::Whois);
    whois.indicator = Some(Indicator {
        id: format!(
            "{{https://graph.microsoft.com}}Indicator-{}",
            observable.value()
        ),
        title: format!("whois {}", observable.value()),
        description: None,
        threat_start_time: None,
        threat_end_time: None,
        observed_time: Some(Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()),
        timestamp: None,
        labels: vec!["whoisServer: whois.example".into()],
    });
    let mut results = vec![whois];
    if let Some((classification, score)) = reputation {
        let mut reputation_result = enricher_result(EnricherKind::Reputation);
        reputation_result.reputation = Some(Reputation {
            classification: Some(classification.into()),
            score: Some(score),
            rules: Default::default(),
        });
        results.push(reputation_result);
    }
    Enrichment {
        observable: observable.clone(),
        results,
        graph_requests: REQUESTS_PER_ENRICHED_RUN,
    }
}

fn run(message: &str, index: i32, observable: Observable, status: RunStatus) -> RunRecord {
    RunRecord {
        message_id: message.into(),
        item_index: index,
        source: Some("feed-a".into()),
        context: None,
        observable,
        status,
        detail: (status == RunStatus::Skipped).then(|| "private address".into()),
        enrichers: vec![EnricherKind::Whois, EnricherKind::Reputation],
        graph_requests: if status == RunStatus::Enriched {
            REQUESTS_PER_ENRICHED_RUN
        } else {
            0
        },
        duration: Duration::from_millis(120),
        enrichment: None,
        lane: Lane::Bulk,
    }
}

fn enriched(message: &str, index: i32, value: &str, reputation: Option<(&str, i32)>) -> RunRecord {
    let observable = observable(value);
    RunRecord {
        enrichment: Some(enrichment(&observable, reputation)),
        ..run(message, index, observable, RunStatus::Enriched)
    }
}

fn rejected(message: &str, index: i32, input: &str, code: &str, reason: &str) -> RejectedInput {
    RejectedInput {
        message_id: message.into(),
        item_index: index,
        input: input.into(),
        code: code.into(),
        reason: reason.into(),
        source: Some("feed-a".into()),
        context: None,
        attempts: 1,
        lane: Lane::Bulk,
    }
}

/// A scored hit of `actor` on `ioc` through `artifact`, with a reputation rule's evidence (and an
/// article's when the actor has a profile).
pub fn hit(
    actor: &str,
    profile: Option<&str>,
    ioc: &str,
    artifact: &str,
    confidence: u8,
) -> ActorHit {
    let mut evidence = vec![Evidence::ReputationRule {
        rule: "Cyber Threat Intelligence".into(),
        severity: Some("high".into()),
        score: Some(90),
        classification: Some("malicious".into()),
    }];
    if profile.is_some() {
        evidence.push(Evidence::IntelArticle {
            title: Some("A phishing campaign".into()),
            article_id: Some("a1b2c3".into()),
            url: Some("https://ti.defender.microsoft.com/articles/a1b2c3".into()),
        });
    }
    ActorHit {
        actor: actor.into(),
        profile_id: profile.map(str::to_owned),
        aliases: if profile.is_some() {
            vec!["APT28".into()]
        } else {
            Vec::new()
        },
        artifact: artifact.into(),
        path: if ioc == artifact {
            vec![ioc.into()]
        } else {
            vec![ioc.into(), artifact.into()]
        },
        evidence,
        first_seen: Some(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()),
        last_seen: Some(Utc.with_ymd_and_hms(2024, 4, 1, 0, 0, 0).unwrap()),
        confidence,
        factors: vec![Factor {
            factor: "link".into(),
            detail: "as seeded".into(),
            points: i32::from(confidence),
        }],
    }
}

/// The hits of one walk of `value`, announced from the default threshold.
pub fn walk(value: &str, hits: Vec<ActorHit>) -> WalkHits {
    WalkHits {
        observable: observable(value),
        run_id: None,
        context: None,
        hits,
        min_event_confidence: 40,
    }
}

/// Write the picture described in the module documentation into `store`.
pub async fn seed(store: &Store) {
    let private = match normalise("10.0.0.1", None, &NormaliseOptions::default()) {
        Ok(Normalised::Skipped { observable, .. }) => observable,
        other => panic!("10.0.0.1 should be skipped: {other:?}"),
    };
    store
        .record_message(
            &[enriched(
                "m-0",
                0,
                "login-update.info",
                Some(("suspicious", 55)),
            )],
            &[],
        )
        .await
        .unwrap();
    store
        .record_message(
            &[
                enriched("m-1", 0, "evil-kit.net", Some(("malicious", 90))),
                enriched("m-1", 1, "contoso.com", None),
                run("m-1", 2, observable("8.8.8.8"), RunStatus::Cached),
                run("m-1", 3, private, RunStatus::Skipped),
            ],
            &[
                rejected(
                    "m-1",
                    4,
                    "me@contoso.com",
                    "invalid_observable",
                    "an e-mail address",
                ),
                rejected(
                    "m-1",
                    5,
                    "*.contoso.com",
                    "invalid_observable",
                    "a wildcard",
                ),
            ],
        )
        .await
        .unwrap();
    store
        .record_rejection(&rejected(
            "m-2",
            -1,
            "{not json",
            "invalid_json",
            "expected value",
        ))
        .await
        .unwrap();

    let forest = |artifact: &str, confidence: u8| {
        hit(
            "Forest Blizzard",
            Some("pid-forest"),
            "evil-kit.net",
            artifact,
            confidence,
        )
    };
    store
        .record_actor_hits(walk(
            "evil-kit.net",
            vec![forest("evil-kit.net", 85), forest("20.30.40.50", 55)],
        ))
        .await
        .unwrap();
    let v6 = "2a01:111:f400::1";
    store
        .record_actor_hits(walk(v6, vec![hit("Storm-0558", None, v6, v6, 35)]))
        .await
        .unwrap();

    // Age the old message and the Storm-0558 hit, for the time windows.
    let pool = store.pool();
    sqlx::query("UPDATE enrichment_runs SET created_at = now() - interval '10 days' WHERE message_id = 'm-0'")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE observables SET first_seen_at = now() - interval '10 days', \
         last_enriched_at = now() - interval '10 days' WHERE value IN ('login-update.info', '2a01:111:f400::1')",
    )
    .execute(pool)
    .await
    .unwrap();
    // Its attribution goes with it, as a walk ten days ago would have left it.
    for table in ["actor_hits", "actor_attributions"] {
        sqlx::query(&format!(
            "UPDATE {table} SET created_at = now() - interval '10 days', \
             updated_at = now() - interval '10 days' WHERE actor = 'Storm-0558'"
        ))
        .execute(pool)
        .await
        .unwrap();
    }
}
