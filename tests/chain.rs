//! Infrastructure chaining and actor attribution against the Graph simulator and a real Postgres:
//! a hand-built graph with known hits, cycles and budgets, the reputation cache shared between
//! walks, the idempotent hit store, and the request count of the seed's algorithm for
//! comparison.
//!
//! Each test that needs a database gets its own (see `support::TestDb`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashSet};
use mdti_worker::chain::{
    cti_actor_names, event_routing_key, sync_profiles, ActorHit, Band, ChainSettings, Chainer,
    Evidence, Factor, InFlightLookups, ProfileIndex, CTI_RULE,
};
use mdti_worker::enrich::Reputation;
use mdti_worker::graph::{GraphClient, PageLimits};
use mdti_worker::lane::Lane;
use mdti_worker::model::{CachedLeads, Fanout, LookupClaims, MemoryCache, StorageError, WalkCache};
use mdti_worker::observable::Observable;
use mdti_worker::sim::{self, SimConfig, SimHandle};
use mdti_worker::store::{run_id, Store, WalkHits};
use serde_json::{json, Value};

mod support;
use support::{graph_settings, observable, TestDb};

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

/// The Postgres store as the walks' cache, noting which of its caches each walk reads.
struct ReadsNoted {
    store: Store,
    reads: Mutex<Vec<&'static str>>,
}

impl ReadsNoted {
    fn new(store: Store) -> Arc<ReadsNoted> {
        Arc::new(ReadsNoted {
            store,
            reads: Mutex::new(Vec::new()),
        })
    }

    fn note(&self, read: &'static str) {
        self.reads.lock().unwrap().push(read);
    }

