//! The worker's operations listener: `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`, on one address (`--metrics-listen`).
//!
//! Nothing here counts anything: the metrics are read, at scrape time, from the counters the
//! work already keeps ([`GraphStats`] in the Graph client, [`WorkerStats`] in the consumer), so
//! a scrape costs nothing on the request path and the listener can be left out entirely.
//!
//! [`GraphStats`]: crate::graph::GraphStats

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::consumer::WorkerStats;
use crate::graph::GraphClient;
use crate::lane::Lane;
use crate::metrics::{self, Collector, Exposition, Labels};
use crate::pipeline::Dependency;
use crate::store::{OutboxBacklog, Store};

/// How long `/readyz` waits for Postgres to answer `SELECT 1` before calling it not ready.
const POSTGRES_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A listen address that may be switched off: empty (or `off`) means no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(ListenAddr(None));
        }
        text.parse()
            .map(|addr| ListenAddr(Some(addr)))
            .map_err(|_| {
                format!(
                    "{text:?} is not a listen address (like 127.0.0.1:9464), nor empty or `off`"
                )
            })
    }
}

/// What the listener reads from.
#[derive(Clone)]
pub struct Ops {
    pub graph: GraphClient,
    pub store: Store,
    pub stats: Arc<WorkerStats>,
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the task is aborted.
pub fn spawn(listener: TcpListener, ops: Ops) -> JoinHandle<()> {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(%local, "metrics and health endpoints listening");
    }
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(ops)).await {
            tracing::warn!(%error, "the metrics listener stopped");
        }
    })
}

pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(ops))
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    // The outbox backlog is the one figure read from Postgres; a scrape while it does not
    // answer leaves it out rather than failing the counters.
    let backlog =
        match tokio::time::timeout(POSTGRES_PROBE_TIMEOUT, ops.store.outbox_backlog()).await {
            Ok(Ok(backlog)) => Some(backlog),
            _ => None,
        };
    match metrics::scrape(Scrape { ops, backlog }) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}

/// The process answers and is getting somewhere: a worker that holds messages and has made
/// no progress for `--stall-after` is not alive in any useful sense, and a restart hands its
/// messages to another.
async fn healthz() -> Response {
    let progress = crate::progress::global();
    if progress.stalled() {
        let body = format!(
            "stalled: no Graph answer, commit or ack for {}s with {} message(s) in hand\n{}",
            progress.idle_for().as_secs(),
            progress.in_flight(),
            progress.dump()
        );
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    "ok\n".into_response()
}

/// Ready when the broker connection is up, the consumer takes deliveries and Postgres answers;
/// otherwise 503 naming what is not.
async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    // The worker's flags are read before Postgres is asked, so a slow probe does not stand
    // between them.
    let broker = broker_check(&ops.stats);
    let consumer = consumer_check(&ops.stats);
    let postgres = postgres_check(&ops.store).await;
    let mut checks = Readiness::default();
    checks.record("broker", broker);
    checks.record("postgres", postgres);
    checks.record("consumer", consumer);
    checks.record("progress", progress_check());
    // Without a profile index the worker still works (reputation rules only): reported, but
    // no reason to take it out of service.
    if let Some(problem) = ops.stats.profiles_problem() {
        checks.note(
            "profiles",
            format!("degraded: no intel profile index ({problem})"),
        );
    }
    checks.into_response()
}

/// What `/readyz` found: each check's `ok` or problem, and the names of those that failed.
#[derive(Default)]
struct Readiness {
    not_ready: Vec<String>,
    checks: serde_json::Map<String, serde_json::Value>,
}

impl Readiness {
    fn record(&mut self, name: &str, result: Result<(), String>) {
        let value = match result {
            Ok(()) => json!("ok"),
            Err(problem) => {
                self.not_ready.push(name.to_owned());
                json!(problem)
            }
        };
        self.checks.insert(name.to_owned(), value);
    }

