//! `report`'s query layer (the dashboard views) against a seeded database, and the summary
//! `demo` prints.

use chrono::{Duration, Utc};
use mdti_worker::chain::{ActorHit, Band};
use mdti_worker::lane::Lane;
use mdti_worker::store::WalkHits;

mod support;
use support::seed::{seed, REQUESTS_PER_ENRICHED_RUN};
use support::TestDb;

async fn seeded() -> TestDb {
    let db = TestDb::new().await;
    seed(&db.store).await;
    db
}

#[tokio::test]
async fn a_week_leaves_out_the_ten_day_old_runs_and_hits() {
    let db = seeded().await;
    let report = db
        .store
        .report(Utc::now() - Duration::days(7), 10)
        .await
        .unwrap();

    assert_eq!(
        report.outcomes,
        [
            ("cached".to_owned(), 1),
            ("enriched".to_owned(), 2),
            ("skipped".to_owned(), 1)
        ]
    );
    assert_eq!(report.graph_requests, 2 * REQUESTS_PER_ENRICHED_RUN as i64);
    assert_eq!(report.cache_hits, 1);
    assert_eq!(report.daily.len(), 1, "everything recent happened today");
    assert_eq!(report.daily[0].enriched, 2);

    let actors: Vec<(&str, i64, i64)> = report
        .top_actors
        .iter()
        .map(|a| (a.actor.as_str(), a.observables, a.artifacts))
        .collect();
    assert_eq!(actors, [("Forest Blizzard", 1, 2)]);
    // Its observable counts once, as high: the pair is as strong as its best hit (85), though
    // the other hit (55) is medium.
    let forest = &report.top_actors[0];
    assert_eq!(
        (
            forest.high_observables,
            forest.medium_observables,
            forest.low_observables,
            forest.best_confidence
        ),
        (1, 0, 0, 85)
    );
    let mut hits: Vec<(&str, i16, &str)> = report
        .recent_hits
        .iter()
        .map(|h| (h.artifact.as_str(), h.confidence, h.band.as_str()))
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [("20.30.40.50", 55, "medium"), ("evil-kit.net", 85, "high")]
    );

    let bands: Vec<(&str, i64)> = report.bands.iter().map(|(b, n)| (b.as_str(), *n)).collect();
    assert_eq!(bands, [("high", 1), ("medium", 0), ("low", 0)]);
    let attributions: Vec<(&str, &str, i16, &str, i32, bool)> = report
        .attributions
        .iter()
        .map(|a| {
            (
                a.actor.as_str(),
                a.observable.as_str(),
                a.confidence,
                a.band.as_str(),
                a.artifacts,
                a.event_owed,
            )
        })
        .collect();
    assert_eq!(
        attributions,
        [("Forest Blizzard", "evil-kit.net", 85, "high", 2, true)]
    );

    let rejections: Vec<(&str, i64)> = report
        .rejections
        .iter()
        .map(|r| (r.code.as_str(), r.rejections))
        .collect();
    assert_eq!(rejections, [("invalid_observable", 2), ("invalid_json", 1)]);

    let text = report.to_string();
    println!("{text}");
    assert!(text.contains("Forest Blizzard"), "{text}");
    assert!(text.contains("1 cached, 2 enriched, 1 skipped"), "{text}");
    assert!(!text.contains("Storm-0558"), "{text}");
    // The line holding `needle`, its runs of spaces (the column padding) collapsed first.
    let line = |needle: &str| {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{text}"))
    };
    assert!(line("top actors").contains("high, medium, low"), "{text}");
    // actor, high, medium, low, all observables, best, artifacts, hits, last hit.
    assert!(
        line("Forest Blizzard 1").starts_with("Forest Blizzard 1 0 0 1 85 2 2 "),
        "{text}"
    );
    assert_eq!(
        line("attributions (observable and actor)"),
        "attributions (observable and actor): 1 high, 0 medium, 0 low"
    );
    assert_eq!(
        line("85 high Forest Blizzard evil-kit.net"),
        "85 high Forest Blizzard evil-kit.net 2 artifact(s) [intel_article, reputation_rule] event owed"
    );
    assert!(
        line("via 20.30.40.50")
            .contains(" 55 medium Forest Blizzard evil-kit.net via 20.30.40.50 "),
        "{text}"
    );
}

