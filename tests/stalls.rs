//! No stall under the tightest limits: several workers with one Graph request in flight at a
//! time, no burst, and lookups shared through claims, run the same mixed load round after
//! round. A round that stops making progress fails with what every message was waiting on.

mod support;

use std::time::Duration;

use mdti_worker::bench::observable_mix;
use mdti_worker::chain::ChainSettings;
use mdti_worker::graph::GraphSettings;
use mdti_worker::progress;
use serde_json::json;
use support::harness::{spawn_app, App, Options};

const ROUNDS: u64 = 5;
const MESSAGES: usize = 60;
/// Longer than any wait the limits here impose on a healthy worker (a claim of another worker
/// holds for 30 s at most); a bound on waiting, not a timing claim.
const NO_PROGRESS: Duration = Duration::from_secs(45);
const ROUND_LIMIT: Duration = Duration::from_secs(240);

fn tight(settings: GraphSettings) -> GraphSettings {
    GraphSettings {
        requests_per_second: 400.0,
        burst: 1,
        max_in_flight: 1,
        ..settings
    }
}

/// Wait for every message to be done; fail with the dump if nothing moves for [`NO_PROGRESS`].
async fn run_to_the_end(app: &App, round: u64) {
    let started = tokio::time::Instant::now();
    let progress = progress::global();
    while app.stats.done() < MESSAGES as u64 {
        let stuck = progress.in_flight() > 0 && progress.idle_for() >= NO_PROGRESS;
        if stuck || started.elapsed() >= ROUND_LIMIT {
            panic!(
                "round {round}: no progress for {}s, {} of {MESSAGES} done; in flight:\n{}",
                progress.idle_for().as_secs(),
                app.stats.done(),
                progress.dump()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn tight_limits_and_shared_lookups_never_stall() {
    for round in 0..ROUNDS {
        let app = spawn_app(Options {
            graph: tight,
            chain: ChainSettings {
                share_lookups: true,
                ..ChainSettings::default()
            },
            workers: 3,
            concurrency: 8,
            ..Options::default()
        })
        .await;
        for (i, value) in observable_mix(MESSAGES, 1.0, round).into_iter().enumerate() {
            app.publish(&format!("stress-{i}"), json!({ "value": value }))
                .await;
        }
        run_to_the_end(&app, round).await;
        assert_eq!(app.drain_dead_letters().await.len(), 0, "round {round}");
        app.db.assert_each_item_once(MESSAGES as i64).await;
        app.teardown().await;
    }
}
