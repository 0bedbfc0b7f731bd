//! The client's budget: one `governor` limiter, one in-flight cap and one "hold until" instant,
//! all shared by every request of the process (first pages, next pages and retries alike).
//!
//! A fleet of workers sharing one tenant changes two of them from outside: the limiter's rate
//! ([`Throttle::set_rate`], each worker's share of the tenant quota) and the hold (a 429 one
//! worker saw is every worker's 429: [`Throttle::hold_shared`]). The throttle itself knows
//! nothing of the fleet: it reports its own 429 holds on a watch channel
//! ([`Throttle::subscribe_holds`]) and takes the others' back.

use crate::progress::{self, point};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// One limiter and the rate it was built for (a governor quota cannot be changed in place).
struct Limiter {
    limiter: DefaultDirectRateLimiter,
    requests_per_second: f64,
    burst: u32,
}

impl Limiter {
    /// A limiter with its whole burst to give, for a process that has sent nothing yet.
    fn new(requests_per_second: f64, burst: u32) -> Limiter {
        let rate = sane_rate(requests_per_second);
        let burst = burst.max(1);
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is at least one nanosecond")
            .allow_burst(NonZeroU32::new(burst).expect("burst is at least one"));
        Limiter {
            limiter: RateLimiter::direct(quota),
            requests_per_second: rate,
            burst,
        }
    }

    /// A limiter whose burst is already spent, to replace one in use: the old one may have
    /// just let its own burst through, and a fresh burst on top would exceed both rates.
    fn spent(requests_per_second: f64, burst: u32) -> Limiter {
        let limiter = Limiter::new(requests_per_second, burst);
        if let Some(cells) = NonZeroU32::new(limiter.burst) {
            // A full limiter always has `burst` cells; should it not, starting full is the
            // lesser harm than failing a rate change.
            let _ = limiter.limiter.check_n(cells);
        }
        limiter
    }
}

fn sane_rate(requests_per_second: f64) -> f64 {
    if requests_per_second.is_finite() && requests_per_second > 0.0 {
        requests_per_second
    } else {
        1.0
    }
}

pub struct Throttle {
    /// One limiter for the process: Graph throttles the tenant, so per-task limiters would add
    /// up to more than the tenant may spend. It sits behind `RwLock<Arc<..>>` so that a fleet
    /// coordinator can swap in a limiter with a new rate every few seconds: the request path
    /// takes the read lock only to clone the `Arc` (uncontended, nanoseconds, never held across
    /// an await), which is nothing next to an HTTPS round trip, and needs no extra dependency.
    limiter: RwLock<Arc<Limiter>>,
    /// Bumped on every swap, so that requests queued on the old limiter move to the new one
    /// (otherwise a backlog queued at a small share would drain at that share long after the
    /// share grew).
    swaps: watch::Sender<u64>,
    /// One waiter at a time on the limiter, the rest queued here in arrival order. Left to
    /// themselves, hundreds of tasks waiting on one governor limiter each wake at the instant
    /// the next cell frees, one wins, and the others go back to sleep: wake-ups grow with the
    /// number of waiters for every request admitted, and a throttled worker spent most of its
    /// CPU there. Behind this FIFO lock a request costs one wake-up, and requests are admitted
    /// in the order they asked (no jitter needed: nobody wakes in lockstep).
    turn: tokio::sync::Mutex<()>,
    /// Bounds open requests, so a burst of deliveries cannot open hundreds of sockets at once.
    in_flight: Semaphore,
    /// Set by a 429: every request waits until then. A std Mutex is enough because it is held
    /// only to read or raise one value, never across an await.
    hold_until: Mutex<Option<Instant>>,
    /// The latest hold this process's own 429s asked for, for whoever shares them (a fleet
    /// coordinator); holds learnt from others are not echoed here.
    own_holds: watch::Sender<Option<Instant>>,
    /// No hold lasts longer, whoever asked: the client refuses longer `Retry-After`s itself,
    /// and this keeps a shared hold from elsewhere (another worker's) within the same bound.
    max_hold: Duration,
    pub(crate) limiter_wait_micros: AtomicU64,
    pub(crate) hold_wait_micros: AtomicU64,
}

impl Throttle {
    pub fn new(
        requests_per_second: f64,
        burst: u32,
        max_in_flight: usize,
        max_hold: Duration,
    ) -> Self {
        Throttle {
            limiter: RwLock::new(Arc::new(Limiter::new(requests_per_second, burst))),
            swaps: watch::Sender::new(0),
            turn: tokio::sync::Mutex::new(()),
            in_flight: Semaphore::new(max_in_flight.max(1)),
            hold_until: Mutex::new(None),
            own_holds: watch::Sender::new(None),
            max_hold,
            limiter_wait_micros: AtomicU64::new(0),
            hold_wait_micros: AtomicU64::new(0),
        }
    }

