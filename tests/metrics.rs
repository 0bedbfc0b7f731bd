//! The worker's operations listener, end to end: a worker started the way `mdti-worker worker`
//! starts one (`cli::run_worker` with a listener), RabbitMQ, Postgres (through a relay the test
//! can cut) and the Graph simulator; the test scrapes `/metrics` and probes `/healthz` and
//! `/readyz` over HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mdti_worker::cli;
use mdti_worker::config::{BrokerArgs, GraphArgs, WorkerArgs};
use mdti_worker::consumer::WorkerStats;
use mdti_worker::graph::{GraphClient, GraphSettings};
use mdti_worker::queue::{Publisher, Topology};
use mdti_worker::sim::{self, SimConfig, SimHandle};
use mdti_worker::store::Store;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod support;
use support::{delete_topology, eventually, graph_settings, Relay, TestDb, AMQP};

/// The worker's settings, read from flags as the `worker` command reads them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    graph: GraphArgs,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    worker: WorkerArgs,
}

struct Worker {
    sim: SimHandle,
    db: TestDb,
    relay: Relay,
    topology: Topology,
    publisher: Publisher,
    stats: Arc<WorkerStats>,
    ops: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
}

async fn start_worker() -> Worker {
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    let db = TestDb::new().await;
    let relay = Relay::start("127.0.0.1:5432").await;
    let store = Store::connect(&db.url_via_port(relay.port), 4)
        .await
        .unwrap();
    let graph = GraphClient::new(GraphSettings {
        max_attempts: 4,
        ..graph_settings(&sim)
    })
    .unwrap();
    let prefix = format!("t-{}", uuid::Uuid::new_v4().simple());
    // No profile sync: its Graph requests would blur the counts under test.
    let flags = Flags::parse_from([
        "worker",
        "--queue-prefix",
        &prefix,
        "--retry-delay",
        "1s",
        "--concurrency",
        "4",
        "--profile-sync-interval",
        "0",
    ]);
    let topology = flags.broker.topology();
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = listener.local_addr().unwrap();
    let stats = Arc::new(WorkerStats::default());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn({
        let stats = Arc::clone(&stats);
        async move {
            cli::run_worker(
                &flags.graph,
                &flags.broker,
                &flags.worker,
                graph,
                store,
                stopped,
                stats,
                Some(listener),
            )
            .await
        }
    });
    Worker {
        sim,
        db,
        relay,
        topology,
        publisher,
        stats,
        ops,
        stop,
        task,
        http: reqwest::Client::new(),
    }
}

impl Worker {
    async fn publish(&self, message_id: &str, body: &[u8]) {
        self.publisher
            .publish_observables("test", body, "application/json", message_id)
            .await
            .unwrap();
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("http://{}{path}", self.ops))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn readiness(&self) -> (u16, Value) {
        let (status, body) = self.get("/readyz").await;
        (status, serde_json::from_str(&body).unwrap())
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&WorkerStats) -> bool) {
        eventually(Duration::from_secs(60), what, || async {
            check(&self.stats)
        })
        .await;
    }

    async fn teardown(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the worker stops within its bound")
            .unwrap()
            .unwrap();
        delete_topology(&self.topology).await;
        drop(self.sim);
        drop(self.db);
    }
}

/// The value of one series (`name` or `name{label="value",...}`, labels as rendered) in a
/// scrape; `None` when the scrape has no such line.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.parse().expect("a sample value is a number"))
    })
}

/// Sum of every sample of a family (lines `name{...} value` or `name value`).
fn family_sum(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Each family of a scrape (its `# TYPE` line) and its type.
fn scrape_families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Each family the README's metrics table names, and the type it gives: a row may name several
/// families, with one type each or one for all.
fn readme_families() -> BTreeMap<String, String> {
    let readme = include_str!("../README.md");
    let table = readme
        .split("| metric | type | what it says |")
        .nth(1)
        .expect("the README has its metrics table");
    let mut families = BTreeMap::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let types: Vec<&str> = cells[2].split(", ").collect();
        for (i, name) in cells[1].split(", ").enumerate() {
            let name = name.trim_matches('`').split('{').next().unwrap();
            let kind = types.get(i).or(types.last()).unwrap();
            families.insert(name.to_owned(), (*kind).to_owned());
        }
    }
    families
}

fn whois_only(host: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"value": host, "enrichers": ["whois"], "chain": false})).unwrap()
}

