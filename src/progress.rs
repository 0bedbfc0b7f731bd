//! Whether the worker is getting anywhere, and if not, what each message is waiting on.
//!
//! Every message task runs inside a [`Progress::track`] scope; each place where it can wait
//! (the rate limiter, a Retry-After hold, a Graph answer, another walk's lookup, a claim of
//! another worker, Postgres, the group commit, the broker's confirm) marks itself with
//! [`waiting`] under a name from [`point`]. Graph answers, commits and acks call
//! [`Progress::advanced`]. A watchdog ([`watch`]) calls the worker stalled when it holds
//! messages and nothing advanced for `--stall-after`: `/healthz` and `/readyz` then fail, so an
//! orchestrator restarts it, and the log says, per message in flight, where it waits.
//!
//! It knows nothing of the rest of the crate: every other module may use it.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

/// The names of the wait points, as the dump prints them.
pub mod point {
    pub const GRAPH_LIMITER: &str = "graph rate limiter";
    pub const GRAPH_HOLD: &str = "graph Retry-After hold";
    pub const GRAPH_PERMIT: &str = "graph in-flight permit";
    pub const GRAPH_TOKEN: &str = "graph token";
    pub const GRAPH_ANSWER: &str = "graph answer";
    pub const REPEAT: &str = "the same observable enriched for another message";
    pub const OTHER_WALK: &str = "a lookup of another walk";
    pub const OTHER_WORKER: &str = "a lookup claimed by another worker";
    pub const POSTGRES: &str = "postgres";
    pub const COMMIT: &str = "group commit";
    pub const CONFIRM: &str = "broker confirm";
}

/// What one message task is waiting on right now: wait point → how many of its futures wait
/// there (items and lookups of one message run concurrently within its task).
type Waits = Arc<Mutex<BTreeMap<&'static str, usize>>>;

/// What the process knows of one message task from within it.
#[derive(Clone, Default)]
struct Task {
    waits: Waits,
    /// Its results went to a commit ([`handed_over`]): it will join no later one.
    handed_over: Arc<AtomicBool>,
}

tokio::task_local! {
    static CURRENT: Task;
}

struct Tracked {
    message_id: String,
    since: Instant,
    task: Task,
}

/// The progress of the messages of this process.
pub struct Progress {
    epoch: Instant,
    /// Microseconds since `epoch` of the last Graph answer, commit or ack.
    last: AtomicU64,
    next: AtomicU64,
    tracked: Mutex<HashMap<u64, Tracked>>,
    stalled: AtomicBool,
    /// Told when a message in hand may have stopped being one that may still finish (see
    /// [`Progress::any_may_finish`]): it left, or began to wait as a repeat.
    may_finish_fewer: tokio::sync::Notify,
}

/// The process's one [`Progress`].
pub fn global() -> &'static Progress {
    static GLOBAL: OnceLock<Progress> = OnceLock::new();
    GLOBAL.get_or_init(Progress::new)
}

/// Mark the current message task as waiting at `point` until the guard is dropped. Outside a
/// message task it marks nothing.
pub fn waiting(point: &'static str) -> WaitGuard {
    let waits = CURRENT.try_with(|task| Arc::clone(&task.waits)).ok();
    if let Some(waits) = &waits {
        if let Ok(mut map) = waits.lock() {
            *map.entry(point).or_default() += 1;
        }
        if point == point::REPEAT {
            global().may_finish_fewer.notify_waiters();
        }
    }
    WaitGuard { waits, point }
}

/// Mark the current message task as having handed its results to a commit. Outside a message
/// task it marks nothing.
pub fn handed_over() {
    let _ = CURRENT.try_with(|task| task.handed_over.store(true, Ordering::Relaxed));
}

/// Await `future` marked as waiting at `point`.
pub async fn wait_at<F: Future>(point: &'static str, future: F) -> F::Output {
    let _guard = waiting(point);
    future.await
}

pub struct WaitGuard {
    waits: Option<Waits>,
    point: &'static str,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let Some(waits) = &self.waits else { return };
        if let Ok(mut map) = waits.lock() {
            if let Some(n) = map.get_mut(self.point) {
                *n -= 1;
                if *n == 0 {
                    map.remove(self.point);
                }
            }
        }
    }
}

