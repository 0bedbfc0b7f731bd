//! Threat infrastructure chaining and actor attribution: from one IOC (IP or name), page its
//! passive DNS, ask the reputation of the IOC and of every counterpart, and read the threat actor
//! groups out of the reputation rules and the intelligence profiles' indicators.
//!
//! This is the "MDTI Actor Lookup" algorithm (all passive DNS of the IOC, a reputation request per
//! artifact found, the `Cyber Threat Intelligence` rule naming the group) with what makes it
//! affordable at volume:
//!
//! - counterparts are canonicalised and deduplicated before any reputation request (the seed asks
//!   once per record, duplicates included), the IOC itself and non-public addresses are skipped;
//! - reputations come from the Postgres cache ([`WalkCache::cached_reputations`], TTL
//!   [`ChainSettings::reputation_ttl`]) before Graph, and what Graph answers is saved there, so
//!   IOCs sharing infrastructure pay for a shared counterpart once per TTL; a host Graph does not
//!   know (404) is cached as an empty reputation so it is not asked again either;
//! - reputations are fetched [`ChainSettings::concurrency`] at a time; the client's one shared rate
//!   limiter still paces every request (this module adds none);
//! - intelligence profiles are synced into Postgres by [`sync_profiles`] and matched locally
//!   ([`ProfileIndex`]): no Graph request per IOC.
//!
//! Decisions where the documentation is silent:
//!
//! - The [`ChainSettings::since`] window is applied to each record's `lastSeenDateTime` on our
//!   side (Graph documents no `$filter` on `passiveDns`); a record without a usable
//!   `lastSeenDateTime` is kept, since it cannot be shown to be outside the window.
//! - Depth counts passive DNS hops: depth 1 (the seed) walks the IOC's passive DNS only; depth 2
//!   also walks every depth-1 counterpart's, and so on, each host at most once (a visited set, so
//!   cycles end). Level by level: a level's reputations are asked before the next level's passive
//!   DNS, so a budget cut leaves the nearest infrastructure attributed.
//! - The request budget ([`ChainSettings::request_budget`], per walk) counts requests as the
//!   client counts them ([`GraphClient::tracked`]): pages, reputations and their retries. A
//!   passive DNS walk is capped to the pages the budget has left; reputations beyond the budget
//!   are not asked. Either cut, a page cap and [`ChainSettings::max_artifacts`] are recorded in
//!   [`ChainFindings::truncated`]. Retries already under way may overshoot the budget slightly.
//! - A Graph failure (after the client's retries) fails the walk: the caller retries the IOC whole,
//!   and what was already fetched is in the cache. A cache read or write failure only logs: the
//!   walk falls back to Graph.
//! - A group named by a rule that matches a profile's title or one of its aliases
//!   (case-insensitively) is reported under the profile's title, with its id and aliases, so
//!   `APT28` and `Forest Blizzard` on the same artifact are one hit.

mod attribution;
pub mod confidence;
mod event;
mod findings;
mod lookup;
mod names;
mod profiles;
pub mod retro;
mod sharing;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::{Deserialize, Serialize};

use crate::in_flight::InFlight;
pub use crate::model::{
    ActorHit, Attribution, AttributionLink, Band, Evidence, Factor, Fanout, IntelProfileRecord,
    ProfileIndicatorRecord, EVENT_ARTIFACTS,
};
pub use attribution::{article_id, cti_actor_names, CTI_RULE, INTEL_ARTICLE_RULE};
pub use event::attribution_event;
pub use findings::event_routing_key;
pub use names::CanonicalNames;
pub use profiles::{sync_profiles, sync_profiles_with, ProfileIndex, ProfileInfo, SyncSummary};

use crate::enrich::Reputation;
use crate::graph::model::{ArtifactType, EntityRef, PassiveDnsRecord};
use crate::graph::{Collection, GraphClient, GraphError, PageLimits};
use crate::model::{StorageError, WalkCache};
use crate::observable::{normalise, NormaliseOptions, Observable};