    /// A problem reported without making the worker not ready.
    fn note(&mut self, name: &str, problem: String) {
        self.checks.insert(name.to_owned(), json!(problem));
    }

    fn into_response(self) -> Response {
        let ready = self.not_ready.is_empty();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = json!({
            "ready": ready,
            "not_ready": self.not_ready,
            "checks": self.checks,
        });
        (status, Json(body)).into_response()
    }
}

fn broker_check(stats: &WorkerStats) -> Result<(), String> {
    WorkerStats::is(&stats.broker_connected)
        .then_some(())
        .ok_or_else(|| "no broker connection".to_owned())
}

fn consumer_check(stats: &WorkerStats) -> Result<(), String> {
    match (WorkerStats::is(&stats.consuming), stats.pause()) {
        (_, Some(pause)) => Err(format!(
            "paused for {:.0}s: {} is down for every message ({})",
            pause.since.elapsed().as_secs_f64(),
            pause.dependency.as_str(),
            pause.reason
        )),
        (true, None) => Ok(()),
        (false, None) => Err("not consuming".to_owned()),
    }
}

async fn postgres_check(store: &Store) -> Result<(), String> {
    match tokio::time::timeout(POSTGRES_PROBE_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no answer to SELECT 1 within {POSTGRES_PROBE_TIMEOUT:?}"
        )),
    }
}

fn progress_check() -> Result<(), String> {
    let progress = crate::progress::global();
    if progress.stalled() {
        Err(format!(
            "stalled: nothing moved for {}s with {} message(s) in hand",
            progress.idle_for().as_secs(),
            progress.in_flight()
        ))
    } else {
        Ok(())
    }
}

/// A worker counter as a sample value.
fn count(counter: &AtomicU64) -> f64 {
    WorkerStats::get(counter) as f64
}

/// A worker flag as a gauge's 1 or 0.
fn flag(set: &AtomicBool) -> f64 {
    if WorkerStats::is(set) {
        1.0
    } else {
        0.0
    }
}

/// Every metric of the worker, as one scrape: what the listener reads from, and the outbox
/// backlog read for this scrape, handed to the encoder as its collector.
struct Scrape {
    ops: Arc<Ops>,
    backlog: Option<OutboxBacklog>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let (graph, stats) = (&self.ops.graph, self.ops.stats.as_ref());
        let out = &mut Exposition::new(encoder);
        message_metrics(out, graph, stats)?;
        event_metrics(out, stats, self.backlog)?;
        commit_metrics(out, stats)?;
        pause_metrics(out, stats)?;
        liveness_metrics(out, stats)?;
        graph_response_metrics(out, graph)?;
        graph_wait_metrics(out, graph)
    }
}

/// Deliveries taken and their outcomes, per lane, and the observables of done messages.
fn message_metrics(
    out: &mut Exposition<'_>,
    graph: &GraphClient,
    stats: &WorkerStats,
) -> fmt::Result {
    out.counter_value(
        "mdti_messages_received_total",
        "Deliveries taken from the work queue.",
        count(&stats.messages),
    )?;
    out.counter(
        "mdti_messages_total",
        "Deliveries by outcome: done (acked after the Postgres commit; its bad items, if any, also went to the dead-letter queue), retried (sent to the retry queue), dead_lettered (a whole message, or the bad items of a done one), requeued (handed back to the broker because its retry or dead-letter copy could not be published).",
        &[
            (&[("outcome", "done")], stats.done() as f64),
            (&[("outcome", "retried")], count(&stats.retried)),
            (&[("outcome", "dead_lettered")], count(&stats.dead_lettered)),
            (&[("outcome", "requeued")], count(&stats.requeued)),
        ],
    )?;
    lane_metrics(out, graph, stats)?;
    out.counter(
        "mdti_observables_total",
        "Observables of done messages by status: enriched from Graph, cached (answered from Postgres within --cache-ttl), skipped (non-public), rejected (bad input).",
        &[
            (&[("status", "enriched")], count(&stats.enriched)),
            (&[("status", "cached")], count(&stats.cached)),
            (&[("status", "skipped")], count(&stats.skipped)),
            (&[("status", "rejected")], count(&stats.rejected_items)),
        ],
    )?;
    Ok(())
}

