//! The client's budget: one `governor` limiter, one in-flight cap and one "hold until" instant,
//! all shared by every request of the process (first pages, next pages and retries alike).
//!
//! Lanes ([`Lane`]): the client passes each request's lane, the lane of the task that makes it. Live requests
//! are admitted before bulk ones: one request at a time waits for the tenant's next cell, and
//! when it has its cell the next to wait is a live request if any is queued. Bulk requests pass
//! a second limiter first, at the rate less the live reserve, so that part of the quota stays
//! unspent by bulk work and the tenant limiter's burst fills up for live bursts. Each lane has
//! its own in-flight cap, so bulk requests waiting for the rate never hold the permits a live
//! request needs.
//!
//! Bulk requests waiting for the rate are admitted in rounds ([`Limiter::round_extra`]): the one
//! whose turn it is sleeps until the cells of those queued behind it have come too, and they
//! follow it without sleeping. The rate is the same; a throttled worker wakes a few times a
//! second instead of once per request.
//!
//! The rate is learnt ([`super::adaptive`]): each 429 to a request sent at the current rate cuts
//! it, and it grows back while requests wait for it, never past its ceiling (`--graph-rate`).
//!
//! A fleet of workers sharing one tenant changes two of them from outside: the rate's ceiling
//! ([`Throttle::set_ceiling`], each worker's share of the tenant's learnt quota) and the hold (a 429 one
//! worker saw is every worker's 429: [`Throttle::hold_shared`]). The throttle itself knows
//! nothing of the fleet: it reports its own 429 holds on a watch channel
//! ([`Throttle::subscribe_holds`]) and takes the others' back.

use super::adaptive::Learner;
use crate::lane::Lane;
use crate::progress::{self, point};
use crate::setting::number_or_auto;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{oneshot, watch, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// One limiter and the rate it was built for (a governor quota cannot be changed in place).
struct Limiter {
    limiter: DefaultDirectRateLimiter,
    requests_per_second: f64,
    burst: u32,
}

/// The longest a bulk request sleeps to gather a round of cells (see [`Limiter::round_extra`]).
/// Bulk requests wait for the rate anyway, and a live request ends a round, so a long round
/// delays nobody who is not already waiting; under the default burst it is the burst, not
/// this, that bounds a round.
const ROUND: Duration = Duration::from_secs(1);

/// `--graph-burst`: how many requests the limiter lets through at once after a quiet spell.
/// A number is taken as it is; `auto` is half a second of the rate, and never less than
/// [`GraphBurst::AUTO_LEAST`].
///
/// The burst bounds a round of bulk requests (three quarters of it), and a round is one
/// wake-up of a throttled worker for all the requests in it: a burst fixed at ten held a worker
/// at 50 requests/s to rounds of seven, some seven wake-ups a second for the rounds alone, and
/// more for the answers trickling in after each. Half a second of the rate keeps the other half
/// of what a tenant's one-second bucket would hold (the simulator's model of Graph's) as margin
/// for requests that reach Graph closer together than they left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphBurst {
    Exactly(u32),
    Auto,
}

impl GraphBurst {
    /// `auto`'s least burst: the fixed default it replaced, a second at the default rate.
    pub const AUTO_LEAST: u32 = 10;

    /// The burst for a limiter at `requests_per_second`.
    pub fn at_rate(self, requests_per_second: f64) -> u32 {
        match self {
            GraphBurst::Exactly(burst) => burst.max(1),
            GraphBurst::Auto => {
                let half_second = (sane_rate(requests_per_second) / 2.0).round();
                // A float-to-int `as` saturates: an effectively unlimited rate gets u32::MAX.
                (half_second as u32).max(Self::AUTO_LEAST)
            }
        }
    }
}

impl std::str::FromStr for GraphBurst {
    type Err = String;

    fn from_str(text: &str) -> Result<GraphBurst, String> {
        let burst = number_or_auto(text, "requests", |text| {
            text.parse::<u32>().ok().filter(|burst| *burst > 0)
        })?;
        Ok(burst.map_or(GraphBurst::Auto, GraphBurst::Exactly))
    }
}

