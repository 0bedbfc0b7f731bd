//! Late intelligence is matched back: an observable enriched before a profile listed its
//! infrastructure is attributed, stored and announced when a later sync brings the indicator,
//! without the observable being published again.

mod support;

use std::time::Duration;

use mdti_worker::chain::retro::sync_and_match;
use mdti_worker::chain::{Band, ChainSettings};
use mdti_worker::graph::GraphClient;
use serde_json::{json, Value};
use support::harness::{spawn_app, App, EventsTap, Options};
use support::{eventually, graph_settings};

const IOC: &str = "retro-case.contoso-test.com";

async fn sync(app: &App, graph: &GraphClient) -> mdti_worker::chain::retro::RetroSummary {
    let (_, _, retro) = sync_and_match(graph, &app.store, &ChainSettings::default())
        .await
        .expect("sync");
    retro
}

/// An actor the walk did not attribute the IOC to, and the profile's id.
async fn unattributed_actor(app: &App) -> (String, String) {
    let (title, id): (String, String) = sqlx::query_as(
        "SELECT p.title, p.id FROM intel_profiles p WHERE NOT EXISTS ( \
             SELECT 1 FROM actor_attributions a JOIN observables o ON o.id = a.observable_id \
             WHERE o.value = $1 AND a.actor = p.title) \
         ORDER BY p.title LIMIT 1",
    )
    .bind(IOC)
    .fetch_one(app.db.store.pool())
    .await
    .expect("six actors, and the IOC is not attributed to all of them");
    (title, id)
}

fn indicator(id: &str, artifact: &str, odata: &str) -> Value {
    json!({
        "id": id, "source": "microsoft",
        "firstSeenDateTime": "2020-01-01T00:00:00Z", "lastSeenDateTime": null,
        "artifact": {"@odata.type": format!("#microsoft.graph.security.{odata}"), "id": artifact},
    })
}

#[tokio::test]
async fn an_indicator_that_arrives_after_the_ioc_attributes_it_without_republishing() {
    let app = spawn_app(Options::default()).await;
    let graph = GraphClient::new(graph_settings(&app.sim)).unwrap();
    let events = EventsTap::bind(&app.topology).await;
    let first = sync(&app, &graph).await;
    assert_eq!(
        first.observables, 0,
        "nothing stored yet to match: {first:?}"
    );

    app.publish("retro-1", json!({"value": IOC})).await;
    eventually(Duration::from_secs(60), "the IOC enriched", || async {
        app.count("SELECT count(*) FROM enrichment_runs WHERE status = 'enriched'")
            .await
            == 1
    })
    .await;
    // A counterpart of its passive DNS that no actor is linked through.
    let counterpart: String = sqlx::query_scalar(
        "SELECT e.value FROM extracts e JOIN observables o ON o.id = e.observable_id \
         WHERE o.value = $1 AND e.enricher = 'passive_dns' AND e.kind = 'IPV4' \
           AND NOT EXISTS (SELECT 1 FROM actor_hits h WHERE h.artifact = e.value) \
         ORDER BY e.value LIMIT 1",
    )
    .bind(IOC)
    .fetch_one(app.db.store.pool())
    .await
    .expect("a counterpart without hits");
    let (actor, profile) = unattributed_actor(&app).await;
    let hits_before = app.count("SELECT count(*) FROM actor_hits").await;

    // The profile now lists the IOC itself and that counterpart.
    app.sim.control().set_override(
        &format!("intelProfiles/{profile}/indicators"),
        json!([
            indicator("late-1", IOC, "hostname"),
            indicator("late-2", &counterpart, "ipAddress"),
        ]),
    );
    let retro = sync(&app, &graph).await;
    assert_eq!(retro.indicators, 2, "{retro:?}");
    assert_eq!(retro.observables, 1, "{retro:?}");
    assert_eq!(retro.hits, 2, "{retro:?}");
    assert_eq!(retro.owed, 1, "one attribution, announced: {retro:?}");
    assert!(!retro.truncated);

    let found: Vec<(String, i16, Value)> = sqlx::query_as(
        "SELECT h.artifact, h.confidence, h.evidence FROM actor_hits h \
         JOIN observables o ON o.id = h.observable_id \
         WHERE o.value = $1 AND h.actor = $2 ORDER BY h.confidence DESC",
    )
    .bind(IOC)
    .bind(&actor)
    .fetch_all(app.db.store.pool())
    .await
    .unwrap();
    let artifacts: Vec<&str> = found.iter().map(|(a, _, _)| a.as_str()).collect();
    assert_eq!(
        artifacts,
        [IOC, counterpart.as_str()],
        "named directly scores first"
    );
    assert!(
        found[0].1 >= i16::from(Band::MEDIUM) && found[0].1 > found[1].1,
        "the IOC named by a profile is worth an event, and more than a link: {found:?}"
    );
    for (_, _, evidence) in &found {
        assert_eq!(evidence[0]["source"], "profile_indicator");
        assert_eq!(evidence[0]["profile_id"], profile.as_str());
    }
    assert_eq!(
        app.count("SELECT count(*) FROM actor_hits").await,
        hits_before + 2,
        "only the new links were written"
    );

    // The relay announces it on its next pass.
    let mut announced: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !announced.iter().any(|e| e["actor"] == actor.as_str()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for the event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for body in events.take_bodies().await {
            announced.push(serde_json::from_slice(&body).unwrap());
        }
    }
    let event = announced
        .iter()
        .find(|e| e["actor"] == actor.as_str())
        .unwrap();
    assert_eq!(event["observable"]["value"], IOC);
    assert_eq!(event["artifact_count"], 2);
    assert_eq!(event["evidence_kinds"], json!(["profile_indicator"]));
    assert_eq!(
        app.count("SELECT count(*) FROM enrichment_runs").await,
        1,
        "the IOC was not enriched again"
    );

    // The same sync again brings nothing new.
    let again = sync(&app, &graph).await;
    assert_eq!((again.indicators, again.hits), (0, 0), "{again:?}");
    events.close().await;
    app.teardown().await;
}
