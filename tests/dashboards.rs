//! The Grafana dashboard (`grafana/dashboards/mdti.json`) and the `dash_*` views it reads
//! (`migrations/0004_views.sql`, `migrations/0010_attribution_views.sql`,
//! `migrations/0012_lane_views.sql`): every panel's SQL runs
//! against a freshly migrated, seeded database, the views say what the seeded rows imply, and
//! the dashboard colours confidences by the model's bands.

use chrono::{DateTime, Duration, Utc};
use mdti_worker::chain::Band;
use mdti_worker::lane::Lane;
use mdti_worker::store::{RunRecord, RunStatus};
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
        "dash_attributions",
        "dash_attributions_daily",
        "dash_lane_backlog",
        "dash_lane_throughput_minutely",
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
    // days old). Forest Blizzard's observable counts once, as high: its pair is as strong as
    // its best hit (85), though the other hit (55) is medium.
    let top = run_panel(&db, &dashboard, "Top actors", 30).await;
    // actor, high, medium, low, observables, best confidence, artifacts, hits.
    type TopActor = (String, i64, i64, i64, i64, i16, i64, i64);
    let top: Vec<TopActor> = top
        .iter()
        .map(|r| {
            (
                r.get("actor"),
                r.get("high"),
                r.get("medium"),
                r.get("low"),
                r.get("observables"),
                r.get("best_confidence"),
                r.get("artifacts"),
                r.get("hits"),
            )
        })
        .collect();
    assert_eq!(
        top,
        [
            ("Forest Blizzard".to_owned(), 1, 0, 0, 1, 85, 2, 2),
            ("Storm-0558".to_owned(), 0, 0, 1, 1, 35, 1, 1)
        ]
    );
    let week = run_panel(&db, &dashboard, "Top actors", 7).await;
    assert_eq!(week.len(), 1);

    let hits = run_panel(&db, &dashboard, "Recent actor hits", 7).await;
    let mut hits: Vec<(String, i16, String)> = hits
        .iter()
        .map(|r| (r.get("artifact"), r.get("confidence"), r.get("band")))
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            ("20.30.40.50".to_owned(), 55, "medium".to_owned()),
            ("evil-kit.net".to_owned(), 85, "high".to_owned())
        ]
    );

    let attributions = run_panel(&db, &dashboard, "Attributions", 30).await;
    let attributions: Vec<(i16, String, String, String, i32, String)> = attributions
        .iter()
        .map(|r| {
            (
                r.get("confidence"),
                r.get("band"),
                r.get("actor"),
                r.get("observable"),
                r.get("artifacts"),
                r.get("evidence"),
            )
        })
        .collect();
    assert_eq!(
        attributions,
        [
            (
                85,
                "high".to_owned(),
                "Forest Blizzard".to_owned(),
                "evil-kit.net".to_owned(),
                2,
                "intel_article, reputation_rule".to_owned()
            ),
            (
                35,
                "low".to_owned(),
                "Storm-0558".to_owned(),
                "2a01:111:f400::1".to_owned(),
                1,
                "reputation_rule".to_owned()
            )
        ],
        "strongest first"
    );
    assert_eq!(run_panel(&db, &dashboard, "Attributions", 7).await.len(), 1);

    // Forest Blizzard's pair today (high), Storm-0558's ten days back (low).
    let by_band = run_panel(&db, &dashboard, "Attributions by band", 30).await;
    let by_band: Vec<(i64, i64, i64)> = by_band
        .iter()
        .map(|r| (r.get("high"), r.get("medium"), r.get("low")))
        .collect();
    assert_eq!(by_band, [(0, 0, 1), (1, 0, 0)]);

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

    let scored: Vec<(String, i16, String, usize)> = sqlx::query(
        "SELECT artifact, confidence, band, jsonb_array_length(confidence_factors) AS factors \
         FROM dash_actor_hits ORDER BY confidence DESC",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("artifact"),
            r.get("confidence"),
            r.get("band"),
            r.get::<i32, _>("factors") as usize,
        )
    })
    .collect();
    assert_eq!(
        scored,
        [
            ("evil-kit.net".to_owned(), 85, "high".to_owned(), 1),
            ("20.30.40.50".to_owned(), 55, "medium".to_owned(), 1),
            ("2a01:111:f400::1".to_owned(), 35, "low".to_owned(), 1)
        ]
    );

    // One attribution per observable and actor; the seed's walks were announced from medium, and
    // no relay ran: Forest Blizzard's pair is owed its event, Storm-0558's (low) is not.
    type Attribution = (
        String,
        String,
        String,
        i16,
        String,
        Vec<String>,
        i32,
        bool,
        i32,
    );
    let attributions: Vec<Attribution> = sqlx::query(
        "SELECT kind, observable, actor, confidence, band, evidence_kinds, artifacts, \
                    event_owed, announcements \
             FROM dash_attributions ORDER BY confidence DESC",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("kind"),
            r.get("observable"),
            r.get("actor"),
            r.get("confidence"),
            r.get("band"),
            r.get("evidence_kinds"),
            r.get("artifacts"),
            r.get("event_owed"),
            r.get("announcements"),
        )
    })
    .collect();
    assert_eq!(
        attributions,
        [
            (
                "domain".to_owned(),
                "evil-kit.net".to_owned(),
                "Forest Blizzard".to_owned(),
                85,
                "high".to_owned(),
                vec!["intel_article".to_owned(), "reputation_rule".to_owned()],
                2,
                true,
                0
            ),
            (
                "ipv6".to_owned(),
                "2a01:111:f400::1".to_owned(),
                "Storm-0558".to_owned(),
                35,
                "low".to_owned(),
                vec!["reputation_rule".to_owned()],
                1,
                false,
                0
            )
        ]
    );

    // Per day and band: today's pair (high), and Storm-0558's ten days back (low).
    let daily: Vec<(i32, String, i64, i64, i64)> = sqlx::query(
        "SELECT day = date_trunc('day', now(), 'UTC') AS today, \
                band, attributions, observables, actors \
         FROM dash_attributions_daily ORDER BY day",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            i32::from(r.get::<bool, _>("today")),
            r.get("band"),
            r.get("attributions"),
            r.get("observables"),
            r.get("actors"),
        )
    })
    .collect();
    assert_eq!(
        daily,
        [
            (0, "low".to_owned(), 1, 1, 1),
            (1, "high".to_owned(), 1, 1, 1)
        ]
    );

    // Hits per day and actor, split by each hit's own band.
    let forest_today: (i64, i64, i64, i64) = sqlx::query(
        "SELECT hits, high_hits, medium_hits, low_hits FROM dash_actor_hits_daily \
         WHERE actor = 'Forest Blizzard'",
    )
    .fetch_one(pool)
    .await
    .map(|r| {
        (
            r.get("hits"),
            r.get("high_hits"),
            r.get("medium_hits"),
            r.get("low_hits"),
        )
    })
    .unwrap();
    assert_eq!(forest_today, (2, 1, 1, 0));

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

