//! The Grafana dashboard (`grafana/dashboards/mdti.json`) and the `dash_*` views it reads
//! (`migrations/0004_views.sql`): every panel's SQL runs against a freshly migrated, seeded
//! database, and the views say what the seeded rows imply.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;

mod support;
use support::seed::{seed, REQUESTS_PER_ENRICHED_RUN};
use support::TestDb;

const DASHBOARD: &str = include_str!("../grafana/dashboards/mdti.json");

/// (panel title, rawSql) of every query of every panel, rows' nested panels included.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let sql = target["rawSql"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?} has a target without rawSql"));
                out.push((title.clone(), sql.to_owned()));
            }
            if let Some(nested) = panel["panels"].as_array() {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    out
}

/// Expand the Grafana macros the dashboard uses as Grafana does for a time range; any other
/// macro is an error, so a new one cannot slip in untested.
fn expand(sql: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(start) = rest.find("$__timeFilter(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "$__timeFilter(".len()..];
        let end = after.find(')').expect("a closed $__timeFilter(");
        out.push_str(&format!(
            "{} BETWEEN '{}' AND '{}'",
            &after[..end],
            from.to_rfc3339(),
            to.to_rfc3339()
        ));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    assert!(
        !out.contains("$__"),
        "a macro this test does not expand: {out}"
    );
    out
}

async fn run_panel(db: &TestDb, dashboard: &Value, title: &str, days: i64) -> Vec<PgRow> {
    let (_, sql) = panel_queries(dashboard)
        .into_iter()
        .find(|(t, _)| t == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"));
    let now = Utc::now();
    sqlx::query(&expand(
        &sql,
        now - Duration::days(days),
        now + Duration::hours(1),
    ))
    .fetch_all(db.store.pool())
    .await
    .unwrap_or_else(|error| panic!("panel {title:?}: {error}"))
}

async fn seeded() -> TestDb {
    let db = TestDb::new().await;
    seed(&db.store).await;
    db
}

#[tokio::test]
async fn every_panel_query_runs_on_a_migrated_database() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let queries = panel_queries(&dashboard);
    assert!(
        queries.len() >= 4,
        "the dashboard has its panels: {queries:?}"
    );
    for needed in [
        "dash_actor_hits_daily",
        "dash_top_actors",
        "dash_throughput_hourly",
        "dash_rejections",
    ] {
        assert!(
            queries.iter().any(|(_, sql)| sql.contains(needed)),
            "no panel reads {needed}"
        );
    }

    let db = seeded().await;
    let now = Utc::now();
    for (title, sql) in &queries {
        let rows = sqlx::query(&expand(
            sql,
            now - Duration::days(30),
            now + Duration::hours(1),
        ))
        .fetch_all(db.store.pool())
        .await
        .unwrap_or_else(|error| panic!("panel {title:?} failed: {error}\n{sql}"));
        assert!(
            !rows.is_empty(),
            "panel {title:?} shows nothing for the seeded rows"
        );
    }
}

#[tokio::test]
async fn panels_show_what_the_seeded_rows_imply() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let db = seeded().await;

    // Both actors within a month; only Forest Blizzard within a week (Storm-0558's hit is ten
    // days old).
    let top = run_panel(&db, &dashboard, "Top actors", 30).await;
    let top: Vec<(String, i64, i64, i64)> = top
        .iter()
        .map(|r| {
            (
                r.get("actor"),
                r.get("observables"),
                r.get("artifacts"),
                r.get("hits"),
            )
        })
        .collect();
    assert_eq!(
        top,
        [
            ("Forest Blizzard".to_owned(), 1, 2, 2),
            ("Storm-0558".to_owned(), 1, 1, 1)
        ]
    );
    let week = run_panel(&db, &dashboard, "Top actors", 7).await;
    assert_eq!(week.len(), 1);

    let outcomes = run_panel(&db, &dashboard, "Enrichments by outcome", 7).await;
    let outcomes: Vec<(String, i64)> = outcomes
        .iter()
        .map(|r| (r.get("status"), r.get("runs")))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("cached".to_owned(), 1),
            ("enriched".to_owned(), 2),
            ("skipped".to_owned(), 1)
        ]
    );

    let rejections = run_panel(&db, &dashboard, "Latest rejections", 7).await;
    let mut codes: Vec<String> = rejections.iter().map(|r| r.get("code")).collect();
    codes.sort();
    assert_eq!(
        codes,
        ["invalid_json", "invalid_observable", "invalid_observable"]
    );
}

#[tokio::test]
async fn views_summarise_the_seeded_rows() {
    let db = seeded().await;
    let pool = db.store.pool();

    // Today (UTC): two enriched runs, one cached, one skipped; the old message ten days back.
    let today: Vec<(String, i64, i64)> = sqlx::query(
        "SELECT status, runs, graph_requests FROM dash_enrichments_daily \
         WHERE day = date_trunc('day', now(), 'UTC') ORDER BY status",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("status"), r.get("runs"), r.get("graph_requests")))
    .collect();
    let requests = REQUESTS_PER_ENRICHED_RUN as i64;
    assert_eq!(
        today,
        [
            ("cached".to_owned(), 1, 0),
            ("enriched".to_owned(), 2, 2 * requests),
            ("skipped".to_owned(), 1, 0)
        ]
    );

    let usage = sqlx::query(
        "SELECT graph_requests, cache_hits, cache_hit_ratio::float8 AS ratio \
         FROM dash_graph_usage_daily WHERE day = date_trunc('day', now(), 'UTC')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(usage.get::<i64, _>("graph_requests"), 2 * requests);
    assert_eq!(usage.get::<i64, _>("cache_hits"), 1);
    assert_eq!(usage.get::<f64, _>("ratio"), 0.333);

    let indicators: Vec<String> =
        sqlx::query_scalar("SELECT observable FROM dash_latest_indicators ORDER BY observable")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        indicators,
        ["contoso.com", "evil-kit.net", "login-update.info"]
    );

    let hits: Vec<(String, String, Vec<String>)> = sqlx::query(
        "SELECT observable, artifact, evidence_sources FROM dash_actor_hits \
         WHERE actor = 'Forest Blizzard' ORDER BY artifact",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("observable"),
            r.get("artifact"),
            r.get("evidence_sources"),
        )
    })
    .collect();
    let sources = vec!["intel_article".to_owned(), "reputation_rule".to_owned()];
    assert_eq!(
        hits,
        [
            (
                "evil-kit.net".to_owned(),
                "20.30.40.50".to_owned(),
                sources.clone()
            ),
            (
                "evil-kit.net".to_owned(),
                "evil-kit.net".to_owned(),
                sources
            )
        ]
    );

    let per_code: Vec<(String, i64)> =
        sqlx::query("SELECT code, rejections FROM dash_rejections_daily ORDER BY code")
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("code"), r.get("rejections")))
            .collect();
    assert_eq!(
        per_code,
        [
            ("invalid_json".to_owned(), 1),
            ("invalid_observable".to_owned(), 2)
        ]
    );
}
