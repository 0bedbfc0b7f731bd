//! `publish --format csv|stix|misp` against a real RabbitMQ: the files of `tests/data` go
//! through the binary, and what reaches the bulk lane is read back item by item (value, kind,
//! context), beside the summary's counts and the reasons it gives for what it skipped or
//! rejected.

use mdti_worker::queue::Topology;
use serde_json::json;

mod support;
use support::{publish_counts, run_publish, take_bulk_items, test_topology, with_cleanup};

/// A database that refuses at once: the ledger is not what these tests look at.
const NO_DATABASE: &str = "postgres://postgres@127.0.0.1:1/none";

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Run `publish --no-progress` with `args` against the test's broker: (success, stderr).
fn publish(topology: &Topology, args: &[&str]) -> (bool, String) {
    run_publish(topology, NO_DATABASE, args, &[])
}

fn lines_starting<'a>(stderr: &'a str, prefix: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[tokio::test]
async fn csv_records_with_quotes_and_line_breaks_publish_their_url_column() {
    let topology = test_topology();
    let bom = std::env::temp_dir().join(format!("feeds-{}.csv", uuid::Uuid::new_v4()));
    std::fs::write(
        &bom,
        "\u{feff}id;URL;note\n\
         1;\"hxxp://evil[.]com/a;b\";\"multi\nline note\"\n\
         2;\"not a\nhost!\";x\n\
         3;1.1.1.1;\"say \"\"hi\"\"\"\n",
    )
    .unwrap();
    with_cleanup(&[&topology], async {
        let (ok, stderr) = publish(
            &topology,
            &["--format", "csv", "--csv-column", "url", &data("feeds.csv")],
        );
        assert!(ok, "{stderr}");
        assert_eq!(
            publish_counts(&stderr),
            "read 2, published 2 in 1 message(s), rejected 0, skipped 0, duplicates 0"
        );
        assert_eq!(
            take_bulk_items(&topology).await,
            [
                json!({"value": "evil.com", "kind": "domain"}),
                json!({"value": "8.8.8.8", "kind": "ipv4"}),
            ]
        );

        // A byte order mark, `;` between fields, and a bad value named by its record.
        let path = bom.to_str().unwrap();
        let args = [
            "--format",
            "csv",
            "--csv-column",
            "url",
            "--csv-delimiter",
            ";",
            path,
        ];
        let (ok, stderr) = publish(&topology, &args);
        assert!(!ok, "a rejected record fails the command: {stderr}");
        assert_eq!(
            publish_counts(&stderr),
            "read 3, published 2 in 1 message(s), rejected 1, skipped 0, duplicates 0"
        );
        let rejected = lines_starting(&stderr, "rejected ");
        assert_eq!(rejected.len(), 1, "{stderr}");
        assert!(
            rejected[0].starts_with(&format!("rejected {path}: record 3: ")),
            "{stderr}"
        );
        assert_eq!(
            take_bulk_items(&topology).await,
            [
                json!({"value": "evil.com", "kind": "domain"}),
                json!({"value": "1.1.1.1", "kind": "ipv4"}),
            ]
        );
    })
    .await;
    let _ = std::fs::remove_file(bom);
}