#[tokio::test]
async fn lane_panels_show_each_lanes_backlog_and_pace() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let db = seeded().await;
    // Both lanes, also the one no worker has counted yet: null, not missing.
    db.store
        .record_lane_backlog(&[(Lane::Bulk, 1942)])
        .await
        .unwrap();
    let backlog = run_panel(&db, &dashboard, "Backlog per lane", 1).await;
    let backlog: Vec<(String, Option<i64>, bool)> = backlog
        .iter()
        .map(|r| {
            let age: Option<f64> = r.get("age_seconds");
            (
                r.get("lane"),
                r.get("ready_messages"),
                age.is_some_and(|age| (0.0..60.0).contains(&age)),
            )
        })
        .collect();
    assert_eq!(
        backlog,
        [
            ("live".to_owned(), None, false),
            ("bulk".to_owned(), Some(1942), true)
        ]
    );

    // The seed's runs are all bulk: four today (m-1), one ten days back (m-0); one live run of
    // a message of its own is added now.
    let live = RunRecord {
        message_id: "m-live".into(),
        item_index: 0,
        source: Some("alerts".into()),
        context: None,
        observable: support::observable("1.1.1.1"),
        status: RunStatus::Cached,
        detail: None,
        enrichers: Vec::new(),
        graph_requests: 0,
        duration: std::time::Duration::from_millis(5),
        enrichment: None,
        lane: Lane::Live,
    };
    db.store.record_message(&[live], &[]).await.unwrap();
    let per_lane = |rows: Vec<PgRow>| {
        let mut sums = std::collections::BTreeMap::<String, i64>::new();
        for row in rows {
            *sums.entry(row.get("metric")).or_default() += row.get::<i64, _>("value");
        }
        sums.into_iter().collect::<Vec<_>>()
    };
    let week = run_panel(&db, &dashboard, "Observables done per minute by lane", 7).await;
    assert_eq!(
        per_lane(week),
        [("bulk".to_owned(), 4), ("live".to_owned(), 1)]
    );
    let month = run_panel(&db, &dashboard, "Observables done per minute by lane", 30).await;
    assert_eq!(
        per_lane(month),
        [("bulk".to_owned(), 5), ("live".to_owned(), 1)]
    );
}