/// How far and how expensively one walk may go.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainSettings {
    /// Passive DNS hops from the IOC; 1 is the seed's walk, 0 asks the IOC's reputation only.
    pub depth: u32,
    /// Paging of each passive DNS walk; by default every page, 1,000 records a page.
    pub page_limits: PageLimits,
    /// Only records last seen at or after this instant (records without a last-seen time are
    /// kept).
    pub since: Option<DateTime<Utc>>,
    /// At most this many distinct counterparts per walk (the IOC not counted).
    pub max_artifacts: usize,
    /// At most this many Graph requests per walk, retries included.
    pub request_budget: u64,
    /// Cached reputations younger than this are used instead of asking Graph; zero disables the
    /// cache reads (what Graph answers is still saved).
    pub reputation_ttl: Duration,
    /// Reputation lookups in flight per walk.
    pub concurrency: usize,
    /// Share lookups in flight with the other workers on the same database, through claims
    /// in Postgres (see [`WalkCache::claim_reputation_lookups`]): a worker waits for the answer of
    /// a host another worker is asking about instead of asking too. Costs two statements per
    /// walk level, so it is for workers sharing one tenant's quota.
    pub share_lookups: bool,
    /// Read one page of the passive DNS of each counterpart that links an actor (unless the
    /// walk read it already, or the cache has it) to measure how shared it is; see
    /// [`confidence`]. Off, such links are scored as unmeasured.
    pub measure_sharing: bool,
    /// Attributions below this confidence are stored but not announced.
    pub min_event_confidence: u8,
}

impl Default for ChainSettings {
    fn default() -> Self {
        ChainSettings {
            depth: 1,
            page_limits: PageLimits {
                page_size: Some(1000),
                max_pages: None,
            },
            since: None,
            max_artifacts: 500,
            request_budget: 2000,
            reputation_ttl: Duration::from_secs(24 * 3600),
            concurrency: 8,
            share_lookups: false,
            measure_sharing: true,
            min_event_confidence: Band::MEDIUM,
        }
    }
}

/// Why a walk or a profile sync failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Store(#[from] StorageError),
}

impl ChainError {
    /// Whether the same work may succeed later (throttling, 5xx, network, database down).
    pub fn is_transient(&self) -> bool {
        match self {
            ChainError::Graph(error) => error.is_transient(),
            ChainError::Store(error) => error.is_transient(),
        }
    }
}

/// An intel article rule found on an artifact, whether or not an actor was named there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticleRef {
    pub artifact: String,
    pub path: Vec<String>,
    pub title: Option<String>,
    pub article_id: Option<String>,
    pub url: Option<String>,
}

/// What one walk found and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainFindings {
    pub ioc: Observable,
    /// Sorted by actor (case-insensitively), then by path length, then by artifact.
    pub hits: Vec<ActorHit>,
    /// Every intel article rule seen, on any artifact of the walk.
    pub articles: Vec<ArticleRef>,
    /// Distinct counterparts found (all depths, the IOC not counted).
    pub counterparts: usize,
    /// Passive DNS pages read.
    pub pages: u32,
    /// Of [`ChainFindings::pages`], first pages read only to measure how shared an attributed
    /// counterpart is (see [`confidence`]).
    pub sharing_pages: u32,
    /// Graph requests this walk sent, retries included.
    pub graph_requests: u64,
    /// Reputations read from the Postgres cache, or from a lookup another walk had in flight,
    /// instead of asked of Graph by this walk.
    pub reputation_cache_hits: u64,
    /// Why the walk is incomplete, if it is: budget, page cap, artifact cap.
    pub truncated: Vec<String>,
}

/// One host of the walk: how it was reached.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) path: Vec<String>,
    pub(crate) first_seen: Option<DateTime<Utc>>,
    pub(crate) last_seen: Option<DateTime<Utc>>,
}

impl Node {
    fn parent(&self) -> Option<&str> {
        let n = self.path.len();
        (n >= 2).then(|| self.path[n - 2].as_str())
    }

