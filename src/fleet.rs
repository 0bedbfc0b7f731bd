//! Several worker processes, on several machines, sharing one Graph tenant's quota.
//!
//! Graph throttles a tenant, not a process: N workers each at `--graph-rate` spend N times what
//! one may. With `--tenant-quota Q`, each worker holds a lease in Postgres (which every worker
//! already has) and the [`Coordinator`], at every heartbeat:
//!
//! - renews its lease and counts the live ones (renewed within `--lease-expiry`), by the
//!   database's clock;
//! - sets its limiter to its share: `min(Q / live, Q - the others' recorded shares)`, so a worker
//!   that just joined does not spend what the others have not yet given up (it waits, at a tenth
//!   of its fair share at least, until they lower theirs at their next heartbeat); the burst is
//!   split in the same proportion. Heartbeats of one tenant run one at a time (an advisory
//!   lock), so each sees the shares the others last took;
//! - reads the tenant's shared hold (`tenant_quotas.throttled_until`) and holds back until then;
//! - grows the tenant's learnt rate (`tenant_quotas.learnt_rate`, null until it first changes:
//!   the whole quota) when this worker's requests waited at its share: the shares above are
//!   shares of that rate, not of the quota.
//!
//! The tenant's rate is learnt the way one process learns its own ([`crate::graph::adaptive`]),
//! with the same two rules: a 429 any worker sees cuts it (at most once a second for the whole
//! tenant, by the database's clock), and it grows by the time since it last changed at the
//! heartbeats of the workers held back by their share. Each worker also cuts its own rate at
//! once on its own 429s, and its share is only its ceiling; so the fleet learns together what
//! one worker would learn alone.
//!
//! A 429 one worker sees is written at once as `throttled_until = greatest(existing, now() +
//! Retry-After)`, so the others stop at their next heartbeat instead of each earning its own
//! 429. A clean shutdown deletes the lease (the others grow at their next heartbeat); a killed
//! worker's lease stops counting once it expires. A worker that cannot reach Postgres for longer
//! than the lease expiry has been counted out by the others, who may have grown into its share:
//! it drops to a tenth of its share until a heartbeat succeeds again.
//!
//! This is where the Graph client and the store meet: `graph` knows no database and `store`
//! never calls Graph.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use crate::graph::adaptive::{cut, grown, STEP};
use crate::graph::throttle::burst_at;
use crate::graph::GraphClient;
use crate::store::{
    HeartbeatDecision, LeaseHolder, LeaseView, Store, StoreError, TenantRate, TenantThrottles,
};

/// How a fleet shares its tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    /// The tenant whose quota is shared (the Graph tenant id): workers of other tenants in the
    /// same database do not count.
    pub tenant_id: String,
    /// Graph requests per second for the whole tenant.
    pub tenant_quota: f64,
    /// Requests the whole tenant may let through at once; split like the quota.
    pub tenant_burst: u32,
    pub heartbeat_interval: Duration,
    /// A lease not renewed this long no longer counts.
    pub lease_expiry: Duration,
}

/// One worker's part of the tenant's quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Live workers counted, this one included.
    pub live_workers: u32,
    pub requests_per_second: f64,
    pub burst: u32,
}

/// A worker's share, given the live workers and what the others recorded: its fair part,
/// `quota / live`, but never more than the others left, and never less than a tenth of the fair
/// part (a joiner still makes progress while the others lower theirs).
pub fn share_of(quota: f64, burst: u32, live_workers: u32, others_share: f64) -> Share {
    let live = live_workers.max(1);
    let fair = quota / f64::from(live);
    let headroom = quota - others_share.max(0.0);
    let requests_per_second = fair.min(headroom).max(fair / 10.0);
    let burst = ((f64::from(burst) * requests_per_second / quota).floor() as u32).max(1);
    Share {
        live_workers: live,
        requests_per_second,
        burst,
    }
}

/// The tenant's rate after a 429: cut from the learnt rate (the quota if none), unless another
/// worker's 429 cut it within the last second (the same overshoot, seen by several workers).
fn tenant_cut(learnt: Option<TenantRate>, quota: f64) -> Option<f64> {
    match learnt {
        Some(learnt) if learnt.since_cut.is_some_and(|since| since < STEP) => None,
        Some(learnt) => Some(cut(learnt.requests_per_second, quota)),
        None => Some(cut(quota, quota)),
    }
}

/// The tenant's burst at `rate`: the configured burst in proportion to the rate's part of the
/// quota, and small while the rate is learnt below the quota, as one worker's is: the fleet's
/// rounds meet the tenant's bucket together.
fn tenant_burst(burst: u32, rate: f64, quota: f64) -> u32 {
    burst_at(f64::from(burst) / quota, rate, quota)
}