impl std::fmt::Display for GraphBurst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphBurst::Exactly(burst) => write!(f, "{burst}"),
            GraphBurst::Auto => f.write_str("auto"),
        }
    }
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

    /// How much longer than until its own cell a request sleeps when `queued` bulk requests
    /// wait behind it: until their cells have come too (at most a [`ROUND`]'s worth), so
    /// that it and they go in one wake-up, at the same rate. Each request admitted on its own
    /// costs the process a timer, a wake-up and a send at every tick of the rate; throttled,
    /// that was most of a worker's CPU. A round stays a quarter short of the burst: cells past
    /// the burst are lost, and a sleeper woken late must not find the bucket already full.
    fn round_extra(&self, queued: usize) -> Duration {
        let by_time = (self.requests_per_second * ROUND.as_secs_f64()).floor() as usize;
        let by_burst = self.burst as usize * 3 / 4;
        let cells = queued
            .min(by_time.saturating_sub(1))
            .min(by_burst.saturating_sub(1));
        Duration::from_secs_f64(cells as f64 / self.requests_per_second)
    }
}

/// The tenant's limiter, and the bulk lane's in front of it when a live reserve is set.
struct Limiters {
    tenant: Limiter,
    /// At the rate (and burst) less the live reserve: bulk requests take a cell here, then one
    /// of the tenant's.
    bulk: Option<Limiter>,
}

impl Limiters {
    fn new(
        requests_per_second: f64,
        burst: u32,
        live_reserve: f64,
        make: fn(f64, u32) -> Limiter,
    ) -> Limiters {
        let bulk_part = 1.0 - live_reserve;
        Limiters {
            tenant: make(requests_per_second, burst),
            bulk: (live_reserve > 0.0).then(|| {
                let bulk_burst = (f64::from(burst.max(1)) * bulk_part).floor() as u32;
                make(sane_rate(requests_per_second) * bulk_part, bulk_burst)
            }),
        }
    }
}

/// A live reserve within [0, 0.9]: bulk work keeps at least a tenth of the quota.
fn sane_reserve(live_reserve: f64) -> f64 {
    if live_reserve.is_finite() {
        live_reserve.clamp(0.0, 0.9)
    } else {
        0.0
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
    limiter: RwLock<Arc<Limiters>>,
    /// The learnt rate, and the burst that goes with a rate: `burst` at `rate` and in
    /// proportion below it. Locked before `limiter` whenever both are.
    learner: Mutex<Learnt>,
    /// The part of the rate bulk requests leave to live ones (0 to 0.9).
    live_reserve: f64,
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
    /// Live requests are handed the turn before bulk ones.
    turn: Turn,
    /// The same for the bulk limiter, among bulk requests only.
    bulk_turn: Turn,
    /// Bounds open requests, so a burst of deliveries cannot open hundreds of sockets at once;
    /// one cap per lane ([`Lane::index`]).
    in_flight: [Semaphore; 2],
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
    /// Timer sleeps on the limiters: one per round of admissions.
    limiter_sleeps: AtomicU64,
}

/// The learner, and the rate and burst its ceiling was given with.
struct Learnt {
    learner: Learner,
    burst_per_request_per_second: f64,
}

/// The most seconds of the rate a burst holds while the rate is below its ceiling. There the
/// rate is a guess near the quota, and each overshoot is answered with a 429 for about every
/// request of the round that met the tenant's empty bucket, so rounds stay small until the rate
/// is back at its ceiling. At `--sim-rate 50 --graph-rate 100` (bench, two runs each): half a
/// second, 0.88 % and 1.02 % of requests were 429s; a quarter, 0.58 % and 0.75 %; a tenth,
/// 0.40 % twice, as with the fixed burst of 10 before `auto`. Small rounds cost wake-ups (the
/// worker 1.63 and 1.70 s of CPU per 1,000 observables against 1.05 and 1.13), but a tenant
/// that is sent 429s pays for them in Graph's patience, not in CPU.
const LEARNING_BURST: Duration = Duration::from_millis(100);

/// The burst at a `rate` learnt up to `ceiling`, for a burst given as `seconds` of the rate: that
/// many seconds of it at the ceiling, and at most [`LEARNING_BURST`] of it below. One worker's
/// learner and a fleet's tenant rate both size their bursts by this.
pub fn burst_at(seconds: f64, rate: f64, ceiling: f64) -> u32 {
    let seconds = if rate < ceiling {
        seconds.min(LEARNING_BURST.as_secs_f64())
    } else {
        seconds
    };
    ((rate * seconds).round() as u32).max(1)
}

impl Learnt {
    fn burst_at(&self, rate: f64) -> u32 {
        burst_at(
            self.burst_per_request_per_second,
            rate,
            self.learner.ceiling(),
        )
    }
}

/// A request let through: its in-flight permit and the rate it went at.
pub struct Admission<'a> {
    _permit: SemaphorePermit<'a>,
    /// The learner's generation when the request went: a 429 to it cuts only that rate.
    pub generation: u64,
}

