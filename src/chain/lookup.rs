//! A walk's reputation lookups, tried level by level: a lookup another walk of this worker has
//! in flight, the cache (one query for all of them), with `share_lookups` another worker that
//! claimed the lookup, and last Graph; what Graph answered is saved to the cache in one
//! statement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use futures::StreamExt;

use super::{ChainError, Chainer, Walk};
use crate::enrich::{mapping, Reputation};
use crate::graph::GraphClient;
use crate::in_flight::{self, Lead};
use crate::lane::Lane;
use crate::model::{CachedLeads, LookupClaims, StorageError, WalkCache};
use crate::progress::{self, point};

/// How long a worker's claim on a lookup holds other workers back: long enough for a throttled
/// lookup with its retries; if the worker died, the others wait at most this long before
/// asking themselves.
const CLAIM_HOLD: Duration = Duration::from_secs(30);

/// How often a worker waiting for another worker's lookup looks in the cache.
const CLAIM_POLL: Duration = Duration::from_millis(200);

/// A host this walk looks up itself, with the lead of its lookup when shared in the worker.
type Pending = in_flight::Own<Reputation>;

/// A host a walk asked Graph about, what came back, and the lead of its lookup when shared.
type Asked = (String, Result<Lookup, ChainError>, Option<Lead<Reputation>>);

/// How one reputation was obtained from Graph.
enum Lookup {
    Fetched(Reputation),
    OverBudget,
}

/// What a walk's rounds of lookups came to.
#[derive(Default)]
struct Settled {
    /// Reputations to record in the walk; `None` for hosts left unasked (over budget).
    fetched: Vec<(String, Option<Reputation>)>,
    over_budget: usize,
    failed: Option<ChainError>,
}

/// The hosts of one level's lookups after the claims: this worker's to ask, another worker's
/// to wait for, and the claims to release once this worker's are saved.
struct Claimed {
    ours: Vec<Pending>,
    theirs: Vec<Pending>,
    claims: LookupClaims,
}

/// Asking Graph within the walk's request budget, over all rounds of one level.
struct Asking {
    graph: GraphClient,
    budget: u64,
    /// Requests before this level; the tracked count is higher when retries happened.
    base: u64,
    /// Requests this level started. The futures are polled by one task, so the check and the
    /// increment in [`Asking::reputation`] are not interleaved with another future's.
    started: AtomicU64,
    concurrency: usize,
}

impl Asking {
    /// The reputation of `key` from Graph, unless the walk's budget is spent.
    async fn reputation(&self, key: &str) -> Result<Lookup, ChainError> {
        let spent = self
            .graph
            .requests()
            .max(self.base + self.started.load(Ordering::Relaxed));
        if spent >= self.budget {
            return Ok(Lookup::OverBudget);
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        Ok(Lookup::Fetched(match self.graph.reputation(key).await? {
            Some(record) => mapping::reputation(&record),
            // Unknown to MDTI: cached as an empty reputation so it is not asked again.
            None => Reputation::default(),
        }))
    }

    /// Ask Graph about each of `pending`, each answering its followers as soon as it is back.
    /// A lookup that fails still runs the others to their end, so that no lead is dropped
    /// early for nothing.
    async fn ask(&self, pending: Vec<Pending>) -> Vec<Asked> {
        futures::stream::iter(pending)
            .map(|(key, lead)| async {
                let lookup = self.reputation(&key).await;
                if let (Some(lead), Ok(Lookup::Fetched(reputation))) = (&lead, &lookup) {
                    lead.answer(reputation.clone());
                }
                (key, lookup, lead)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }
}

impl Walk {
    /// `reputation` was found for `key` without this walk asking Graph.
    fn found(&mut self, key: String, reputation: Reputation, lead: Option<&Lead<Reputation>>) {
        if let Some(lead) = lead {
            lead.answer(reputation.clone());
        }
        self.cache_hits += 1;
        self.reputations.insert(key, Some(reputation));
    }

    /// Of `keys`, each host once that this walk has no reputation for yet.
    fn unknown(&self, keys: Vec<String>) -> Vec<String> {
        let mut seen = HashSet::new();
        keys.into_iter()
            .filter(|k| !self.reputations.contains_key(k) && seen.insert(k.clone()))
            .collect()
    }
}

impl Chainer {
    /// The reputation of each host of `keys` not known to this walk yet; see the module
    /// documentation. This walk's own lookups go first, and are saved (their claims released)
    /// before it waits for anyone else's: another worker may be waiting for them, and others'
    /// lookups never wait on a walk's followers, so walks following each other cannot
    /// deadlock. What the others give up on, this walk asks itself.
    pub(super) async fn reputations(
        &self,
        walk: &mut Walk,
        keys: Vec<String>,
    ) -> Result<(), ChainError> {
        let keys = walk.unknown(keys);
        if keys.is_empty() {
            return Ok(());
        }
        let in_flight = self.in_flight.as_ref().map(|f| &f.reputations);
        let (leads, follows) = in_flight::split(in_flight, keys);
        let leads = self.read_cache(walk, leads).await;
        let claimed = self.claim_lookups(leads).await;
        let asking = Asking {
            graph: walk.graph.clone(),
            budget: self.settings.request_budget,
            base: walk.graph.requests(),
            started: AtomicU64::new(0),
            concurrency: self.settings.concurrency.max(1),
        };
        let mut settled = Settled::default();
        let own = asking.ask(claimed.ours).await;
        self.settle(&mut settled, own, claimed.claims).await;

        let released = follow_other_walks(walk, follows).await;
        let mut unanswered = self.follow_other_workers(walk, claimed.theirs).await;
        unanswered.extend(released);
        let rest = asking.ask(unanswered).await;
        self.settle(&mut settled, rest, LookupClaims::default())
            .await;
        record(walk, settled, asking.budget)
    }

    /// Take the reputations (and fanouts) the cache holds for `leads`, in one query; returns
    /// the hosts it does not hold. An unreadable cache only logs: those hosts are asked of
    /// Graph.
    async fn read_cache(&self, walk: &mut Walk, leads: Vec<Pending>) -> Vec<Pending> {
        let Some(cache) = self.cache.as_ref().filter(|_| !leads.is_empty()) else {
            return leads;
        };
        let keys: Vec<String> = leads.iter().map(|(key, _)| key.clone()).collect();
        let CachedLeads {
            reputations: mut cached,
            fanouts,
        } = match self.cached_leads(cache.as_ref(), &keys).await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "reputation cache unreadable; asking Graph");
                return leads;
            }
        };
        walk.cached_fanouts(fanouts);
        let mut missing = Vec::new();
        for (key, lead) in leads {
            match cached.remove(&key) {
                Some(reputation) => walk.found(key, reputation, lead.as_ref()),
                None => missing.push((key, lead)),
            }
        }
        missing
    }

