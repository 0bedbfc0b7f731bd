//! Learning the tenant's quota from Graph's 429s: additive increase, multiplicative decrease.
//!
//! Nobody knows their tenant's MDTI limit, and Graph punishes a client that keeps hitting 429,
//! so the rate the client admits requests at is learnt, the way TCP learns a path's capacity:
//!
//! - A 429 to a request sent at the current rate cuts the rate to [`CUT`] of itself. 429s to
//!   requests sent before the last cut are answers to a rate already abandoned and cut nothing,
//!   so a burst of them (every request in flight at the moment Graph said no) costs one cut.
//! - While requests wait for the limiter (the rate, not the work, is what holds them back), the
//!   rate grows once a [`STEP`]: by [`GROWTH`] of itself per second once Graph has throttled,
//!   by [`SLOW_START`] before that, so a worker started far below its tenant's quota finds it
//!   in seconds. It never grows past the ceiling, nor while nothing waits (a quiet worker
//!   learns nothing about the quota and keeps the rate it had).
//!
//! With the cut at 0.9 and the growth at 1 % a second, the rate climbs back to where it was
//! cut in about ten seconds, spends them within 10 % of the quota, and earns a handful of 429s
//! per climb. Graph's own bucket refills while the rate is below the quota and is spent when
//! it is above, so the requests accepted over a cycle come close to the whole quota.
//!
//! The rules are the two pure functions [`cut`] and [`grown`]; [`Learner`] applies them to one
//! process's rate, and the fleet applies the same two to the tenant's rate in Postgres.

use std::time::Duration;

use tokio::time::Instant;

use crate::setting::number_or_auto;

/// What one cut leaves of the rate.
pub const CUT: f64 = 0.9;
/// Growth per second, as a share of the rate, once Graph has throttled.
pub const GROWTH: f64 = 0.01;
/// Growth per step before Graph has throttled at all.
pub const SLOW_START: f64 = 0.5;
/// The rate changes at most this often by growing.
pub const STEP: Duration = Duration::from_secs(1);
/// No cut goes below this many requests per second (or the ceiling, if lower).
pub const FLOOR: f64 = 1.0;
/// `--graph-rate auto` starts here...
pub const AUTO_START: f64 = 10.0;
/// ...and never goes past this, a bound on a runaway rather than a guess at any quota.
pub const AUTO_CEILING: f64 = 1000.0;

/// `--graph-rate`: a number is where the rate starts and the most it climbs back to after a
/// cut; `auto` starts at [`AUTO_START`] and climbs until Graph says no.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GraphRate {
    UpTo(f64),
    Auto,
}

impl GraphRate {
    pub fn start(self) -> f64 {
        match self {
            GraphRate::UpTo(rate) => rate,
            GraphRate::Auto => AUTO_START,
        }
    }

    pub fn ceiling(self) -> f64 {
        match self {
            GraphRate::UpTo(rate) => rate,
            GraphRate::Auto => AUTO_CEILING,
        }
    }
}

impl std::str::FromStr for GraphRate {
    type Err = String;

    fn from_str(text: &str) -> Result<GraphRate, String> {
        let rate = number_or_auto(text, "requests per second", |text| {
            text.parse::<f64>()
                .ok()
                .filter(|rate| rate.is_finite() && *rate > 0.0)
        })?;
        Ok(rate.map_or(GraphRate::Auto, GraphRate::UpTo))
    }
}

impl std::fmt::Display for GraphRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphRate::UpTo(rate) => write!(f, "{rate}"),
            GraphRate::Auto => f.write_str("auto"),
        }
    }
}

/// The rate after Graph throttled a request sent at `rate`.
pub fn cut(rate: f64, ceiling: f64) -> f64 {
    (rate * CUT).max(FLOOR.min(ceiling))
}