/// Where the output of spawned workers goes.
#[derive(Clone, Copy)]
enum Output<'a> {
    Inherit,
    Discard,
    File(&'a std::fs::File),
}

/// Keeps one worker's lease and its limiter in step with the rest of the fleet.
pub struct Coordinator {
    store: Store,
    graph: GraphClient,
    settings: FleetSettings,
    holder: LeaseHolder,
}

impl Coordinator {
    /// Take a lease and set the limiter to this worker's share before any request goes out.
    pub async fn join(
        store: Store,
        graph: GraphClient,
        settings: FleetSettings,
    ) -> Result<Coordinator, StoreError> {
        let holder = LeaseHolder {
            id: Uuid::new_v4(),
            tenant_id: settings.tenant_id.clone(),
            host: host_name(),
            pid: std::process::id(),
        };
        let coordinator = Coordinator {
            store,
            graph,
            settings,
            holder,
        };
        let share = coordinator.heartbeat().await?;
        tracing::info!(
            lease = %coordinator.holder.id,
            live_workers = share.live_workers,
            requests_per_second = share.requests_per_second,
            "joined the fleet sharing the tenant's Graph quota"
        );
        Ok(coordinator)
    }

    pub fn lease_id(&self) -> Uuid {
        self.holder.id
    }

    /// The client whose limiter this coordinator sets.
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    /// Renew the lease, grow the tenant's learnt rate if this worker waited at its share, take
    /// this worker's share of that rate, and honour the tenant's hold.
    pub async fn heartbeat(&self) -> Result<Share, StoreError> {
        let pressed = self.graph.throttle().take_pressed();
        let (view, decision) = self
            .store
            .heartbeat_lease(&self.holder, self.settings.lease_expiry, |view| {
                self.decide(view, pressed)
            })
            .await?;
        // Applied only once recorded: a share the others cannot see yet is not spent.
        let share = self.share(&view, decision.tenant_rate);
        let throttle = self.graph.throttle();
        if throttle.set_ceiling(share.requests_per_second, share.burst) {
            tracing::info!(
                live_workers = share.live_workers,
                requests_per_second = share.requests_per_second,
                burst = share.burst,
                "Graph share of the tenant quota changed"
            );
        }
        if let Some(wait) = view.throttled_for {
            throttle.hold_shared(wait);
        }
        Ok(share)
    }

    /// The tenant's rate after this heartbeat (grown if this worker's requests waited at its
    /// share), and this worker's share of it.
    fn decide(&self, view: &LeaseView, pressed: bool) -> HeartbeatDecision {
        let quota = self.settings.tenant_quota;
        let tenant_rate = view
            .learnt
            .filter(|_| pressed)
            .map(|learnt| {
                let throttled_before = learnt.since_cut.is_some();
                grown(
                    learnt.requests_per_second,
                    learnt.since_change,
                    throttled_before,
                    quota,
                )
            })
            .filter(|rate| Some(*rate) != view.learnt.map(|l| l.requests_per_second));
        HeartbeatDecision {
            share: self.share(view, tenant_rate).requests_per_second,
            tenant_rate,
        }
    }

    /// This worker's share of the tenant's rate: `rate` if given, else the learnt one, else
    /// the quota.
    fn share(&self, view: &LeaseView, rate: Option<f64>) -> Share {
        let quota = self.settings.tenant_quota;
        let rate = rate
            .or(view.learnt.map(|learnt| learnt.requests_per_second))
            .unwrap_or(quota)
            .min(quota);
        let burst = tenant_burst(self.settings.tenant_burst, rate, quota);
        share_of(rate, burst, view.live_workers, view.others_share)
    }

    /// This worker was throttled for `wait`: make it the tenant's hold, cut the tenant's rate
    /// (at most once a second for the tenant), and hold back for whatever the tenant's hold now
    /// is (another worker's may be longer).
    pub async fn share_throttle(&self, wait: Duration) -> Result<(), StoreError> {
        let tenant = &self.settings.tenant_id;
        let hold = self.store.raise_tenant_hold(tenant, wait).await?;
        if let Some(hold) = hold {
            self.graph.throttle().hold_shared(hold);
        }
        let quota = self.settings.tenant_quota;
        let cut_to = self
            .store
            .cut_tenant_rate(tenant, |learnt| tenant_cut(learnt, quota))
            .await?;
        if let Some(rate) = cut_to {
            tracing::info!(
                requests_per_second = rate,
                "Graph throttled the tenant: its learnt rate was cut"
            );
        }
        Ok(())
    }

    /// Give the lease back: the others' shares grow at their next heartbeat.
    pub async fn leave(self) -> Result<(), StoreError> {
        self.store.release_lease(self.holder.id).await
    }

