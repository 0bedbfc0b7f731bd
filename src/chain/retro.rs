//! Matching late intelligence back: a profile sync that brings new indicators is matched
//! against what is already stored, so an observable enriched before the intelligence existed
//! is attributed (and announced) without being published again.
//!
//! For every new indicator artifact, the observables that are it, or whose passive DNS named
//! it (the `passive_dns` extracts), are found by index lookups, at most
//! [`MAX_OBSERVABLES`] per sync. Each one's walk is rebuilt from what is stored (the
//! observable and its one-hop counterparts, their cached reputations and fanouts) and
//! attributed by the same functions as a live walk, then the hits on new artifacts are written
//! with their attributions, which owe events as any other. No Graph request is made: what the
//! cache does not hold counts as unknown (no reputation, sharing unmeasured), and the
//! resolution window is not stored, so the time factor does not apply to these hits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use foldhash::{HashMap, HashSet};
use serde::{Deserialize, Serialize};

use super::attribution;
use super::{
    sync_profiles, ActorHit, ChainError, ChainSettings, Fanout, Node, ProfileIndex, SyncSummary,
};
use crate::graph::GraphClient;
use crate::model::{CachedLeads, ProfileStore, StorageError, StoredLinks, WalkCache, WalkHits};

/// Observables matched back per sync, at most: a sync bringing an indicator half the stored
/// observables resolved to does bounded work, and says it was cut.
pub const MAX_OBSERVABLES: usize = 10_000;

/// Observables rebuilt and written per transaction.
const CHUNK: usize = 200;

/// Cached reputations and fanouts are evidence however old: the TTL that makes a walk ask
/// Graph again does not make what was seen untrue.
const EVIDENCE_AGE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What matching back did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetroSummary {
    /// New indicator artifacts matched.
    pub indicators: usize,
    /// Stored observables linked to them (looked at).
    pub observables: usize,
    /// Hits written.
    pub hits: usize,
    /// Attributions left owed an event.
    pub owed: usize,
    /// More observables were linked than [`MAX_OBSERVABLES`].
    pub truncated: bool,
}

/// Sync the profiles, load the index, and match the new indicators back.
pub async fn sync_and_match<S: ProfileStore + WalkCache>(
    graph: &GraphClient,
    store: &S,
    settings: &ChainSettings,
) -> Result<(SyncSummary, ProfileIndex, RetroSummary), ChainError> {
    let summary = sync_profiles(graph, store).await?;
    let index = ProfileIndex::load(store).await.map_err(StorageError::new)?;
    let retro = match_back(store, &index, &summary.new_indicators, settings).await?;
    Ok((summary, index, retro))
}

/// Match `new` indicator artifacts against the stored observables; see the module docs.
pub async fn match_back<S: ProfileStore + WalkCache>(
    store: &S,
    profiles: &ProfileIndex,
    new: &[String],
    settings: &ChainSettings,
) -> Result<RetroSummary, StorageError> {
    let mut summary = RetroSummary {
        indicators: new.len(),
        ..RetroSummary::default()
    };
    if new.is_empty() {
        return Ok(summary);
    }
    let (linked, more) = store
        .observables_linked_to(new, MAX_OBSERVABLES)
        .await
        .map_err(StorageError::new)?;
    summary.observables = linked.len();
    summary.truncated = more;
    let new: HashSet<&str> = new.iter().map(String::as_str).collect();
    for chunk in linked.chunks(CHUNK) {
        let hosts: Vec<String> = chunk
            .iter()
            .flat_map(|s| {
                s.counterparts
                    .iter()
                    .cloned()
                    .chain([s.observable.value().to_owned()])
            })
            .collect();
        let CachedLeads {
            reputations,
            fanouts,
        } = store.cached_leads(&hosts, EVIDENCE_AGE).await?;
        let walks: Vec<WalkHits> = chunk
            .iter()
            .filter_map(|stored| {
                let mut hits = rebuild(stored, &reputations, &fanouts, profiles);
                hits.retain(|hit| new.contains(hit.artifact.as_str()));
                (!hits.is_empty()).then(|| WalkHits {
                    observable: stored.observable.clone(),
                    run_id: None,
                    context: None,
                    hits,
                    min_event_confidence: settings.min_event_confidence,
                })
            })
            .collect();
        summary.hits += walks.iter().map(|w| w.hits.len()).sum::<usize>();
        let owed = store
            .record_walk_hits(&walks)
            .await
            .map_err(StorageError::new)?;
        summary.owed += owed.len();
    }
    tracing::info!(?summary, "new intelligence matched back");
    Ok(summary)
}

/// The hits of a walk of `stored` rebuilt from what is stored, scored.
fn rebuild(
    stored: &StoredLinks,
    reputations: &HashMap<String, crate::enrich::Reputation>,
    fanouts: &HashMap<String, Fanout>,
    profiles: &ProfileIndex,
) -> Vec<ActorHit> {
    let root = stored.observable.value().to_owned();
    let mut order = vec![root.clone()];
    let mut nodes = HashMap::from_iter([(root.clone(), node(vec![root.clone()]))]);
    for counterpart in stored.counterparts.iter().filter(|c| **c != root) {
        order.push(counterpart.clone());
        nodes.insert(
            counterpart.clone(),
            node(vec![root.clone(), counterpart.clone()]),
        );
    }
    let known: HashMap<String, Option<crate::enrich::Reputation>> = order
        .iter()
        .filter_map(|host| Some((host.clone(), Some(reputations.get(host)?.clone()))))
        .collect();
    let (mut hits, _) = attribution::attribute(&order, &nodes, &known, profiles);
    // The observable's own passive DNS, counted as the live walk counts it for its side of a
    // link.
    let mut counter = super::sharing::Counter::default();
    stored
        .counterparts
        .iter()
        .for_each(|name| counter.insert(name));
    let own = counter.fanout(false);
    attribution::score(&mut hits, &known, |hit| {
        (hit.path.len() > 1)
            .then(|| Fanout::wider(Some(own), fanouts.get(&hit.artifact).copied()))?
    });
    hits
}

fn node(path: Vec<String>) -> Node {
    Node {
        path,
        first_seen: None,
        last_seen: None,
    }
}

/// What matching back did in this process, for metrics.
#[derive(Debug, Default)]
pub struct RetroStats {
    pub indicators: AtomicU64,
    pub observables: AtomicU64,
    pub hits: AtomicU64,
}

impl RetroStats {
    pub fn add(&self, summary: &RetroSummary) {
        self.indicators
            .fetch_add(summary.indicators as u64, Ordering::Relaxed);
        self.observables
            .fetch_add(summary.observables as u64, Ordering::Relaxed);
        self.hits.fetch_add(summary.hits as u64, Ordering::Relaxed);
    }
}
