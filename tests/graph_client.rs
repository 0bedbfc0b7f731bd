//! The Graph client against the simulator: throttling, retries, tokens, paging and the shared
//! rate limit, observed from both sides (the client's results and the simulator's counters).
//! Misbehaviour the simulator does not offer comes from small stand-in servers defined here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use mdti_worker::enrich::{self, EnricherKind};
use mdti_worker::graph::{GraphClient, GraphError, GraphSettings, PageLimits};
use mdti_worker::secret::Secret;
use mdti_worker::sim::{self, SimConfig, SimHandle};
use serde_json::json;

mod support;
use support::{graph_settings, observable};

async fn sim_and_client(config: SimConfig) -> (SimHandle, GraphClient) {
    let sim = sim::spawn(config).await.expect("simulator starts");
    let client = GraphClient::new(graph_settings(&sim)).expect("client builds");
    (sim, client)
}

fn records(n: usize) -> serde_json::Value {
    json!((0..n)
        .map(|i| json!({
            "id": format!("r{i}"),
            "recordType": "A",
            "parentHost": {"id": "paged.contoso.com"},
            "artifact": {"@odata.type": "#microsoft.graph.security.ipAddress", "id": format!("20.0.{}.{}", i / 250, i % 250 + 1)}
        }))
        .collect::<Vec<_>>())
}

#[tokio::test]
async fn a_429_is_waited_out_for_at_least_its_retry_after() {
    let (sim, client) = sim_and_client(SimConfig::default()).await;
    client.whois("contoso.com").await.unwrap(); // token fetched, connection warm
    sim.control().inject_429(1, Duration::from_millis(1200));
    let started = Instant::now();
    let record = client
        .whois("contoso.com")
        .await
        .expect("retried after the wait");
    assert!(record.is_some());
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "retried after {:?}, before the Retry-After had passed",
        started.elapsed()
    );
    assert_eq!(sim.count("throttled"), 1);
    assert_eq!(
        client
            .stats()
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn while_one_request_waits_out_a_429_the_whole_client_holds_back() {
    let (sim, client) = sim_and_client(SimConfig::default()).await;
    client.host("contoso.com").await.unwrap();
    sim.control().inject_429(1, Duration::from_millis(1500));
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.host("contoso.com").await }
    });
    while sim.count("throttled") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another task, another host: it was never throttled itself, yet it waits for the tenant.
    let started = Instant::now();
    client.host("fabrikam.com").await.unwrap();
    let waited = started.elapsed();
    first.await.unwrap().unwrap();
    assert!(
        waited >= Duration::from_millis(1000),
        "an unthrottled task went ahead during the hold (after {waited:?})"
    );
    assert_eq!(sim.count("throttled"), 1);
}

#[tokio::test]
async fn an_http_date_retry_after_is_honoured_too() {
    let config = SimConfig {
        retry_after_format: sim::RetryAfterFormat::HttpDate,
        ..SimConfig::default()
    };
    let (sim, client) = sim_and_client(config).await;
    sim.control().inject_429(1, Duration::from_millis(900));
    client.reputation("contoso.com").await.unwrap();
    assert_eq!(sim.count("throttled"), 1);
}