    /// Heartbeat every interval, and at once when another worker of the tenant announces a
    /// 429; share this worker's 429s as they happen; until `stop` turns true (or its sender is
    /// dropped); then give the lease back.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut holds = self.graph.throttle().subscribe_holds();
        let mut throttles = self.listen_for_throttles().await;
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // join() made the first heartbeat.
        tick.tick().await;
        let mut liveness = Liveness {
            last_ok: Instant::now(),
            cut_off: false,
        };
        let mut holds_open = true;
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => {
                    if self.beat(&mut liveness).await && throttles.is_none() {
                        throttles = self.listen_for_throttles().await;
                    }
                },
                throttled = next_throttle(&mut throttles) => match throttled {
                    Ok(tenant) if tenant == self.settings.tenant_id => {
                        self.beat(&mut liveness).await;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "fleet: other workers' 429s now arrive with the heartbeats");
                        throttles = None;
                    }
                },
                changed = holds.changed(), if holds_open => match changed {
                    Ok(()) => {
                        let until = *holds.borrow_and_update();
                        if let Some(until) = until {
                            let wait = until.saturating_duration_since(Instant::now());
                            if let Err(error) = self.share_throttle(wait).await {
                                tracing::warn!(%error, "could not share a Graph throttle with the fleet");
                            }
                        }
                    }
                    // The client is gone: nothing more to share, keep heartbeating.
                    Err(_) => holds_open = false,
                },
                changed = stop.changed() => if changed.is_err() {
                    break;
                },
            }
        }
        let lease = self.holder.id;
        match self.leave().await {
            Ok(()) => tracing::info!(%lease, "left the fleet"),
            Err(error) => {
                tracing::warn!(%error, %lease, "could not give the lease back; it expires by itself")
            }
        }
    }

    /// One heartbeat of [`Coordinator::run`]; past the lease expiry without one, fall back.
    /// Returns whether Postgres answered.
    async fn beat(&self, liveness: &mut Liveness) -> bool {
        match self.heartbeat().await {
            Ok(_) => {
                liveness.last_ok = Instant::now();
                liveness.cut_off = false;
                true
            }
            Err(error) => {
                tracing::warn!(%error, "fleet heartbeat failed");
                if !liveness.cut_off && liveness.last_ok.elapsed() > self.settings.lease_expiry {
                    liveness.cut_off = true;
                    self.fall_back();
                }
                false
            }
        }
    }

    /// The other workers' 429s as they announce them (see [`Store::cut_tenant_rate`]), so that
    /// this one holds back and takes the cut rate within milliseconds rather than at its next
    /// heartbeat, by which time its requests at the old rate have earned 429s of their own.
    /// `None` while Postgres does not answer within a heartbeat interval: the heartbeats
    /// still carry both.
    async fn listen_for_throttles(&self) -> Option<TenantThrottles> {
        let listening = self.store.tenant_throttles();
        match tokio::time::timeout(self.settings.heartbeat_interval, listening).await {
            Ok(Ok(throttles)) => Some(throttles),
            Ok(Err(error)) => {
                tracing::warn!(%error, "fleet: cannot listen for other workers' 429s; the heartbeats carry them");
                None
            }
            Err(_) => None,
        }
    }

    /// Postgres has been unreachable past the lease expiry: the others no longer count this
    /// worker and may have grown into its share, so it spends a tenth of its share until it can
    /// heartbeat again.
    fn fall_back(&self) {
        let throttle = self.graph.throttle();
        let share = throttle.learnt().ceiling;
        throttle.set_ceiling(share / 10.0, 1);
        tracing::warn!(
            requests_per_second = share / 10.0,
            "no fleet heartbeat within the lease expiry: slowing down until Postgres answers"
        );
    }
}

/// When the coordinator last heartbeat, and whether it fell back since.
struct Liveness {
    last_ok: Instant,
    cut_off: bool,
}

/// The next tenant announced throttled, or never without a listener.
async fn next_throttle(throttles: &mut Option<TenantThrottles>) -> Result<String, StoreError> {
    match throttles {
        Some(throttles) => throttles.next().await,
        None => std::future::pending().await,
    }
}

/// This machine's name for the lease row (who holds it), or `unknown`.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Several `worker` processes of one executable with the same arguments, for batch runs and
/// benchmarks on one machine (`--tenant-quota` among the arguments makes them share the tenant).
/// Children still running when this is dropped are killed.
pub struct WorkerProcesses {
    children: Vec<Child>,
}

