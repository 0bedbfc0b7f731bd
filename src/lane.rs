//! Lanes: live observables (a feed's fresh IOC, an alert's IOC, wanted now) and bulk ones (a
//! backfill of an indicator list, wanted eventually). Each lane has its own exchange, queues
//! and consumer with its own prefetch (see [`crate::queue::Topology`]), and the Graph limiter
//! admits live requests before bulk ones (see [`crate::graph::throttle`]), so a live message
//! waits neither for a prefetch slot nor for quota behind bulk work.
//!
//! The lane of the work in progress travels with the task that does it ([`Lane::scope`],
//! [`Lane::current`]) rather than through every signature between the consumer and the Graph
//! client: the enrichers and the chaining never need to know it, only the limiter does.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

/// Which lane a message travels in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Answered first: its messages have their own consumer, and its Graph requests go before
    /// any bulk request waiting for the quota.
    Live,
    /// Uses whatever quota live work leaves (less the live reserve).
    Bulk,
}

tokio::task_local! {
    static CURRENT: Lane;
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Live, Lane::Bulk];

    /// The name used in flags, JSON, SQL and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Live => "live",
            Lane::Bulk => "bulk",
        }
    }

    /// A small index for per-lane arrays: live 0, bulk 1.
    pub fn index(self) -> usize {
        match self {
            Lane::Live => 0,
            Lane::Bulk => 1,
        }
    }

    /// The lane of the work this task does. Work outside any message (the `enrich` command, a
    /// profile sync, a probe) is somebody waiting for an answer now: live.
    pub fn current() -> Lane {
        CURRENT.try_with(|lane| *lane).unwrap_or(Lane::Live)
    }

    /// Run `work` in this lane: every Graph request it makes is admitted as this lane's.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = String;

    fn from_str(text: &str) -> Result<Lane, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "live" => Ok(Lane::Live),
            "bulk" => Ok(Lane::Bulk),
            other => Err(format!("unknown lane {other:?}: expected live or bulk")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for lane in Lane::ALL {
            assert_eq!(lane.as_str().parse::<Lane>(), Ok(lane));
            assert_eq!(Lane::ALL[lane.index()], lane);
        }
        assert!("fast".parse::<Lane>().is_err());
    }

    #[tokio::test]
    async fn the_lane_travels_with_the_task_and_work_outside_a_message_is_live() {
        assert_eq!(Lane::current(), Lane::Live);
        let inside = Lane::Bulk.scope(async { Lane::current() }).await;
        assert_eq!(inside, Lane::Bulk);
        assert_eq!(Lane::current(), Lane::Live);
    }
}
