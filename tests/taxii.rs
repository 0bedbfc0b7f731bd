//! The TAXII 2.1 pull against medallion, the OASIS reference server (installed by
//! `scripts/services.sh`), with its cursor in a fresh database: every page followed, a rerun
//! that fetches only what was added since the cursor advanced, and the hostile answers refused
//! with a reason (a wrong password, a page too large, a server that is not a TAXII server);
//! `publish --taxii` through the binary, publishing each object once across reruns; and
//! `export --taxii`, whose objects the collection then holds.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mdti_worker::export::{stix, ExportFilter};
use mdti_worker::queue::Topology;
use mdti_worker::secret::Secret;
use mdti_worker::taxii::{Client, Collection, Credentials, Cursor, Limits, Pull, TAXII_MEDIA_TYPE};
use support::{publish_counts, run_publish, take_bulk_items, test_topology, with_cleanup, TestDb};

const API_ROOT: &str = "api1";
const COLLECTION: &str = "91a7b528-80eb-42ed-a74d-c6fbd5a26116";
const USER: &str = "reader";
const PASSWORD: &str = "correct-horse-7";

/// A STIX 2.1 indicator for 20.30.40.`n`.
fn indicator(n: u32) -> Value {
    json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": format!("indicator--00000000-0000-4000-8000-{n:012}"),
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "pattern": format!("[ipv4-addr:value = '20.30.40.{n}']"),
        "pattern_type": "stix",
        "valid_from": "2026-01-01T00:00:00Z",
    })
}

/// When medallion's data file says indicator `n` was added: a second apart, in order.
fn date_added(n: u32) -> String {
    format!("2026-01-02T00:00:{n:02}.000000Z")
}

fn ids(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A medallion process on a free port of 127.0.0.1, serving one collection that holds
/// indicators 1..=`count`; killed, and its directory removed, on drop.
struct Medallion {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl Medallion {
    async fn start(count: u32) -> Medallion {
        let dir =
            std::env::temp_dir().join(format!("mdti-taxii-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data.json");
        std::fs::write(&data, data_file(count).to_string()).unwrap();
        let config = json!({
            "backend": {
                "module": "medallion.backends.memory_backend",
                "module_class": "MemoryBackend",
                "filename": data,
            },
            "users": { USER: PASSWORD },
            "taxii": { "max_page_size": 100 },
        });
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("medallion.log")).unwrap();
        let child = Command::new("medallion")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "medallion, the OASIS TAXII 2.1 server, could not be started ({error}): \
                     install it with `bash scripts/services.sh` (or `pip install medallion`)"
                )
            });
        let mut medallion = Medallion {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}/"),
        };
        medallion.wait_until_it_answers().await;
        medallion
    }

    fn api_root(&self) -> String {
        format!("{}{API_ROOT}/", self.base)
    }

    fn collection(&self) -> Collection {
        Collection::new(&self.api_root(), COLLECTION).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("medallion.log")).unwrap_or_default()
    }

    async fn wait_until_it_answers(&mut self) {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("medallion exited ({status}):\n{}", self.log());
            }
            let discovery = http.get(format!("{}taxii2/", self.base)).send().await;
            if discovery.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "medallion did not answer in 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Adds `object` to the collection through TAXII's own `POST .../objects/`.
    async fn add(&self, object: Value) {
        let response = reqwest::Client::new()
            .post(self.collection().objects_url())
            .basic_auth(USER, Some(PASSWORD))
            .header("Accept", TAXII_MEDIA_TYPE)
            .header("Content-Type", TAXII_MEDIA_TYPE)
            .body(json!({ "objects": [object] }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202, "{}", self.log());
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["success_count"], 1, "{status}");
    }
}

