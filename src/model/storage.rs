//! What a walk and a profile sync ask of whatever keeps their results between walks: the
//! Postgres store in the worker, memory in a one-off `enrich --chain`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashSet};

use super::{
    Fanout, IntelProfileRecord, ProfileIndicatorRecord, ProfileRows, StoredLinks, WalkHits,
};
use crate::enrich::Reputation;

/// A failure of the storage behind [`WalkCache`] or [`ProfileStore`], as its own error type
/// says it, and whether the same work may succeed later.
pub trait StorageFault: std::error::Error + Send + Sync + 'static {
    fn is_transient(&self) -> bool;
}

/// A [`StorageFault`] whatever its type, for errors that also carry Graph's (a walk, a sync).
/// Shown as the fault shows itself.
pub struct StorageError(Box<dyn StorageFault>);

impl StorageError {
    pub fn new(fault: impl StorageFault) -> StorageError {
        StorageError(Box::new(fault))
    }

    /// Whether the same work may succeed later (database down, connection lost).
    pub fn is_transient(&self) -> bool {
        self.0.is_transient()
    }
}

impl fmt::Debug for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Reputation lookups one call of [`WalkCache::claim_reputation_lookups`] holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LookupClaims {
    pub hosts: HashSet<String>,
    /// When they run out (one instant for all of them: the claiming transaction's); it tells
    /// these claims from later ones on the same hosts.
    pub(crate) until: Option<DateTime<Utc>>,
}

/// The reputations and the fanouts a cache holds for some hosts, keyed by host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CachedLeads {
    pub reputations: HashMap<String, Reputation>,
    pub fanouts: HashMap<String, Fanout>,
}

/// What walks keep for each other: reputations and fanouts already asked of Graph, and the
/// lookups a worker is asking about now, so that workers sharing a quota ask once.
#[async_trait]
pub trait WalkCache: Send + Sync {
    /// The reputations and the fanouts of `hosts` saved within `ttl`: for a walk that will
    /// want the fanouts of those of its counterparts that link an actor, which it does not
    /// know yet. A cache that can read both at once overrides this (Postgres: one statement
    /// instead of two, a round trip fewer per walk).
    async fn cached_leads(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<CachedLeads, StorageError> {
        Ok(CachedLeads {
            reputations: self.cached_reputations(hosts, ttl).await?,
            fanouts: self.cached_fanouts(hosts, ttl).await?,
        })
    }

    /// The reputations of `hosts` saved within `ttl`, keyed by host; none when `ttl` is zero.
    async fn cached_reputations(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Reputation>, StorageError>;

    /// Keep reputations Graph answered now.
    async fn save_reputations(
        &self,
        reputations: &[(String, Reputation)],
    ) -> Result<(), StorageError>;

    /// The fanouts of `hosts` measured within `ttl`; none when `ttl` is zero.
    async fn cached_fanouts(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Fanout>, StorageError>;

    /// Keep fanouts measured now.
    async fn save_fanouts(&self, fanouts: &HashMap<String, Fanout>) -> Result<(), StorageError>;

    /// Claim the Graph lookups of `hosts` for `hold`; returns those this worker now holds.
    /// The others are another worker's to look up.
    async fn claim_reputation_lookups(
        &self,
        hosts: &[String],
        hold: Duration,
    ) -> Result<LookupClaims, StorageError>;

    /// Which of `hosts` some worker still holds a claim on.
    async fn held_reputation_lookups(
        &self,
        hosts: &[String],
    ) -> Result<HashSet<String>, StorageError>;

    /// The lookups of `claims` are over: their answers are saved, or they failed.
    async fn release_reputation_lookups(&self, claims: &LookupClaims) -> Result<(), StorageError>;
}

/// Where the actors' intelligence profiles are kept, and the stored observables matched back
/// against new indicators.
#[async_trait]
pub trait ProfileStore: Send + Sync {
    type Error: StorageFault;

    /// Every stored profile, and every indicator with its profile id.
    async fn intel_profile_rows(&self) -> Result<ProfileRows, Self::Error>;

    /// Keep one profile and its indicators; when `complete`, the indicators not listed are
    /// dropped. Returns the artifacts the profile did not list before.
    async fn save_intel_profile(
        &self,
        profile: &IntelProfileRecord,
        indicators: &[ProfileIndicatorRecord],
        complete: bool,
    ) -> Result<Vec<String>, Self::Error>;

    /// Drop the profiles whose id is not in `keep`; returns how many.
    async fn prune_intel_profiles(&self, keep: &[String]) -> Result<u64, Self::Error>;

    /// Note that a sync ran to its end.
    async fn mark_profile_sync_completed(&self) -> Result<(), Self::Error>;

    /// The stored observables that are one of `artifacts` or whose passive DNS named one, at
    /// most `limit`, and whether there were more.
    async fn observables_linked_to(
        &self,
        artifacts: &[String],
        limit: usize,
    ) -> Result<(Vec<StoredLinks>, bool), Self::Error>;

    /// Write the hits of `walks` with their attributions, in one transaction; returns the ids
    /// of the attributions left owed an event.
    async fn record_walk_hits(&self, walks: &[WalkHits]) -> Result<HashSet<i64>, Self::Error>;
}
