//! A worker that holds messages and gets nowhere says so: `/healthz` fails, so that an
//! orchestrator restarts it, and names what each message in flight is waiting on.

mod support;

use std::process::Stdio;
use std::time::Duration;

use mdti_worker::queue::Publisher;
use support::harness::{delete_topology, fresh_topology, AMQP};
use support::{eventually, TestDb};
use tokio::net::TcpListener;

/// A "Graph" that accepts connections and never answers.
async fn silent_graph() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_worker_stuck_on_a_silent_graph_reports_itself_unhealthy_and_where_it_waits() {
    let db = TestDb::new().await;
    let topology = fresh_topology();
    let (graph_port, _graph) = silent_graph().await;
    let ops = free_port().await;
    let publisher = Publisher::connect(AMQP, topology.clone()).await.unwrap();
    publisher
        .publish_observables(
            "test",
            b"{\"value\": \"contoso.com\"}",
            "application/json",
            "stuck-1",
        )
        .await
        .unwrap();

    let silent = format!("http://127.0.0.1:{graph_port}");
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_mdti-worker"))
        .args(["worker", "--migrate", "--queue-prefix", &topology.prefix])
        .args(["--database-url", &db.url, "--amqp-url", AMQP])
        .args([
            "--graph-url",
            &format!("{silent}/v1.0"),
            "--login-url",
            &silent,
        ])
        .args([
            "--tenant-id",
            "t",
            "--client-id",
            "c",
            "--client-secret",
            "s",
        ])
        .args(["--graph-timeout", "300s", "--stall-after", "2s"])
        .args(["--profile-sync-interval", "0", "--retry-delay", "1s"])
        .args(["--metrics-listen", &format!("127.0.0.1:{ops}")])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts");

    let http = reqwest::Client::new();
    let healthz = || async {
        match http
            .get(format!("http://127.0.0.1:{ops}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(response) => Some((response.status().as_u16(), response.text().await.unwrap())),
            Err(_) => None,
        }
    };
    eventually(
        Duration::from_secs(60),
        "/healthz reports the stall",
        || async { matches!(healthz().await, Some((503, _))) },
    )
    .await;
    let (_, body) = healthz().await.unwrap();
    assert!(body.contains("stalled"), "{body}");
    assert!(body.contains("message stuck-1"), "{body}");
    assert!(body.contains("waiting on graph token"), "{body}");

    worker.kill().await.unwrap();
    let _ = publisher.close().await;
    delete_topology(&topology).await;
}
