//! Cleaning up after tests that use both lanes: the live lane's exchange and queues besides the
//! bulk lane's ones `with_cleanup` deletes.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use mdti_worker::lane::Lane;
use mdti_worker::queue::Topology;

use super::broker_connection;

/// Delete every exchange and queue of `topology`, both lanes', best effort.
pub async fn delete_lanes(topology: &Topology) {
    let connection = broker_connection().await;
    let mut queues: Vec<String> = Lane::ALL
        .into_iter()
        .flat_map(|lane| [topology.lane_queue(lane), topology.lane_retry_queue(lane)])
        .collect();
    queues.push(topology.dead_letter_queue());
    // A failed delete closes the channel: one channel per delete.
    for queue in queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let exchanges = Lane::ALL
        .into_iter()
        .map(|lane| topology.lane_exchange(lane))
        .chain([topology.events_exchange()]);
    for exchange in exchanges {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Run `body`, then delete both lanes' queues and exchanges of `topology`, then re-raise a panic
/// of `body`.
pub async fn with_lane_cleanup<F: Future<Output = ()>>(topology: &Topology, body: F) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    delete_lanes(topology).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