    fn widen(&mut self, record: &PassiveDnsRecord) {
        self.first_seen = earliest(self.first_seen, record.first_seen_date_time);
        self.last_seen = latest(self.last_seen, record.last_seen_date_time);
    }
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Runs walks. Cheap to clone; clones share the client, the cache and the profile index.
#[derive(Clone)]
pub struct Chainer {
    graph: GraphClient,
    cache: Option<Arc<dyn WalkCache>>,
    settings: ChainSettings,
    profiles: Arc<ProfileIndex>,
    in_flight: Option<InFlightLookups>,
    names: CanonicalNames,
}

/// The lookups of one worker's walks in flight, followed by its other walks meanwhile (see
/// [`InFlight`]): counterparts' reputations, and the pages that measure how shared they are.
/// Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct InFlightLookups {
    reputations: InFlight<Reputation>,
    fanouts: InFlight<Fanout>,
}

impl InFlightLookups {
    /// Whether no lookup is open.
    pub fn is_empty(&self) -> bool {
        self.reputations.is_empty() && self.fanouts.is_empty()
    }
}

/// What the enrichers already read of the IOC, so the walk does not ask Graph again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    pub passive_dns: Option<&'a Collection<PassiveDnsRecord>>,
    pub reputation: Option<&'a Reputation>,
}

/// The mutable state of one walk.
struct Walk {
    graph: GraphClient,
    nodes: HashMap<String, Node>,
    /// Nodes in the order they were found (the IOC first).
    order: Vec<String>,
    /// Hosts whose passive DNS was walked.
    visited: HashSet<String>,
    /// Reputations of this walk, `None` when the budget left it unasked.
    reputations: HashMap<String, Option<Reputation>>,
    pages: u32,
    sharing_pages: u32,
    cache_hits: u64,
    truncated: Vec<String>,
    /// Counterparts left out by [`ChainSettings::max_artifacts`].
    dropped: Dropped,
    budget_spent: bool,
    /// How many hosts each walked or measured host's passive DNS names.
    fanout: HashMap<String, Fanout>,
    /// The distinct hosts the passive DNS being read names, up to [`sharing::COUNTED`].
    counting: sharing::Counter,
}

/// The most distinct left-out counterparts a walk counts exactly; see [`Dropped`].
const DROPPED_COUNTED: usize = 4096;

/// The distinct counterparts a walk left out past [`ChainSettings::max_artifacts`], for the
/// report's truncation note, which is all they are used for. Counting distinct names exactly
/// takes memory in proportion to how many there are (a host with 100,000 records can name
/// 100,000), so at most [`DROPPED_COUNTED`] names are kept: up to there the note gives the
/// exact number, as it always did; past it the note says "at least" that many, which stays
/// true whatever the real number is. A record count or an estimate would be cheaper, but the
/// first counts repeats and the second could claim more than there were.
#[derive(Debug, Default)]
struct Dropped {
    names: HashSet<String>,
    /// A name not counted because `names` was full: the real number is higher.
    more: bool,
}

impl Walk {
    /// A walk from `root` that knows nothing yet but `reputation`, the root's, if given.
    fn new(graph: GraphClient, root: &str, reputation: Option<&Reputation>) -> Walk {
        let mut walk = Walk {
            graph,
            nodes: HashMap::from_iter([(
                root.to_owned(),
                Node {
                    path: vec![root.to_owned()],
                    first_seen: None,
                    last_seen: None,
                },
            )]),
            order: vec![root.to_owned()],
            visited: HashSet::new(),
            reputations: HashMap::new(),
            pages: 0,
            sharing_pages: 0,
            cache_hits: 0,
            truncated: Vec::new(),
            dropped: Dropped::default(),
            budget_spent: false,
            fanout: HashMap::new(),
            counting: sharing::Counter::default(),
        };
        if let Some(reputation) = reputation {
            walk.reputations
                .insert(root.to_owned(), Some(reputation.clone()));
        }
        walk
    }

    /// Fanouts the cache held for this walk's leads; a host whose passive DNS this walk read
    /// keeps the fanout it counted.
    fn cached_fanouts(&mut self, fanouts: HashMap<String, Fanout>) {
        for (host, fanout) in fanouts {
            self.fanout.entry(host).or_insert(fanout);
        }
    }

    /// The passive DNS of `parent` was read: what [`Walk::counting`] counted is its fanout.
    fn counted(&mut self, parent: &str, cut: bool) {
        let fanout = self.counting.fanout(cut);
        self.fanout.insert(parent.to_owned(), fanout);
    }

