//! How long to wait before trying a failed thing again: Graph requests (see
//! [`crate::graph::retry`]), the broker reconnect and the probes of a paused consumer.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with full jitter: a random wait in `[0, min(cap, base * 2^n))`.
/// Full jitter spreads the retries of many tasks that failed together, so they do not return
/// to a struggling service as one wave.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let ceiling = exp.min(cap);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    rand::thread_rng().gen_range(Duration::ZERO..ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..40 {
            assert!(backoff_delay(attempt, base, cap) < cap);
        }
        assert!(backoff_delay(0, base, cap) < base);
    }
}