/// Forgets a tracked message when its task ends, however it ends.
struct Untrack(&'static Progress, u64);

impl Drop for Untrack {
    fn drop(&mut self) {
        if let Ok(mut tracked) = self.0.tracked.lock() {
            tracked.remove(&self.1);
        }
        self.0.may_finish_fewer.notify_waiters();
    }
}

impl Progress {
    fn new() -> Progress {
        Progress {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            next: AtomicU64::new(0),
            tracked: Mutex::new(HashMap::new()),
            stalled: AtomicBool::new(false),
            may_finish_fewer: tokio::sync::Notify::new(),
        }
    }

    /// Run a message's processing as a tracked message: its waits are recorded for the dump.
    pub fn track<F: Future>(
        &'static self,
        message_id: &str,
        future: F,
    ) -> impl Future<Output = F::Output> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let task = Task::default();
        if let Ok(mut tracked) = self.tracked.lock() {
            // The first message in hand starts the clock: a worker idle for longer than the
            // stall limit is not stalled the moment a message arrives.
            if tracked.is_empty() {
                self.advanced();
            }
            tracked.insert(
                id,
                Tracked {
                    message_id: message_id.chars().take(200).collect(),
                    since: Instant::now(),
                    task: task.clone(),
                },
            );
        }
        let untrack = Untrack(self, id);
        async move {
            let _untrack = untrack;
            CURRENT.scope(task, future).await
        }
    }

    /// Something moved: a Graph answer, a commit, an ack.
    pub fn advanced(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// Time since anything moved.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Messages being processed now.
    pub fn in_flight(&self) -> usize {
        self.tracked.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Whether a message being processed now may still hand its results to a commit without
    /// one committing first: one that has not handed them over yet and is not a repeat waiting
    /// for another message's rows of its observable ([`point::REPEAT`]; a repeat waits only
    /// when it is its message's only work). A transaction waiting for more messages to join it
    /// waits for these only: the others have joined one, or wait for a commit themselves.
    pub fn any_may_finish(&self) -> bool {
        let Ok(tracked) = self.tracked.lock() else {
            return false;
        };
        tracked.values().any(|t| {
            !t.task.handed_over.load(Ordering::Relaxed)
                && t.task
                    .waits
                    .lock()
                    .map_or(true, |waits| !waits.contains_key(point::REPEAT))
        })
    }

    /// Resolves once no message in hand may still finish ([`Progress::any_may_finish`]). It
    /// looks again whenever a message leaves or begins to wait as a repeat: a message that
    /// hands its results over instead is seen arriving by whoever waits for them.
    pub async fn none_may_finish(&self) {
        loop {
            let fewer = self.may_finish_fewer.notified();
            tokio::pin!(fewer);
            // Registered before the look, so a change between the two is not missed.
            fewer.as_mut().enable();
            if !self.any_may_finish() {
                return;
            }
            fewer.await;
        }
    }

    /// Whether the watchdog found the worker stalled (and nothing moved since).
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Each message in flight, oldest first, with what it waits on.
    pub fn dump(&self) -> Dump {
        let Ok(tracked) = self.tracked.lock() else {
            return Dump(Vec::new());
        };
        let mut lines: Vec<DumpLine> = tracked
            .values()
            .map(|t| DumpLine {
                message_id: t.message_id.clone(),
                age: t.since.elapsed(),
                waits: t
                    .task
                    .waits
                    .lock()
                    .map(|w| w.iter().map(|(p, n)| (*p, *n)).collect())
                    .unwrap_or_default(),
            })
            .collect();
        lines.sort_by_key(|line| std::cmp::Reverse(line.age));
        Dump(lines)
    }

    /// One watchdog look: stalled when messages are held and nothing moved for `after`.
    /// Returns true when the worker just became stalled.
    pub fn check(&self, after: Duration) -> bool {
        let stalled = self.in_flight() > 0 && self.idle_for() >= after;
        let was = self.stalled.swap(stalled, Ordering::Relaxed);
        stalled && !was
    }

    /// When the watchdog looks next: when a stall could first be due, `after` past the last
    /// move, rather than on a clock. A throttled worker wakes for little else than its work,
    /// and a look every second was two more wake-ups a second (tokio's timer wheel wakes once
    /// to move a sleep that long to its finer level, once more when it is due). Once stalled,
    /// every [`STALLED_LOOKS`], so that health comes back soon after progress does.
    fn until_next_look(&self, after: Duration) -> Duration {
        if self.stalled() {
            return STALLED_LOOKS;
        }
        let left = after.saturating_sub(self.idle_for());
        // Nothing left: nothing is in hand (or it would be stalled now), and the first
        // message to arrive starts the clock again ([`Progress::track`]).
        let wait = if left.is_zero() { after } else { left };
        wait.max(MIN_LOOK)
    }
}

/// How often a stalled worker's watchdog looks again.
const STALLED_LOOKS: Duration = Duration::from_secs(1);

/// The shortest wait between two looks, whatever `--stall-after` says.
const MIN_LOOK: Duration = Duration::from_millis(100);

/// Watch for a stall until the task is aborted ([`Progress::until_next_look`]); on one, log
/// the dump.
pub async fn watch(after: Duration) {
    let progress = global();
    progress.advanced();
    loop {
        tokio::time::sleep(progress.until_next_look(after)).await;
        if progress.check(after) {
            tracing::error!(
                idle_seconds = progress.idle_for().as_secs(),
                in_flight = progress.in_flight(),
                "no progress (no Graph answer, commit or ack) with messages in hand; the worker reports itself unhealthy\n{}",
                progress.dump()
            );
        }
    }
}

/// What the messages in flight wait on.
#[derive(Debug, Clone)]
pub struct Dump(pub Vec<DumpLine>);

#[derive(Debug, Clone)]
pub struct DumpLine {
    pub message_id: String,
    pub age: Duration,
    pub waits: Vec<(&'static str, usize)>,
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.0 {
            write!(f, "message {} ({}s): ", line.message_id, line.age.as_secs())?;
            if line.waits.is_empty() {
                write!(f, "working (no wait point)")?;
            }
            for (n, (point, count)) in line.waits.iter().enumerate() {
                let sep = if n == 0 { "" } else { ", " };
                write!(f, "{sep}waiting on {point}")?;
                if *count > 1 {
                    write!(f, " (x{count})")?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tracked_message_shows_where_it_waits_until_it_ends() {
        let progress = global();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(progress.track("dump-test", async move {
            wait_at(point::CONFIRM, released).await.ok();
        }));
        let shows = |dump: &Dump| {
            dump.0.iter().any(|l| {
                l.message_id == "dump-test" && l.waits.iter().any(|(p, _)| *p == point::CONFIRM)
            })
        };
        while !shows(&progress.dump()) {
            tokio::task::yield_now().await;
        }
        assert!(progress
            .dump()
            .to_string()
            .contains("waiting on broker confirm"));
        release.send(()).unwrap();
        task.await.unwrap();
        assert!(progress
            .dump()
            .0
            .iter()
            .all(|l| l.message_id != "dump-test"));
    }

    /// A progress of its own, so that other tests' messages do not count.
    fn fresh() -> &'static Progress {
        Box::leak(Box::new(Progress::new()))
    }

    #[tokio::test]
    async fn a_worker_idle_past_the_stall_limit_is_not_stalled_when_a_message_arrives() {
        let progress = fresh();
        let after = Duration::from_millis(50);
        tokio::time::sleep(after * 2).await;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(progress.track("arrives-late", async move {
            released.await.ok();
        }));
        while progress.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!progress.check(after), "stalled the moment it arrived");
        tokio::time::sleep(after).await;
        assert!(
            progress.check(after),
            "held past the limit with nothing moving"
        );
        release.send(()).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn the_watchdog_looks_when_a_stall_could_first_be_due() {
        let progress = fresh();
        let after = Duration::from_secs(600);
        progress.advanced();
        let next = progress.until_next_look(after);
        assert!(
            next <= after && next > after - Duration::from_secs(1),
            "{next:?}"
        );

        // Nothing in hand for longer than the limit: the next message starts the clock.
        let short = Duration::from_millis(200);
        std::thread::sleep(short + Duration::from_millis(50));
        assert_eq!(progress.until_next_look(short), short);

        progress.stalled.store(true, Ordering::Relaxed);
        assert_eq!(progress.until_next_look(after), STALLED_LOOKS);
    }
}