    /// How shared the last hop to `hit`'s artifact is: the wider of its two ends, as far as
    /// measured. Nothing for the IOC itself.
    fn link_sharing(&self, hit: &ActorHit) -> Option<Fanout> {
        let n = hit.path.len();
        if n < 2 {
            return None;
        }
        let parent = self.fanout.get(&hit.path[n - 2]).copied();
        Fanout::wider(parent, self.fanout.get(&hit.artifact).copied())
    }
}

impl Dropped {
    fn insert(&mut self, name: String) {
        if self.names.len() < DROPPED_COUNTED {
            self.names.insert(name);
        } else if !self.names.contains(&name) {
            self.more = true;
        }
    }

    fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// "12" or "at least 4096".
    fn count(&self) -> String {
        if self.more {
            format!("at least {}", self.names.len())
        } else {
            self.names.len().to_string()
        }
    }
}

impl Chainer {
    /// A chainer without profiles; see [`Chainer::with_profiles`]. Without a cache the walk
    /// asks Graph for every reputation (still once per host per walk): give the worker's store,
    /// or a [`crate::model::MemoryCache`] where there is no database.
    pub fn new(
        graph: GraphClient,
        cache: Option<Arc<dyn WalkCache>>,
        settings: ChainSettings,
    ) -> Chainer {
        Chainer {
            graph,
            cache,
            settings,
            profiles: Arc::new(ProfileIndex::default()),
            in_flight: None,
            names: CanonicalNames::default(),
        }
    }

    /// Take counterparts' canonical names from `names`, shared with other walks, rather than
    /// from this walk's own (see [`CanonicalNames`]).
    pub fn with_names(mut self, names: CanonicalNames) -> Chainer {
        self.names = names;
        self
    }

    /// Join the lookups other walks sharing `in_flight` have in flight, and let them join this
    /// walk's (see [`InFlightLookups`]).
    pub fn with_in_flight(mut self, in_flight: InFlightLookups) -> Chainer {
        self.in_flight = Some(in_flight);
        self
    }

    /// Match artifacts against these profiles (load them with [`ProfileIndex::load`]).
    pub fn with_profiles(mut self, profiles: Arc<ProfileIndex>) -> Chainer {
        self.profiles = profiles;
        self
    }

    pub fn settings(&self) -> &ChainSettings {
        &self.settings
    }

    pub fn profiles(&self) -> &Arc<ProfileIndex> {
        &self.profiles
    }

    /// Walk from `ioc` and attribute what was found; see the module documentation.
    pub async fn walk(&self, ioc: &Observable) -> Result<ChainFindings, ChainError> {
        self.walk_from(ioc, Known::default()).await
    }

    /// [`walk`](Self::walk), reusing what the enrichers already read of the IOC: its passive DNS
    /// when that read was complete (a cut one is read again in full), and its reputation.
    pub async fn walk_from(
        &self,
        ioc: &Observable,
        known: Known<'_>,
    ) -> Result<ChainFindings, ChainError> {
        let root = ioc.value().to_owned();
        let mut walk = Walk::new(self.graph.tracked(), &root, known.reputation);
        let prefetched = known.passive_dns.filter(|c| !c.truncated);
        self.walk_levels(&mut walk, &root, prefetched).await?;
        let (mut hits, articles) =
            attribution::attribute(&walk.order, &walk.nodes, &walk.reputations, &self.profiles);
        self.measure_sharing(&mut walk, &hits).await?;
        attribution::score(&mut hits, &walk.reputations, |hit| walk.link_sharing(hit));
        Ok(ChainFindings {
            ioc: ioc.clone(),
            hits,
            articles,
            counterparts: walk.nodes.len() - 1,
            pages: walk.pages,
            sharing_pages: walk.sharing_pages,
            graph_requests: walk.graph.requests(),
            reputation_cache_hits: walk.cache_hits,
            truncated: walk.truncated,
        })
    }