/// What the throttle has learnt, for metrics and reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearntRate {
    pub requests_per_second: f64,
    pub ceiling: f64,
    pub cuts: u64,
}

impl Throttle {
    /// A throttle at a fixed most `requests_per_second`, starting there.
    pub fn new(
        requests_per_second: f64,
        burst: u32,
        max_in_flight: usize,
        max_hold: Duration,
    ) -> Self {
        Throttle::with_live_reserve(
            requests_per_second,
            requests_per_second,
            burst,
            max_in_flight,
            max_hold,
            0.0,
        )
    }

    /// A throttle starting at `requests_per_second` (with `burst`), learning up to `ceiling`,
    /// whose bulk requests leave `live_reserve` (a fraction of the rate) to live ones.
    pub fn with_live_reserve(
        requests_per_second: f64,
        ceiling: f64,
        burst: u32,
        max_in_flight: usize,
        max_hold: Duration,
        live_reserve: f64,
    ) -> Self {
        let live_reserve = sane_reserve(live_reserve);
        let start = sane_rate(requests_per_second);
        let learnt = Learnt {
            learner: Learner::new(start, sane_rate(ceiling).max(start), Instant::now()),
            burst_per_request_per_second: f64::from(burst.max(1)) / start,
        };
        let limiters = Limiters::new(start, learnt.burst_at(start), live_reserve, Limiter::new);
        let cap = max_in_flight.max(1);
        Throttle {
            limiter: RwLock::new(Arc::new(limiters)),
            learner: Mutex::new(learnt),
            live_reserve,
            swaps: watch::Sender::new(0),
            turn: Turn::default(),
            bulk_turn: Turn::default(),
            in_flight: [Semaphore::new(cap), Semaphore::new(cap)],
            hold_until: Mutex::new(None),
            own_holds: watch::Sender::new(None),
            max_hold,
            limiter_wait_micros: AtomicU64::new(0),
            hold_wait_micros: AtomicU64::new(0),
            limiter_sleeps: AtomicU64::new(0),
        }
    }

