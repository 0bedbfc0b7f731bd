//! `report`'s query layer (the dashboard views) against a seeded database.

use chrono::{Duration, Utc};

mod support;
use support::seed::{seed, REQUESTS_PER_ENRICHED_RUN};
use support::TestDb;

#[tokio::test]
async fn a_week_leaves_out_the_ten_day_old_runs_and_hits() {
    let db = TestDb::new().await;
    seed(&db.store).await;
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
    let mut hits: Vec<&str> = report
        .recent_hits
        .iter()
        .map(|h| h.artifact.as_str())
        .collect();
    hits.sort();
    assert_eq!(hits, ["20.30.40.50", "evil-kit.net"]);

    let rejections: Vec<(&str, i64)> = report
        .rejections
        .iter()
        .map(|r| (r.code.as_str(), r.rejections))
        .collect();
    assert_eq!(rejections, [("invalid_observable", 2), ("invalid_json", 1)]);

    let text = report.to_string();
    assert!(text.contains("Forest Blizzard"), "{text}");
    assert!(text.contains("1 cached, 2 enriched, 1 skipped"), "{text}");
    assert!(!text.contains("Storm-0558"), "{text}");
}

#[tokio::test]
async fn a_month_takes_in_the_older_runs_and_actors() {
    let db = TestDb::new().await;
    seed(&db.store).await;
    let report = db
        .store
        .report(Utc::now() - Duration::days(30), 10)
        .await
        .unwrap();
    assert_eq!(report.outcomes[1], ("enriched".to_owned(), 3));
    assert_eq!(report.daily.len(), 2);
    let actors: Vec<&str> = report.top_actors.iter().map(|a| a.actor.as_str()).collect();
    assert_eq!(actors, ["Forest Blizzard", "Storm-0558"]);

    let top_one = db
        .store
        .report(Utc::now() - Duration::days(30), 1)
        .await
        .unwrap();
    assert_eq!(top_one.top_actors.len(), 1);
    assert_eq!(top_one.recent_hits.len(), 1);
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