    /// The cached reputations of `keys`, and their cached fanouts when sharing is measured:
    /// measuring it will want the fanouts of the leads that link an actor, and reads again
    /// only those not found here (one statement fewer when all were; a miss is read again,
    /// since another walk may have measured it meanwhile).
    async fn cached_leads(
        &self,
        cache: &dyn WalkCache,
        keys: &[String],
    ) -> Result<CachedLeads, StorageError> {
        let ttl = self.settings.reputation_ttl;
        if self.settings.measure_sharing {
            return cache.cached_leads(keys, ttl).await;
        }
        Ok(CachedLeads {
            reputations: cache.cached_reputations(keys, ttl).await?,
            fanouts: HashMap::new(),
        })
    }

    /// With shared lookups, claim `leads` for this worker: those another worker is asking
    /// about are waited for instead. Unavailable claims only log: this worker asks them all.
    async fn claim_lookups(&self, leads: Vec<Pending>) -> Claimed {
        let unclaimed = |leads| Claimed {
            ours: leads,
            theirs: Vec::new(),
            claims: LookupClaims::default(),
        };
        let Some(cache) = self.cache.as_ref() else {
            return unclaimed(leads);
        };
        if !self.shares_lookups() || leads.is_empty() {
            return unclaimed(leads);
        }
        let keys: Vec<String> = leads.iter().map(|(key, _)| key.clone()).collect();
        match cache.claim_reputation_lookups(&keys, CLAIM_HOLD).await {
            Ok(claims) => {
                let (ours, theirs) = leads
                    .into_iter()
                    .partition(|(key, _)| claims.hosts.contains(key));
                Claimed {
                    ours,
                    theirs,
                    claims,
                }
            }
            Err(error) => {
                tracing::warn!(%error, "reputation claims unavailable; asking Graph");
                unclaimed(leads)
            }
        }
    }

    /// Wait for the lookups of `remote`, which other workers hold: what they answer arrives in
    /// the cache; returns what they gave up on, for this walk to ask itself.
    async fn follow_other_workers(&self, walk: &mut Walk, remote: Vec<Pending>) -> Vec<Pending> {
        let Some(cache) = self.cache.as_ref().filter(|_| !remote.is_empty()) else {
            return Vec::new();
        };
        let keys: Vec<String> = remote.iter().map(|(key, _)| key.clone()).collect();
        let waiting = self.await_other_workers(cache.as_ref(), keys);
        let mut arrived = progress::wait_at(point::OTHER_WORKER, waiting).await;
        let mut unanswered = Vec::new();
        for (key, lead) in remote {
            match arrived.remove(&key) {
                Some(reputation) => walk.found(key, reputation, lead.as_ref()),
                None => unanswered.push((key, lead)),
            }
        }
        unanswered
    }

