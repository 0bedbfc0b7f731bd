//! What the worker did and what state it is in, for logs, `/metrics`, the demo and the
//! benchmark.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::outbox::OutboxStats;
use crate::pipeline::Dependency;
use crate::store::{GroupCommitStats, KeptRowsStats};

/// What the worker did, for logs, the demo and the benchmark.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Deliveries taken.
    pub messages: AtomicU64,
    /// Deliveries acked, after their results were committed or they were handed to the retry
    /// or dead-letter queue (one handed back to its queue is not). A queue's depth counts only
    /// what waits in it, not what is in progress: this is what to wait on for "everything
    /// delivered is settled".
    pub settled: AtomicU64,
    /// Messages done, by lane ([`Lane::index`]); [`WorkerStats::done`] sums them.
    pub done_by_lane: [AtomicU64; 2],
    /// Messages ready in each lane's work queue (its retry queue included) at the last look,
    /// every few seconds while consuming.
    pub queued_by_lane: [AtomicU64; 2],
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub requeued: AtomicU64,
    /// Deliveries handed back uncounted because a service was down for every message.
    pub suspended: AtomicU64,
    pub enriched: AtomicU64,
    pub cached: AtomicU64,
    pub skipped: AtomicU64,
    pub rejected_items: AtomicU64,
    /// What the outbox relay announced (see [`crate::outbox`]).
    pub outbox: Arc<OutboxStats>,
    /// Message tasks that panicked; each delivery went to the retry queue (`internal_error`).
    pub panics: AtomicU64,
    /// What profile syncs matched back (see [`crate::chain::retro`]).
    pub retro: crate::chain::retro::RetroStats,
    /// Counterpart reputations the chaining read from the cache instead of asking Graph.
    pub reputation_cache_hits: AtomicU64,
    /// What the cache rows the worker keeps in memory answered (see `store/recent.rs`).
    pub kept_rows: Arc<KeptRowsStats>,
    pub reconnects: AtomicU64,
    /// Transactions and messages of the results' group commit.
    pub group_commit: Arc<GroupCommitStats>,
    /// The broker connection of the current session is open.
    pub broker_connected: AtomicBool,
    /// The consumer is registered and taking deliveries (false once shutdown began, and while
    /// paused).
    pub consuming: AtomicBool,
    /// The intel profile index is loaded (from Postgres or a sync).
    pub profiles_loaded: AtomicBool,
    /// Why the worker runs without a profile index, while it does.
    pub profiles_problem: Mutex<Option<String>>,
    /// While consumption is paused: the service that is down, why, and since when.
    pub paused: Mutex<Option<PauseState>>,
    /// Microseconds consumption spent paused in finished pauses.
    pub paused_micros: AtomicU64,
}

/// Why and since when consumption is paused.
#[derive(Debug, Clone)]
pub struct PauseState {
    pub dependency: Dependency,
    pub reason: String,
    pub since: Instant,
}

impl WorkerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Messages done, in both lanes.
    pub fn done(&self) -> u64 {
        self.done_by_lane.iter().map(Self::get).sum()
    }

    /// Record that the profile index is loaded (`None`) or why it is not.
    pub fn set_profiles_loaded(&self, problem: Option<String>) {
        self.profiles_loaded
            .store(problem.is_none(), Ordering::Relaxed);
        if let Ok(mut slot) = self.profiles_problem.lock() {
            *slot = problem;
        }
    }

    /// Why the worker runs without a profile index, if it does.
    pub fn profiles_problem(&self) -> Option<String> {
        self.profiles_problem
            .lock()
            .map(|p| p.clone())
            .unwrap_or(None)
    }

    /// The current pause, if consumption is paused.
    pub fn pause(&self) -> Option<PauseState> {
        self.paused.lock().map(|p| p.clone()).unwrap_or(None)
    }

    /// Seconds spent paused in all, the current pause included.
    pub fn paused_seconds(&self) -> f64 {
        let current = self
            .pause()
            .map_or(0.0, |p| p.since.elapsed().as_secs_f64());
        Self::get(&self.paused_micros) as f64 / 1e6 + current
    }

    pub(super) fn pause_begin(&self, dependency: Dependency, reason: &str) {
        if let Ok(mut paused) = self.paused.lock() {
            *paused = Some(PauseState {
                dependency,
                reason: reason.to_owned(),
                since: Instant::now(),
            });
        }
    }

    pub(super) fn pause_end(&self) {
        let ended = self.paused.lock().ok().and_then(|mut p| p.take());
        if let Some(ended) = ended {
            let micros = u64::try_from(ended.since.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.paused_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    pub fn is(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }
}