#[tokio::test]
async fn a_stix_bundle_publishes_its_simple_indicators_and_observables_with_their_ids() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let (ok, stderr) = publish(
            &topology,
            &["--format", "stix", "--show-skipped", &data("bundle.stix.json")],
        );
        assert!(ok, "{stderr}");
        assert_eq!(
            publish_counts(&stderr),
            "read 13, published 9 in 1 message(s), rejected 0, skipped 3, duplicates 1"
        );
        assert_eq!(
            lines_starting(&stderr, "skipped "),
            [
                "skipped 1 indicator: pattern uses AND",
                "skipped 1 indicator: pattern_type is sigma, not stix",
                "skipped 1 observable: private address (10.0.0.0/8)",
            ]
        );
        let bundle = data("bundle.stix.json");
        assert!(
            stderr.contains(&format!(
                "{bundle}: indicator indicator--1a6a1a5e-0c2b-4c5e-9d43-0a5b1a7a6004: \
                 skipped indicator: pattern uses AND"
            )),
            "{stderr}"
        );
        let indicator = |n: u32| format!("indicator--1a6a1a5e-0c2b-4c5e-9d43-0a5b1a7a600{n}");
        let two = json!({
            "stix_id": indicator(2),
            "indicator_types": ["malicious-activity", "attribution"],
        });
        assert_eq!(
            take_bulk_items(&topology).await,
            [
                json!({"value": "login-micros0ft.com", "kind": "domain", "context": {
                    "stix_id": indicator(1),
                    "labels": ["phishing", "tlp:amber"],
                    "indicator_types": ["malicious-activity"],
                }}),
                json!({"value": "45.137.21.9", "kind": "ipv4", "context": two}),
                json!({"value": "cdn.update-check.net", "kind": "host", "context": two}),
                json!({"value": "files.badcdn.net", "kind": "host",
                       "context": {"stix_id": indicator(3)}}),
                json!({"value": "2a05:d014:1:2::7", "kind": "ipv6",
                       "context": {"stix_id": indicator(3)}}),
                json!({"value": "c2.darkbeacon.io", "kind": "host",
                       "context": {"stix_id": "domain-name--3c10e93f-798e-5a26-a0c1-08156efab7f5"}}),
                json!({"value": "193.42.33.7", "kind": "ipv4",
                       "context": {"stix_id": "ipv4-addr--ff26c055-6336-5bc5-b98d-13d6226742dd"}}),
                json!({"value": "2a05:d014:1:2::8", "kind": "ipv6",
                       "context": {"stix_id": "ipv6-addr--1e61d36c-a16c-53b7-a80f-2a00161c96b1"}}),
                json!({"value": "stage2.darkbeacon.io", "kind": "host",
                       "context": {"stix_id": "url--c1477287-23ac-5971-a010-5c287877fa60"}}),
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn a_misp_event_publishes_its_address_and_name_attributes_with_the_event() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let event = data("event.misp.json");
        let (ok, stderr) = publish(&topology, &["--format", "misp", "--misp-to-ids-only", &event]);
        assert!(ok, "{stderr}");
        assert_eq!(
            publish_counts(&stderr),
            "read 13, published 7 in 1 message(s), rejected 0, skipped 4, duplicates 2"
        );
        assert_eq!(
            lines_starting(&stderr, "skipped "),
            [
                "skipped 2 attributes: to_ids is not true",
                "skipped 1 attribute: type md5 is not an address, name or URL",
                "skipped 1 attribute: type sha256 is not an address, name or URL",
            ]
        );
        let context = |attribute: &str| {
            json!({
                "misp_event_uuid": "5e8f3c2a-7b1d-4c9e-a0f1-3b2d6e9c8a71",
                "misp_event_info": "Invoice phishing campaign against finance staff",
                "misp_attribute_uuid": format!("a1f0c6d2-00{attribute}-4a0e-9d0b-5c2e7f3a9b{attribute}"),
            })
        };
        let item = |value: &str, kind: &str, attribute: &str| {
            json!({"value": value, "kind": kind, "context": context(attribute)})
        };
        let expected = [
            item("185.225.74.12", "ipv4", "01"),
            item("secure-invoice-portal.com", "domain", "02"),
            item("mail.secure-invoice-portal.com", "host", "03"),
            item("91.215.85.17", "ipv4", "05"),
            item("cdn-invoice.net", "domain", "06"),
            item("45.146.164.110", "ipv4", "06"),
            item("invoice-verify.org", "domain", "10"),
        ];
        assert_eq!(take_bulk_items(&topology).await, expected);

        // Without the flag, to_ids does not matter: the resolver is published, and the sender's
        // address is skipped for its type.
        let (ok, stderr) = publish(&topology, &["--format", "misp", &event]);
        assert!(ok, "{stderr}");
        assert_eq!(
            publish_counts(&stderr),
            "read 13, published 8 in 1 message(s), rejected 0, skipped 3, duplicates 2"
        );
        assert!(
            stderr.contains("skipped 1 attribute: type email-src is not an address, name or URL"),
            "{stderr}"
        );
        let items = take_bulk_items(&topology).await;
        assert_eq!(items.len(), 8);
        assert_eq!(items[6], item("8.8.8.8", "ipv4", "08"));
    })
    .await;
}

/// The command line of a `publish` of `file` that draws progress when it can.
fn publish_command(topology: &Topology, file: &str) -> Vec<String> {
    [
        env!("CARGO_BIN_EXE_mdti-worker"),
        "publish",
        "--queue-prefix",
        &topology.prefix,
        "--amqp-url",
        &support::amqp_url(),
        "--database-url",
        NO_DATABASE,
        file,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test]
async fn progress_is_drawn_on_a_terminal_and_never_into_a_pipe() {
    let topology = test_topology();
    with_cleanup(&[&topology], async {
        let file = std::env::temp_dir().join(format!("progress-{}.txt", uuid::Uuid::new_v4()));
        std::fs::write(&file, "evil.com\n8.8.8.8\nnot a host!\n").unwrap();
        let command = publish_command(&topology, file.to_str().unwrap());

        // Into a pipe: the summary and nothing drawn (no carriage return, no escape sequence).
        let piped = std::process::Command::new(&command[0])
            .args(&command[1..])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&piped.stderr);
        assert_eq!(
            piped.status.code(),
            Some(1),
            "a rejection fails the run: {stderr}"
        );
        assert_eq!(
            publish_counts(&stderr),
            "read 3, published 2 in 1 message(s), rejected 1, skipped 0, duplicates 0"
        );
        assert!(stderr.contains("rejected "), "{stderr}");
        assert!(
            !stderr.contains(['\r', '\x1b']),
            "drawn into a pipe: {stderr:?}"
        );

        // On a terminal (util-linux's `script` gives the command one): the status line is
        // drawn, the rejection reported, and the status taken off before the summary.
        let quoted: Vec<String> = command.iter().map(|a| format!("'{a}'")).collect();
        let on_terminal = std::process::Command::new("script")
            .args(["-qec", &quoted.join(" "), "/dev/null"])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("util-linux's script runs");
        let screen = String::from_utf8_lossy(&on_terminal.stdout);
        assert_eq!(on_terminal.status.code(), Some(1), "{screen}");
        let drawn = screen.find(", published 0, rejected").expect(&screen);
        let summary = screen.find(" message(s), rejected").expect(&screen);
        assert!(drawn < summary, "{screen:?}");
        assert!(
            screen[drawn..summary].contains("\x1b[2K"),
            "cleared: {screen:?}"
        );
        assert!(screen.contains("rejected "), "{screen:?}");
        std::fs::remove_file(file).unwrap();
    })
    .await;
}