    /// Walk level by level from `root`: each level's passive DNS, then its reputations, until
    /// the depth, the budget or the counterparts run out. `prefetched` is the root's passive DNS
    /// when the enrichers read all of it.
    async fn walk_levels(
        &self,
        walk: &mut Walk,
        root: &str,
        prefetched: Option<&Collection<PassiveDnsRecord>>,
    ) -> Result<(), ChainError> {
        let mut ask = vec![root.to_owned()];
        let mut frontier = vec![root.to_owned()];
        for _level in 0..self.settings.depth {
            let mut next = Vec::new();
            for parent in &frontier {
                if walk.budget_spent {
                    break;
                }
                let known = prefetched.filter(|_| *parent == root);
                next.extend(self.expand(walk, parent, known).await?);
            }
            ask.extend(next.iter().cloned());
            self.reputations(walk, std::mem::take(&mut ask)).await?;
            if next.is_empty() || walk.budget_spent {
                break;
            }
            frontier = next;
        }
        if !ask.is_empty() {
            // Depth 0: the IOC's reputation only.
            self.reputations(walk, ask).await?;
        }
        if !walk.dropped.is_empty() {
            walk.truncated.push(format!(
                "max_artifacts ({}) reached: {} further counterpart(s) left out",
                self.settings.max_artifacts,
                walk.dropped.count()
            ));
        }
        Ok(())
    }

    /// Page the passive DNS of `parent` (unless `known` already holds all of it) and add its
    /// new counterparts; returns them.
    async fn expand(
        &self,
        walk: &mut Walk,
        parent: &str,
        known: Option<&Collection<PassiveDnsRecord>>,
    ) -> Result<Vec<String>, ChainError> {
        if !walk.visited.insert(parent.to_owned()) {
            return Ok(Vec::new());
        }
        walk.counting = sharing::Counter::default();
        if let Some(known) = known {
            // Already in memory: the enricher read it whole and keeps it for its own mapping.
            let added = self.add_counterparts(walk, parent, &known.items);
            walk.counted(parent, false);
            return Ok(added);
        }
        let budget = self.settings.request_budget;
        let left = budget.saturating_sub(walk.graph.requests());
        if left == 0 {
            walk.budget_spent = true;
            walk.truncated.push(format!(
                "request budget ({budget}) reached before the passive DNS of {parent}"
            ));
            return Ok(Vec::new());
        }
        let mut limits = self.settings.page_limits;
        let budget_pages = u32::try_from(left).unwrap_or(u32::MAX);
        let budget_caps = limits.max_pages.is_none_or(|cap| budget_pages < cap);
        if budget_caps {
            limits.max_pages = Some(budget_pages);
        }
        // A page at a time: each page's records are taken in and dropped before the next page
        // is asked for, so a host with 100,000 records costs one page of memory, not 100,000
        // records. What the walk keeps of them is bounded by max_artifacts (nodes) and
        // DROPPED_COUNTED (the left-out names). A page that fails fails the walk, as before;
        // what earlier pages added dies with the walk.
        let graph = walk.graph.clone();
        let mut added = Vec::new();
        let paged = graph
            .passive_dns_pages(parent, limits, |page| {
                added.extend(self.add_counterparts(walk, parent, &page));
            })
            .await?;
        walk.pages += paged.pages;
        walk.counted(parent, paged.truncated);
        if paged.truncated {
            if budget_caps {
                walk.budget_spent = true;
                walk.truncated.push(format!(
                    "request budget ({budget}) cut the passive DNS of {parent} after {} page(s)",
                    paged.pages
                ));
            } else {
                walk.truncated.push(format!(
                    "page cap cut the passive DNS of {parent} after {} page(s)",
                    paged.pages
                ));
            }
        }
        Ok(added)
    }

    /// Add the counterparts `records` name under `parent`; returns the new ones. Called once per
    /// page (or once with a whole collection the enricher already read): what it keeps does not
    /// depend on how the records are split, since each record is taken in on its own, in order.
    fn add_counterparts(
        &self,
        walk: &mut Walk,
        parent: &str,
        records: &[PassiveDnsRecord],
    ) -> Vec<String> {
        let path = walk.nodes[parent].path.clone();
        let mut added = Vec::new();
        for record in records {
            let Some(artifact) = counterpart(record.artifact.as_ref(), &self.names) else {
                continue;
            };
            // Every name counts towards how shared the parent is, however old its record.
            walk.counting.insert(&artifact);
            if let (Some(since), Some(last)) = (self.settings.since, record.last_seen_date_time) {
                if last < since {
                    continue;
                }
            }
            if let Some(node) = walk.nodes.get_mut(&artifact) {
                if node.parent() == Some(parent) {
                    node.widen(record);
                }
                continue;
            }
            if walk.nodes.len() > self.settings.max_artifacts {
                walk.dropped.insert(artifact);
                continue;
            }
            let mut node = Node {
                path: path.iter().cloned().chain([artifact.clone()]).collect(),
                first_seen: None,
                last_seen: None,
            };
            node.widen(record);
            walk.nodes.insert(artifact.clone(), node);
            walk.order.push(artifact.clone());
            added.push(artifact);
        }
        added
    }
}

