//! The client's budget: one `governor` limiter, one in-flight cap and one "hold until" instant,
//! all shared by every request of the process (first pages, next pages and retries alike).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

pub struct Throttle {
    /// One limiter for the process: Graph throttles the tenant, so per-task limiters would add
    /// up to more than the tenant may spend.
    limiter: DefaultDirectRateLimiter,
    /// Bounds open requests, so a burst of deliveries cannot open hundreds of sockets at once.
    in_flight: Semaphore,
    /// Set by a 429: every request waits until then. A std Mutex is enough because it is held
    /// only to read or raise one value, never across an await.
    hold_until: Mutex<Option<Instant>>,
    pub(crate) limiter_wait_micros: AtomicU64,
    pub(crate) hold_wait_micros: AtomicU64,
}

impl Throttle {
    pub fn new(requests_per_second: f64, burst: u32, max_in_flight: usize) -> Self {
        let rate = if requests_per_second.is_finite() && requests_per_second > 0.0 {
            requests_per_second
        } else {
            1.0
        };
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is at least one nanosecond")
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst is at least one"));
        Throttle {
            limiter: RateLimiter::direct(quota),
            in_flight: Semaphore::new(max_in_flight.max(1)),
            hold_until: Mutex::new(None),
            limiter_wait_micros: AtomicU64::new(0),
            hold_wait_micros: AtomicU64::new(0),
        }
    }

    /// Wait until this request may go: past any 429 hold, within the rate, under the in-flight cap.
    pub async fn admit(&self) -> SemaphorePermit<'_> {
        loop {
            let hold = *self.hold_until.lock().expect("hold lock poisoned");
            match hold {
                Some(until) if until > Instant::now() => {
                    let started = Instant::now();
                    tokio::time::sleep_until(until).await;
                    add_micros(&self.hold_wait_micros, started.elapsed());
                }
                _ => break,
            }
        }
        let started = Instant::now();
        // Jitter keeps tasks that wake on the same tick from arriving at Graph in lockstep.
        self.limiter
            .until_ready_with_jitter(Jitter::up_to(Duration::from_millis(5)))
            .await;
        add_micros(&self.limiter_wait_micros, started.elapsed());
        self.in_flight
            .acquire()
            .await
            .expect("the in-flight semaphore is never closed")
    }

    /// Graph throttled us: hold every request back for `wait`, never shortening an earlier hold.
    pub fn hold_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut hold = self.hold_until.lock().expect("hold lock poisoned");
        if hold.is_none_or(|current| current < until) {
            *hold = Some(until);
        }
    }
}

fn add_micros(counter: &AtomicU64, elapsed: Duration) {
    counter.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
}