    /// Wait until this request may go: under the in-flight cap, past any 429 hold, within the
    /// rate. The permit comes first so that the rate and the hold are the last word before the
    /// request is sent: a cell taken before a long wait for a permit (Graph slow) would let a
    /// pile of requests out together once Graph sped up, past the rate or into a new hold.
    pub async fn admit(&self) -> SemaphorePermit<'_> {
        let permit = progress::wait_at(point::GRAPH_PERMIT, self.in_flight.acquire())
            .await
            .expect("the in-flight semaphore is never closed");
        loop {
            self.wait_out_hold().await;
            // Subscribed before the limiter is read, so a swap in between is not missed.
            let mut swapped = self.swaps.subscribe();
            let limiter = Arc::clone(&self.limiter.read().expect("limiter lock poisoned"));
            let started = Instant::now();
            // A free cell is taken at once; only a request that must wait queues for its turn.
            let ready = limiter.limiter.check().is_ok() || {
                let _turn = self.turn.lock().await;
                // Waiting is cancel-safe: governor takes a cell only when it lets the request
                // go. A swap while this request queued for its turn ends the wait at once.
                let _waiting = progress::waiting(point::GRAPH_LIMITER);
                tokio::select! {
                    _ = until_ready(&limiter.limiter) => true,
                    _ = swapped.changed() => false,
                }
            };
            add_micros(&self.limiter_wait_micros, started.elapsed());
            // A hold raised while this request waited for the rate (another task's 429, or
            // another worker's) applies to it too.
            if ready && self.held_until().is_none() {
                return permit;
            }
        }
    }

    async fn wait_out_hold(&self) {
        while let Some(until) = self.held_until() {
            let started = Instant::now();
            progress::wait_at(point::GRAPH_HOLD, tokio::time::sleep_until(until)).await;
            add_micros(&self.hold_wait_micros, started.elapsed());
        }
    }

    /// The rate and burst requests are admitted at now.
    pub fn rate(&self) -> (f64, u32) {
        let limiter = self.limiter.read().expect("limiter lock poisoned");
        (limiter.requests_per_second, limiter.burst)
    }

    /// Admit requests at a new rate from now on, starting with no burst to spend. Returns
    /// whether anything changed: an unchanged rate keeps the current limiter.
    pub fn set_rate(&self, requests_per_second: f64, burst: u32) -> bool {
        let wanted = (sane_rate(requests_per_second), burst.max(1));
        let mut limiter = self.limiter.write().expect("limiter lock poisoned");
        if (limiter.requests_per_second, limiter.burst) == wanted {
            return false;
        }
        *limiter = Arc::new(Limiter::spent(wanted.0, wanted.1));
        self.swaps.send_modify(|generation| *generation += 1);
        true
    }

    /// Graph throttled us: hold every request back for `wait`, never shortening an earlier hold,
    /// and tell the subscribers of [`Throttle::subscribe_holds`].
    pub fn hold_for(&self, wait: Duration) {
        if let Some(until) = self.hold_end(wait) {
            if self.raise_hold(until) {
                self.own_holds.send_replace(Some(until));
            }
        }
    }

    /// Another process sharing the tenant was throttled: hold back for `wait` too, never
    /// shortening an earlier hold. Not reported to subscribers, so it is not shared back.
    pub fn hold_shared(&self, wait: Duration) {
        if let Some(until) = self.hold_end(wait) {
            self.raise_hold(until);
        }
    }

    /// When a hold of `wait` from now ends, at most `max_hold` away; `None` only if even that
    /// is past the clock's range.
    fn hold_end(&self, wait: Duration) -> Option<Instant> {
        Instant::now().checked_add(wait.min(self.max_hold))
    }

    /// When requests may go again, if a hold is in force.
    pub fn held_until(&self) -> Option<Instant> {
        let hold = *self.hold_until.lock().expect("hold lock poisoned");
        hold.filter(|until| *until > Instant::now())
    }

    /// The holds this process's own 429s set, latest first: the value changes on every raise.
    pub fn subscribe_holds(&self) -> watch::Receiver<Option<Instant>> {
        self.own_holds.subscribe()
    }

    fn raise_hold(&self, until: Instant) -> bool {
        let mut hold = self.hold_until.lock().expect("hold lock poisoned");
        if hold.is_none_or(|current| current < until) {
            *hold = Some(until);
            true
        } else {
            false
        }
    }
}