    /// The reads noted since the last call.
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.reads.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl WalkCache for ReadsNoted {
    async fn cached_leads(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<CachedLeads, StorageError> {
        self.note("reputations and fanouts");
        WalkCache::cached_leads(&self.store, hosts, ttl).await
    }

    async fn cached_reputations(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Reputation>, StorageError> {
        self.note("reputations");
        WalkCache::cached_reputations(&self.store, hosts, ttl).await
    }

    async fn save_reputations(&self, rows: &[(String, Reputation)]) -> Result<(), StorageError> {
        WalkCache::save_reputations(&self.store, rows).await
    }

    async fn cached_fanouts(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Fanout>, StorageError> {
        self.note("fanouts");
        WalkCache::cached_fanouts(&self.store, hosts, ttl).await
    }

    async fn save_fanouts(&self, fanouts: &HashMap<String, Fanout>) -> Result<(), StorageError> {
        WalkCache::save_fanouts(&self.store, fanouts).await
    }

    async fn claim_reputation_lookups(
        &self,
        hosts: &[String],
        hold: Duration,
    ) -> Result<LookupClaims, StorageError> {
        WalkCache::claim_reputation_lookups(&self.store, hosts, hold).await
    }

    async fn held_reputation_lookups(
        &self,
        hosts: &[String],
    ) -> Result<HashSet<String>, StorageError> {
        WalkCache::held_reputation_lookups(&self.store, hosts).await
    }

    async fn release_reputation_lookups(&self, claims: &LookupClaims) -> Result<(), StorageError> {
        WalkCache::release_reputation_lookups(&self.store, claims).await
    }
}

async fn sim_and_client() -> (SimHandle, GraphClient) {
    let sim = sim::spawn(SimConfig::default())
        .await
        .expect("simulator starts");
    let client = GraphClient::new(graph_settings(&sim)).expect("client builds");
    (sim, client)
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

// ---------------------------------------------------------------------------------------------
// The known graph
// ---------------------------------------------------------------------------------------------

const IOC: &str = "ioc.contoso-test.com";
const ARTICLE_URL: &str = "https://ti.defender.microsoft.com/article/abc123";
const SINCE: &str = "2023-01-01T00:00:00Z";

fn pdns(parent: &str, artifact: &str, odata: &str, first: &str, last: &str) -> Value {
    json!({
        "id": format!("{parent}-{artifact}-{first}"),
        "collectedDateTime": last,
        "firstSeenDateTime": first,
        "lastSeenDateTime": last,
        "recordType": "A",
        "parentHost": {"id": parent},
        "artifact": {"@odata.type": format!("#microsoft.graph.security.{odata}"), "id": artifact},
    })
}

/// 25 records (3 pages of 10): 22 over 52.1.0.1 to 52.1.0.8 (duplicates), one private address,
/// one naming the IOC itself, one last seen before [`SINCE`].
fn ioc_records() -> Value {
    let mut records = Vec::new();
    for i in 0..22u32 {
        let ip = format!("52.1.0.{}", i % 8 + 1);
        let first = format!("2023-{:02}-01T00:00:00Z", i % 12 + 1);
        let last = format!("2024-{:02}-15T00:00:00.000Z", i % 12 + 1);
        records.push(pdns(IOC, &ip, "ipAddress", &first, &last));
    }
    records.push(pdns(
        IOC,
        "10.0.0.1",
        "ipAddress",
        "2023-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z",
    ));
    records.push(pdns(
        IOC,
        "IOC.Contoso-Test.com.",
        "hostName",
        "2023-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z",
    ));
    records.push(pdns(
        IOC,
        "52.1.0.9",
        "ipAddress",
        "2019-01-01T00:00:00Z",
        "2020-01-01T00:00:00Z",
    ));
    assert_eq!(records.len(), 25);
    Value::Array(records)
}

fn build_known_graph(sim: &SimHandle) {
    let control = sim.control();
    control.set_override(&format!("hosts/{IOC}/passiveDns"), ioc_records());
    control.set_override(
        &format!("hosts/{IOC}/reputation"),
        json!({"id": IOC, "classification": "neutral", "score": 5, "rules": []}),
    );
    control.set_override(
        "hosts/52.1.0.1/reputation",
        json!({
            "id": "52.1.0.1", "classification": "malicious", "score": 90,
            "rules": [
                {"name": "Cyber Threat Intelligence", "description": " Aqua Blizzard ",
                 "severity": "high", "relatedDetailsUrl": null},
                {"name": "Microsoft Defender Threat Intelligence Intel Article",
                 "description": "Aqua Blizzard targets Contoso", "severity": "high",
                 "relatedDetailsUrl": ARTICLE_URL},
            ]
        }),
    );
    control.set_override(
        "hosts/52.1.0.2/reputation",
        json!({
            "id": "52.1.0.2", "classification": "malicious", "score": 80,
            "rules": [
                // An alias of Volt Typhoon, in a list, with the rule name in another case.
                {"name": "cyber threat intelligence", "description": ["Vanguard Panda"],
                 "severity": "medium", "relatedDetailsUrl": null},
                {"name": "Registrar", "description": "MarkMonitor Inc.", "severity": "low"},
            ]
        }),
    );
    control.set_override(
        "hosts/52.1.0.3/reputation",
        json!({
            "id": "52.1.0.3", "classification": "suspicious", "score": 40,
            "rules": [
                {"name": "Microsoft Defender Threat Intelligence Intel Article",
                 "description": "Infrastructure overlaps", "severity": "medium",
                 "relatedDetailsUrl": "https://ti.defender.microsoft.com/article/def456"},
            ]
        }),
    );
    control.set_override(
        "intelProfiles",
        json!([
            {"id": "p-aqua", "kind": "actor", "title": "Aqua Blizzard",
             "aliases": ["ACTINIUM", "Gamaredon"], "firstActiveDateTime": "2013-06-01T00:00:00Z"},
            {"id": "p-volt", "kind": "actor", "title": "Volt Typhoon",
             "aliases": ["Vanguard Panda"], "firstActiveDateTime": null},
            {"id": "p-tool", "kind": "tool", "title": "Cobalt Strike", "aliases": ["Beacon"]},
        ]),
    );
    control.set_override(
        "intelProfiles/p-aqua/indicators",
        json!([
            {"id": "i1", "source": "osint", "firstSeenDateTime": "2022-01-01T00:00:00Z",
             "lastSeenDateTime": null,
             "artifact": {"@odata.type": "#microsoft.graph.security.ipAddress", "id": "52.1.0.4"}},
            {"id": "i2", "source": "microsoft", "firstSeenDateTime": "2022-01-01T00:00:00Z",
             "lastSeenDateTime": "2023-01-01T00:00:00Z",
             "artifact": {"@odata.type": "#microsoft.graph.security.hostname", "id": "Update-1.AquaBlizzard-Infra.com"}},
        ]),
    );
    control.set_override("intelProfiles/p-volt/indicators", json!([]));
    // A tool: never asked for.
    control.set_override(
        "intelProfiles/p-tool/indicators",
        json!([{"id": "i3", "source": "public",
                "artifact": {"@odata.type": "#microsoft.graph.security.ipAddress", "id": "52.1.0.5"}}]),
    );
}

fn known_settings() -> ChainSettings {
    ChainSettings {
        page_limits: PageLimits {
            page_size: Some(10),
            max_pages: None,
        },
        since: Some(time(SINCE)),
        ..ChainSettings::default()
    }
}

/// The hits without their confidence, to compare what was found apart from how it scored.
fn unscored(hits: &[ActorHit]) -> Vec<ActorHit> {
    hits.iter()
        .cloned()
        .map(|hit| ActorHit {
            confidence: 0,
            factors: Vec::new(),
            ..hit
        })
        .collect()
}

/// (artifact, confidence) of each hit.
fn scores(hits: &[ActorHit]) -> Vec<(&str, u8)> {
    hits.iter()
        .map(|h| (h.artifact.as_str(), h.confidence))
        .collect()
}

/// What the walk finds in the known graph; scored by [`expected_scores`].
fn expected_hits() -> Vec<ActorHit> {
    let aqua_aliases = vec!["ACTINIUM".to_owned(), "Gamaredon".to_owned()];
    vec![
        ActorHit {
            actor: "Aqua Blizzard".into(),
            profile_id: Some("p-aqua".into()),
            aliases: aqua_aliases.clone(),
            artifact: "52.1.0.1".into(),
            path: vec![IOC.into(), "52.1.0.1".into()],
            evidence: vec![
                Evidence::ReputationRule {
                    rule: CTI_RULE.into(),
                    severity: Some("high".into()),
                    score: Some(90),
                    classification: Some("malicious".into()),
                },
                Evidence::IntelArticle {
                    title: Some("Aqua Blizzard targets Contoso".into()),
                    article_id: Some("abc123".into()),
                    url: Some(ARTICLE_URL.into()),
                },
            ],
            // Records 0, 8 and 16: months 1, 9 and 5.
            first_seen: Some(time("2023-01-01T00:00:00Z")),
            last_seen: Some(time("2024-09-15T00:00:00Z")),
            confidence: 0,
            factors: Vec::new(),
        },
        ActorHit {
            actor: "Aqua Blizzard".into(),
            profile_id: Some("p-aqua".into()),
            aliases: aqua_aliases,
            artifact: "52.1.0.4".into(),
            path: vec![IOC.into(), "52.1.0.4".into()],
            evidence: vec![Evidence::ProfileIndicator {
                profile_id: "p-aqua".into(),
                source: Some("osint".into()),
                first_seen: Some(time("2022-01-01T00:00:00Z")),
                last_seen: None,
            }],
            // Records 3, 11 and 19: months 4, 12 and 8.
            first_seen: Some(time("2023-04-01T00:00:00Z")),
            last_seen: Some(time("2024-12-15T00:00:00Z")),
            confidence: 0,
            factors: Vec::new(),
        },
        ActorHit {
            actor: "Volt Typhoon".into(),
            profile_id: Some("p-volt".into()),
            aliases: vec!["Vanguard Panda".into()],
            artifact: "52.1.0.2".into(),
            path: vec![IOC.into(), "52.1.0.2".into()],
            evidence: vec![Evidence::ReputationRule {
                rule: "cyber threat intelligence".into(),
                severity: Some("medium".into()),
                score: Some(80),
                classification: Some("malicious".into()),
            }],
            // Records 1, 9 and 17: months 2, 10 and 6.
            first_seen: Some(time("2023-02-01T00:00:00Z")),
            last_seen: Some(time("2024-10-15T00:00:00Z")),
            confidence: 0,
            factors: Vec::new(),
        },
    ]
}

#[tokio::test]
async fn a_known_graph_gives_exactly_the_expected_hits() {
    let (sim, graph) = sim_and_client().await;
    build_known_graph(&sim);
    let db = TestDb::new().await;

    let summary = sync_profiles(&graph, &db.store).await.expect("sync");
    assert_eq!(summary.profiles, 2, "{summary:?}");
    assert_eq!(summary.skipped_profiles, 1);
    assert_eq!(summary.indicators, 2);
    assert_eq!(
        sim.count("intelProfileIndicators"),
        2,
        "the tool is not asked"
    );
    assert_eq!(
        db.query_count("SELECT count(*) FROM intel_profile_indicators WHERE artifact = 'update-1.aquablizzard-infra.com'")
            .await,
        1,
        "indicators are stored canonical"
    );
    // A second sync changes nothing.
    sync_profiles(&graph, &db.store).await.expect("sync again");
    assert_eq!(
        db.query_count("SELECT count(*) FROM intel_profiles").await,
        2
    );
    assert_eq!(
        db.query_count("SELECT count(*) FROM intel_profile_indicators")
            .await,
        2
    );

    let profiles = Arc::new(ProfileIndex::load(&db.store).await.expect("load"));
    assert_eq!(profiles.profiles().len(), 2);
    let cache = ReadsNoted::new(db.store.clone());
    let chainer =
        Chainer::new(graph.clone(), Some(cache.clone()), known_settings()).with_profiles(profiles);
    sim.control().reset_counters();

    let report = chainer.walk(&observable(IOC)).await.expect("walk");
    println!("{report}");
    assert_eq!(unscored(&report.hits), expected_hits(), "{report:#?}");
    // 52.1.0.1: one hop 40, a rule and an article agree +15, a second Aqua artifact +5,
    // malicious at 90 +15. 52.1.0.4: one hop 40, +5, resolved while the indicator was active
    // +10, and the simulator's own verdict on it. 52.1.0.2: one hop 40, malicious at 80 +10.
    let aqua_indicator = 55
        + report.hits[1]
            .factors
            .iter()
            .filter(|f| f.factor == "reputation")
            .map(|f| f.points)
            .sum::<i32>();
    assert_eq!(
        scores(&report.hits),
        [
            ("52.1.0.1", 75),
            ("52.1.0.4", aqua_indicator as u8),
            ("52.1.0.2", 50)
        ]
    );
    assert_eq!(
        report.actors(),
        BTreeMap::from([
            (
                "Aqua Blizzard".to_owned(),
                vec!["52.1.0.1".to_owned(), "52.1.0.4".to_owned()]
            ),
            ("Volt Typhoon".to_owned(), vec!["52.1.0.2".to_owned()]),
        ])
    );
    let articles: Vec<(&str, Option<&str>)> = report
        .articles
        .iter()
        .map(|a| (a.artifact.as_str(), a.article_id.as_deref()))
        .collect();
    assert_eq!(
        articles,
        [("52.1.0.1", Some("abc123")), ("52.1.0.3", Some("def456"))]
    );
    // 8 public counterparts in the window: not the IOC, not 10.0.0.1, not the old 52.1.0.9.
    assert_eq!(report.counterparts, 8);
    // Three pages of the IOC, and one of each attributed counterpart to see how shared it is.
    assert_eq!(report.pages, 6);
    assert_eq!(report.sharing_pages, 3);
    assert!(report.truncated.is_empty(), "{:?}", report.truncated);
    assert_eq!(sim.count("passiveDns"), 6);
    assert_eq!(
        sim.count("reputation"),
        9,
        "the IOC and 8 counterparts, once each"
    );
    assert_eq!(report.graph_requests, 15);
    assert_eq!(report.reputation_cache_hits, 0);
    assert_eq!(
        sim.count("intelProfiles") + sim.count("intelProfileIndicators"),
        0
    );
    let text = report.to_string();
    assert!(text.contains("Aqua Blizzard [profile p-aqua]"), "{text}");
    assert!(text.contains("Infrastructure overlaps"), "{text}");

    // The counterparts' fanouts were read with their reputations, found missing, and read
    // again before their pages were asked (another walk may have measured them meanwhile).
    assert_eq!(cache.take(), ["reputations and fanouts", "fanouts"]);

    // Again, through the cache: the same hits and scores, no reputation or sharing request,
    // and the cache read once.
    let again = chainer.walk(&observable(IOC)).await.expect("walk again");
    assert_eq!(cache.take(), ["reputations and fanouts"]);
    assert_eq!(again.hits, report.hits);
    assert_eq!(again.reputation_cache_hits, 9);
    assert_eq!(sim.count("reputation"), 9);
    assert_eq!(again.graph_requests, 3);
    assert_eq!(again.sharing_pages, 0);

    // Without a store or profiles (enrich --chain): the rule hits, without profile matches.
    let bare = Chainer::new(graph.clone(), None, known_settings());
    let report = bare.walk(&observable(IOC)).await.expect("bare walk");
    let actors: Vec<(&str, &str, Option<&str>)> = report
        .hits
        .iter()
        .map(|h| {
            (
                h.actor.as_str(),
                h.artifact.as_str(),
                h.profile_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        actors,
        [
            ("Aqua Blizzard", "52.1.0.1", None),
            ("Vanguard Panda", "52.1.0.2", None)
        ]
    );

    // With the in-memory cache `enrich --chain` uses: a second IOC of the run that resolves to
    // the same infrastructure asks Graph for none of its reputations.
    let cache: Arc<dyn WalkCache> = Arc::new(MemoryCache::default());
    let remembering = Chainer::new(graph, Some(cache), known_settings());
    let first = remembering
        .walk(&observable(IOC))
        .await
        .expect("first walk");
    sim.control().reset_counters();
    let second = remembering
        .walk(&observable(IOC))
        .await
        .expect("second walk");
    assert_eq!(second.hits, first.hits);
    assert_eq!(sim.count("reputation"), 0);
    assert_eq!(second.reputation_cache_hits, 9);
}

fn walk_of(
    ioc: &Observable,
    run: Option<uuid::Uuid>,
    context: Option<&Value>,
    hits: &[ActorHit],
) -> WalkHits {
    WalkHits {
        observable: ioc.clone(),
        run_id: run,
        context: context.cloned(),
        hits: hits.to_vec(),
        min_event_confidence: 40,
    }
}

#[tokio::test]
async fn hits_are_recorded_once_and_their_attributions_owed_until_announced() {
    let db = TestDb::new().await;
    let ioc = observable(IOC);
    let mut hits = expected_hits();
    for (hit, confidence) in hits.iter_mut().zip([75, 60, 50]) {
        hit.confidence = confidence;
    }
    let run = run_id("message-1", 0);
    let context = json!({"incident": 7});

    let owed = db
        .store
        .record_actor_hits(walk_of(&ioc, Some(run), Some(&context), &hits))
        .await
        .expect("record");
    let actors: Vec<&str> = owed.iter().map(|o| o.actor.as_str()).collect();
    assert_eq!(actors, ["Aqua Blizzard", "Volt Typhoon"], "one per actor");
    assert_eq!(db.query_count("SELECT count(*) FROM observables").await, 1);
    assert_eq!(db.query_count("SELECT count(*) FROM actor_hits").await, 3);
    let pairs: Vec<(String, i16, String, i32, Vec<String>)> = sqlx::query_as(
        "SELECT actor, confidence, band, artifacts, evidence_kinds FROM actor_attributions ORDER BY actor",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(
        pairs,
        [
            (
                "Aqua Blizzard".to_owned(),
                75,
                "high".to_owned(),
                2,
                vec![
                    "intel_article".to_owned(),
                    "profile_indicator".to_owned(),
                    "reputation_rule".to_owned()
                ]
            ),
            (
                "Volt Typhoon".to_owned(),
                50,
                "medium".to_owned(),
                1,
                vec!["reputation_rule".to_owned()]
            ),
        ],
        "the best hit's confidence, its band, the artifacts and evidence kinds of the pair"
    );

    // Not announced yet (the broker is down, say): recording again leaves them owed.
    let unannounced = db
        .store
        .record_actor_hits(walk_of(&ioc, Some(run), Some(&context), &hits))
        .await
        .expect("record while owed");
    assert_eq!(unannounced, owed, "owed until announced");
    let claimed = db.store.claim_owed_events(10).await.expect("claim");
    assert_eq!(claimed.events.len(), 2);
    claimed.mark_announced().await.expect("mark");

    let again = db
        .store
        .record_actor_hits(walk_of(&ioc, Some(run), Some(&context), &hits))
        .await
        .expect("record again");
    assert!(again.is_empty(), "{again:#?}");
    assert_eq!(db.query_count("SELECT count(*) FROM actor_hits").await, 3);

    // One more actor among the known ones: only its pair is owed.
    let mut more = hits.clone();
    more.push(ActorHit {
        actor: "Storm-0558".into(),
        profile_id: None,
        aliases: vec![],
        artifact: IOC.into(),
        path: vec![IOC.into()],
        evidence: vec![],
        first_seen: None,
        last_seen: None,
        confidence: 60,
        factors: vec![Factor {
            factor: "link".into(),
            detail: "the IOC itself".into(),
            points: 60,
        }],
    });
    let owed = db
        .store
        .record_actor_hits(walk_of(&ioc, None, None, &more))
        .await
        .expect("record more");
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].actor, "Storm-0558");

    let stored = db.store.actor_hits_for(&ioc).await.expect("read back");
    assert_eq!(stored.len(), 4);
    let mut expected = more.clone();
    expected.sort_by(|a, b| (&a.actor, &a.artifact).cmp(&(&b.actor, &b.artifact)));
    assert_eq!(
        stored, expected,
        "round trip, confidence and factors included"
    );
    assert_eq!(
        db.query_count(
            "SELECT count(*) FROM actor_hits WHERE run_id IS NOT NULL AND context IS NOT NULL"
        )
        .await,
        3,
        "the run and context are kept when a later record has none"
    );
    assert_eq!(event_routing_key(&hits[0].actor), "aqua-blizzard");
}

#[tokio::test]
async fn the_sql_bands_are_the_rust_bands() {
    let db = TestDb::new().await;
    let sql: Vec<String> = sqlx::query_scalar(
        "SELECT confidence_band(c) FROM generate_series(0, 100) AS c ORDER BY c",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let rust: Vec<String> = (0..=100u8).map(|c| Band::of(c).to_string()).collect();
    assert_eq!(sql, rust);
}

// ---------------------------------------------------------------------------------------------
// Confidence
// ---------------------------------------------------------------------------------------------

const SHARED_CASE: &str = "shared-case.contoso-test.com";
/// Dedicated to the actor: three names resolve to it.
const DEDICATED: &str = "52.7.0.1";
/// A CDN edge: 2,500 names resolve to it (three pages).
const SHARED: &str = "52.7.0.2";

fn lace_tempest(host: &str) -> Value {
    json!({
        "id": host, "classification": "malicious", "score": 80,
        "rules": [{"name": "Cyber Threat Intelligence", "description": "Lace Tempest",
                   "severity": "high", "relatedDetailsUrl": null}]
    })
}

fn names_on(ip: &str, n: usize) -> Value {
    let when = "2024-01-01T00:00:00Z";
    (0..n)
        .map(|i| {
            pdns(
                ip,
                &format!("site-{i}.tenant-example.com"),
                "hostname",
                when,
                when,
            )
        })
        .collect()
}

/// An IOC named by a CTI rule, resolving to a dedicated and a shared host that the same rule
/// names.
fn build_sharing_graph(sim: &SimHandle) {
    let control = sim.control();
    let when = "2024-01-01T00:00:00Z";
    control.set_override(
        &format!("hosts/{SHARED_CASE}/passiveDns"),
        json!([
            pdns(SHARED_CASE, DEDICATED, "ipAddress", when, when),
            pdns(SHARED_CASE, SHARED, "ipAddress", when, when),
        ]),
    );
    for host in [SHARED_CASE, DEDICATED, SHARED] {
        control.set_override(&format!("hosts/{host}/reputation"), lace_tempest(host));
    }
    control.set_override(
        &format!("hosts/{DEDICATED}/passiveDns"),
        names_on(DEDICATED, 3),
    );
    control.set_override(
        &format!("hosts/{SHARED}/passiveDns"),
        names_on(SHARED, 2500),
    );
}

#[tokio::test]
async fn the_ioc_named_scores_above_a_dedicated_counterpart_which_scores_above_a_shared_one() {
    let (sim, graph) = sim_and_client().await;
    build_sharing_graph(&sim);
    let db = TestDb::new().await;
    let chainer = Chainer::new(
        graph,
        Some(Arc::new(db.store.clone())),
        ChainSettings::default(),
    );

    let report = chainer.walk(&observable(SHARED_CASE)).await.expect("walk");
    println!("{report}");
    // Same actor, same rule, same reputation (malicious at 80, +10) and three artifacts
    // (+10): the IOC itself 60, a dedicated hop 40, a hop through 2,500 names 40 - 30.
    assert_eq!(
        scores(&report.hits),
        [(SHARED_CASE, 80), (DEDICATED, 60), (SHARED, 30)]
    );
    let sharing = |artifact: &str| {
        report
            .hits
            .iter()
            .find(|h| h.artifact == artifact)
            .and_then(|h| h.factors.iter().find(|f| f.factor == "sharing"))
            .map(|f| (f.points, f.detail.clone()))
    };
    assert_eq!(sharing(DEDICATED), Some((0, "dedicated (3 names)".into())));
    assert_eq!(
        sharing(SHARED),
        Some((-30, "widely shared (at least 1000 names)".into()))
    );
    assert_eq!(
        sharing(SHARED_CASE),
        None,
        "the IOC itself is never discounted"
    );
    assert_eq!(report.sharing_pages, 2, "one page of each counterpart");

    // A second walk reads the fanouts from Postgres: same scores, no page.
    let again = chainer.walk(&observable(SHARED_CASE)).await.expect("again");
    assert_eq!(scores(&again.hits), scores(&report.hits));
    assert_eq!(again.sharing_pages, 0);
}

/// IOCs that all resolve to the sharing case's dedicated and shared counterparts.
fn iocs_on_the_sharing_graph(sim: &SimHandle, n: usize) -> Vec<Observable> {
    let when = "2024-01-01T00:00:00Z";
    (0..n)
        .map(|i| {
            let ioc = format!("ioc-{i}.sharing-test.com");
            sim.control().set_override(
                &format!("hosts/{ioc}/passiveDns"),
                json!([
                    pdns(&ioc, DEDICATED, "ipAddress", when, when),
                    pdns(&ioc, SHARED, "ipAddress", when, when),
                ]),
            );
            observable(&ioc)
        })
        .collect()
}

#[tokio::test]
async fn walks_running_at_once_measure_each_shared_counterpart_once_and_score_as_one_by_one() {
    let (sim, graph) = sim_and_client().await;
    build_sharing_graph(&sim);
    let iocs = iocs_on_the_sharing_graph(&sim, 20);
    // Slow answers, so that every walk reaches the two counterparts' sharing while another
    // walk's page of them is still on its way.
    sim.control().set_latency(Duration::from_millis(30));
    let walker = |db: &TestDb, in_flight: InFlightLookups| {
        Chainer::new(
            graph.clone(),
            Some(Arc::new(db.store.clone())),
            ChainSettings::default(),
        )
        .with_in_flight(in_flight)
    };

    let one_by_one_db = TestDb::new().await;
    let chainer = walker(&one_by_one_db, InFlightLookups::default());
    let mut one_by_one = Vec::new();
    for ioc in &iocs {
        one_by_one.push(chainer.walk(ioc).await.expect("walk").hits);
    }

    let at_once_db = TestDb::new().await;
    let in_flight = InFlightLookups::default();
    let chainer = walker(&at_once_db, in_flight.clone());
    let start = sim.count("passiveDns");
    let reports = futures::future::join_all(iocs.iter().map(|ioc| chainer.walk(ioc))).await;
    let pages = sim.count("passiveDns") - start;

    let mut sharing_pages = 0;
    let mut at_once = Vec::new();
    for report in reports {
        let report = report.expect("walk");
        sharing_pages += report.sharing_pages;
        at_once.push(report.hits);
    }
    assert_eq!(at_once, one_by_one, "the same hits, scored the same");
    // The sharing case's counterparts, the IOC unattributed: 40 + 10 + 5, less 30 when shared.
    assert_eq!(scores(&at_once[0]), [(DEDICATED, 55), (SHARED, 25)]);
    assert_eq!(
        sharing_pages, 2,
        "one page of each counterpart, for all walks"
    );
    assert_eq!(
        pages,
        20 + 2,
        "each IOC's page, and one of each counterpart"
    );
    assert!(in_flight.is_empty(), "every lookup closed");
}

// ---------------------------------------------------------------------------------------------
// Cycles and budgets
// ---------------------------------------------------------------------------------------------

fn host_record(parent: &str, artifact: &str) -> Value {
    pdns(
        parent,
        artifact,
        "hostname",
        "2023-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z",
    )
}

#[tokio::test]
async fn a_passive_dns_cycle_ends_and_a_budget_cut_is_recorded() {
    let (sim, graph) = sim_and_client().await;
    let control = sim.control();
    control.set_override(
        "hosts/a.cycle-test.com/passiveDns",
        json!([host_record("a.cycle-test.com", "b.cycle-test.com")]),
    );
    control.set_override(
        "hosts/b.cycle-test.com/passiveDns",
        json!([
            host_record("b.cycle-test.com", "a.cycle-test.com"),
            host_record("b.cycle-test.com", "c.cycle-test.com")
        ]),
    );
    control.set_override(
        "hosts/c.cycle-test.com/passiveDns",
        json!([host_record("c.cycle-test.com", "b.cycle-test.com")]),
    );
    control.set_override(
        "hosts/c.cycle-test.com/reputation",
        json!({"id": "c.cycle-test.com", "classification": "malicious", "score": 99,
               "rules": [{"name": "Cyber Threat Intelligence", "description": "Lace Tempest", "severity": "high"}]}),
    );
    let settings = ChainSettings {
        depth: 3,
        ..ChainSettings::default()
    };
    let chainer = Chainer::new(graph.clone(), None, settings.clone());
    let ioc = observable("a.cycle-test.com");
    // The walk is Send: it can run on a spawned task.
    let report = tokio::spawn({
        let (chainer, ioc) = (chainer.clone(), ioc.clone());
        async move { chainer.walk(&ioc).await }
    })
    .await
    .unwrap()
    .expect("walk");
    println!("{report}");
    assert!(report.truncated.is_empty(), "{:?}", report.truncated);
    assert_eq!(report.counterparts, 2);
    assert_eq!(sim.count("passiveDns"), 3, "each host walked once");
    assert_eq!(sim.count("reputation"), 3, "each host asked once");
    assert_eq!(report.hits.len(), 1);
    let hit = &report.hits[0];
    assert_eq!(hit.actor, "Lace Tempest");
    assert_eq!(
        hit.path,
        ["a.cycle-test.com", "b.cycle-test.com", "c.cycle-test.com"]
    );

    // A budget of 3: the IOC's passive DNS (1) and two reputations; b's passive DNS is cut.
    sim.control().reset_counters();
    let tight = Chainer::new(
        graph.clone(),
        None,
        ChainSettings {
            request_budget: 3,
            ..settings.clone()
        },
    );
    let report = tight.walk(&ioc).await.expect("budget walk");
    println!("{report}");
    assert_eq!(report.graph_requests, 3);
    assert_eq!(sim.count("graph"), 3);
    assert!(report.hits.is_empty());
    assert_eq!(report.truncated.len(), 1, "{:?}", report.truncated);
    assert!(
        report.truncated[0].contains("request budget (3)"),
        "{:?}",
        report.truncated
    );

    // A budget of 2 on three pages: the paging is cut, and the reputations left out.
    sim.control().reset_counters();
    control.set_override(
        "hosts/paged.cycle-test.com/passiveDns",
        json!((1..=25)
            .map(|i| host_record("paged.cycle-test.com", &format!("h{i}.cycle-test.com")))
            .collect::<Vec<_>>()),
    );
    let paged = Chainer::new(
        graph.clone(),
        None,
        ChainSettings {
            request_budget: 2,
            page_limits: PageLimits {
                page_size: Some(10),
                max_pages: None,
            },
            ..ChainSettings::default()
        },
    );
    let report = paged
        .walk(&observable("paged.cycle-test.com"))
        .await
        .expect("paged walk");
    assert_eq!(report.pages, 2);
    assert_eq!(report.counterparts, 20);
    assert_eq!(sim.count("reputation"), 0);
    assert_eq!(report.truncated.len(), 2, "{:?}", report.truncated);
    assert!(report.truncated[0].contains("after 2 page(s)"));
    assert!(report.truncated[1].contains("21 host(s) left without a reputation"));

    // max_artifacts and a page cap.
    let capped = Chainer::new(
        graph,
        None,
        ChainSettings {
            max_artifacts: 5,
            page_limits: PageLimits {
                page_size: Some(10),
                max_pages: Some(1),
            },
            ..ChainSettings::default()
        },
    );
    let report = capped
        .walk(&observable("paged.cycle-test.com"))
        .await
        .expect("capped walk");
    assert_eq!(report.counterparts, 5);
    assert!(
        report.truncated[0].starts_with("page cap"),
        "{:?}",
        report.truncated
    );
    assert!(
        report.truncated[1].starts_with("max_artifacts (5)"),
        "{:?}",
        report.truncated
    );
}

// ---------------------------------------------------------------------------------------------
// Sharing the cache
// ---------------------------------------------------------------------------------------------

/// 100 IOCs, each resolving to 20 of 30 shared addresses.
fn shared_graph(sim: &SimHandle) -> Vec<Observable> {
    (0..100u32)
        .map(|n| {
            let ioc = format!("ioc-{n}.shared-test.com");
            let records: Vec<Value> = (0..20u32)
                .map(|j| {
                    let ip = format!("52.2.0.{}", (n * 7 + j) % 30 + 1);
                    pdns(
                        &ioc,
                        &ip,
                        "ipAddress",
                        "2023-01-01T00:00:00Z",
                        "2024-01-01T00:00:00Z",
                    )
                })
                .collect();
            sim.control()
                .set_override(&format!("hosts/{ioc}/passiveDns"), Value::Array(records));
            observable(&ioc)
        })
        .collect()
}

#[tokio::test]
async fn walks_sharing_a_store_ask_far_fewer_reputations() {
    let (sim, graph) = sim_and_client().await;
    let iocs = shared_graph(&sim);
    let db = TestDb::new().await;

    let independent_start = sim.count("reputation");
    for ioc in &iocs {
        let chainer = Chainer::new(graph.clone(), None, ChainSettings::default());
        chainer.walk(ioc).await.expect("independent walk");
    }
    let independent = sim.count("reputation") - independent_start;

    let shared_start = sim.count("reputation");
    let chainer = Chainer::new(
        graph.clone(),
        Some(Arc::new(db.store.clone())),
        ChainSettings::default(),
    );
    let mut cache_hits = 0;
    for ioc in &iocs {
        cache_hits += chainer
            .walk(ioc)
            .await
            .expect("shared walk")
            .reputation_cache_hits;
    }
    let shared = sim.count("reputation") - shared_start;
    println!(
        "reputation requests for 100 IOCs: {independent} independent, {shared} through one store ({cache_hits} cache hits)"
    );
    assert_eq!(independent, 100 * 21);
    assert!(shared < independent / 3, "{shared} vs {independent}");
    assert_eq!(shared, 100 + 30);
}

#[tokio::test]
async fn walks_running_at_once_ask_each_shared_counterpart_once() {
    let (sim, graph) = sim_and_client().await;
    let iocs = shared_graph(&sim);
    let db = TestDb::new().await;
    // Slow answers, so that the walks overlap: every one of them meets shared addresses while
    // another walk's lookup of them is still on its way.
    sim.control()
        .set_latency(std::time::Duration::from_millis(30));

    let in_flight = InFlightLookups::default();
    let chainer = Chainer::new(
        graph.clone(),
        Some(Arc::new(db.store.clone())),
        ChainSettings::default(),
    )
    .with_in_flight(in_flight.clone());
    let start = sim.count("reputation");
    let reports = futures::future::join_all(iocs.iter().map(|ioc| chainer.walk(ioc))).await;
    let asked = sim.count("reputation") - start;

    let mut served = 0;
    for report in reports {
        let report = report.expect("walk");
        assert_eq!(report.counterparts, 20);
        served += report.reputation_cache_hits;
    }
    assert_eq!(
        asked,
        100 + 30,
        "each IOC once, and each of the 30 shared addresses once"
    );
    assert_eq!(
        served,
        100 * 20 - 30,
        "every other meeting was served without Graph"
    );
    assert!(in_flight.is_empty(), "every lookup closed");
}

#[tokio::test]
async fn workers_sharing_a_database_ask_each_shared_counterpart_once() {
    let (sim, graph) = sim_and_client().await;
    let iocs = shared_graph(&sim);
    let db = TestDb::new().await;
    sim.control()
        .set_latency(std::time::Duration::from_millis(30));
    // Two workers: each its own lookups in flight, one database between them.
    let settings = ChainSettings {
        share_lookups: true,
        ..ChainSettings::default()
    };
    let worker = || {
        Chainer::new(
            graph.clone(),
            Some(Arc::new(db.store.clone())),
            settings.clone(),
        )
        .with_in_flight(InFlightLookups::default())
    };
    let (first, second) = (worker(), worker());

    let start = sim.count("reputation");
    // Bulk walks, as a bulk message's: live walks take no claims (see the test below).
    let walks = iocs.iter().enumerate().map(|(n, ioc)| {
        let chainer = if n % 2 == 0 { &first } else { &second };
        Lane::Bulk.scope(chainer.walk(ioc))
    });
    for report in futures::future::join_all(walks).await {
        assert_eq!(report.expect("walk").counterparts, 20);
    }
    // Without the claims in Postgres, the two workers asked 160 times here.
    assert_eq!(
        sim.count("reputation") - start,
        100 + 30,
        "each IOC once, and each of the 30 shared addresses once, whichever worker asked"
    );
    assert_eq!(
        db.count("reputation_claims").await,
        0,
        "every claim released"
    );
}

// ---------------------------------------------------------------------------------------------
// The seed's algorithm, for comparison
// ---------------------------------------------------------------------------------------------

/// What the seed does for one IOC: every passive DNS page at Graph's own page size, then one
/// reputation request per record's artifact, duplicates included, nothing cached. Returns the
/// (actor, artifact) pairs it attributes.
async fn seed_walk(graph: &GraphClient, ioc: &str) -> BTreeSet<(String, String)> {
    let all = PageLimits {
        page_size: None,
        max_pages: None,
    };
    let records = graph.passive_dns(ioc, all).await.expect("seed pdns");
    let mut pairs = BTreeSet::new();
    for record in &records.items {
        let Some(artifact) = record.artifact.as_ref().and_then(|a| a.id.clone()) else {
            continue;
        };
        let Some(reputation) = graph.reputation(&artifact).await.expect("seed reputation") else {
            continue;
        };
        for rule in &reputation.rules {
            let name = rule.name.as_deref().unwrap_or_default().trim();
            if name.eq_ignore_ascii_case(CTI_RULE) {
                for actor in rule
                    .description
                    .as_ref()
                    .map(cti_actor_names)
                    .unwrap_or_default()
                {
                    pairs.insert((actor, artifact.to_lowercase()));
                }
            }
        }
    }
    pairs
}

#[tokio::test]
async fn the_walk_costs_no_more_than_the_seed_algorithm() {
    let (sim, graph) = sim_and_client().await;
    build_known_graph(&sim);
    let mut iocs: Vec<String> = vec![IOC.to_owned()];
    iocs.extend((0..10).map(|n| format!("evil.cmp-{n}.com")));
    iocs.extend((0..5).map(|n| format!("popular.cmp-{n}.com")));
    iocs.extend((0..5).map(|n| format!("52.3.0.{}", n + 1)));
    let iocs: Vec<Observable> = iocs.iter().map(|i| observable(i)).collect();

    let seed_client = graph.tracked();
    let mut seed_pairs = BTreeSet::new();
    for ioc in &iocs {
        seed_pairs.extend(seed_walk(&seed_client, ioc.value()).await);
    }
    let seed_requests = seed_client.requests();
    assert_eq!(seed_requests, sim.count("graph"));

    // For the record: the walk without a store (every reputation from Graph, once per host per
    // walk), e.g. `enrich --chain`.
    let mut storeless = 0;
    let bare = Chainer::new(graph.clone(), None, ChainSettings::default());
    for ioc in &iocs {
        storeless += bare.walk(ioc).await.expect("storeless walk").graph_requests;
    }

    let db = TestDb::new().await;
    sim.control().reset_counters();
    // No `since` window here: the seed has none.
    let chainer = Chainer::new(
        graph,
        Some(Arc::new(db.store.clone())),
        ChainSettings::default(),
    );
    let mut ours = 0;
    let mut our_pairs = BTreeSet::new();
    for ioc in &iocs {
        let report = chainer.walk(ioc).await.expect("walk");
        assert!(report.truncated.is_empty(), "{:?}", report.truncated);
        ours += report.graph_requests;
        for hit in &report.hits {
            if hit
                .evidence
                .iter()
                .any(|e| matches!(e, Evidence::ReputationRule { .. }))
                && hit.artifact != ioc.value()
            {
                our_pairs.insert((hit.actor.clone(), hit.artifact.clone()));
            }
        }
    }
    assert_eq!(ours, sim.count("graph"));
    let n = iocs.len() as f64;
    println!(
        "Graph requests for {} IOCs: seed algorithm {seed_requests} ({:.1} per IOC), chain walk {ours} ({:.1} per IOC)",
        iocs.len(),
        seed_requests as f64 / n,
        ours as f64 / n
    );
    println!(
        "  (chain walk without a store: {storeless}, {:.1} per IOC)",
        storeless as f64 / n
    );
    assert!(ours <= seed_requests, "{ours} > {seed_requests}");
    assert!(!seed_pairs.is_empty());
    assert_eq!(our_pairs, seed_pairs, "the same attribution as the seed");
}

#[tokio::test]
async fn walks_crossing_on_hosts_another_worker_holds_finish_without_asking_for_them() {
    let (sim, graph) = sim_and_client().await;
    let db = TestDb::new().await;
    let (x, y) = ("52.3.0.1", "52.3.0.2");
    // Two walks meeting the same two hosts in opposite orders.
    let iocs: Vec<Observable> = [
        ("crossing-a.shared-test.com", [x, y]),
        ("crossing-b.shared-test.com", [y, x]),
    ]
    .into_iter()
    .map(|(ioc, hosts)| {
        let records: Vec<Value> = hosts
            .iter()
            .map(|ip| {
                pdns(
                    ioc,
                    ip,
                    "ipAddress",
                    "2023-01-01T00:00:00Z",
                    "2024-01-01T00:00:00Z",
                )
            })
            .collect();
        sim.control()
            .set_override(&format!("hosts/{ioc}/passiveDns"), Value::Array(records));
        observable(ioc)
    })
    .collect();
    // Another worker is asking Graph about both hosts; it answers a second later.
    let hosts = vec![x.to_owned(), y.to_owned()];
    let held = db
        .store
        .claim_reputation_lookups(&hosts, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(held.hosts.len(), 2);
    let other_worker = {
        let store = db.store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let reputation = mdti_worker::enrich::Reputation {
                classification: Some("neutral".into()),
                score: Some(1),
                rules: Arc::default(),
            };
            store
                .save_reputations([(x, &reputation), (y, &reputation)])
                .await
                .unwrap();
            store.release_reputation_lookups(&held).await.unwrap();
        })
    };

    let settings = ChainSettings {
        share_lookups: true,
        ..ChainSettings::default()
    };
    let chainer = Chainer::new(graph.clone(), Some(Arc::new(db.store.clone())), settings)
        .with_in_flight(InFlightLookups::default());
    let start = sim.count("reputation");
    let walks =
        futures::future::join_all(iocs.iter().map(|ioc| Lane::Bulk.scope(chainer.walk(ioc))));
    let reports = tokio::time::timeout(std::time::Duration::from_secs(90), walks)
        .await
        .expect("the crossing walks finish");
    other_worker.await.unwrap();
    for report in reports {
        assert_eq!(report.expect("walk").counterparts, 2);
    }
    assert_eq!(
        sim.count("reputation") - start,
        2,
        "the two IOCs only: both hosts came from the other worker's answers"
    );
}

/// A live walk does not wait for a host another worker claimed: that worker may be asking for
/// a bulk walk, its request queued behind a whole backlog. It asks Graph itself.
#[tokio::test]
async fn a_live_walk_asks_for_hosts_another_worker_holds_instead_of_waiting() {
    let (sim, graph) = sim_and_client().await;
    let db = TestDb::new().await;
    let (ioc, host) = ("live-walk.shared-test.com", "52.3.0.9");
    let record = pdns(
        ioc,
        host,
        "ipAddress",
        "2023-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z",
    );
    sim.control().set_override(
        &format!("hosts/{ioc}/passiveDns"),
        Value::Array(vec![record]),
    );
    // Held far longer than any wait for a claim, and never answered.
    let hosts = vec![host.to_owned()];
    let held = db
        .store
        .claim_reputation_lookups(&hosts, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(held.hosts.len(), 1);
    let settings = ChainSettings {
        share_lookups: true,
        ..ChainSettings::default()
    };
    let chainer = Chainer::new(graph.clone(), Some(Arc::new(db.store.clone())), settings)
        .with_in_flight(InFlightLookups::default());
    let start = sim.count("reputation");
    // Shorter than the 30 s a walk waits for a claim at most: a walk that waited fails here.
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        Lane::Live.scope(chainer.walk(&observable(ioc))),
    )
    .await
    .expect("the live walk did not wait for the claim")
    .expect("walk");
    assert_eq!(report.counterparts, 1);
    assert_eq!(
        sim.count("reputation") - start,
        2,
        "the IOC and the held host"
    );
    assert_eq!(
        db.count("reputation_claims").await,
        1,
        "the other claim untouched"
    );
}

#[tokio::test]
async fn a_link_through_the_simulators_cdn_edge_is_discounted_to_low() {
    let (_sim, graph) = sim_and_client().await;
    let db = TestDb::new().await;
    sync_profiles(&graph, &db.store).await.expect("sync");
    let profiles = Arc::new(ProfileIndex::load(&db.store).await.expect("load"));
    let (edge, actor) = sim::shared_hosts()
        .into_iter()
        .find_map(|(host, actor)| Some((host, actor?)))
        .expect("a shared host that names an actor");
    let ioc = (0..1000)
        .map(|i| format!("host{i}.fabrikam.com"))
        .find(|name| sim::shared_host_for(name).as_deref() == Some(edge.as_str()))
        .expect("a name behind it");
    let chainer = Chainer::new(
        graph,
        Some(Arc::new(db.store.clone())),
        ChainSettings::default(),
    )
    .with_profiles(profiles);

    let report = chainer.walk(&observable(&ioc)).await.expect("walk");
    let hit = report
        .hits
        .iter()
        .find(|h| h.artifact == edge)
        .unwrap_or_else(|| panic!("{ioc} is linked to {actor} through {edge}: {report}"));
    assert_eq!(hit.actor, actor);
    let sharing: Vec<i32> = hit
        .factors
        .iter()
        .filter(|f| f.factor == "sharing")
        .map(|f| f.points)
        .collect();
    assert_eq!(sharing, [-30], "{:#?}", hit.factors);
    assert_eq!(Band::of(hit.confidence), Band::Low, "{:#?}", hit.factors);
}
