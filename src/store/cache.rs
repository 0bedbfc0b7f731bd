//! The store as the walks' cache and the profiles' keeper: the model's storage traits over the
//! store's own methods, its errors as storage faults.

use std::time::Duration;

use async_trait::async_trait;
use foldhash::{HashMap, HashSet};

use super::{Store, StoreError};
use crate::enrich::Reputation;
use crate::model::{
    CachedLeads, Fanout, IntelProfileRecord, LookupClaims, ProfileIndicatorRecord, ProfileRows,
    ProfileStore, StorageError, StorageFault, StoredLinks, WalkCache, WalkHits,
};

impl StorageFault for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

impl From<StoreError> for StorageError {
    fn from(error: StoreError) -> Self {
        StorageError::new(error)
    }
}

#[async_trait]
impl WalkCache for Store {
    async fn cached_leads(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<CachedLeads, StorageError> {
        Ok(Store::cached_leads(self, hosts, ttl).await?)
    }

    async fn cached_reputations(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Reputation>, StorageError> {
        Ok(Store::cached_reputations(self, hosts, ttl).await?)
    }

    async fn save_reputations(
        &self,
        reputations: &[(String, Reputation)],
    ) -> Result<(), StorageError> {
        let rows = reputations.iter().map(|(host, r)| (host.as_str(), r));
        Ok(Store::save_reputations(self, rows).await?)
    }

    async fn cached_fanouts(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Fanout>, StorageError> {
        Ok(Store::cached_fanouts(self, hosts, ttl).await?)
    }

    async fn save_fanouts(&self, fanouts: &HashMap<String, Fanout>) -> Result<(), StorageError> {
        Ok(Store::save_fanouts(self, fanouts).await?)
    }

    async fn claim_reputation_lookups(
        &self,
        hosts: &[String],
        hold: Duration,
    ) -> Result<LookupClaims, StorageError> {
        Ok(Store::claim_reputation_lookups(self, hosts, hold).await?)
    }

    async fn held_reputation_lookups(
        &self,
        hosts: &[String],
    ) -> Result<HashSet<String>, StorageError> {
        Ok(Store::held_reputation_lookups(self, hosts).await?)
    }

    async fn release_reputation_lookups(&self, claims: &LookupClaims) -> Result<(), StorageError> {
        Ok(Store::release_reputation_lookups(self, claims).await?)
    }
}

#[async_trait]
impl ProfileStore for Store {
    type Error = StoreError;

    async fn intel_profile_rows(&self) -> Result<ProfileRows, StoreError> {
        Store::intel_profile_rows(self).await
    }

    async fn save_intel_profile(
        &self,
        profile: &IntelProfileRecord,
        indicators: &[ProfileIndicatorRecord],
        complete: bool,
    ) -> Result<Vec<String>, StoreError> {
        Store::save_intel_profile(self, profile, indicators, complete).await
    }

    async fn prune_intel_profiles(&self, keep: &[String]) -> Result<u64, StoreError> {
        Store::prune_intel_profiles(self, keep).await
    }

    async fn mark_profile_sync_completed(&self) -> Result<(), StoreError> {
        Store::mark_profile_sync_completed(self).await
    }

    async fn observables_linked_to(
        &self,
        artifacts: &[String],
        limit: usize,
    ) -> Result<(Vec<StoredLinks>, bool), StoreError> {
        Store::observables_linked_to(self, artifacts, limit).await
    }

    async fn record_walk_hits(&self, walks: &[WalkHits]) -> Result<HashSet<i64>, StoreError> {
        let owed = self.record_walks(walks).await?;
        Ok(owed.into_iter().flatten().map(|owed| owed.id).collect())
    }
}
