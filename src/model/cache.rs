//! A [`WalkCache`] in memory, for walks without a database (`enrich --chain`): what one walk
//! asked is not asked again by the next in the same process.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::{Fanout, LookupClaims, StorageError, WalkCache};
use crate::enrich::Reputation;

/// Reputations and fanouts kept with when they were saved. One process, so no other worker
/// ever holds a lookup: every claim is granted and none is held by anyone else.
#[derive(Debug, Default)]
pub struct MemoryCache {
    reputations: Mutex<HashMap<String, (Instant, Reputation)>>,
    fanouts: Mutex<HashMap<String, (Instant, Fanout)>>,
}

/// The values of `hosts` saved within `ttl`, as the Postgres cache reads them.
fn fresh<T: Clone>(
    saved: &Mutex<HashMap<String, (Instant, T)>>,
    hosts: &[String],
    ttl: Duration,
) -> HashMap<String, T> {
    if ttl.is_zero() {
        return HashMap::new();
    }
    let saved = saved
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    hosts
        .iter()
        .filter_map(|host| {
            let (at, value) = saved.get(host)?;
            (at.elapsed() < ttl).then(|| (host.clone(), value.clone()))
        })
        .collect()
}

fn keep<T: Clone>(saved: &Mutex<HashMap<String, (Instant, T)>>, rows: &[(String, T)]) {
    let now = Instant::now();
    let mut saved = saved
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (host, value) in rows {
        saved.insert(host.clone(), (now, value.clone()));
    }
}

#[async_trait]
impl WalkCache for MemoryCache {
    async fn cached_reputations(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Reputation>, StorageError> {
        Ok(fresh(&self.reputations, hosts, ttl))
    }

    async fn save_reputations(
        &self,
        reputations: &[(String, Reputation)],
    ) -> Result<(), StorageError> {
        keep(&self.reputations, reputations);
        Ok(())
    }

    async fn cached_fanouts(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Fanout>, StorageError> {
        Ok(fresh(&self.fanouts, hosts, ttl))
    }

    async fn save_fanouts(&self, fanouts: &HashMap<String, Fanout>) -> Result<(), StorageError> {
        let rows: Vec<(String, Fanout)> = fanouts.iter().map(|(h, f)| (h.clone(), *f)).collect();
        keep(&self.fanouts, &rows);
        Ok(())
    }

    async fn claim_reputation_lookups(
        &self,
        hosts: &[String],
        _hold: Duration,
    ) -> Result<LookupClaims, StorageError> {
        Ok(LookupClaims {
            hosts: hosts.iter().cloned().collect(),
            until: None,
        })
    }

    async fn held_reputation_lookups(
        &self,
        _hosts: &[String],
    ) -> Result<HashSet<String>, StorageError> {
        Ok(HashSet::new())
    }

    async fn release_reputation_lookups(&self, _claims: &LookupClaims) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reputation(score: i32) -> Reputation {
        Reputation {
            classification: Some("malicious".into()),
            score: Some(score),
            rules: Default::default(),
        }
    }

    #[tokio::test]
    async fn saved_values_are_read_back_within_the_ttl_only() {
        let cache = MemoryCache::default();
        let hosts = vec!["a.example.com".to_owned(), "b.example.com".to_owned()];
        cache
            .save_reputations(&[(hosts[0].clone(), reputation(90))])
            .await
            .unwrap();
        let fanouts = HashMap::from_iter([(
            hosts[1].clone(),
            Fanout {
                names: 3,
                more: false,
            },
        )]);
        cache.save_fanouts(&fanouts).await.unwrap();

        let day = Duration::from_secs(24 * 3600);
        let found = cache.cached_reputations(&hosts, day).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[&hosts[0]], reputation(90));
        assert_eq!(cache.cached_fanouts(&hosts, day).await.unwrap(), fanouts);
        // A zero TTL reads nothing, as the Postgres cache does.
        assert!(cache
            .cached_reputations(&hosts, Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stale = Duration::from_millis(10);
        assert!(cache
            .cached_reputations(&hosts, stale)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn every_claim_is_granted() {
        let cache = MemoryCache::default();
        let hosts = vec!["a.example.com".to_owned()];
        let claims = cache
            .claim_reputation_lookups(&hosts, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(claims.hosts.contains("a.example.com"));
        assert!(cache
            .held_reputation_lookups(&hosts)
            .await
            .unwrap()
            .is_empty());
        cache.release_reputation_lookups(&claims).await.unwrap();
    }
}