impl Drop for Medallion {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// medallion's memory backend: the discovery resource, then each API root by name with its
/// information, statuses and collections; a collection's objects, and its manifest, which
/// holds each object's date added.
fn data_file(count: u32) -> Value {
    let objects: Vec<Value> = (1..=count).map(indicator).collect();
    let manifest: Vec<Value> = (1..=count)
        .map(|n| {
            json!({
                "id": indicator(n)["id"],
                "date_added": date_added(n),
                "version": "2026-01-01T00:00:00.000Z",
                "media_type": "application/stix+json;version=2.1",
            })
        })
        .collect();
    json!({
        "/discovery": {
            "title": "test server",
            "api_roots": [format!("/{API_ROOT}/")],
        },
        API_ROOT: {
            "information": {
                "title": "test API root",
                "versions": [TAXII_MEDIA_TYPE],
                "max_content_length": 1_000_000,
            },
            "status": [],
            "collections": [{
                "id": COLLECTION,
                "title": "indicators",
                "can_read": true,
                "can_write": true,
                "media_types": ["application/stix+json;version=2.1"],
                "objects": objects,
                "manifest": manifest,
            }],
        },
    })
}

fn client(password: &str, limits: Limits) -> Client {
    Client::new(Some(Credentials::new(USER, Secret::new(password))), limits).unwrap()
}

/// Three objects a page, so that seven take three pages.
fn small_pages() -> Limits {
    Limits {
        page_objects: 3,
        ..Limits::default()
    }
}

async fn pull(client: &Client, collection: &Collection, after: Option<&Cursor>) -> Pull {
    client
        .pull(collection, after)
        .await
        .unwrap_or_else(|error| panic!("pull: {error}"))
}

#[tokio::test]
async fn a_rerun_fetches_only_what_was_added_after_the_cursor_advanced() {
    let server = Medallion::start(7).await;
    let db = TestDb::new().await;
    let collection = server.collection();
    let client = client(PASSWORD, small_pages());
    let all: Vec<String> = ids(&(1..=7).map(indicator).collect::<Vec<_>>());

    assert_eq!(db.store.taxii_cursor(&collection).await.unwrap(), None);
    let first = pull(&client, &collection, None).await;
    assert_eq!(ids(&first.objects), all, "every page followed, in order");
    assert_eq!(first.pages, 3);
    assert!(!first.more);
    let cursor = first
        .added_after
        .clone()
        .expect("the server reported dates added");
    assert_eq!(cursor.as_str(), date_added(7));

    // Not advanced yet (the objects were not confirmed handled): the same objects again.
    let again = pull(&client, &collection, None).await;
    assert_eq!(ids(&again.objects), all);

    let stored = db
        .store
        .advance_taxii_cursor(&collection, &cursor)
        .await
        .unwrap();
    assert_eq!(stored, cursor);
    let from = db.store.taxii_cursor(&collection).await.unwrap();
    assert_eq!(from.as_ref(), Some(&cursor));

    let nothing = pull(&client, &collection, from.as_ref()).await;
    assert!(nothing.objects.is_empty(), "{:?}", nothing.objects);
    assert_eq!(
        nothing.added_after.as_ref(),
        Some(&cursor),
        "cursor unchanged"
    );

    server.add(indicator(8)).await;
    let new = pull(&client, &collection, from.as_ref()).await;
    assert_eq!(
        ids(&new.objects),
        ids(&[indicator(8)]),
        "exactly the new one"
    );
    let newer = new.added_after.expect("a date added for the new object");
    assert_ne!(newer, cursor);
    assert_eq!(
        db.store
            .advance_taxii_cursor(&collection, &newer)
            .await
            .unwrap(),
        newer
    );

    // A pull that finishes late with the older cursor does not move it back.
    assert_eq!(
        db.store
            .advance_taxii_cursor(&collection, &cursor)
            .await
            .unwrap(),
        newer
    );
    let after_all = db.store.taxii_cursor(&collection).await.unwrap();
    assert!(pull(&client, &collection, after_all.as_ref())
        .await
        .objects
        .is_empty());
}

#[tokio::test]
async fn a_pull_stops_at_its_page_cap_and_the_next_one_resumes_from_its_cursor() {
    let server = Medallion::start(7).await;
    let collection = server.collection();
    let client = client(
        PASSWORD,
        Limits {
            max_pages: 2,
            ..small_pages()
        },
    );

    let capped = pull(&client, &collection, None).await;
    assert_eq!(capped.pages, 2);
    assert!(capped.more, "the server had more");
    assert_eq!(
        ids(&capped.objects),
        ids(&(1..=6).map(indicator).collect::<Vec<_>>())
    );
    assert_eq!(capped.added_after.as_ref().unwrap().as_str(), date_added(6));

    let rest = pull(&client, &collection, capped.added_after.as_ref()).await;
    assert_eq!(ids(&rest.objects), ids(&[indicator(7)]));
    assert!(!rest.more);
}

#[tokio::test]
async fn a_pull_stops_after_the_page_that_reaches_its_byte_cap() {
    let server = Medallion::start(7).await;
    let collection = server.collection();
    let client = client(
        PASSWORD,
        Limits {
            max_pull_bytes: 1,
            ..small_pages()
        },
    );

    let capped = pull(&client, &collection, None).await;
    assert_eq!((capped.pages, capped.more), (1, true));
    assert_eq!(
        ids(&capped.objects),
        ids(&(1..=3).map(indicator).collect::<Vec<_>>())
    );
    assert_eq!(capped.added_after.as_ref().unwrap().as_str(), date_added(3));
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_without_the_password() {
    let server = Medallion::start(1).await;
    let wrong = "wrong-hunter2-secret";
    let error = client(wrong, Limits::default())
        .pull(&server.collection(), None)
        .await
        .unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("401"), "{text}");
    assert!(text.contains(COLLECTION), "says which collection: {text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn a_page_over_the_size_limit_is_refused() {
    let server = Medallion::start(3).await;
    let error = client(
        PASSWORD,
        Limits {
            max_page_bytes: 500,
            ..Limits::default()
        },
    )
    .pull(&server.collection(), None)
    .await
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("larger than the limit of 500 bytes"),
        "{error}"
    );
}

/// A server that answers every request with `response`, as raw HTTP/1.1.
async fn canned(response: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{address}/{API_ROOT}/")
}

fn http(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn pull_error(response: String) -> String {
    let api_root = canned(response).await;
    client(PASSWORD, Limits::default())
        .pull(&Collection::new(&api_root, COLLECTION).unwrap(), None)
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn answers_that_are_not_a_taxii_envelope_are_refused_with_the_reason() {
    let html = pull_error(http("200 OK", "text/html", "<html>login</html>")).await;
    assert!(html.contains("content type \"text/html\""), "{html}");

    let broken = pull_error(http("200 OK", TAXII_MEDIA_TYPE, "{\"objects\": [")).await;
    assert!(broken.contains("not a TAXII envelope"), "{broken}");

    let failing = pull_error(http(
        "503 Service Unavailable",
        "text/plain",
        "maintenance until 08:00",
    ))
    .await;
    assert!(failing.contains("503"), "{failing}");
    assert!(failing.contains("maintenance until 08:00"), "{failing}");

    let echoing = pull_error(http(
        "400 Bad Request",
        "text/plain",
        &format!("bad credentials {USER}:{PASSWORD}"),
    ))
    .await;
    assert!(echoing.contains("bad credentials reader:***"), "{echoing}");

    let bad_date = pull_error(
        http("200 OK", TAXII_MEDIA_TYPE, "{\"objects\": []}").replace(
            "Connection: close",
            "X-TAXII-Date-Added-Last: yesterday\r\nConnection: close",
        ),
    )
    .await;
    assert!(bad_date.contains("not an RFC 3339 timestamp"), "{bad_date}");

    // `more` with neither a `next` nor a date to go on from would return the same page for ever.
    let stuck = pull_error(http("200 OK", TAXII_MEDIA_TYPE, "{\"more\": true}")).await;
    assert!(
        stuck.contains("neither `next` nor a newer date added"),
        "{stuck}"
    );
}

/// `publish --taxii` of the test collection through the binary: (success, stderr).
fn publish_taxii(server: &Medallion, topology: &Topology, database_url: &str) -> (bool, String) {
    let args = ["--taxii", &server.api_root(), "--collection", COLLECTION];
    let env = [("MDTI_TAXII_USER", USER), ("MDTI_TAXII_PASSWORD", PASSWORD)];
    run_publish(topology, database_url, &args, &env)
}

/// The values and STIX ids waiting in the bulk lane, taken off it.
async fn published_values(topology: &Topology) -> Vec<(String, String)> {
    let items = take_bulk_items(topology).await;
    let pair = |item: &Value| {
        let value = item["value"].as_str().unwrap_or_default().to_owned();
        (
            value,
            item["context"]["stix_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    items.iter().map(pair).collect()
}

#[tokio::test]
async fn publish_taxii_publishes_each_object_once_across_reruns() {
    let server = Medallion::start(7).await;
    let db = TestDb::new().await;
    let topology = test_topology();
    let expected = |n: u32| {
        let id = indicator(n)["id"].as_str().unwrap().to_owned();
        (format!("20.30.40.{n}"), id)
    };
    with_cleanup(&[&topology], async {
        let (ok, stderr) = publish_taxii(&server, &topology, &db.url);
        assert!(ok, "{stderr}");
        assert!(
            publish_counts(&stderr).starts_with("read 7, published 7 in 1 message(s), rejected 0"),
            "{stderr}"
        );
        let all: Vec<_> = (1..=7).map(expected).collect();
        assert_eq!(published_values(&topology).await, all);
        let cursor = db.store.taxii_cursor(&server.collection()).await.unwrap();
        assert_eq!(cursor.unwrap().as_str(), date_added(7));

        let (ok, stderr) = publish_taxii(&server, &topology, &db.url);
        assert!(ok, "{stderr}");
        assert!(
            publish_counts(&stderr).starts_with("read 0, published 0"),
            "{stderr}"
        );
        assert_eq!(published_values(&topology).await, []);

        server.add(indicator(8)).await;
        let (ok, stderr) = publish_taxii(&server, &topology, &db.url);
        assert!(ok, "{stderr}");
        assert_eq!(published_values(&topology).await, [expected(8)]);
    })
    .await;
}

/// `export --taxii` of `db` into the server's collection, as `USER` with `password`: the exit
/// code and stderr.
fn export_taxii(server: &Medallion, db: &TestDb, password: &str) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mdti-worker"))
        .args(["export", "--database-url", &db.url])
        .args(["--taxii", &server.api_root(), "--collection", COLLECTION])
        .env("MDTI_TAXII_USER", USER)
        .env("MDTI_TAXII_PASSWORD", password)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test]
async fn export_taxii_adds_the_bundle_to_the_collection_and_a_refusal_says_why() {
    let server = Medallion::start(2).await;
    let db = TestDb::new().await;
    support::seed::seed(&db.store).await;
    let rows = db
        .store
        .export_rows(&ExportFilter::default())
        .await
        .unwrap();
    let sent = ids(stix::bundle(&rows)["objects"].as_array().unwrap());
    assert!(
        sent.len() > 4,
        "the seeded database exports a bundle: {sent:?}"
    );

    let (code, stderr) = export_taxii(&server, &db, PASSWORD);
    assert_eq!(code, Some(0), "{stderr}");
    let n = sent.len();
    assert!(
        stderr.contains(&format!(
            "{} row(s) exported as {n} STIX object(s) to collection {COLLECTION} at {}: {n} added, 0 refused, 0 pending",
            rows.len(),
            server.api_root()
        )),
        "{stderr}"
    );

    // The collection holds what it had, and every object of the bundle.
    let held = pull(
        &client(PASSWORD, Limits::default()),
        &server.collection(),
        None,
    )
    .await;
    let mut expected = ids(&[indicator(1), indicator(2)]);
    expected.extend(sent);
    assert_eq!(sorted(ids(&held.objects)), sorted(expected));

    // A wrong password: the server's answer, and no password anywhere.
    let (code, stderr) = export_taxii(&server, &db, "wrong-horse");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("wrong-horse"), "{stderr}");
}