/// Wait until `limiter` lets one request go, sleeping on tokio's timer. governor's own
/// `until_ready` sleeps on the `futures-timer` thread, where a worker was seen to stop for good
/// with every request queued behind a wait that never woke; tokio's timer is the one the rest of
/// the worker runs on (and the one paused-time tests control). Its millisecond resolution only
/// matters past about a thousand waits a second, far above any tenant's Graph quota.
async fn until_ready(limiter: &DefaultDirectRateLimiter) {
    while let Err(not_until) = limiter.check() {
        let wait = not_until.wait_time_from(limiter.clock().now());
        tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
    }
}

fn add_micros(counter: &AtomicU64, elapsed: Duration) {
    counter.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(300);

    #[test]
    fn a_new_rate_swaps_the_limiter_only_when_it_differs() {
        let throttle = Throttle::new(30.0, 9, 4, HOLD);
        assert_eq!(throttle.rate(), (30.0, 9));
        assert!(!throttle.set_rate(30.0, 9));
        assert!(throttle.set_rate(10.0, 3));
        assert_eq!(throttle.rate(), (10.0, 3));
        // Nonsense rates fall back to one a second rather than panicking.
        assert!(throttle.set_rate(f64::NAN, 0));
        assert_eq!(throttle.rate(), (1.0, 1));
    }

    // Real time: governor reads its own clock, which tokio's paused time does not move.
    #[tokio::test]
    async fn many_waiters_are_all_admitted_and_none_beats_the_rate() {
        let throttle = Arc::new(Throttle::new(100.0, 1, 100, HOLD));
        let admitted = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut waiters = Vec::new();
        for i in 0..30 {
            let (throttle, admitted) = (Arc::clone(&throttle), Arc::clone(&admitted));
            waiters.push(tokio::spawn(async move {
                let _permit = throttle.admit().await;
                admitted.lock().unwrap().push(i);
            }));
        }
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(60), waiter)
                .await
                .expect("every waiter is admitted")
                .unwrap();
        }
        // 30 requests at 100 a second with a burst of one cannot all go in under 0.29 s (a
        // floor the limiter guarantees, not a speed claim).
        assert!(started.elapsed() >= Duration::from_millis(285));
        assert_eq!(admitted.lock().unwrap().len(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn own_holds_are_reported_and_shared_holds_are_not() {
        let throttle = Throttle::new(10.0, 1, 4, HOLD);
        let mut holds = throttle.subscribe_holds();
        throttle.hold_shared(Duration::from_secs(5));
        assert!(!holds.has_changed().unwrap());
        assert!(throttle.held_until().is_some());

        // Shorter than the hold in force: nothing changes, nothing is reported.
        throttle.hold_for(Duration::from_secs(1));
        assert!(!holds.has_changed().unwrap());

        throttle.hold_for(Duration::from_secs(8));
        assert!(holds.has_changed().unwrap());
        let reported = holds.borrow_and_update().expect("a hold");
        assert_eq!(throttle.held_until(), Some(reported));
    }

    #[tokio::test(start_paused = true)]
    async fn no_hold_outlasts_the_cap_whoever_asks() {
        let throttle = Throttle::new(10.0, 1, 4, HOLD);
        throttle.hold_shared(Duration::MAX);
        throttle.hold_for(Duration::MAX);
        let until = throttle.held_until().expect("held");
        assert!(until <= Instant::now() + HOLD, "held past the cap");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_grants_no_fresh_burst() {
        // One request an hour, its burst of three spent: a new rate must not let one go now.
        let throttle = Arc::new(Throttle::new(1.0 / 3600.0, 3, 8, HOLD));
        for _ in 0..3 {
            drop(throttle.admit().await);
        }
        assert!(throttle.set_rate(2.0 / 3600.0, 5));
        let waiting = tokio::spawn({
            let throttle = Arc::clone(&throttle);
            async move { drop(throttle.admit().await) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiting.is_finished(),
            "the new rate came with a fresh burst"
        );
        waiting.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn requests_queued_at_a_small_rate_move_to_a_new_larger_one() {
        // One request a minute, the first one spent: the next would wait a minute.
        let throttle = Arc::new(Throttle::new(1.0 / 60.0, 1, 4, HOLD));
        drop(throttle.admit().await);
        let waiting = tokio::spawn({
            let throttle = Arc::clone(&throttle);
            async move {
                drop(throttle.admit().await);
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        throttle.set_rate(1000.0, 10);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the queued request went at the new rate")
            .unwrap();
    }
}
