//! `demo`: the whole path on local defaults, in one command.
//!
//! Starts the Graph simulator in-process (unless Graph credentials are configured), creates and
//! migrates the database, publishes a bundled sample feed (some of it defanged, some of it not
//! an observable at all), runs the worker until the queues are drained, and prints what happened.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app;
use crate::config::{
    parse_duration, redact_url, BrokerArgs, DatabaseArgs, EnricherList, GraphArgs, WorkerArgs,
    BULK_COMMIT_LINGER,
};
use crate::consumer::WorkerStats;
use crate::enrich::EnricherKind;
use crate::graph::adaptive::GraphRate;
use crate::graph::throttle::GraphBurst;
use crate::graph::GraphClient;
use crate::queue::publisher::Publisher;
use crate::queue::Topology;
use crate::store::Store;

/// A message to publish: source, body, content type, message id.
type Message = (String, Vec<u8>, String, String);

const SAMPLE: &str = include_str!("../samples/demo-observables.txt");

pub async fn run(
    mut broker: BrokerArgs,
    database: DatabaseArgs,
    mut graph_args: GraphArgs,
) -> anyhow::Result<i32> {
    // Own queue names, so a demo never mixes with a real worker's queues on the same broker.
    broker.queue_prefix = format!("{}.demo", broker.queue_prefix);
    broker.retry_delay = Duration::from_secs(2);
    let use_simulator = !graph_args.has_credentials();
    if use_simulator {
        // The simulator is not a throttled tenant: let the demo go at its own pace.
        graph_args.graph_rate = GraphRate::UpTo(graph_args.graph_rate.ceiling().max(500.0));
        graph_args.graph_burst = GraphBurst::Exactly(graph_args.burst().max(50));
    }
    // The services first: one that is missing is said before anything is started, created or
    // declared.
    crate::queue::reach(broker.amqp_url.expose()).await?;
    let store = app::migrate(&database).await?;
    let (graph, _sim) = app::graph_client(&mut graph_args, use_simulator).await?;
    print_graph(&graph_args, use_simulator);
    print_services(&database, &broker);
    let topology = broker.topology();
    let publisher = Publisher::connect(broker.amqp_url.expose(), topology.clone()).await?;
    let published = publisher.publish_batch(sample_messages()?).await?;
    println!("Published {published} messages from the bundled sample.\n");

    let stats = Arc::new(WorkerStats::default());
    let (_stop, stopped) = watch::channel(false);
    app::run_worker(
        &graph_args,
        &broker,
        &worker_args(),
        graph.clone(),
        store.clone(),
        stopped,
        Arc::clone(&stats),
        None,
    )
    .await?;
    print_outcome(&stats, &graph, &store, &database, &topology).await?;
    Ok(0)
}

fn print_graph(graph: &GraphArgs, simulator: bool) {
    println!(
        "Graph:    {}",
        if simulator {
            format!("in-process simulator at {}", graph.graph_url)
        } else {
            graph.graph_url.clone()
        }
    );
}

fn print_services(database: &DatabaseArgs, broker: &BrokerArgs) {
    println!("Postgres: {}", redact_url(database.database_url.expose()));
    println!(
        "RabbitMQ: {} (prefix {})",
        redact_url(broker.amqp_url.expose()),
        broker.queue_prefix
    );
}

/// The sample goes out as a text/plain message, plus one JSON message with a context and one
/// message that is not JSON at all, to show every path.
fn sample_messages() -> anyhow::Result<Vec<Message>> {
    let lines: Vec<&str> = SAMPLE.lines().collect();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    Ok(vec![
        (
            "demo".to_owned(),
            lines.join("\n").into_bytes(),
            "text/plain".to_owned(),
            format!("demo-{run_id}-lines"),
        ),
        (
            "demo".to_owned(),
            serde_json::to_vec(&serde_json::json!([
                {"value": "evil.phish-kit[.]net", "kind": "host", "force": true,
                 "source": "demo", "context": {"incident": "INC-1042"}},
                {"value": "8.8.8.8", "kind": "domain", "source": "demo"}
            ]))?,
            "application/json".to_owned(),
            format!("demo-{run_id}-json"),
        ),
        (
            "demo".to_owned(),
            b"{\"value\": \"contoso.com\"".to_vec(),
            "application/json".to_owned(),
            format!("demo-{run_id}-broken"),
        ),
    ])
}

/// A worker that goes through the sample and exits once the queues stay empty.
fn worker_args() -> WorkerArgs {
    WorkerArgs {
        concurrency: 8,
        live_prefetch: 8,
        enrichers: EnricherList(EnricherKind::ALL.to_vec()),
        cache_ttl: Duration::from_secs(24 * 3600),
        allow_non_public: false,
        max_deliveries: 3,
        max_body_bytes: 1 << 20,
        item_concurrency: 8,
        group_commit: 64,
        bulk_commit_linger: parse_duration(BULK_COMMIT_LINGER).expect("the default linger parses"),
        shutdown_timeout: Duration::from_secs(10),
        stall_after: Duration::from_secs(600),
        migrate: false,
        exit_when_idle: Some(Duration::from_secs(2)),
        chain: true,
        chain_depth: 1,
        chain_max_artifacts: 500,
        chain_request_budget: 2000,
        reputation_ttl: Duration::from_secs(24 * 3600),
        share_lookups: false,
        measure_sharing: true,
        min_event_confidence: crate::chain::Band::MEDIUM,
        profile_sync_interval: Duration::from_secs(6 * 3600),
    }
}

async fn print_outcome(
    stats: &WorkerStats,
    graph: &GraphClient,
    store: &Store,
    database: &DatabaseArgs,
    topology: &Topology,
) -> anyhow::Result<()> {
    let get = WorkerStats::get;
    println!(
        "Messages: {} processed, {} sent to the dead-letter queue (whole, or just their bad items), {} retried",
        get(&stats.messages),
        get(&stats.dead_lettered),
        get(&stats.retried)
    );
    println!(
        "Observables: {} enriched, {} answered from the cache, {} skipped, {} rejected",
        get(&stats.enriched),
        get(&stats.cached),
        get(&stats.skipped),
        get(&stats.rejected_items)
    );
    println!(
        "Graph requests: {}",
        graph
            .stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let summary = store.summary().await?;
    print!("{summary}");
    println!(
        "\nResults live in Postgres ({}): tables observables, enrichment_runs, indicators, extracts, reputations, actor_hits, actor_attributions, rejected_inputs; views dash_attributions and dash_actor_hits show the confidences.\nDead-lettered messages wait in the queue {}.",
        redact_url(database.database_url.expose()),
        topology.dead_letter_queue()
    );
    Ok(())
}