/// The rate after `elapsed` of requests waiting for it, since it last changed: at most two
/// steps' worth, so a rate that sat unused for an hour does not leap when work comes back.
pub fn grown(rate: f64, elapsed: Duration, throttled_before: bool, ceiling: f64) -> f64 {
    let steps = elapsed.min(STEP * 2).as_secs_f64() / STEP.as_secs_f64();
    let factor = if throttled_before {
        1.0 + GROWTH * STEP.as_secs_f64() * steps
    } else {
        1.0 + SLOW_START * steps
    };
    (rate * factor).min(ceiling)
}

/// One process's learnt rate.
#[derive(Debug, Clone)]
pub struct Learner {
    rate: f64,
    ceiling: f64,
    /// Bumped by every change of the rate; a request carries the generation it was admitted
    /// at, so a 429 is known to answer the current rate or an older one.
    generation: u64,
    changed_at: Instant,
    throttled_before: bool,
    /// A request waited for the limiter since the rate last changed.
    waited: bool,
    /// A request waited while the rate sat at its ceiling since [`Learner::take_pressed`]
    /// last asked: what a fleet's tenant rate grows on.
    pressed: bool,
    cuts: u64,
}

impl Learner {
    /// A learner starting at `start`, never above `ceiling`.
    pub fn new(start: f64, ceiling: f64, now: Instant) -> Learner {
        let ceiling = ceiling.max(f64::MIN_POSITIVE);
        Learner {
            rate: start.min(ceiling),
            ceiling,
            generation: 0,
            changed_at: now,
            throttled_before: false,
            waited: false,
            pressed: false,
            cuts: 0,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Cuts made since the start.
    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// A request sent at `generation` was throttled: the new rate, if this cut it.
    pub fn throttled(&mut self, generation: u64, now: Instant) -> Option<f64> {
        if generation != self.generation {
            return None;
        }
        self.throttled_before = true;
        self.cuts += 1;
        Some(self.change(cut(self.rate, self.ceiling), now))
    }

    /// A request was admitted, after waiting for the rate or not: the new rate, if it grew.
    pub fn admitted(&mut self, waited: bool, now: Instant) -> Option<f64> {
        self.waited |= waited;
        self.pressed |= waited && self.rate >= self.ceiling;
        let elapsed = now.saturating_duration_since(self.changed_at);
        if !self.waited || elapsed < STEP || self.rate >= self.ceiling {
            return None;
        }
        let next = grown(self.rate, elapsed, self.throttled_before, self.ceiling);
        Some(self.change(next, now))
    }

    /// A new ceiling (a fleet worker's share of its tenant's rate): a lower one caps the rate;
    /// a higher one raises it in proportion, so a worker the fleet gives more keeps the margin
    /// it learnt below its share. The new rate, if it changed.
    pub fn set_ceiling(&mut self, ceiling: f64, now: Instant) -> Option<f64> {
        let ceiling = ceiling.max(f64::MIN_POSITIVE);
        let old = std::mem::replace(&mut self.ceiling, ceiling);
        let next = if ceiling > old {
            self.rate * ceiling / old
        } else {
            self.rate
        }
        .min(ceiling);
        (next != self.rate).then(|| self.change(next, now))
    }

    /// Whether requests waited at the ceiling since the last call; cleared by asking.
    pub fn take_pressed(&mut self) -> bool {
        std::mem::take(&mut self.pressed)
    }

    fn change(&mut self, rate: f64, now: Instant) -> f64 {
        self.rate = rate;
        self.generation += 1;
        self.changed_at = now;
        self.waited = false;
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, seconds: f64) -> Instant {
        start + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn a_429_cuts_once_for_all_the_requests_sent_at_the_rate_it_answers() {
        let t0 = Instant::now();
        let mut learner = Learner::new(100.0, 100.0, t0);
        let sent_at = learner.generation();
        assert_eq!(learner.throttled(sent_at, at(t0, 0.1)), Some(90.0));
        // The other requests in flight at that moment were sent at 100/s too.
        assert_eq!(learner.throttled(sent_at, at(t0, 0.1)), None);
        assert_eq!(learner.rate(), 90.0);
        // A request sent at 90/s that is throttled cuts again.
        let sent_at = learner.generation();
        assert_eq!(learner.throttled(sent_at, at(t0, 0.2)), Some(81.0));
        assert_eq!(learner.cuts(), 2);
    }

    #[test]
    fn a_graph_rate_is_a_number_or_auto() {
        assert_eq!("25".parse(), Ok(GraphRate::UpTo(25.0)));
        assert_eq!(" AUTO ".parse(), Ok(GraphRate::Auto));
        assert!("0".parse::<GraphRate>().is_err());
        assert!("NaN".parse::<GraphRate>().is_err());
        assert!("fast".parse::<GraphRate>().unwrap_err().contains("auto"));
        assert_eq!(GraphRate::Auto.to_string().parse(), Ok(GraphRate::Auto));
        assert_eq!(
            (GraphRate::Auto.start(), GraphRate::Auto.ceiling()),
            (10.0, 1000.0)
        );
    }

    #[test]
    fn cuts_stop_at_the_floor() {
        let t0 = Instant::now();
        let mut learner = Learner::new(1.05, 100.0, t0);
        let generation = learner.generation();
        assert_eq!(learner.throttled(generation, t0), Some(FLOOR));
        let generation = learner.generation();
        assert_eq!(learner.throttled(generation, t0), Some(FLOOR));
    }

    #[test]
    fn the_rate_grows_only_while_requests_wait_for_it() {
        let t0 = Instant::now();
        let mut learner = Learner::new(100.0, 200.0, t0);
        let generation = learner.generation();
        learner.throttled(generation, t0);
        // Nobody waited: a second later the rate is what it was.
        assert_eq!(learner.admitted(false, at(t0, 1.5)), None);
        // Requests wait, but within the step: no change yet.
        let changed = learner.admitted(true, at(t0, 0.5));
        assert_eq!(changed, None);
        // A second and a half after the cut, 1 % a second.
        let grown = learner.admitted(true, at(t0, 1.5)).unwrap();
        assert!((grown - 90.0 * 1.015).abs() < 1e-9, "{grown}");
    }

    #[test]
    fn before_any_429_the_rate_grows_by_half_a_step_up_to_the_ceiling() {
        let t0 = Instant::now();
        let mut learner = Learner::new(10.0, 30.0, t0);
        assert_eq!(learner.admitted(true, at(t0, 1.0)), Some(15.0));
        assert_eq!(learner.admitted(true, at(t0, 2.0)), Some(22.5));
        assert_eq!(learner.admitted(true, at(t0, 3.0)), Some(30.0));
        assert_eq!(learner.admitted(true, at(t0, 9.0)), None);
        assert!(learner.take_pressed());
        assert!(!learner.take_pressed());
    }

    #[test]
    fn a_rate_idle_for_long_grows_by_two_steps_at_most() {
        let t0 = Instant::now();
        let mut learner = Learner::new(10.0, 1000.0, t0);
        assert_eq!(learner.admitted(true, at(t0, 3600.0)), Some(20.0));
    }

    #[test]
    fn a_lower_ceiling_caps_the_rate_and_a_higher_one_keeps_its_margin() {
        let t0 = Instant::now();
        let mut learner = Learner::new(50.0, 50.0, t0);
        let generation = learner.generation();
        learner.throttled(generation, t0);
        assert_eq!(learner.set_ceiling(40.0, t0), Some(40.0));
        assert_eq!(learner.set_ceiling(40.0, t0), None);
        assert_eq!(learner.set_ceiling(80.0, t0), Some(80.0));
        let generation = learner.generation();
        learner.throttled(generation, t0);
        assert_eq!(learner.set_ceiling(160.0, t0), Some(144.0));
    }
}