/// The canonical counterpart a passive DNS record's artifact names, if it is a public host
/// worth asking about. An `ipAddress` artifact whose id is not an IP is not trusted.
fn counterpart(artifact: Option<&EntityRef>, names: &CanonicalNames) -> Option<String> {
    let artifact = artifact?;
    let id = artifact.id.as_deref()?.trim();
    if id.is_empty() {
        return None;
    }
    if artifact.artifact_type() == ArtifactType::IpAddress
        && id.parse::<std::net::IpAddr>().is_err()
    {
        return None;
    }
    names.public_host(id)
}

/// The canonical form of an indicator artifact (non-public values allowed): what
/// [`counterpart`] would produce for the same host.
pub(crate) fn canonical_artifact(id: &str) -> Option<String> {
    let options = NormaliseOptions {
        allow_non_public: true,
    };
    match normalise(id, None, &options) {
        Ok(normalised) => Some(normalised.into_observable().value().to_owned()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(id: &str, odata: &str) -> EntityRef {
        EntityRef {
            id: Some(id.into()),
            odata_type: Some(odata.to_owned().into()),
        }
    }

    fn record(id: &str, odata: &str) -> PassiveDnsRecord {
        PassiveDnsRecord {
            artifact: Some(artifact(id, odata)),
            ..PassiveDnsRecord::default()
        }
    }

    #[test]
    fn counterparts_are_canonical_and_public() {
        let ip = "#microsoft.graph.security.ipAddress";
        let host = "#microsoft.graph.security.hostName";
        let names = CanonicalNames::default();
        assert_eq!(
            counterpart(Some(&artifact("20.0.0.1", ip)), &names),
            Some("20.0.0.1".into())
        );
        assert_eq!(
            counterpart(Some(&artifact("CDN-1.Example.NET.", host)), &names),
            Some("cdn-1.example.net".into())
        );
        assert_eq!(counterpart(Some(&artifact("10.0.0.1", ip)), &names), None);
        assert_eq!(
            counterpart(Some(&artifact("not-an-ip.example.com", ip)), &names),
            None
        );
        assert_eq!(counterpart(Some(&artifact("  ", host)), &names), None);
        assert_eq!(
            canonical_artifact("Update-1.Example.COM"),
            Some("update-1.example.com".into())
        );
    }

    #[test]
    fn seen_times_widen() {
        let t = |s: &str| crate::graph::model::parse_time(s);
        let mut node = Node {
            path: vec!["a".into(), "b".into()],
            first_seen: None,
            last_seen: None,
        };
        let mut r = record("b", "");
        r.first_seen_date_time = t("2023-01-01T00:00:00Z");
        r.last_seen_date_time = t("2023-06-01T00:00:00Z");
        node.widen(&r);
        r.first_seen_date_time = t("2022-01-01T00:00:00Z");
        r.last_seen_date_time = None;
        node.widen(&r);
        assert_eq!(node.first_seen, t("2022-01-01T00:00:00Z"));
        assert_eq!(node.last_seen, t("2023-06-01T00:00:00Z"));
        assert_eq!(node.parent(), Some("a"));
    }

    #[test]
    fn default_settings_follow_the_seed() {
        let s = ChainSettings::default();
        assert_eq!(s.depth, 1);
        assert_eq!(s.page_limits.max_pages, None);
        assert_eq!(s.page_limits.page_size, Some(1000));
        assert_eq!(s.max_artifacts, 500);
        assert_eq!(s.request_budget, 2000);
        assert_eq!(s.concurrency, 8);
    }
}
