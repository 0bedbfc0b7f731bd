//! What the integration tests share: a fresh database per test, a Graph client pointed at a
//! simulator, and observables from text.
//!
//! The server is `MDTI_TEST_DATABASE_URL` (its path, if any, is replaced by the test database's
//! name), by default `postgres://postgres@127.0.0.1:5432`.

#![allow(dead_code)] // each test crate uses its own subset

pub mod seed;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use lapin::{Connection, ConnectionProperties};

use mdti_worker::enrich::{EnricherKind, EnricherResult};
use mdti_worker::graph::GraphSettings;
use mdti_worker::observable::{normalise, Normalised, Observable};
use mdti_worker::queue::Topology;
use mdti_worker::secret::Secret;
use mdti_worker::sim::SimHandle;
use mdti_worker::store::Store;
use uuid::Uuid;

pub mod harness;
// The helpers most test crates reach for, at the top of the support module too.
#[allow(unused_imports)]
pub use harness::{delete_topology, eventually, Relay, AMQP};

/// The result tables, for before/after comparisons.
pub const TABLES: [&str; 7] = [
    "observables",
    "enrichment_runs",
    "enricher_results",
    "indicators",
    "extracts",
    "reputations",
    "rejected_inputs",
];

/// A fresh, migrated database (`mdti_test_<uuid>`); dropped, best effort, when this is dropped,
/// passed or not.
pub struct TestDb {
    pub store: Store,
    pub name: String,
    /// URL of this database.
    pub url: String,
    pub admin_url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let base = std::env::var("MDTI_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let mut url = url::Url::parse(&base).expect("MDTI_TEST_DATABASE_URL is a URL");
        let name = format!("mdti_test_{}", Uuid::new_v4().simple());
        url.set_path(&name);
        let database_url = url.to_string();
        Store::create_database_if_missing(&database_url)
            .await
            .expect("create the test database");
        let store = Store::connect(&database_url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        url.set_path("postgres");
        TestDb {
            store,
            name,
            url: database_url,
            admin_url: url.to_string(),
        }
    }

    /// The same database on another port of this host (a relay in front of the server).
    pub fn url_via_port(&self, port: u16) -> String {
        let mut url = url::Url::parse(&self.url).expect("a URL");
        url.set_port(Some(port)).expect("a port can be set");
        url.to_string()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// The single number a `SELECT count(*) ...` returns.
    pub async fn query_count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// Every message item has exactly one run, `items` in all, and no extract is stored twice:
    /// what a redelivery after a fault must leave behind.
    pub async fn assert_each_item_once(&self, items: i64) {
        assert_eq!(
            self.count("enrichment_runs").await,
            items,
            "one run per message item"
        );
        assert_eq!(
            self.query_count(
                "SELECT count(*) FROM (SELECT DISTINCT message_id, item_index FROM enrichment_runs) d"
            )
            .await,
            items,
            "no item has two runs"
        );
        assert_eq!(
            self.query_count(
                "SELECT count(*) FROM (SELECT observable_id, enricher, kind, value, field FROM extracts \
                 GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1) d"
            )
            .await,
            0,
            "no extract stored twice"
        );
    }

    pub async fn counts(&self) -> Vec<(&'static str, i64)> {
        let mut counts = Vec::new();
        for table in TABLES {
            counts.push((table, self.count(table).await));
        }
        counts
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be gone: use a runtime of our own on a
        // thread of our own. FORCE ends the pool's connections.
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Decode the escapes of the test corpora (`tests/data/*.tsv`): `\t \n \r \\ \0 \xNN` (raw
/// bytes) and `@big:N` (N 'a' characters).
pub fn decode_escapes(cell: &str) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(cell.len());
    let bytes = cell.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"@big:") {
            let after = &bytes[i + "@big:".len()..];
            let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
            let n: usize = std::str::from_utf8(&after[..digits])
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| format!("@big: without a count in {cell:?}"))?;
            out.resize(out.len() + n, b'a');
            i += "@big:".len() + digits;
            continue;
        }
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let escape = bytes
            .get(i + 1)
            .ok_or_else(|| format!("trailing backslash in {cell:?}"))?;
        match escape {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'\\' => out.push(b'\\'),
            b'0' => out.push(0),
            b'x' => {
                let hex = cell
                    .get(i + 2..i + 4)
                    .ok_or_else(|| format!("short \\x escape in {cell:?}"))?;
                let byte = u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad \\x escape {hex:?} in {cell:?}"))?;
                out.push(byte);
                i += 2;
            }
            other => return Err(format!("unknown escape \\{} in {cell:?}", *other as char)),
        }
        i += 2;
    }
    Ok(out)
}

/// A ready observable from text; panics (in a test) if the text is not one.
pub fn observable(raw: &str) -> Observable {
    match normalise(raw, None, &Default::default()) {
        Ok(Normalised::Ready(observable)) => observable,
        other => panic!("{raw} is not a ready observable: {other:?}"),
    }
}

/// A found, empty result of `enricher`, for tests to fill in.
pub fn enricher_result(enricher: EnricherKind) -> EnricherResult {
    EnricherResult {
        enricher,
        found: true,
        truncated: false,
        indicator: None,
        extracts: Vec::new(),
        reputation: None,
        passive_dns: None,
    }
}

/// Client settings for a simulator: its credentials, a rate well above what tests send, and
/// short backoffs so retries do not slow the suite.
pub fn graph_settings(sim: &SimHandle) -> GraphSettings {
    GraphSettings {
        graph_base_url: sim.graph_base_url(),
        login_base_url: sim.login_base_url(),
        tenant_id: "sim-tenant".into(),
        client_id: "sim-client".into(),
        client_secret: Secret::new("sim-secret"),
        requests_per_second: 2000.0,
        burst: 200,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        request_timeout: Duration::from_secs(5),
        ..GraphSettings::default()
    }
}

/// The test broker: `MDTI_TEST_AMQP_URL`, by default the local RabbitMQ as guest.
pub fn amqp_url() -> String {
    std::env::var("MDTI_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Queue names of their own for one test (`t-<uuid>.*`), with the default retry delay.
pub fn test_topology() -> Topology {
    Topology::with_prefix(format!("t-{}", uuid::Uuid::new_v4().simple()))
}

pub async fn broker_connection() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be reachable for these tests")
}

/// Run the binary's `publish --no-progress` against `topology` on the test broker, with
/// `database_url`, `args` and `env`: (success, stderr).
pub fn run_publish(
    topology: &Topology,
    database_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mdti-worker"))
        .args([
            "publish",
            "--no-progress",
            "--queue-prefix",
            &topology.prefix,
        ])
        .args(["--amqp-url", &amqp_url(), "--database-url", database_url])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

/// Every item waiting in `topology`'s bulk lane, in the order published, taken off it.
pub async fn take_bulk_items(topology: &Topology) -> Vec<serde_json::Value> {
    use lapin::options::BasicGetOptions;
    let connection = broker_connection().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = topology.lane_queue(mdti_worker::lane::Lane::Bulk);
    let mut items = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let body: Vec<serde_json::Value> = serde_json::from_slice(&message.delivery.data).unwrap();
        items.extend(body);
    }
    let _ = connection.close(200, "done".into()).await;
    items
}

/// The first line of `publish`'s summary on `stderr` (`read N, published N in …`).
pub fn publish_counts(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|line| line.starts_with("read "))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"))
}

/// Run `body`, then delete every queue and exchange of `topologies`, both lanes' (best
/// effort), then re-raise a panic of `body`.
pub async fn with_cleanup<F: Future<Output = ()>>(topologies: &[&Topology], body: F) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    for topology in topologies {
        delete_topology(topology).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