impl WorkerProcesses {
    /// Start `count` processes of `executable worker <args>`, their output discarded unless
    /// `inherit_output`.
    pub fn spawn<I, S>(
        executable: &Path,
        count: usize,
        args: I,
        inherit_output: bool,
    ) -> std::io::Result<WorkerProcesses>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let output = if inherit_output {
            Output::Inherit
        } else {
            Output::Discard
        };
        Self::spawn_with(executable, count, args, &[], output)
    }

    /// Like [`WorkerProcesses::spawn`], with environment variables (settings that must not
    /// show in the process list, such as URLs with passwords) and both output streams of every
    /// process appended to `log`.
    pub fn spawn_logged<I, S>(
        executable: &Path,
        count: usize,
        args: I,
        envs: &[(String, String)],
        log: &std::fs::File,
    ) -> std::io::Result<WorkerProcesses>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::spawn_with(executable, count, args, envs, Output::File(log))
    }

    fn spawn_with<I, S>(
        executable: &Path,
        count: usize,
        args: I,
        envs: &[(String, String)],
        output: Output<'_>,
    ) -> std::io::Result<WorkerProcesses>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut children = Vec::with_capacity(count);
        for _ in 0..count {
            let mut command = Command::new(executable);
            command
                .arg("worker")
                .args(&args)
                .envs(envs.iter().map(|(k, v)| (k, v)))
                .kill_on_drop(true);
            match output {
                Output::Inherit => {}
                Output::Discard => {
                    command
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null());
                }
                Output::File(log) => {
                    command.stdout(log.try_clone()?).stderr(log.try_clone()?);
                }
            }
            children.push(command.spawn()?);
        }
        Ok(WorkerProcesses { children })
    }

    /// Workers still running (exited ones are reaped).
    pub fn running(&mut self) -> usize {
        self.children
            .iter_mut()
            .map(|child| matches!(child.try_wait(), Ok(None)))
            .filter(|running| *running)
            .count()
    }

    /// SIGTERM every worker still running: each stops consuming, finishes or hands back what it
    /// holds and gives its lease back. [`WorkerProcesses::wait`] then collects them.
    pub fn terminate(&self) -> std::io::Result<()> {
        for pid in self.children.iter().filter_map(Child::id) {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status()?;
            // A worker that exited in between has nothing left to stop.
            if !status.success() && std::fs::metadata(format!("/proc/{pid}")).is_ok() {
                return Err(std::io::Error::other(format!(
                    "could not send SIGTERM to worker process {pid}"
                )));
            }
        }
        Ok(())
    }

    /// Process ids, in start order (`None` once a process was waited for).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.children.iter().map(Child::id).collect()
    }

    /// SIGKILL worker `index` (no clean shutdown: its lease expires, its unacked messages go
    /// back to the queue) and reap it.
    pub async fn kill(&mut self, index: usize) -> std::io::Result<()> {
        match self.children.get_mut(index) {
            Some(child) => child.kill().await,
            None => Err(std::io::Error::other(format!(
                "no worker {index} among {}",
                self.children.len()
            ))),
        }
    }

    /// Wait for every worker to exit, at most `timeout` in all; the ones still running then are
    /// killed and reported as an error naming them.
    pub async fn wait(mut self, timeout: Duration) -> std::io::Result<Vec<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let mut statuses = Vec::with_capacity(self.children.len());
        for (index, child) in self.children.iter_mut().enumerate() {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(status) => statuses.push(status?),
                Err(_) => {
                    let running = self.children.len() - index;
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{running} worker(s) still running after {timeout:?}; killed"),
                    ));
                }
            }
        }
        Ok(statuses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_splits_the_quota_and_the_burst_evenly() {
        let share = share_of(30.0, 10, 3, 20.0);
        assert_eq!(share.requests_per_second, 10.0);
        assert_eq!(share.burst, 3);
        assert_eq!(share_of(30.0, 10, 1, 0.0).requests_per_second, 30.0);
    }

    #[test]
    fn the_tenants_burst_is_small_while_its_rate_is_learnt_below_the_quota() {
        // The whole quota: the configured burst, half a second of it.
        assert_eq!(tenant_burst(50, 100.0, 100.0), 50);
        // Cut to half the quota: a tenth of a second of that, not half the burst.
        assert_eq!(tenant_burst(50, 50.0, 100.0), 5);
        // A burst already smaller stays as it is.
        assert_eq!(tenant_burst(2, 50.0, 100.0), 1);
    }

    #[test]
    fn a_joiner_waits_for_the_others_to_give_up_their_share() {
        // Two workers at half each: the third gets a tenth of its fair third, not a third.
        let joining = share_of(30.0, 10, 3, 30.0);
        assert_eq!(joining.requests_per_second, 1.0);
        assert_eq!(joining.burst, 1);
        // Once the others lowered theirs to a third, it gets its third.
        assert_eq!(share_of(30.0, 10, 3, 20.0).requests_per_second, 10.0);
    }

    #[test]
    fn after_a_leave_the_rest_grow_to_their_new_fair_part() {
        assert_eq!(share_of(30.0, 10, 2, 10.0).requests_per_second, 15.0);
    }
}
