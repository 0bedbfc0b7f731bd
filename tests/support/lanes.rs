//! Cleaning up after tests that use both lanes.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use mdti_worker::queue::Topology;

use super::harness::delete_topology;

/// Run `body`, then delete every queue and exchange of `topology`, both lanes' (which
/// [`super::with_cleanup`] does not), then re-raise a panic of `body`.
pub async fn with_lane_cleanup<F: Future<Output = ()>>(topology: &Topology, body: F) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    delete_topology(topology).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