/// Per lane: messages done, messages waiting in the lane's queues, Graph requests made.
fn lane_metrics(out: &mut Exposition<'_>, graph: &GraphClient, stats: &WorkerStats) -> fmt::Result {
    const LABELS: [Labels<'static>; 2] = [&[("lane", "live")], &[("lane", "bulk")]];
    let per_lane = |counters: &[AtomicU64; 2]| -> Vec<(Labels<'_>, f64)> {
        Lane::ALL
            .iter()
            .map(|lane| (LABELS[lane.index()], count(&counters[lane.index()])))
            .collect()
    };
    out.counter(
        "mdti_lane_messages_done_total",
        "Messages done (acked after their Postgres commit), by lane.",
        &per_lane(&stats.done_by_lane),
    )?;
    out.gauge(
        "mdti_lane_queued_messages",
        "Messages ready in the lane's work and retry queues, as the broker counted them at the worker's last look (every 5 s).",
        &per_lane(&stats.queued_by_lane),
    )?;
    out.counter(
        "mdti_lane_graph_requests_total",
        "Graph requests by the lane of the message that made them (work outside any message counts as live). Every attempt counts.",
        &per_lane(&graph.stats().requests_by_lane),
    )?;
    Ok(())
}

/// Attribution events announced, what profile syncs matched back, and the outbox's backlog.
fn event_metrics(
    out: &mut Exposition<'_>,
    stats: &WorkerStats,
    backlog: Option<OutboxBacklog>,
) -> fmt::Result {
    out.counter_value(
        "mdti_attribution_events_total",
        "Attribution events (one per observable and actor, again on a band change or a new kind of evidence) this worker's outbox relay published (confirmed by the broker) and marked announced.",
        count(&stats.outbox.announced),
    )?;
    out.counter(
        "mdti_retro_matched_total",
        "What profile syncs matched back against stored observables: new indicators, stored observables linked to them, hits written.",
        &[
            (&[("what", "indicators")], count(&stats.retro.indicators)),
            (&[("what", "observables")], count(&stats.retro.observables)),
            (&[("what", "hits")], count(&stats.retro.hits)),
        ],
    )?;
    out.counter_value(
        "mdti_event_relay_failures_total",
        "Outbox relay passes that stopped on a broker or Postgres failure; their events stay owed for a later pass.",
        count(&stats.outbox.failed_passes),
    )?;
    out.counter_value(
        "mdti_event_relay_passes_total",
        "Outbox relay passes: each claims and announces the owed events (a transaction), unless it ran on the clock and a plain read found none owed.",
        count(&stats.outbox.passes),
    )?;
    if let Some(backlog) = backlog {
        out.gauge_value(
            "mdti_events_pending",
            "Attributions owed an event that no relay has announced yet (the whole database, not only this worker's).",
            backlog.pending as f64,
        )?;
        out.gauge_value(
            "mdti_events_oldest_pending_age_seconds",
            "Age of the oldest attribution whose event is still owed (0 when none is).",
            backlog.oldest_age_seconds,
        )?;
    }
    Ok(())
}

/// Panicked tasks, cached reputations, group commits, broker reconnects and suspended
/// deliveries.
fn commit_metrics(out: &mut Exposition<'_>, stats: &WorkerStats) -> fmt::Result {
    out.counter_value(
        "mdti_message_panics_total",
        "Message tasks that panicked (a bug); each delivery went to the retry queue with reason code internal_error.",
        count(&stats.panics),
    )?;
    out.counter_value(
        "mdti_reputation_cache_hits_total",
        "Reputations chaining read from the cache (Postgres, or the rows this worker kept from it) instead of asking Graph.",
        count(&stats.reputation_cache_hits),
    )?;
    out.counter(
        "mdti_cache_rows_kept_lookups_total",
        "Hosts the walks looked up in the cache (a reputation with its fanout, or a fanout alone): answered from the rows this worker kept in memory, or read from Postgres.",
        &[
            (&[("outcome", "answered")], count(&stats.kept_rows.answered)),
            (&[("outcome", "read")], count(&stats.kept_rows.read)),
        ],
    )?;
    out.counter_value(
        "mdti_cache_rows_kept_restarts_total",
        "Times the cache rows kept in memory filled their 4 MiB and started again.",
        count(&stats.kept_rows.restarts),
    )?;
    out.counter_value(
        "mdti_result_messages_committed_total",
        "Messages whose results were committed to Postgres through group commit.",
        count(&stats.group_commit.committed),
    )?;
    out.counter_value(
        "mdti_result_transactions_total",
        "Postgres transactions that committed messages' results (several messages each under load).",
        count(&stats.group_commit.transactions),
    )?;
    out.counter_value(
        "mdti_broker_reconnects_total",
        "Broker sessions lost and rebuilt.",
        count(&stats.reconnects),
    )?;
    out.counter_value(
        "mdti_messages_suspended_total",
        "Deliveries handed back to the queue without counting an attempt because Postgres or Graph was down for every message.",
        count(&stats.suspended),
    )?;
    Ok(())
}

/// Whether consumption is paused, on which dependency, and for how long in all.
fn pause_metrics(out: &mut Exposition<'_>, stats: &WorkerStats) -> fmt::Result {
    let paused_on = stats.pause().map(|pause| pause.dependency);
    let labels: Vec<[(&str, &str); 1]> = Dependency::ALL
        .iter()
        .map(|d| [("dependency", d.as_str())])
        .collect();
    let paused: Vec<(&[(&str, &str)], f64)> = Dependency::ALL
        .iter()
        .zip(&labels)
        .map(|(d, label)| (&label[..], f64::from(u8::from(paused_on == Some(*d)))))
        .collect();
    out.gauge(
        "mdti_consumer_paused",
        "1 while consumption is paused because a service (label dependency) is down for every message.",
        &paused,
    )?;
    out.counter_value(
        "mdti_consumer_paused_seconds_total",
        "Seconds consumption spent paused because a service was down for every message.",
        stats.paused_seconds(),
    )?;
    Ok(())
}

/// Progress, the profile index, the broker connection and the consumer.
fn liveness_metrics(out: &mut Exposition<'_>, stats: &WorkerStats) -> fmt::Result {
    let progress = crate::progress::global();
    out.gauge_value(
        "mdti_stalled",
        "1 while the worker holds messages and nothing moved (Graph answer, commit, ack) for --stall-after.",
        f64::from(u8::from(progress.stalled())),
    )?;
    out.gauge_value(
        "mdti_seconds_since_progress",
        "Seconds since the last Graph answer, commit or ack.",
        progress.idle_for().as_secs_f64(),
    )?;
    out.gauge_value(
        "mdti_intel_profiles_loaded",
        "1 once the intel profile index is loaded (from Postgres or a first sync); 0 while chaining matches reputation rules only.",
        flag(&stats.profiles_loaded),
    )?;
    out.gauge_value(
        "mdti_broker_connected",
        "1 while the worker's broker connection is open.",
        flag(&stats.broker_connected),
    )?;
    out.gauge_value(
        "mdti_consumer_running",
        "1 while the consumer takes deliveries.",
        flag(&stats.consuming),
    )?;
    Ok(())
}

/// Graph requests by endpoint and HTTP status.
fn graph_response_metrics(out: &mut Exposition<'_>, graph: &GraphClient) -> fmt::Result {
    let responses = graph.stats().responses();
    let statuses: Vec<String> = responses
        .iter()
        .map(|(_, status, _)| status.map_or_else(|| "none".to_owned(), |s| s.to_string()))
        .collect();
    let samples: Vec<([(&str, &str); 2], f64)> = responses
        .iter()
        .zip(&statuses)
        .map(|((endpoint, _, count), status)| {
            (
                [("endpoint", *endpoint), ("status", status.as_str())],
                *count as f64,
            )
        })
        .collect();
    let samples: Vec<(&[(&str, &str)], f64)> = samples
        .iter()
        .map(|(labels, count)| (&labels[..], *count))
        .collect();
    out.counter(
        "mdti_graph_requests_total",
        "Graph requests by endpoint and HTTP status (status \"none\": no answer, e.g. a timeout, a refused connection or a TLS failure). Every attempt counts.",
        &samples,
    )?;
    Ok(())
}

/// Throttling, waiting, retries and latency of Graph requests.
fn graph_wait_metrics(out: &mut Exposition<'_>, graph: &GraphClient) -> fmt::Result {
    let graph_stats = graph.stats();
    let seconds = |micros: u64| micros as f64 / 1e6;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    out.counter_value(
        "mdti_graph_throttled_total",
        "Graph answers asking the client to wait: 429, or 503/504 with Retry-After.",
        load(&graph_stats.throttled) as f64,
    )?;
    out.counter_value(
        "mdti_graph_retry_after_seconds_total",
        "Seconds of Retry-After those answers asked for, summed.",
        seconds(load(&graph_stats.retry_after_micros)),
    )?;
    let (limiter_micros, hold_micros) = graph.wait_micros();
    out.counter_value(
        "mdti_graph_throttle_hold_seconds_total",
        "Seconds requests spent waiting out Retry-After holds, summed over requests.",
        seconds(hold_micros),
    )?;
    out.counter_value(
        "mdti_graph_rate_limiter_wait_seconds_total",
        "Seconds requests spent waiting for the client's own rate limiter (--graph-rate), summed over requests.",
        seconds(limiter_micros),
    )?;
    out.counter_value(
        "mdti_graph_rate_limiter_sleeps_total",
        "Timer sleeps of requests waiting for the rate limiter: one per round of bulk requests admitted together.",
        graph.throttle().limiter_sleeps() as f64,
    )?;
    let learnt = graph.throttle().learnt();
    out.gauge_value(
        "mdti_graph_rate_requests_per_second",
        "The rate Graph requests are admitted at now, as learnt from Graph's 429s.",
        learnt.requests_per_second,
    )?;
    out.gauge_value(
        "mdti_graph_rate_ceiling_requests_per_second",
        "The most the learnt rate climbs to: --graph-rate, or this worker's share of --tenant-quota.",
        learnt.ceiling,
    )?;
    out.counter_value(
        "mdti_graph_rate_cuts_total",
        "Times a 429 to a request sent at the current rate cut the rate.",
        learnt.cuts as f64,
    )?;
    out.counter_value(
        "mdti_graph_retries_total",
        "Graph requests tried again by the client.",
        load(&graph_stats.retries) as f64,
    )?;
    out.counter_value(
        "mdti_graph_gave_up_total",
        "Graph requests the client gave up on (not retryable, or out of attempts).",
        load(&graph_stats.gave_up) as f64,
    )?;
    out.gauge_value(
        "mdti_graph_in_flight_requests",
        "Graph requests sent and not yet answered.",
        load(&graph_stats.in_flight) as f64,
    )?;
    out.histogram(
        "mdti_graph_request_duration_seconds",
        "Graph request latency, from sending to the last byte of the answer (or the failure).",
        &graph_stats.latency,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_address_can_be_switched_off() {
        assert_eq!("".parse::<ListenAddr>().unwrap(), ListenAddr(None));
        assert_eq!("off".parse::<ListenAddr>().unwrap(), ListenAddr(None));
        assert_eq!(
            "127.0.0.1:9464".parse::<ListenAddr>().unwrap(),
            ListenAddr(Some("127.0.0.1:9464".parse().unwrap()))
        );
        let error = "localhost".parse::<ListenAddr>().unwrap_err();
        assert!(error.contains("localhost"), "{error}");
    }
}