/// Every `byName` override of a panel, as (panel title, field name, properties).
fn overrides(dashboard: &Value) -> Vec<(String, String, Vec<Value>)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or_default();
        for o in panel["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if o["matcher"]["id"] == "byName" {
                out.push((
                    title.to_owned(),
                    o["matcher"]["options"].as_str().unwrap().to_owned(),
                    o["properties"].as_array().cloned().unwrap_or_default(),
                ));
            }
        }
    }
    out
}

fn property<'a>(properties: &'a [Value], id: &str) -> Option<&'a Value> {
    properties
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| &p["value"])
}

#[test]
fn the_dashboard_colours_confidences_by_the_models_bands() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let overrides = overrides(&dashboard);

    // Every panel that shows a confidence cell colours it from the band thresholds, in the
    // colour its band has everywhere else.
    let colour = |band: Band| match band {
        Band::High => "red",
        Band::Medium => "orange",
        Band::Low => "blue",
    };
    let confidences: Vec<_> = overrides
        .iter()
        .filter(|(_, field, _)| field.contains("confidence"))
        .collect();
    let panels: Vec<&str> = confidences.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(panels, ["Top actors", "Attributions", "Recent actor hits"]);
    for (title, field, properties) in &confidences {
        let steps: Vec<(Option<u64>, &str)> = property(properties, "thresholds")
            .unwrap_or_else(|| panic!("{title}: {field} has no thresholds"))["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["value"].as_u64(), s["color"].as_str().unwrap()))
            .collect();
        assert_eq!(
            steps,
            [
                (None, colour(Band::Low)),
                (Some(u64::from(Band::MEDIUM)), colour(Band::Medium)),
                (Some(u64::from(Band::HIGH)), colour(Band::High)),
            ],
            "{title}: {field}"
        );
    }

    // Band cells (tables) and band series (the time series) use the same colours.
    let mut bands_seen = 0;
    for (title, field, properties) in &overrides {
        if field == "band" {
            bands_seen += 1;
            let mappings = property(properties, "mappings")
                .unwrap_or_else(|| panic!("{title}: band has no value mappings"));
            for band in Band::ALL {
                assert_eq!(
                    mappings[0]["options"][band.as_str()]["color"],
                    colour(band),
                    "{title}: {band}"
                );
            }
        } else if let Some(band) = Band::named(field) {
            assert_eq!(title, "Attributions by band");
            assert_eq!(
                property(properties, "color").unwrap()["fixedColor"],
                colour(band),
                "{title}: {band}"
            );
        }
    }
    assert_eq!(bands_seen, 2, "the two tables with a band column");
}
