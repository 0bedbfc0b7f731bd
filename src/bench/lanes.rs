//! The lanes mode (`--live-rate R`): the bulk mix is a backlog on the bulk lane, and while it
//! drains, one live observable a message is published on the live lane R times a second. The
//! live stream stops once the bulk backlog is settled; the run ends when the live messages are
//! settled too. Reported: each lane's publish-to-commit latency, its Graph requests, and the
//! share of the quota the bulk lane used of what the live lane left.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgConnection;
use tokio::sync::watch;

use super::measure::Spread;
use super::{mix, now_micros};
use crate::lane::Lane;
use crate::observable::{normalise, NormaliseOptions, Normalised};
use crate::queue::publisher::Publisher;

/// Source name of the live stream's observables.
pub const LIVE_SOURCE: &str = "bench-live";

/// What the lanes mode measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lanes {
    /// Live observables published per second while the bulk backlog drained.
    pub live_rate: f64,
    pub live_reserve: f64,
    /// Requests/s the tenant accepts: the simulator's enforced rate if set, else the client's.
    pub quota: f64,
    pub live_published: u64,
    /// From the start of publishing to the moment the bulk backlog was settled.
    pub bulk_drain_s: f64,
    pub live_latency: Spread,
    pub bulk_latency: Spread,
    pub live_requests: u64,
    pub bulk_requests: u64,
    pub live_requests_per_s: f64,
    pub bulk_requests_per_s: f64,
    /// Bulk requests/s over what the quota less the live lane's requests/s left.
    pub bulk_share_of_what_live_left: f64,
}

/// The live stream: publishes until told to stop, counting what was confirmed.
pub struct LiveStream {
    stop: watch::Sender<bool>,
    pub published: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LiveStream {
    /// Start publishing `rate` live observables a second on `runtime`, from values that are not
    /// in the bulk mix (a live IOC is news: it should not find the backlog's answers cached).
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        publisher: Publisher,
        rate: f64,
        bulk: &[String],
        run: String,
    ) -> LiveStream {
        let values = fresh_values(bulk);
        let (stop, stopped) = watch::channel(false);
        let published = Arc::new(AtomicU64::new(0));
        let task = runtime.spawn(publish_live(
            publisher,
            Stream {
                rate,
                values,
                run,
                published: Arc::clone(&published),
            },
            stopped,
        ));
        LiveStream {
            stop,
            published,
            task,
        }
    }

    /// Stop publishing; the count is final once this returns.
    pub async fn stop(self) -> anyhow::Result<u64> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(self.published.load(Ordering::Relaxed))
    }
}

struct Stream {
    rate: f64,
    values: Vec<String>,
    run: String,
    published: Arc<AtomicU64>,
}

/// Values of a mix of another seed whose canonical form the bulk mix does not hold: repeats
/// of the backlog would be answered from its cache.
fn fresh_values(bulk: &[String]) -> Vec<String> {
    let known: HashSet<String> = bulk.iter().filter_map(|v| canonical(v)).collect();
    mix::observable_mix(20_000, 1.0, 0x11fe)
        .into_iter()
        .filter(|v| canonical(v).is_some_and(|c| !known.contains(&c)))
        .collect()
}

/// The value the worker would look up for `raw`, as its normaliser makes it.
fn canonical(raw: &str) -> Option<String> {
    match normalise(raw, None, &NormaliseOptions::default()).ok()? {
        Normalised::Ready(observable) | Normalised::Skipped { observable, .. } => {
            Some(observable.value().to_owned())
        }
    }
}

async fn publish_live(
    publisher: Publisher,
    stream: Stream,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let period = Duration::from_secs_f64(1.0 / stream.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (n, value) in stream.values.iter().cycle().enumerate() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        let body = serde_json::json!({
            "value": value,
            "source": LIVE_SOURCE,
            "context": {"bench_published_us": now_micros(), "bench_live": n},
        });
        let id = format!("bench-{}-live-{n}", stream.run);
        publisher
            .publish_observables_to(
                Lane::Live,
                LIVE_SOURCE,
                &serde_json::to_vec(&body)?,
                "application/json",
                &id,
            )
            .await?;
        stream.published.fetch_add(1, Ordering::Relaxed);
    }
    let _ = publisher.close().await;
    Ok(())
}

/// What the run knew of the lanes when the bulk backlog was settled.
pub struct Measured {
    pub live_rate: f64,
    pub live_reserve: f64,
    pub quota: f64,
    pub live_published: u64,
    pub bulk_drain: Duration,
    /// Graph requests per lane ([`Lane::index`]) over the run.
    pub requests: [u64; 2],
}

/// The lanes' figures: latencies from the bench database, requests from the client.
pub async fn read(conn: &mut PgConnection, measured: Measured) -> anyhow::Result<Lanes> {
    let latencies = |lane: Lane| {
        sqlx::query_scalar::<_, i64>(
            "SELECT (extract(epoch FROM created_at) * 1000000)::bigint \
                  - (context ->> 'bench_published_us')::bigint \
             FROM enrichment_runs \
             WHERE lane = $1 AND context ->> 'bench_published_us' IS NOT NULL",
        )
        .bind(lane.as_str())
    };
    let live = latencies(Lane::Live).fetch_all(&mut *conn).await?;
    let bulk = latencies(Lane::Bulk).fetch_all(&mut *conn).await?;
    let seconds = measured.bulk_drain.as_secs_f64().max(1e-6);
    let [live_requests, bulk_requests] = measured.requests;
    let live_rps = live_requests as f64 / seconds;
    let bulk_rps = bulk_requests as f64 / seconds;
    let left = (measured.quota - live_rps).max(1e-6);
    Ok(Lanes {
        live_rate: measured.live_rate,
        live_reserve: measured.live_reserve,
        quota: measured.quota,
        live_published: measured.live_published,
        bulk_drain_s: seconds,
        live_latency: Spread::of_micros(live),
        bulk_latency: Spread::of_micros(bulk),
        live_requests,
        bulk_requests,
        live_requests_per_s: live_rps,
        bulk_requests_per_s: bulk_rps,
        bulk_share_of_what_live_left: bulk_rps / left,
    })
}

impl Lanes {
    /// The table's lines for the lanes.
    pub fn lines(&self) -> Vec<String> {
        let spread = |s: &Spread| {
            format!(
                "p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} observables)",
                s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms, s.count
            )
        };
        vec![
            format!(
                "lanes: {} live observables at {}/s beside the bulk backlog; quota {} req/s, live reserve {}",
                self.live_published, self.live_rate, self.quota, self.live_reserve
            ),
            format!("  live publish-to-commit: {}", spread(&self.live_latency)),
            format!("  bulk publish-to-commit: {}", spread(&self.bulk_latency)),
            format!(
                "  Graph over the bulk drain ({:.1} s): live {:.1} req/s, bulk {:.1} req/s = {:.3} of the {:.1} req/s live left",
                self.bulk_drain_s,
                self.live_requests_per_s,
                self.bulk_requests_per_s,
                self.bulk_share_of_what_live_left,
                self.quota - self.live_requests_per_s
            ),
        ]
    }
}