#[tokio::test]
async fn server_errors_are_retried_until_graph_recovers() {
    let (sim, client) = sim_and_client(SimConfig::default()).await;
    sim.control().set_fail_all(Some(502));
    let settings = GraphSettings {
        max_attempts: 30,
        ..graph_settings(&sim)
    };
    let client_patient = GraphClient::new(settings).unwrap();
    let request = tokio::spawn(async move { client_patient.host("contoso.com").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    sim.control().set_fail_all(None);
    let host = request.await.unwrap().expect("recovered");
    assert!(host.is_some());
    assert!(sim.count("errors") >= 1);
    drop(client);
}

#[tokio::test]
async fn server_errors_give_up_after_the_attempt_limit_as_transient() {
    let (sim, _) = sim_and_client(SimConfig::default()).await;
    sim.control().set_fail_all(Some(500));
    let client = GraphClient::new(GraphSettings {
        max_attempts: 3,
        ..graph_settings(&sim)
    })
    .unwrap();
    let error = client.host("contoso.com").await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(sim.count("host"), 3);
}

#[tokio::test]
async fn bad_request_and_forbidden_are_not_retried() {
    for status in [400, 403] {
        let (sim, client) = sim_and_client(SimConfig::default()).await;
        sim.control().set_fail_all(Some(status));
        let error = client.whois("contoso.com").await.unwrap_err();
        assert!(!error.is_transient(), "{status}: {error}");
        assert!(error.to_string().contains(&status.to_string()), "{error}");
        assert_eq!(sim.count("whois"), 1, "HTTP {status} was retried");
    }
}

#[tokio::test]
async fn a_host_mdti_does_not_know_is_an_empty_answer_not_an_error() {
    let (_sim, client) = sim_and_client(SimConfig::default()).await;
    assert!(client.whois("unknown.contoso.com").await.unwrap().is_none());
    let pdns = client
        .passive_dns("unknown.contoso.com", PageLimits::default())
        .await
        .unwrap();
    assert!(!pdns.found);
    assert!(pdns.items.is_empty());
}

#[tokio::test]
async fn an_expired_token_is_refreshed_before_use() {
    let config = SimConfig {
        token_ttl: Duration::from_secs(2),
        ..SimConfig::default()
    };
    let (sim, client) = sim_and_client(config).await;
    client.host("contoso.com").await.unwrap();
    assert_eq!(sim.count("token"), 1);
    client.host("contoso.com").await.unwrap();
    assert_eq!(sim.count("token"), 1, "a valid token is reused");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    client.host("contoso.com").await.unwrap();
    assert_eq!(sim.count("token"), 2);
    assert_eq!(
        sim.count("unauthorized"),
        0,
        "refreshed before Graph refused it"
    );
}

#[tokio::test]
async fn a_401_triggers_one_refresh_and_one_retry_even_for_many_tasks() {
    let (sim, client) = sim_and_client(SimConfig::default()).await;
    client.host("contoso.com").await.unwrap();
    sim.control().expire_tokens();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.host(&format!("host{i}.contoso.com")).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("retried with a fresh token");
    }
    assert_eq!(
        sim.count("token"),
        2,
        "one refresh for all the refused requests"
    );
}

#[tokio::test]
async fn wrong_credentials_fail_permanently_without_leaking_the_secret() {
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    let client = GraphClient::new(GraphSettings {
        client_secret: Secret::new("hunter2-very-secret"),
        ..graph_settings(&sim)
    })
    .unwrap();
    let error = client.host("contoso.com").await.unwrap_err();
    assert!(
        matches!(
            error,
            GraphError::Token {
                transient: false,
                ..
            }
        ),
        "{error:?}"
    );
    let text = format!("{error} {error:?}");
    assert!(text.contains("invalid_client"), "{text}");
    assert!(!text.contains("hunter2"), "the secret leaked: {text}");
}

#[tokio::test]
async fn paging_follows_next_links_across_many_pages() {
    let (sim, client) = sim_and_client(SimConfig::default()).await;
    sim.control()
        .set_override("hosts/paged.contoso.com/passiveDns", records(35));
    let limits = PageLimits {
        page_size: Some(10),
        max_pages: None,
    };
    let walk = client
        .passive_dns("paged.contoso.com", limits)
        .await
        .unwrap();
    assert_eq!(walk.items.len(), 35);
    assert_eq!(walk.pages, 4);
    assert!(!walk.truncated);
    assert_eq!(sim.count("passiveDns"), 4);
}

#[tokio::test]
async fn a_page_cap_cuts_the_walk_and_says_so() {
    let (sim, client) = sim_and_client(SimConfig::default()).await;
    sim.control()
        .set_override("hosts/paged.contoso.com/passiveDns", records(35));
    let limits = PageLimits {
        page_size: Some(10),
        max_pages: Some(2),
    };
    let walk = client
        .passive_dns("paged.contoso.com", limits)
        .await
        .unwrap();
    assert_eq!(walk.items.len(), 20);
    assert!(walk.truncated);
}

#[tokio::test]
async fn the_shared_limiter_keeps_concurrent_tasks_under_the_simulators_limit() {
    // The simulator allows 25/s; the client is set to 20/s with no burst. 50 concurrent requests
    // must all pass without a single 429.
    let config = SimConfig {
        rate_limit: Some(25.0),
        ..SimConfig::default()
    };
    let sim = sim::spawn(config).await.unwrap();
    let client = GraphClient::new(GraphSettings {
        requests_per_second: 20.0,
        burst: 1,
        ..graph_settings(&sim)
    })
    .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.reputation(&format!("h{i}.contoso.com")).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(sim.count("reputation"), 50);
    assert_eq!(sim.count("throttled"), 0);
}

#[tokio::test]
async fn ipv6_keys_travel_as_one_encoded_segment() {
    let (sim, client) = sim_and_client(SimConfig::default()).await;
    let host = client.host("2603:1030::5").await.unwrap().expect("known");
    assert_eq!(host.id.as_deref(), Some("2603:1030::5"));
    assert_eq!(sim.count("host"), 1);
}

#[tokio::test]
async fn all_six_enrichers_run_for_an_ip_and_a_domain() {
    let (_sim, client) = sim_and_client(SimConfig::default()).await;
    for raw in ["8.8.8.8", "contoso.com"] {
        let enrichment = enrich::enrich(
            &client,
            &observable(raw),
            &EnricherKind::ALL,
            PageLimits::default(),
        )
        .await
        .unwrap();
        let kinds: Vec<_> = enrichment.results.iter().map(|r| r.enricher).collect();
        assert_eq!(kinds, EnricherKind::ALL.to_vec());
        let whois = &enrichment.results[0];
        assert!(whois
            .indicator
            .as_ref()
            .unwrap()
            .id
            .starts_with("{https://graph.microsoft.com}Indicator-"));
        let reputation = enrichment.results[5].reputation.as_ref().unwrap();
        assert!(reputation.classification.is_some());
        let pdns = &enrichment.results[1];
        assert!(
            !pdns.extracts.is_empty(),
            "{raw}: passive DNS found nothing"
        );
        assert!(enrichment.graph_requests >= 6);
    }
}

/// A stand-in for Graph and its login endpoint on one loopback port: the token endpoint answers
/// like Entra, and every other request goes to `graph` (a router with a fallback).
async fn stand_in(graph: Router) -> GraphSettings {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = || async {
        axum::Json(
            json!({"access_token": "stand-in-token", "token_type": "Bearer", "expires_in": 3599}),
        )
    };
    let app = Router::new()
        .route("/stand-in/oauth2/v2.0/token", axum::routing::post(token))
        .merge(graph);
    tokio::spawn(async move { axum::serve(listener, app).await });
    GraphSettings {
        graph_base_url: format!("http://{addr}/v1.0"),
        login_base_url: format!("http://{addr}"),
        tenant_id: "stand-in".into(),
        client_id: "stand-in-client".into(),
        client_secret: Secret::new("stand-in-secret"),
        requests_per_second: 2000.0,
        burst: 200,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        request_timeout: Duration::from_secs(5),
        ..GraphSettings::default()
    }
}

/// Only a guard against a hang: the assertions are about what came back, never how fast.
async fn within_guard<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("the client answered instead of hanging")
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_fails_at_once_as_transient_and_holds_nothing() {
    const HOSTILE: [&str; 3] = ["1e20", "86400", "Wed, 21 Oct 2099 07:28:00 GMT"];
    let asked = Arc::new(AtomicUsize::new(0));
    let graph = Router::new().fallback({
        let asked = Arc::clone(&asked);
        move || async move {
            match HOSTILE.get(asked.fetch_add(1, Ordering::SeqCst)) {
                Some(value) => {
                    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", *value)]).into_response()
                }
                None => axum::Json(json!({"id": "contoso.com"})).into_response(),
            }
        }
    });
    let client = GraphClient::new(stand_in(graph).await).unwrap();

    for value in HOSTILE {
        let error = within_guard(client.host("contoso.com")).await.unwrap_err();
        let text = error.to_string();
        assert!(error.is_transient(), "the message is retried later: {text}");
        assert!(text.contains(&format!("Retry-After: {value}")), "{text}");
        assert!(text.contains("--graph-max-retry-after 5m"), "{text}");
        assert!(
            client.throttle().held_until().is_none(),
            "held after {value}"
        );
    }
    // One request per hostile answer, none retried; and nothing holds the next one back.
    assert_eq!(asked.load(Ordering::SeqCst), HOSTILE.len());
    let host = within_guard(client.host("contoso.com")).await.unwrap();
    assert!(host.is_some());
}

/// Arrival instants, and the most that any one-second window (starting at an arrival) holds.
fn busiest_second(arrivals: &[Instant]) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| t.duration_since(sorted[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_slow_graph_never_sees_more_than_rate_plus_burst_in_any_second() {
    // The first answers are slow, so requests pile up behind the in-flight cap; when Graph
    // speeds up, the pile must still go out at the configured rate.
    const RATE: usize = 10;
    const BURST: usize = 2;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let graph = Router::new().fallback({
        let arrivals = Arc::clone(&arrivals);
        move || async move {
            let seen = {
                let mut arrivals = arrivals.lock().unwrap();
                arrivals.push(Instant::now());
                arrivals.len()
            };
            if seen <= 2 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            axum::Json(json!({"id": "contoso.com"}))
        }
    });
    let client = GraphClient::new(GraphSettings {
        requests_per_second: RATE as f64,
        burst: BURST as u32,
        max_in_flight: 2,
        ..stand_in(graph).await
    })
    .unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.host(&format!("h{i}.contoso.com")).await })
        })
        .collect();
    for task in tasks {
        within_guard(task).await.unwrap().unwrap();
    }
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 40);
    let busiest = busiest_second(&arrivals);
    assert!(
        busiest <= RATE + BURST,
        "{busiest} requests reached Graph within one second at {RATE}/s with a burst of {BURST}"
    );
}