#[tokio::test]
async fn a_scrape_counts_outcomes_throttling_requests_by_endpoint_and_cache_hits() {
    let worker = start_worker().await;
    // The first Graph request is throttled once; the client waits what Graph asked and retries.
    worker
        .sim
        .control()
        .inject_429(1, Duration::from_millis(200));
    for host in ["a.contoso.com", "b.contoso.com", "c.contoso.com"] {
        worker.publish(host, &whois_only(host)).await;
    }
    worker
        .wait_for("three messages done", |s| s.done() == 3)
        .await;

    // The same observable again is answered from Postgres; broken JSON is dead-lettered.
    worker
        .publish("a-again", &whois_only("a.contoso.com"))
        .await;
    worker.publish("broken", b"{\"value\": ").await;
    worker
        .wait_for("the repeat done and the broken one dead-lettered", |s| {
            s.done() == 4 && WorkerStats::get(&s.dead_lettered) == 1
        })
        .await;

    // A reputation in the cache, then an observable chained with every enricher whose only
    // passive DNS counterpart is that host: the walk takes its reputation from the cache. (The
    // IOC's own reputation comes from its enricher, with no cache round trip.)
    worker
        .publish(
            "shared",
            &serde_json::to_vec(
                &json!({"value": "shared.contoso.com", "enrichers": ["reputation"], "chain": false}),
            )
            .unwrap(),
        )
        .await;
    worker
        .wait_for("the reputation cached", |s| s.done() == 5)
        .await;
    worker.sim.control().set_override(
        "hosts/lonely.contoso.com/passiveDns",
        json!([{
            "id": "lonely-shared",
            "recordType": "CNAME",
            "parentHost": {"id": "lonely.contoso.com"},
            "artifact": {"@odata.type": "#microsoft.graph.security.hostname", "id": "shared.contoso.com"}
        }]),
    );
    worker
        .publish(
            "lonely",
            &serde_json::to_vec(&json!({"value": "lonely.contoso.com"})).unwrap(),
        )
        .await;
    worker
        .wait_for("the chained one done", |s| s.done() == 6)
        .await;

    let (status, scrape) = worker.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        scrape.contains("# TYPE mdti_messages_total counter\n"),
        "{scrape}"
    );
    let at = |series: &str| {
        sample(&scrape, series).unwrap_or_else(|| panic!("{series} missing:\n{scrape}"))
    };

    assert_eq!(at("mdti_messages_received_total"), 7.0);
    assert_eq!(at(r#"mdti_messages_total{outcome="done"}"#), 6.0);
    assert_eq!(at(r#"mdti_messages_total{outcome="dead_lettered"}"#), 1.0);
    assert_eq!(at(r#"mdti_messages_total{outcome="retried"}"#), 0.0);
    assert_eq!(at(r#"mdti_messages_total{outcome="requeued"}"#), 0.0);
    assert_eq!(at(r#"mdti_observables_total{status="enriched"}"#), 5.0);
    assert_eq!(at(r#"mdti_observables_total{status="cached"}"#), 1.0);
    assert_eq!(at("mdti_reputation_cache_hits_total"), 1.0);
    // That cached reputation was read from Postgres: the worker keeps only rows it has read.
    assert!(at(r#"mdti_cache_rows_kept_lookups_total{outcome="read"}"#) >= 1.0);
    assert_eq!(at("mdti_cache_rows_kept_restarts_total"), 0.0);

    // Requests by endpoint and status: the throttled whois and its retry, three more whois
    // answers, the cached reputation, and the chained message's reputation and passive DNS.
    for (endpoint, status, expected) in [
        ("whois", "429", 1.0),
        ("whois", "200", 4.0),
        ("reputation", "200", 2.0),
        ("passiveDns", "200", 1.0),
    ] {
        let series =
            format!(r#"mdti_graph_requests_total{{endpoint="{endpoint}",status="{status}"}}"#);
        assert_eq!(at(&series), expected, "{series}");
    }
    let requests = family_sum(&scrape, "mdti_graph_requests_total");
    assert_eq!(requests, worker.sim.count("graph") as f64);
    assert_eq!(at("mdti_graph_throttled_total"), 1.0);
    assert_eq!(worker.sim.count("throttled"), 1);
    assert_eq!(at("mdti_graph_retry_after_seconds_total"), 0.2);
    assert_eq!(at("mdti_graph_retries_total"), 1.0);
    assert_eq!(at("mdti_graph_gave_up_total"), 0.0);
    assert!(at("mdti_graph_throttle_hold_seconds_total") > 0.0);
    assert_eq!(at("mdti_graph_in_flight_requests"), 0.0);

    // One latency observation per request, the buckets cumulative up to +Inf.
    assert_eq!(at("mdti_graph_request_duration_seconds_count"), requests);
    assert_eq!(
        at(r#"mdti_graph_request_duration_seconds_bucket{le="+Inf"}"#),
        requests
    );
    let buckets: Vec<f64> = scrape
        .lines()
        .filter(|l| l.starts_with("mdti_graph_request_duration_seconds_bucket{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    assert_eq!(at("mdti_broker_connected"), 1.0);
    assert_eq!(at("mdti_consumer_running"), 1.0);
    assert_eq!(
        scrape_families(&scrape),
        readme_families(),
        "the families of a scrape and their types are those the README's metrics table gives"
    );
    worker.teardown().await;
}

#[tokio::test]
async fn readiness_follows_postgres_while_liveness_stays_ok() {
    let worker = start_worker().await;
    eventually(Duration::from_secs(60), "ready", || async {
        worker.readiness().await.0 == 200
    })
    .await;
    let (_, body) = worker.readiness().await;
    assert_eq!(body["ready"], json!(true));
    assert_eq!(
        body["checks"],
        json!({"broker": "ok", "postgres": "ok", "consumer": "ok", "progress": "ok"})
    );
    assert_eq!(worker.get("/healthz").await.0, 200);

    worker.relay.cut();
    eventually(
        Duration::from_secs(60),
        "not ready without Postgres",
        || async { worker.readiness().await.0 == 503 },
    )
    .await;
    let (_, body) = worker.readiness().await;
    assert_eq!(body["ready"], json!(false));
    assert_eq!(body["not_ready"], json!(["postgres"]), "{body}");
    assert_ne!(body["checks"]["postgres"], json!("ok"));
    assert_eq!(body["checks"]["broker"], json!("ok"));
    assert_eq!(
        worker.get("/healthz").await.0,
        200,
        "the process is alive, only not ready"
    );

    worker.relay.restore();
    eventually(Duration::from_secs(60), "ready again", || async {
        worker.readiness().await.0 == 200
    })
    .await;
    worker.teardown().await;
}
