//! The learnt rate against the simulator's enforced quota: a client set to twice what the tenant
//! accepts learns the quota from Graph's 429s, instead of earning a 429 for every other request.
//! Figures asserted are shares of requests, never durations.

use std::sync::atomic::Ordering;

use mdti_worker::graph::throttle::GraphBurst;
use mdti_worker::graph::{GraphClient, GraphSettings};
use mdti_worker::lane::Lane;
use mdti_worker::sim::{self, SimConfig, SimHandle};

mod support;
use support::graph_settings;

const QUOTA: f64 = 50.0;

/// `tasks` tasks asking whois of hosts of their own in `lane` until `answers` answers came back
/// in all.
async fn ask_until(client: &GraphClient, lane: Lane, tasks: usize, answers: usize) {
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(lane.scope(async move {
                for i in (task..answers).step_by(tasks) {
                    client
                        .whois(&format!("h{i}.contoso.com"))
                        .await
                        .expect("every request ends answered, after its 429s");
                }
            }))
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

/// A simulator enforcing [`QUOTA`], and a client of it starting at `start` requests a second
/// with a burst of `burst`, learning up to `ceiling` (`None`: up to `start`).
async fn throttled_client(
    start: f64,
    ceiling: Option<f64>,
    burst: u32,
) -> (SimHandle, GraphClient) {
    let sim = sim::spawn(SimConfig {
        rate_limit: Some(QUOTA),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let client = GraphClient::new(GraphSettings {
        requests_per_second: start,
        rate_ceiling: ceiling,
        burst,
        max_in_flight: 32,
        ..graph_settings(&sim)
    })
    .expect("client builds");
    (sim, client)
}

/// At most `share` of the client's requests were answered 429, as the simulator counted them.
fn assert_429s_at_most(sim: &SimHandle, client: &GraphClient, share: f64) {
    let requests = client.stats().requests.load(Ordering::Relaxed);
    let throttled = sim.count("throttled");
    assert!(
        throttled as f64 <= share * requests as f64,
        "{throttled} of {requests} requests were 429s ({:.1} %)",
        100.0 * throttled as f64 / requests as f64
    );
}

#[tokio::test]
async fn a_client_set_to_twice_the_quota_learns_it_and_earns_few_429s() {
    let (sim, client) = throttled_client(2.0 * QUOTA, None, 10).await;

    ask_until(&client, Lane::Live, 32, 1_000).await;

    // A fixed rate of twice the quota earns a 429 for about every other request.
    assert_429s_at_most(&sim, &client, 0.02);
    let learnt = client.throttle().learnt();
    assert!(learnt.cuts >= 1, "the rate was never cut: {learnt:?}");
    assert!(
        learnt.requests_per_second < 1.2 * QUOTA,
        "the rate stayed above the quota: {learnt:?}"
    );
    assert_eq!(learnt.ceiling, 2.0 * QUOTA);
}

/// The default burst grows with `--graph-rate` (half a second of it); once a 429 has put the
/// rate below its ceiling, rounds must shrink again, or each overshoot earns a 429 for most of
/// a large round. Asked in the bulk lane, whose requests go in rounds bounded by the burst.
#[tokio::test]
async fn a_client_at_twice_the_quota_with_the_default_burst_earns_few_429s() {
    let burst = GraphBurst::Auto.at_rate(2.0 * QUOTA);
    let (sim, client) = throttled_client(2.0 * QUOTA, None, burst).await;

    ask_until(&client, Lane::Bulk, 32, 2_000).await;

    // With the burst kept at half a second of the learnt rate: 1.2 and 1.3 % in two runs (25 of
    // 2,025, 26 of 2,026); with it a tenth of a second, 0.5 %.
    assert_429s_at_most(&sim, &client, 0.01);
}

#[tokio::test]
async fn auto_climbs_from_its_start_towards_a_quota_far_above_it() {
    let (sim, client) = throttled_client(5.0, Some(1000.0), 5).await;

    ask_until(&client, Lane::Live, 32, 600).await;

    let learnt = client.throttle().learnt();
    assert!(
        learnt.requests_per_second > 2.0 * 5.0,
        "the rate did not climb: {learnt:?}"
    );
    assert_429s_at_most(&sim, &client, 0.05);
}