#[tokio::test]
async fn a_body_past_the_size_cap_is_refused_with_the_cap_named() {
    // Valid JSON, just too much of it: 17 MiB against the 16 MiB default.
    let padding = "a".repeat(17 << 20);
    let asked = Arc::new(AtomicUsize::new(0));
    let graph = Router::new().fallback({
        let asked = Arc::clone(&asked);
        move || async move {
            asked.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"id": "contoso.com", "registrar": padding}))
        }
    });
    let client = GraphClient::new(stand_in(graph).await).unwrap();
    let error = within_guard(client.host("contoso.com")).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("16 MiB"), "{text}");
    assert!(
        !error.is_transient(),
        "the same answer would come again: {text}"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "an oversized answer was asked again"
    );
}

#[tokio::test]
async fn a_next_link_that_points_back_ends_the_walk_after_one_page() {
    let asked = Arc::new(AtomicUsize::new(0));
    let graph = Router::new().fallback({
        let asked = Arc::clone(&asked);
        move |headers: HeaderMap, uri: Uri| async move {
            asked.fetch_add(1, Ordering::SeqCst);
            let host = headers["host"].to_str().unwrap().to_owned();
            axum::Json(json!({
                "value": records(1),
                "@odata.nextLink": format!("http://{host}{uri}"),
            }))
        }
    });
    let client = GraphClient::new(stand_in(graph).await).unwrap();
    let limits = PageLimits {
        page_size: Some(10),
        max_pages: Some(50),
    };
    let walk = within_guard(client.passive_dns("paged.contoso.com", limits))
        .await
        .unwrap();
    assert_eq!(walk.pages, 1);
    assert_eq!(walk.items.len(), 1);
    assert!(walk.truncated, "the walk says it did not reach the end");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirected_token_request_is_not_followed_and_the_secret_stays_home() {
    // Whoever the login endpoint points at must never see the token request (and its secret).
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let reached_elsewhere = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let reached = Arc::clone(&reached_elsewhere);
        async move {
            while let Ok((connection, _)) = elsewhere.accept().await {
                reached.fetch_add(1, Ordering::SeqCst);
                drop(connection);
            }
        }
    });
    let login = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let login_addr = login.local_addr().unwrap();
    let redirect = Router::new().fallback(move || async move {
        let location = format!("http://{elsewhere_addr}/stolen/oauth2/v2.0/token");
        Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header("location", location)
            .body(axum::body::Body::empty())
            .unwrap()
    });
    tokio::spawn(async move { axum::serve(login, redirect).await });
    let client = GraphClient::new(GraphSettings {
        login_base_url: format!("http://{login_addr}"),
        client_secret: Secret::new("hunter2-very-secret"),
        max_attempts: 1,
        ..stand_in(Router::new()).await
    })
    .unwrap();

    let error = within_guard(client.host("contoso.com")).await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert_eq!(
        reached_elsewhere.load(Ordering::SeqCst),
        0,
        "followed: {text}"
    );
    assert!(text.contains("307"), "{text}");
    assert!(text.contains(&elsewhere_addr.to_string()), "{text}");
    assert!(!text.contains("hunter2"), "the secret leaked: {text}");
    assert!(
        !error.is_transient(),
        "a wrong login URL stays wrong: {text}"
    );
}