    /// Wait until a request of `lane` may go: under its lane's in-flight cap, past any 429 hold,
    /// within the rate, after the live requests waiting. The permit comes first so that the
    /// rate and the hold are the last word before the request is sent: a cell taken before a
    /// long wait for a permit (Graph slow) would let a pile of requests out together once Graph
    /// sped up, past the rate or into a new hold.
    pub async fn admit(&self, lane: Lane) -> Admission<'_> {
        let permit = progress::wait_at(point::GRAPH_PERMIT, self.in_flight[lane.index()].acquire())
            .await
            .expect("the in-flight semaphore is never closed");
        loop {
            self.wait_out_hold().await;
            // Subscribed before the limiter is read, so a swap in between is not missed.
            let mut swapped = self.swaps.subscribe();
            let limiters = Arc::clone(&self.limiter.read().expect("limiter lock poisoned"));
            let started = Instant::now();
            let cell = match self.bulk_cell(lane, &limiters, &mut swapped).await {
                Cell::Taken { waited } => {
                    match self.tenant_cell(lane, &limiters, &mut swapped).await {
                        Cell::Taken { waited: also } => Cell::Taken {
                            waited: waited || also,
                        },
                        Cell::Swapped => Cell::Swapped,
                    }
                }
                Cell::Swapped => Cell::Swapped,
            };
            add_micros(&self.limiter_wait_micros, started.elapsed());
            // A hold raised while this request waited for the rate (another task's 429, or
            // another worker's) applies to it too.
            if let Cell::Taken { waited } = cell {
                if self.held_until().is_none() {
                    return Admission {
                        _permit: permit,
                        generation: self.learn(|learner, now| learner.admitted(waited, now)),
                    };
                }
            }
        }
    }

    /// Graph throttled a request sent at `generation`: cut the rate if that is the current one.
    pub fn throttled(&self, generation: u64) {
        self.learn(|learner, now| learner.throttled(generation, now));
    }

    /// A new ceiling for the learnt rate, and the burst that goes with it: this worker's share
    /// of its tenant's quota. Returns whether the rate changed.
    pub fn set_ceiling(&self, ceiling: f64, burst: u32) -> bool {
        let ceiling = sane_rate(ceiling);
        let mut learnt = self.learner.lock().expect("learner lock poisoned");
        learnt.burst_per_request_per_second = f64::from(burst.max(1)) / ceiling;
        learnt.learner.set_ceiling(ceiling, Instant::now());
        let rate = learnt.learner.rate();
        self.swap_limiter(rate, learnt.burst_at(rate))
    }

    /// Whether requests waited for the rate while it sat at its ceiling, since the last call:
    /// a fleet worker whose share holds it back.
    pub fn take_pressed(&self) -> bool {
        let mut learnt = self.learner.lock().expect("learner lock poisoned");
        learnt.learner.take_pressed()
    }

    /// What the rate is now, its ceiling, and how often Graph's 429s cut it.
    pub fn learnt(&self) -> LearntRate {
        let learnt = self.learner.lock().expect("learner lock poisoned");
        LearntRate {
            requests_per_second: learnt.learner.rate(),
            ceiling: learnt.learner.ceiling(),
            cuts: learnt.learner.cuts(),
        }
    }

    /// Tell the learner something, apply the rate it answers with, if any, and return its
    /// generation. The limiter is swapped under the learner's lock, so two changes land in the
    /// order they were decided.
    fn learn(&self, event: impl FnOnce(&mut Learner, Instant) -> Option<f64>) -> u64 {
        let mut learnt = self.learner.lock().expect("learner lock poisoned");
        if let Some(rate) = event(&mut learnt.learner, Instant::now()) {
            let burst = learnt.burst_at(rate);
            self.swap_limiter(rate, burst);
        }
        learnt.learner.generation()
    }

    /// A bulk request's cell of the bulk limiter, in arrival order among bulk requests; at once
    /// for a live request or without a reserve. False when the limiter was swapped meanwhile.
    async fn bulk_cell(
        &self,
        lane: Lane,
        limiters: &Limiters,
        swapped: &mut watch::Receiver<u64>,
    ) -> Cell {
        let Some(bulk) = limiters.bulk.as_ref().filter(|_| lane == Lane::Bulk) else {
            return Cell::Taken { waited: false };
        };
        if bulk.limiter.check().is_ok() {
            return Cell::Taken { waited: false };
        }
        let _turn = self.bulk_turn.take(Lane::Bulk).await;
        let _waiting = progress::waiting(point::GRAPH_LIMITER);
        let round = bulk.round_extra(self.bulk_turn.queued(Lane::Bulk));
        tokio::select! {
            _ = self.until_ready(&bulk.limiter, round) => Cell::Taken { waited: true },
            _ = swapped.changed() => Cell::Swapped,
        }
    }

    /// A cell of the tenant's limiter. A free cell is taken at once, by a bulk request only
    /// when nobody waits for the turn (a live request may); otherwise the request waits for
    /// its turn, live before bulk; a bulk request gathers a round for the bulk requests behind
    /// it, a live one goes at its own cell. Waiting is cancel-safe: governor takes a cell only
    /// when it lets the request go. False when the limiter was swapped meanwhile.
    async fn tenant_cell(
        &self,
        lane: Lane,
        limiters: &Limiters,
        swapped: &mut watch::Receiver<u64>,
    ) -> Cell {
        let tenant = &limiters.tenant.limiter;
        let may_jump = lane == Lane::Live || self.turn.is_free();
        if may_jump && tenant.check().is_ok() {
            return Cell::Taken { waited: false };
        }
        let _turn = self.turn.take(lane).await;
        let _waiting = progress::waiting(point::GRAPH_LIMITER);
        // Registered before the queue is read, so a live request queueing in between is seen.
        let live_queued = self.turn.live_queued.notified();
        tokio::pin!(live_queued);
        let mut round = match lane {
            Lane::Bulk if self.turn.queued(Lane::Live) == 0 => {
                limiters.tenant.round_extra(self.turn.queued(Lane::Bulk))
            }
            _ => Duration::ZERO,
        };
        loop {
            tokio::select! {
                _ = self.until_ready(tenant, round) => return Cell::Taken { waited: true },
                // A live request queued behind a bulk round: the round ends at the next cell.
                _ = &mut live_queued, if !round.is_zero() => round = Duration::ZERO,
                _ = swapped.changed() => return Cell::Swapped,
            }
        }
    }

    /// Wait until `limiter` lets one request go, sleeping `round` past its next cell (the
    /// first sleep only), on tokio's timer. governor's own `until_ready` sleeps on the
    /// `futures-timer` thread, where a worker was seen to stop for good with every request
    /// queued behind a wait that never woke; tokio's timer is the one the rest of the worker
    /// runs on (and the one paused-time tests control). Its millisecond resolution only matters
    /// past about a thousand waits a second, far above any tenant's Graph quota.
    async fn until_ready(&self, limiter: &DefaultDirectRateLimiter, round: Duration) {
        let mut round = round;
        while let Err(not_until) = limiter.check() {
            let wait = not_until.wait_time_from(limiter.clock().now());
            self.limiter_sleeps.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait.max(Duration::from_micros(100)) + round).await;
            round = Duration::ZERO;
        }
    }

    /// Timer sleeps on the rate limiters so far: one per round of requests admitted together,
    /// so that with requests waiting it stays well below the requests sent.
    pub fn limiter_sleeps(&self) -> u64 {
        self.limiter_sleeps.load(Ordering::Relaxed)
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
        let limiters = self.limiter.read().expect("limiter lock poisoned");
        (limiters.tenant.requests_per_second, limiters.tenant.burst)
    }

    /// The part of the rate bulk requests leave to live ones.
    pub fn live_reserve(&self) -> f64 {
        self.live_reserve
    }

    /// Admit requests at a new rate from now on, starting with no burst to spend. Returns
    /// whether anything changed: an unchanged rate keeps the current limiter.
    fn swap_limiter(&self, requests_per_second: f64, burst: u32) -> bool {
        let wanted = (sane_rate(requests_per_second), burst.max(1));
        let mut limiters = self.limiter.write().expect("limiter lock poisoned");
        if (limiters.tenant.requests_per_second, limiters.tenant.burst) == wanted {
            return false;
        }
        *limiters = Arc::new(Limiters::new(
            wanted.0,
            wanted.1,
            self.live_reserve,
            Limiter::spent,
        ));
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

/// A limiter's answer to a request: a cell (after waiting for it or not), or none because the
/// limiter was swapped meanwhile.
enum Cell {
    Taken { waited: bool },
    Swapped,
}

/// The turn to wait for the tenant limiter's next cell: one holder at a time, and when it lets
/// go, the next holder is the live request that asked first, else the bulk one that did. A
/// FIFO lock per lane rather than one for all: one waiter sleeps on the limiter instead of
/// hundreds waking for every cell, and a live request never queues behind bulk ones.
#[derive(Default)]
struct Turn {
    state: Mutex<TurnState>,
    /// Told whenever a live request queues, so a bulk holder gathering a round stops
    /// gathering and lets it go at the next cell.
    live_queued: tokio::sync::Notify,
}

#[derive(Default)]
struct TurnState {
    held: bool,
    /// Those waiting for the turn, per lane ([`Lane::index`]), in arrival order.
    queued: [VecDeque<oneshot::Sender<()>>; 2],
}

impl Turn {
    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many of `lane` wait for the turn (a waiter that gave up counts until the turn
    /// reaches it).
    fn queued(&self, lane: Lane) -> usize {
        self.lock().queued[lane.index()].len()
    }

    /// Nobody holds the turn or waits for it.
    fn is_free(&self) -> bool {
        let state = self.lock();
        !state.held && state.queued.iter().all(VecDeque::is_empty)
    }

    /// Wait for the turn; it is held until the guard is dropped. Cancel-safe: a waiter dropped
    /// after being handed the turn passes it on.
    async fn take(&self, lane: Lane) -> TurnGuard<'_> {
        let handed = {
            let mut state = self.lock();
            if !state.held {
                state.held = true;
                return TurnGuard(self);
            }
            let (hand, handed) = oneshot::channel();
            state.queued[lane.index()].push_back(hand);
            handed
        };
        if lane == Lane::Live {
            self.live_queued.notify_waiters();
        }
        let mut waiting = Waiting {
            turn: self,
            handed: Some(handed),
        };
        let handed = waiting.handed.as_mut().expect("set above");
        // The sender is dropped only by `release`, after a failed send, which means this
        // receiver was gone: while it is awaited here, the turn always comes.
        let _ = handed.await;
        waiting.handed = None;
        TurnGuard(self)
    }

    /// Hand the turn to the next live waiter, else the next bulk one, else free it.
    fn release(&self) {
        let mut state = self.lock();
        loop {
            let next = state.queued[Lane::Live.index()]
                .pop_front()
                .or_else(|| state.queued[Lane::Bulk.index()].pop_front());
            let Some(hand) = next else {
                state.held = false;
                return;
            };
            // Handed over, the turn stays held, now by the receiver; a waiter that gave up
            // fails the send, and the next one is tried.
            if hand.send(()).is_ok() {
                return;
            }
        }
    }
}

struct TurnGuard<'a>(&'a Turn);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A waiter for the turn; dropped before it was handed the turn, it leaves the queue (its
/// sender fails); dropped just after, it passes the turn on.
struct Waiting<'a> {
    turn: &'a Turn,
    handed: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut handed) = self.handed.take() {
            handed.close();
            if handed.try_recv().is_ok() {
                self.turn.release();
            }
        }
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
    fn a_graph_burst_is_a_number_or_auto_half_a_second_of_the_rate() {
        assert_eq!("25".parse(), Ok(GraphBurst::Exactly(25)));
        assert_eq!(" Auto ".parse(), Ok(GraphBurst::Auto));
        assert!("0".parse::<GraphBurst>().is_err());
        assert!("-3".parse::<GraphBurst>().is_err());
        assert!("lots".parse::<GraphBurst>().unwrap_err().contains("auto"));
        assert_eq!(GraphBurst::Auto.to_string().parse(), Ok(GraphBurst::Auto));
        // A number is the burst whatever the rate.
        assert_eq!(GraphBurst::Exactly(7).at_rate(500.0), 7);
        // `auto`: half a second of the rate, never below the old fixed default...
        assert_eq!(GraphBurst::Auto.at_rate(50.0), 25);
        assert_eq!(GraphBurst::Auto.at_rate(10.0), 10);
        assert_eq!(GraphBurst::Auto.at_rate(1.0), 10);
        // ...and no overflow for an effectively unlimited rate, nor a panic for a bad one.
        assert_eq!(GraphBurst::Auto.at_rate(1e12), u32::MAX);
        assert_eq!(GraphBurst::Auto.at_rate(f64::NAN), 10);
    }

    #[test]
    fn a_new_rate_swaps_the_limiter_only_when_it_differs() {
        let throttle = Throttle::new(30.0, 9, 4, HOLD);
        assert_eq!(throttle.rate(), (30.0, 9));
        assert!(!throttle.swap_limiter(30.0, 9));
        assert!(throttle.swap_limiter(10.0, 3));
        assert_eq!(throttle.rate(), (10.0, 3));
        // Nonsense rates fall back to one a second rather than panicking.
        assert!(throttle.swap_limiter(f64::NAN, 0));
        assert_eq!(throttle.rate(), (1.0, 1));
    }

    #[test]
    fn bursts_stay_small_while_the_rate_is_learnt_below_its_ceiling() {
        // At its ceiling the rate keeps the burst it was given: half a second of 100.
        let throttle = Throttle::with_live_reserve(100.0, 100.0, 50, 4, HOLD, 0.0);
        assert_eq!(throttle.rate(), (100.0, 50));
        // A 429 cuts the rate below the ceiling: each round that overshoots costs a 429 a
        // request, so rounds shrink to a tenth of a second of the new rate.
        throttle.throttled(throttle.learn(|_, _| None));
        let (rate, burst) = throttle.rate();
        assert!(rate < 100.0, "the 429 cut the rate: {rate}");
        assert_eq!(burst, (rate * LEARNING_BURST.as_secs_f64()).round() as u32);
        assert!(burst < 50 / 2, "the burst did not shrink: {burst}");
        // Learning upwards from the start (`--graph-rate auto`) is learning too.
        let auto = Throttle::with_live_reserve(40.0, 1000.0, 20, 4, HOLD, 0.0);
        assert_eq!(auto.rate(), (40.0, 4));
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
                let _permit = throttle.admit(Lane::Live).await;
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

    // Real time: governor reads its own clock. The elapsed time is a floor the rate
    // guarantees, not a speed claim; the sleeps are counted, not timed.
    #[tokio::test]
    async fn bulk_requests_waiting_together_go_in_rounds_within_the_rate() {
        let throttle = Arc::new(Throttle::new(100.0, 20, 100, HOLD));
        for _ in 0..20 {
            drop(throttle.admit(Lane::Bulk).await);
        }
        assert_eq!(
            throttle.limiter_sleeps(),
            0,
            "the burst goes without waiting"
        );
        let started = Instant::now();
        let waiters: Vec<_> = (0..45)
            .map(|_| {
                let throttle = Arc::clone(&throttle);
                tokio::spawn(async move { drop(throttle.admit(Lane::Bulk).await) })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        // The burst is spent: 45 more cells at 100 a second take at least 0.44 s.
        assert!(started.elapsed() >= Duration::from_millis(435));
        // One sleep per request would be 45; rounds of up to 15 (three quarters of the burst)
        // need a handful.
        let sleeps = throttle.limiter_sleeps();
        assert!(sleeps <= 10, "{sleeps} sleeps for 45 requests");
    }

    // Real time: governor reads its own clock. The bound is the round's length, ten times what
    // the live request should wait, so a slow machine does not fail it.
    #[tokio::test]
    async fn a_live_request_does_not_wait_for_a_bulk_round() {
        // 50 a second: rounds of up to 50 cells, 980 ms past the holder's own.
        let throttle = Arc::new(Throttle::new(50.0, 100, 100, HOLD));
        for _ in 0..100 {
            drop(throttle.admit(Lane::Bulk).await);
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let bulk: Vec<_> = (0..20)
            .map(|i| request(&throttle, Lane::Bulk, format!("bulk-{i}"), &order))
            .collect();
        // The first holder saw nobody behind it; the second gathers a round for the others.
        while throttle.limiter_sleeps() < 2 {
            tokio::task::yield_now().await;
        }
        let queued = Instant::now();
        let live = {
            let throttle = Arc::clone(&throttle);
            tokio::spawn(async move {
                drop(throttle.admit(Lane::Live).await);
                queued.elapsed()
            })
        };
        let waited = live.await.unwrap();
        assert!(
            waited < Duration::from_millis(120),
            "the live request waited {waited:?}, for the bulk round"
        );
        for task in bulk {
            task.await.unwrap();
        }
    }

    #[test]
    fn a_round_is_at_most_a_second_and_short_of_the_burst() {
        let at = |rate: f64, burst: u32, queued: usize| {
            Limiter::new(rate, burst).round_extra(queued).as_secs_f64() * rate
        };
        let close = |cells: f64, expected: f64| (cells - expected).abs() < 1e-6;
        // 50 a second, burst 10: seven requests a round, six cells past the first.
        assert!(close(at(50.0, 10, 100), 6.0));
        // Nobody behind: no extra wait.
        assert!(close(at(50.0, 10, 0), 0.0));
        assert!(close(at(50.0, 10, 2), 2.0));
        // 10 a second: ten cells in a second, nine past the first, when the burst allows.
        assert!(close(at(10.0, 100, 100), 9.0));
        assert!(close(at(10.0, 10, 100), 6.0));
        // 50 a second, burst 100: a second's worth.
        assert!(close(at(50.0, 100, 100), 49.0));
        // A burst of one leaves no room for a round.
        assert!(close(at(50.0, 1, 100), 0.0));
    }

    /// Admit `lane`'s request on a task of its own, recording its name once admitted.
    fn request(
        throttle: &Arc<Throttle>,
        lane: Lane,
        name: String,
        order: &Arc<Mutex<Vec<String>>>,
    ) -> tokio::task::JoinHandle<()> {
        let (throttle, order) = (Arc::clone(throttle), Arc::clone(order));
        tokio::spawn(async move {
            let _permit = throttle.admit(lane).await;
            order.lock().unwrap().push(name);
        })
    }

    async fn until_queued(throttle: &Throttle, lane: Lane, waiting: usize) {
        while throttle.turn.lock().queued[lane.index()].len() < waiting {
            tokio::task::yield_now().await;
        }
    }

    // Real time: governor reads its own clock. Order only, no durations asserted.
    #[tokio::test]
    async fn a_live_request_goes_before_the_bulk_requests_already_waiting() {
        let throttle = Arc::new(Throttle::new(40.0, 1, 100, HOLD));
        drop(throttle.admit(Lane::Bulk).await);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks: Vec<_> = (0..10)
            .map(|i| request(&throttle, Lane::Bulk, format!("bulk-{i}"), &order))
            .collect();
        // One bulk request holds the turn, the others wait for it.
        until_queued(&throttle, Lane::Bulk, 9).await;
        tasks.push(request(&throttle, Lane::Live, "live".into(), &order));
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap();
        let live = order.iter().position(|name| name == "live").unwrap();
        // At most the holder of the turn, and the one it handed the turn to before the live
        // request queued, go first; eight or more bulk requests go after it.
        assert!(
            live <= 2,
            "live admitted after {live} bulk requests: {order:?}"
        );
    }

    #[test]
    fn the_live_reserve_is_taken_from_the_bulk_lanes_rate_and_burst() {
        let limiters = Limiters::new(50.0, 10, 0.2, Limiter::new);
        assert_eq!(limiters.tenant.requests_per_second, 50.0);
        let bulk = limiters.bulk.expect("a bulk limiter with a reserve");
        assert!((bulk.requests_per_second - 40.0).abs() < 1e-9);
        assert_eq!(bulk.burst, 8);
        assert!(Limiters::new(50.0, 10, 0.0, Limiter::new).bulk.is_none());
        // Nonsense reserves keep bulk work going.
        assert_eq!(sane_reserve(f64::NAN), 0.0);
        assert_eq!(sane_reserve(5.0), 0.9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_turn_goes_to_live_waiters_first_and_skips_those_who_left() {
        let turn = Arc::new(Turn::default());
        let held = turn.take(Lane::Bulk).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |lane: Lane, name: &'static str| {
            let (turn, order) = (Arc::clone(&turn), Arc::clone(&order));
            tokio::spawn(async move {
                let _turn = turn.take(lane).await;
                order.lock().unwrap().push(name);
            })
        };
        let bulk = waiter(Lane::Bulk, "bulk");
        let gone = waiter(Lane::Live, "gone");
        let live = waiter(Lane::Live, "live");
        while turn.lock().queued.iter().map(VecDeque::len).sum::<usize>() < 3 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        drop(held);
        for task in [bulk, live] {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["live", "bulk"]);
        assert!(turn.is_free());
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
            drop(throttle.admit(Lane::Live).await);
        }
        assert!(throttle.swap_limiter(2.0 / 3600.0, 5));
        let waiting = tokio::spawn({
            let throttle = Arc::clone(&throttle);
            async move { drop(throttle.admit(Lane::Live).await) }
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
        drop(throttle.admit(Lane::Live).await);
        let waiting = tokio::spawn({
            let throttle = Arc::clone(&throttle);
            async move {
                drop(throttle.admit(Lane::Live).await);
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        throttle.swap_limiter(1000.0, 10);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the queued request went at the new rate")
            .unwrap();
    }
}
