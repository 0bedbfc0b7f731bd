//! Secrets hygiene: with every log line on (TRACE, our crate and the HTTP stack alike), neither
//! the client secret nor an access token appears in the log, in an error, or in `Debug` output.

use std::io::Write;
use std::sync::{Arc, Mutex};

use mdti_worker::enrich::{self, EnricherKind};
use mdti_worker::graph::{GraphClient, GraphSettings, PageLimits};
use mdti_worker::observable::{normalise, Normalised};
use mdti_worker::secret::Secret;
use mdti_worker::sim::{self, SimConfig};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SECRET: &str = "s3cr3t-Value-that-must-stay-hidden";

#[tokio::test]
async fn no_secret_or_token_reaches_a_log_line_an_error_or_debug_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let config = SimConfig {
        client_secret: SECRET.into(),
        ..SimConfig::default()
    };
    let sim = sim::spawn(config).await.unwrap();
    let settings = GraphSettings {
        graph_base_url: sim.graph_base_url(),
        login_base_url: sim.login_base_url(),
        tenant_id: "sim-tenant".into(),
        client_id: "sim-client".into(),
        client_secret: Secret::new(SECRET),
        requests_per_second: 1000.0,
        burst: 100,
        ..GraphSettings::default()
    };
    let mut seen = Vec::new();
    seen.push(format!("{settings:?}"));

    // A token as the simulator issues them, to know what one looks like in a log.
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/sim-tenant/oauth2/v2.0/token",
            sim.login_base_url()
        ))
        .form(&[
            ("client_id", "sim-client"),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sample_token = token["access_token"].as_str().unwrap().to_owned();
    let token_header = sample_token.split('.').next().unwrap().to_owned();

    let client = GraphClient::new(settings.clone()).unwrap();
    for raw in ["8.8.8.8", "contoso.com", "unknown.contoso.com"] {
        let Ok(Normalised::Ready(observable)) = normalise(raw, None, &Default::default()) else {
            panic!("{raw}")
        };
        let enrichment = enrich::enrich(
            &client,
            &observable,
            &EnricherKind::ALL,
            PageLimits::default(),
        )
        .await
        .unwrap();
        seen.push(format!("{enrichment:?}"));
    }
    // A refused token (refresh and retry), a failing Graph and refused credentials: every error
    // path writes its reason somewhere.
    sim.control().expire_tokens();
    client.host("contoso.com").await.unwrap();
    sim.control().set_fail_all(Some(403));
    seen.push(format!(
        "{:?}",
        client.host("contoso.com").await.unwrap_err()
    ));
    sim.control().set_fail_all(None);
    let wrong = GraphClient::new(GraphSettings {
        client_secret: Secret::new(format!("{SECRET}-wrong")),
        ..settings
    })
    .unwrap();
    let refused = wrong.host("contoso.com").await.unwrap_err();
    seen.push(format!("{refused} {refused:?}"));

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(log.len() > 1000, "the log captured little: is TRACE on?");
    seen.push(log);
    for text in &seen {
        assert!(!text.contains(SECRET), "the client secret leaked:\n{text}");
        assert!(
            !text.contains(&token_header),
            "an access token leaked:\n{text}"
        );
    }
}

/// The worker's settings as the command line and the environment give them, with a password in
/// every URL: `Debug` of the parsed command and of everything derived from it hides them all.
#[test]
fn debug_of_the_worker_settings_shows_no_secret_and_no_url_password() {
    use clap::Parser;
    use mdti_worker::cli::{Cli, Command};

    const PASSWORD: &str = "Url-Passw0rd-that-must-stay-hidden";
    let amqp = format!("amqp://guest:{PASSWORD}@127.0.0.1:5672/%2f");
    let database = format!("postgres://postgres:{PASSWORD}@127.0.0.1:5432/mdti");
    let graph = format!("https://user:{PASSWORD}@graph.example/v1.0");
    let login = format!("https://user:{PASSWORD}@login.example");
    let cli = Cli::parse_from([
        "mdti-worker",
        "worker",
        "--tenant-id",
        "t",
        "--client-id",
        "c",
        "--client-secret",
        SECRET,
        "--amqp-url",
        &amqp,
        "--database-url",
        &database,
        "--graph-url",
        &graph,
        "--login-url",
        &login,
    ]);
    let mut seen = vec![format!("{cli:?}")];
    let Command::Worker(cmd) = &cli.command else {
        panic!("parsed as a worker command");
    };
    seen.push(format!("{:?}", cmd.graph));
    seen.push(format!("{:?}", cmd.broker));
    seen.push(format!("{:?}", cmd.database));
    seen.push(format!("{:?}", cmd.broker.topology()));
    let settings = cmd.graph.to_settings().unwrap();
    seen.push(format!("{settings:?}"));
    // A Graph URL carrying credentials is refused, and the refusal does not repeat them.
    let refused = GraphClient::new(settings).err().expect("refused");
    seen.push(format!("{refused} {refused:?}"));
    for text in &seen {
        assert!(!text.contains(SECRET), "the client secret leaked:\n{text}");
        assert!(!text.contains(PASSWORD), "a URL password leaked:\n{text}");
    }
    assert!(
        seen[0].contains("graph.example"),
        "the URLs are still there to debug with: {}",
        seen[0]
    );
}

/// A mistyped broker URL: what the broker tools say when they cannot use it names where it
/// points, never its password. (lapin's own error for a URL without `//` quotes it whole.)
#[tokio::test]
async fn a_mistyped_broker_url_shows_no_password_in_an_error() {
    use mdti_worker::config::redact_url;
    use mdti_worker::queue::dlq::DeadLetterQueue;
    use mdti_worker::queue::{Publisher, Topology};

    const PASSWORD: &str = "Amqp-Passw0rd-that-must-stay-hidden";
    // Nothing listens on port 1: the ones that parse are refused at once.
    let mistyped = [
        format!("amqp:guest:{PASSWORD}@127.0.0.1:1/%2f"),
        format!("amqp://guest:{PASSWORD}@[::1:1/%2f"),
        format!("amqp://127.0.0.1:1#{PASSWORD}@127.0.0.1/%2f"),
    ];
    let mut seen = Vec::new();
    for url in &mistyped {
        let publisher = Publisher::connect(url, Topology::default()).await;
        let error = publisher.expect_err("no broker there");
        let dlq = DeadLetterQueue::connect(url, Topology::default()).await;
        let dlq_error = dlq.err().expect("no broker there");
        seen.push(format!("{error} {error:?} {dlq_error} {dlq_error:?}"));
        seen.push(redact_url(url));
    }
    for text in &seen {
        assert!(!text.contains(PASSWORD), "a URL password leaked:\n{text}");
    }
}