#[tokio::test]
async fn a_token_that_claims_to_live_forever_does_not_break_the_client() {
    let login = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let login_addr = login.local_addr().unwrap();
    let token = Router::new().fallback(|| async {
        axum::Json(
            json!({"access_token": "forever", "token_type": "Bearer", "expires_in": u64::MAX}),
        )
    });
    tokio::spawn(async move { axum::serve(login, token).await });
    let graph = Router::new().fallback(|| async { axum::Json(json!({"id": "contoso.com"})) });
    let client = GraphClient::new(GraphSettings {
        login_base_url: format!("http://{login_addr}"),
        ..stand_in(graph).await
    })
    .unwrap();
    let host = within_guard(client.host("contoso.com")).await.unwrap();
    assert!(host.is_some());
}

#[tokio::test]
async fn a_token_a_header_cannot_carry_fails_each_request_with_a_reason_and_reaches_no_graph() {
    let login = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let login_addr = login.local_addr().unwrap();
    let token = Router::new().fallback(|| async {
        axum::Json(json!({"access_token": "split\r\nX-Injected: 1", "expires_in": 3599}))
    });
    tokio::spawn(async move { axum::serve(login, token).await });
    let asked = Arc::new(AtomicUsize::new(0));
    let graph = Router::new().fallback({
        let asked = Arc::clone(&asked);
        move || async move {
            asked.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"id": "contoso.com"}))
        }
    });
    let client = GraphClient::new(GraphSettings {
        login_base_url: format!("http://{login_addr}"),
        max_attempts: 2,
        ..stand_in(graph).await
    })
    .unwrap();
    let error = within_guard(client.host("contoso.com")).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("header cannot carry"), "{text}");
    assert!(!text.contains("X-Injected"), "the token leaked: {text}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "a request left without a token"
    );
}