#[tokio::test]
async fn a_month_takes_in_the_older_runs_and_actors() {
    let db = seeded().await;
    let report = db
        .store
        .report(Utc::now() - Duration::days(30), 10)
        .await
        .unwrap();
    assert_eq!(report.outcomes[1], ("enriched".to_owned(), 3));
    assert_eq!(report.daily.len(), 2);
    let actors: Vec<(&str, i64, i64, i64)> = report
        .top_actors
        .iter()
        .map(|a| {
            (
                a.actor.as_str(),
                a.high_observables,
                a.medium_observables,
                a.low_observables,
            )
        })
        .collect();
    assert_eq!(
        actors,
        [("Forest Blizzard", 1, 0, 0), ("Storm-0558", 0, 0, 1)]
    );
    let bands: Vec<(&str, i64)> = report.bands.iter().map(|(b, n)| (b.as_str(), *n)).collect();
    assert_eq!(bands, [("high", 1), ("medium", 0), ("low", 1)]);
    let attributions: Vec<(&str, i16, &str)> = report
        .attributions
        .iter()
        .map(|a| (a.actor.as_str(), a.confidence, a.band.as_str()))
        .collect();
    assert_eq!(
        attributions,
        [("Forest Blizzard", 85, "high"), ("Storm-0558", 35, "low")],
        "strongest first"
    );
    let text = report.to_string();
    assert!(text.contains("1 high, 0 medium, 1 low"), "{text}");

    let top_one = db
        .store
        .report(Utc::now() - Duration::days(30), 1)
        .await
        .unwrap();
    assert_eq!(top_one.top_actors.len(), 1);
    assert_eq!(top_one.recent_hits.len(), 1);
    assert_eq!(top_one.attributions.len(), 1);
    assert_eq!(top_one.bands.iter().map(|(_, n)| n).sum::<i64>(), 2);
}

#[tokio::test]
async fn an_actor_with_a_stronger_observable_outranks_one_with_more_weak_ones() {
    let db = seeded().await;
    // Storm-0558 gets two more observables, both low: three in all against Forest Blizzard's
    // one, which is high.
    for value in ["weak-1.net", "weak-2.net"] {
        let hit = ActorHit {
            actor: "Storm-0558".into(),
            profile_id: None,
            aliases: Vec::new(),
            artifact: value.into(),
            path: vec![value.into()],
            evidence: Vec::new(),
            first_seen: None,
            last_seen: None,
            confidence: 20,
            factors: Vec::new(),
        };
        db.store
            .record_actor_hits(WalkHits {
                observable: support::observable(value),
                run_id: None,
                context: None,
                hits: vec![hit],
                min_event_confidence: Band::MEDIUM,
            })
            .await
            .unwrap();
    }
    let report = db
        .store
        .report(Utc::now() - Duration::days(30), 10)
        .await
        .unwrap();
    let actors: Vec<(&str, i64, i64, i64)> = report
        .top_actors
        .iter()
        .map(|a| {
            (
                a.actor.as_str(),
                a.high_observables,
                a.low_observables,
                a.observables,
            )
        })
        .collect();
    assert_eq!(
        actors,
        [("Forest Blizzard", 1, 0, 1), ("Storm-0558", 0, 3, 3)]
    );
}