    /// Take in a round of lookups: save what Graph answered to the cache, then close their
    /// lookups in this worker (`asked`'s leads) and release `claimed` for the other workers.
    async fn settle(&self, settled: &mut Settled, asked: Vec<Asked>, claimed: LookupClaims) {
        let mut fetched = Vec::new();
        let mut closing = Vec::new();
        for (key, lookup, lead) in asked {
            closing.extend(lead);
            match lookup {
                Ok(Lookup::Fetched(reputation)) => fetched.push((key, reputation)),
                Ok(Lookup::OverBudget) => {
                    settled.over_budget += 1;
                    settled.fetched.push((key, None));
                }
                Err(error) => {
                    settled.failed.get_or_insert(error);
                }
            }
        }
        if let Some(cache) = &self.cache {
            if let Err(error) = cache.save_reputations(&fetched).await {
                tracing::warn!(%error, "could not cache {} reputation(s)", fetched.len());
            }
            if !claimed.hosts.is_empty() {
                if let Err(error) = cache.release_reputation_lookups(&claimed).await {
                    tracing::warn!(%error, "could not release {} reputation claim(s); they run out by themselves", claimed.hosts.len());
                }
            }
        }
        // What was fetched is in the cache now: the lookups can close.
        drop(closing);
        settled
            .fetched
            .extend(fetched.into_iter().map(|(key, r)| (key, Some(r))));
    }

    /// Whether this walk shares its lookups with other workers: asked for, possible (the cache
    /// is where another worker's answer arrives, so it must be read), and a bulk walk's. A live
    /// walk neither claims nor waits for claims: the worker holding one may be asking for a bulk
    /// walk, behind the whole backlog's requests.
    fn shares_lookups(&self) -> bool {
        self.settings.share_lookups
            && !self.settings.reputation_ttl.is_zero()
            && Lane::current() == Lane::Bulk
    }

    /// Wait for the answers of lookups other workers hold to arrive in the cache: until each
    /// is there, its claim is gone (its holder gave up), or [`CLAIM_HOLD`] passed. Returns the
    /// answers that arrived.
    async fn await_other_workers(
        &self,
        cache: &dyn WalkCache,
        mut waiting: Vec<String>,
    ) -> HashMap<String, Reputation> {
        let deadline = tokio::time::Instant::now() + CLAIM_HOLD;
        let mut arrived = HashMap::new();
        while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(CLAIM_POLL).await;
            // Claims first, then the cache: a holder saves its answer before it releases its
            // claim, so a host found unclaimed here is either in the cache read next or was
            // given up on.
            let held = match cache.held_reputation_lookups(&waiting).await {
                Ok(held) => held,
                Err(error) => {
                    tracing::warn!(%error, "reputation claims unreadable; asking Graph");
                    break;
                }
            };
            let mut cached = match cache
                .cached_reputations(&waiting, self.settings.reputation_ttl)
                .await
            {
                Ok(cached) => cached,
                Err(error) => {
                    tracing::warn!(%error, "reputation cache unreadable; asking Graph");
                    break;
                }
            };
            waiting.retain(|key| match cached.remove(key) {
                Some(reputation) => {
                    arrived.insert(key.clone(), reputation);
                    false
                }
                None => held.contains(key),
            });
        }
        arrived
    }
}

/// Wait for the lookups this walk follows in other walks of the worker; returns those whose
/// lead gave up, for this walk to ask itself.
async fn follow_other_walks(
    walk: &mut Walk,
    follows: Vec<in_flight::Following<Reputation>>,
) -> Vec<Pending> {
    let (answered, released) = in_flight::follow(follows, point::OTHER_WALK).await;
    for (key, reputation) in answered {
        walk.found(key, reputation, None);
    }
    released
}

/// Record what the rounds of lookups came to in the walk: a failure fails it; hosts left
/// unasked are noted as cut by the budget.
fn record(walk: &mut Walk, settled: Settled, budget: u64) -> Result<(), ChainError> {
    if let Some(error) = settled.failed {
        return Err(error);
    }
    for (key, reputation) in settled.fetched {
        walk.reputations.insert(key, reputation);
    }
    if settled.over_budget > 0 {
        walk.budget_spent = true;
        walk.truncated.push(format!(
            "request budget ({budget}) reached: {} host(s) left without a reputation",
            settled.over_budget
        ));
    }
    Ok(())
}
