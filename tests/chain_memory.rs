//! A chaining walk holds one page of passive DNS at a time, however many records the host has:
//! a stand-in Graph generates the pages of a 100,000-record host on the fly, and a counting
//! allocator in this test binary measures the most memory held at once while the walk runs.
//! A smaller host pins that paging leaves the walk's result as it was when the whole collection
//! was read first.
//!
//! The allocator counts every allocation of the process, so the tests of this file run one at a
//! time (see [`serial`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, TimeZone, Utc};
use mdti_worker::chain::{ChainFindings, ChainSettings, Chainer, Known};
use mdti_worker::graph::model::PassiveDnsRecord;
use mdti_worker::graph::{GraphClient, GraphSettings, PageLimits};
use mdti_worker::observable::{normalise, NormaliseOptions, Normalised, Observable};
use mdti_worker::secret::Secret;
use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};

// ---------------------------------------------------------------------------------------------
// Measuring: the bytes allocated and not yet freed, and their peak
// ---------------------------------------------------------------------------------------------

struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(held, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let held = HELD.fetch_add(grown, Ordering::Relaxed) + grown;
                PEAK.fetch_max(held, Ordering::Relaxed);
            } else {
                HELD.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes held at once while `future` ran, beyond what was held when it started.
async fn peak_while<F: std::future::Future>(future: F) -> (F::Output, usize) {
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let output = future.await;
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    (output, peak)
}

/// One test of this file at a time: the allocator counts the whole process. (Each test has a
/// runtime of its own; tokio's mutex does not mind.)
async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// The stand-in Graph: passive DNS generated page by page, reputations by rule
// ---------------------------------------------------------------------------------------------

/// 100,000 records, each naming a counterpart of its own.
const BIG: &str = "big.memory-test.com";
const BIG_RECORDS: usize = 100_000;
/// 3,000 records naming 700 counterparts, each on several pages with different seen times.
const SMALL: &str = "small.memory-test.com";
const SMALL_RECORDS: usize = 3_000;
const SMALL_DISTINCT: usize = 700;

const PAGE: u32 = 1000;
const ACTOR: &str = "Forest Blizzard";

/// The hosts the stand-in knows: record count and distinct counterparts.
fn shape(host: &str) -> Option<(usize, usize)> {
    match host {
        BIG => Some((BIG_RECORDS, BIG_RECORDS)),
        SMALL => Some((SMALL_RECORDS, SMALL_DISTINCT)),
        _ => None,
    }
}

/// The counterpart of index `n`: a public address, a different one for each `n` below 2^22.
fn counterpart(n: usize) -> String {
    format!("52.{}.{}.{}", n >> 14 & 0xff, n >> 7 & 0x7f, (n & 0x7f) + 1)
}

/// Every 50th counterpart is attributed to [`ACTOR`].
fn attributed(n: usize) -> bool {
    n.is_multiple_of(50)
}

fn seen(record: usize) -> (DateTime<Utc>, DateTime<Utc>) {
    let base = Utc.with_ymd_and_hms(2022, 1, 1, 0, 0, 0).unwrap();
    let first = base + chrono::Duration::days((record * 37 % 400) as i64);
    let last = first + chrono::Duration::days((record * 11 % 90) as i64);
    (first, last)
}

fn record(host: &str, index: usize, distinct: usize) -> Value {
    let (first, last) = seen(index);
    json!({
        "id": format!("{host}-{index}"),
        "collectedDateTime": last.to_rfc3339(),
        "firstSeenDateTime": first.to_rfc3339(),
        "lastSeenDateTime": last.to_rfc3339(),
        "recordType": "A",
        "parentHost": {"id": host},
        "artifact": {
            "@odata.type": "#microsoft.graph.security.ipAddress",
            "id": counterpart(index % distinct),
        },
    })
}

#[derive(Default)]
struct Served {
    pages: AtomicU64,
    reputations: AtomicU64,
}

fn answer(uri: &Uri, base: &str, served: &Served) -> Response {
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/v1.0/security/threatIntelligence/hosts/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some((host, leaf)) = rest.split_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match leaf {
        "passiveDns" => {
            served.pages.fetch_add(1, Ordering::Relaxed);
            let Some((total, distinct)) = shape(host) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let mut top = 100;
            let mut skip = 0;
            for pair in uri.query().unwrap_or("").split('&') {
                match pair.split_once('=') {
                    Some(("$top" | "%24top", v)) => top = v.parse().unwrap(),
                    Some(("$skip" | "%24skip", v)) => skip = v.parse().unwrap(),
                    _ => {}
                }
            }
            let end = (skip + top).min(total);
            let value: Vec<Value> = (skip..end).map(|i| record(host, i, distinct)).collect();
            let mut page = json!({ "value": value });
            if end < total {
                page["@odata.nextLink"] = json!(format!("{base}{path}?$top={top}&$skip={end}"));
            }
            axum::Json(page).into_response()
        }
        "reputation" => {
            served.reputations.fetch_add(1, Ordering::Relaxed);
            let index = (0..BIG_RECORDS).find(|&n| counterpart(n) == host);
            match index {
                Some(n) if attributed(n) => axum::Json(json!({
                    "id": host, "classification": "malicious", "score": 90,
                    "rules": [{"name": "Cyber Threat Intelligence", "description": ACTOR,
                               "severity": "high", "relatedDetailsUrl": null}],
                }))
                .into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The stand-in on a loopback port, with the token endpoint, and a client for it.
async fn stand_in() -> (GraphClient, Arc<Served>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(Served::default());
    let token = || async {
        axum::Json(
            json!({"access_token": "stand-in-token", "token_type": "Bearer", "expires_in": 3599}),
        )
    };
    let app = Router::new()
        .route("/stand-in/oauth2/v2.0/token", axum::routing::post(token))
        .fallback({
            let (base, served) = (base.clone(), Arc::clone(&served));
            move |uri: Uri| async move { answer(&uri, &base, &served) }
        });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let settings = GraphSettings {
        graph_base_url: format!("{base}/v1.0"),
        login_base_url: base,
        tenant_id: "stand-in".into(),
        client_id: "stand-in-client".into(),
        client_secret: Secret::new("stand-in-secret"),
        requests_per_second: 100_000.0,
        burst: 1000,
        request_timeout: Duration::from_secs(30),
        ..GraphSettings::default()
    };
    (GraphClient::new(settings).unwrap(), served)
}

fn limits() -> PageLimits {
    PageLimits {
        page_size: Some(PAGE),
        max_pages: None,
    }
}

fn chainer(graph: &GraphClient) -> Chainer {
    Chainer::new(
        graph.clone(),
        None,
        ChainSettings {
            page_limits: limits(),
            request_budget: 10_000,
            // The pages counted here are the walk's own: no extra page per attributed
            // counterpart to measure how shared it is.
            measure_sharing: false,
            ..ChainSettings::default()
        },
    )
}

fn ioc(host: &str) -> Observable {
    match normalise(host, None, &NormaliseOptions::default()).unwrap() {
        Normalised::Ready(observable) => observable,
        other => panic!("{host}: {other:?}"),
    }
}

/// What the walk must report for hits, computed here from the generator: the first
/// `max_artifacts` counterparts in record order, the attributed ones with the earliest first
/// seen and latest last seen of all their records.
fn expected_hits(
    host: &str,
    max_artifacts: usize,
) -> BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)> {
    let (total, distinct) = shape(host).unwrap();
    let mut kept: BTreeMap<usize, (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for i in 0..total {
        let n = i % distinct;
        let (first, last) = seen(i);
        if let Some((f, l)) = kept.get_mut(&n) {
            *f = (*f).min(first);
            *l = (*l).max(last);
        } else if kept.len() < max_artifacts {
            kept.insert(n, (first, last));
        }
    }
    kept.into_iter()
        .filter(|(n, _)| attributed(*n))
        .map(|(n, times)| (counterpart(n), times))
        .collect()
}

fn hits(report: &ChainFindings) -> BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)> {
    report
        .hits
        .iter()
        .map(|hit| {
            assert_eq!(hit.actor, ACTOR);
            (
                hit.artifact.clone(),
                (hit.first_seen.unwrap(), hit.last_seen.unwrap()),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// The pager hands each page on and keeps nothing: one call per page, at most a page of records
/// each, everything read; and it holds far less than the collection of the same host.
#[tokio::test]
async fn the_pager_hands_on_one_page_at_a_time() {
    let _serial = serial().await;
    let (graph, served) = stand_in().await;
    graph.host("warm.memory-test.com").await.unwrap(); // token fetched, connection warm

    let mut calls = 0u32;
    let mut largest = 0usize;
    let mut records = 0usize;
    let on_page = |page: Vec<PassiveDnsRecord>| {
        calls += 1;
        largest = largest.max(page.len());
        records += page.len();
    };
    let (paged, paged_peak) = peak_while(graph.passive_dns_pages(BIG, limits(), on_page)).await;
    let paged = paged.unwrap();
    assert_eq!(calls, 100, "one call per page");
    assert_eq!(largest, PAGE as usize);
    assert_eq!(records, BIG_RECORDS);
    assert_eq!(paged.pages, 100);
    assert!(!paged.truncated && paged.found);
    assert_eq!(served.pages.load(Ordering::Relaxed), 100);

    // The collection of the same host, read whole, for comparison: the measure sees it.
    let (collection, collected_peak) = peak_while(graph.passive_dns(BIG, limits())).await;
    let collection = collection.unwrap();
    assert_eq!(collection.items.len(), BIG_RECORDS);
    assert_eq!((collection.pages, collection.truncated), (100, false));
    drop(collection);
    eprintln!(
        "peak held: {} KiB a page at a time, {} KiB collected",
        paged_peak / 1024,
        collected_peak / 1024
    );
    assert!(
        paged_peak * 4 < collected_peak,
        "paging held {paged_peak} bytes at most, collecting {collected_peak}"
    );
}

/// A walk of a host with 100,000 records reads every page and holds about one page of them: its
/// peak does not grow with the host. Before the walk paged, it read the whole collection first
/// (and kept every left-out counterpart's name), tens of MiB here.
#[tokio::test]
async fn a_walk_of_a_long_passive_dns_holds_one_page_at_a_time() {
    let _serial = serial().await;
    let (graph, served) = stand_in().await;
    graph.host("warm.memory-test.com").await.unwrap();
    let chainer = chainer(&graph);
    let max_artifacts = chainer.settings().max_artifacts;

    let (report, peak) = peak_while(chainer.walk(&ioc(BIG))).await;
    let report = report.expect("walk");
    eprintln!("peak held by the walk: {} KiB", peak / 1024);

    assert_eq!(report.pages, 100, "every page read");
    assert_eq!(served.pages.load(Ordering::Relaxed), 100);
    // 100,000 records parsed are over 30 MiB (about 37 MiB when the walk read the collection
    // whole); one page of them, its JSON and the walk's own bounded state (500 nodes, 4,096
    // left-out names) about 6 MiB.
    assert!(peak < 12 * MIB, "the walk held {} KiB at once", peak / 1024);
    // The pages, the IOC's reputation and one per counterpart kept.
    assert_eq!(report.graph_requests, 100 + 1 + max_artifacts as u64);
    assert_eq!(report.counterparts, max_artifacts);
    assert_eq!(hits(&report), expected_hits(BIG, max_artifacts));
    // 99,500 counterparts were left out; the note counts what it can prove.
    assert_eq!(
        report.truncated,
        vec![format!(
            "max_artifacts ({max_artifacts}) reached: at least 4096 further counterpart(s) left out"
        )]
    );
}

/// Paging leaves the walk's result as it was when the collection was read whole and taken in at
/// once (which is what the walk still does with a collection the enricher already read):
/// the same counterparts, first and last seen widened over every page, the same notes, and the
/// same requests but for the pages.
#[tokio::test]
async fn a_paged_walk_finds_what_the_whole_collection_finds() {
    let _serial = serial().await;
    let (graph, _served) = stand_in().await;
    let chainer = chainer(&graph);
    let max_artifacts = chainer.settings().max_artifacts;

    let paged = chainer.walk(&ioc(SMALL)).await.expect("paged walk");
    let collection = graph.passive_dns(SMALL, limits()).await.unwrap();
    assert_eq!(collection.items.len(), SMALL_RECORDS);
    let whole = chainer
        .walk_from(
            &ioc(SMALL),
            Known {
                passive_dns: Some(&collection),
                reputation: None,
            },
        )
        .await
        .expect("walk of the whole collection");

    assert_eq!(paged.pages, 3);
    assert_eq!(whole.pages, 0);
    assert_eq!(paged.graph_requests, whole.graph_requests + 3);
    assert_eq!(paged.hits, whole.hits);
    assert_eq!(paged.articles, whole.articles);
    assert_eq!(paged.counterparts, whole.counterparts);
    assert_eq!(paged.truncated, whole.truncated);

    // And what both found is what the records say.
    assert_eq!(paged.counterparts, max_artifacts);
    assert_eq!(hits(&paged), expected_hits(SMALL, max_artifacts));
    assert_eq!(paged.hits.len(), 10);
    assert_eq!(
        paged.truncated,
        vec![format!(
            "max_artifacts ({max_artifacts}) reached: {} further counterpart(s) left out",
            SMALL_DISTINCT - max_artifacts
        )]
    );
}