#[tokio::test]
async fn the_demo_summary_lists_attributions_by_band_strongest_first() {
    let db = seeded().await;
    // One event went out, for Forest Blizzard's pair.
    sqlx::query(
        "UPDATE actor_attributions SET owed = false, announced_band = band, \
         announced_kinds = evidence_kinds, announcements = 1, notified_at = now() \
         WHERE actor = 'Forest Blizzard'",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let summary = db.store.summary().await.unwrap();
    let bands: Vec<(Band, i64, i64)> = summary
        .bands
        .iter()
        .map(|b| (b.band, b.attributions, b.announced))
        .collect();
    assert_eq!(
        bands,
        [(Band::High, 1, 1), (Band::Medium, 0, 0), (Band::Low, 1, 0)]
    );
    // Each attribution as "actor observable confidence band: artifact confidence, ...".
    let attributions: Vec<String> = summary
        .attributions
        .iter()
        .map(|a| {
            let hits: Vec<String> = a.hits.iter().map(|(h, c)| format!("{h} {c}")).collect();
            format!(
                "{} {} {} {}: {}",
                a.actor,
                a.observable,
                a.confidence,
                a.band,
                hits.join(", ")
            )
        })
        .collect();
    assert_eq!(
        attributions,
        [
            "Forest Blizzard evil-kit.net 85 high: evil-kit.net 85, 20.30.40.50 55",
            "Storm-0558 2a01:111:f400::1 35 low: 2a01:111:f400::1 35",
        ]
    );
    let text = summary.to_string();
    println!("{text}");
    let mut many = summary.clone();
    many.attributions[0].hits = (1..=5).map(|i| (format!("10.0.0.{i}"), 50)).collect();
    assert!(
        many.to_string()
            .contains(" via 10.0.0.1 50, 10.0.0.2 50, 10.0.0.3 50, 2 more  [announced]\n"),
        "{many}"
    );
    assert!(
        text.contains("attributions (observable and actor): 1 high, 0 medium, 1 low; 1 announced"),
        "{text}"
    );
    assert!(
        text.contains(
            " 85 high    Forest Blizzard    evil-kit.net via evil-kit.net 85, 20.30.40.50 55  [announced]"
        ),
        "{text}"
    );
    assert!(
        text.contains(" 35 low     Storm-0558         2a01:111:f400::1 via 2a01:111:f400::1 35\n"),
        "{text}"
    );
}

#[tokio::test]
async fn the_report_shows_each_lanes_backlog_as_last_counted() {
    let db = seeded().await;
    db.store
        .record_lane_backlog(&[(Lane::Live, 7)])
        .await
        .unwrap();
    // A count taken two minutes ago, as a worker that stopped consuming would have left it.
    sqlx::query(
        "UPDATE lane_backlog SET observed_at = now() - interval '2 minutes' WHERE lane = 'live'",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let report = db
        .store
        .report(Utc::now() - Duration::days(7), 10)
        .await
        .unwrap();
    let backlog: Vec<(&str, Option<i64>)> = report
        .lane_backlog
        .iter()
        .map(|b| (b.lane.as_str(), b.ready_messages))
        .collect();
    assert_eq!(backlog, [("live", Some(7)), ("bulk", None)]);
    let age = report.lane_backlog[0].age_seconds.unwrap();
    assert!((119.0..180.0).contains(&age), "{age}");

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["lane_backlog"][0]["lane"], "live");
    assert_eq!(json["lane_backlog"][0]["ready_messages"], 7);
    assert!(json["lane_backlog"][0]["observed_at"].is_string(), "{json}");
    assert!(json["lane_backlog"][0]["age_seconds"].is_number(), "{json}");
    assert_eq!(json["lane_backlog"][1]["lane"], "bulk");
    assert!(
        json["lane_backlog"][1]["ready_messages"].is_null(),
        "{json}"
    );
    assert!(json["lane_backlog"][1]["age_seconds"].is_null(), "{json}");

    let text = report.to_string();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("live 7 message(s) ready, counted 2 min ago (")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "bulk not counted yet (no worker has consumed this lane)"),
        "{text}"
    );
}

#[tokio::test]
async fn an_empty_database_reports_nothing_rather_than_failing() {
    let db = TestDb::new().await;
    let report = db
        .store
        .report(Utc::now() - Duration::days(7), 10)
        .await
        .unwrap();
    assert!(report.outcomes.iter().all(|(_, runs)| *runs == 0));
    assert!(report.daily.is_empty() && report.top_actors.is_empty());
    assert!(report.to_string().contains("none"));
}
