//! Intelligence profiles (kind `actor`) and their indicators: synced from Graph into Postgres by a
//! job, read back into an in-memory [`ProfileIndex`] that walks match against for free.

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};

use super::{canonical_artifact, ChainError};
use crate::graph::model::{IntelligenceProfile, IntelligenceProfileIndicator};
use crate::graph::{GraphClient, PageLimits};
use crate::model::{IntelProfileRecord, ProfileIndicatorRecord, ProfileStore, StorageError};

/// What the index knows of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    pub id: String,
    pub title: String,
    pub aliases: Vec<String>,
}

/// What a profile says of one of its indicators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndicatorInfo {
    /// `microsoft`, `osint`, `public`.
    pub source: Option<String>,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
}

/// Canonical indicator artifact → the profiles listing it; and group name (title or alias,
/// case-insensitive) → profile. Immutable once built: share it in an `Arc`, rebuild to refresh.
#[derive(Debug, Clone, Default)]
pub struct ProfileIndex {
    profiles: Vec<ProfileInfo>,
    /// (profile index, what it says of the indicator), profiles in id order.
    by_artifact: HashMap<String, Vec<(usize, IndicatorInfo)>>,
    by_name: HashMap<String, usize>,
}

fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

impl ProfileIndex {
    /// Build from rows; indicators of unknown profiles are ignored. Titles win over aliases when
    /// a name is both; among equals the lowest profile id wins.
    pub fn from_records(
        profiles: Vec<IntelProfileRecord>,
        indicators: Vec<(String, ProfileIndicatorRecord)>,
    ) -> ProfileIndex {
        let mut profiles: Vec<ProfileInfo> = profiles
            .into_iter()
            .map(|p| ProfileInfo {
                id: p.id,
                title: p.title,
                aliases: p.aliases,
            })
            .collect();
        profiles.sort_by(|a, b| a.id.cmp(&b.id));
        profiles.dedup_by(|a, b| a.id == b.id);
        let position: HashMap<&str, usize> = profiles
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.as_str(), i))
            .collect();
        let mut by_name = HashMap::new();
        for (i, p) in profiles.iter().enumerate() {
            by_name.entry(name_key(&p.title)).or_insert(i);
        }
        for (i, p) in profiles.iter().enumerate() {
            for alias in &p.aliases {
                let key = name_key(alias);
                if !key.is_empty() {
                    by_name.entry(key).or_insert(i);
                }
            }
        }
        by_name.remove("");
        let mut by_artifact: HashMap<String, Vec<(usize, IndicatorInfo)>> = HashMap::new();
        for (profile_id, indicator) in indicators {
            let Some(&i) = position.get(profile_id.as_str()) else {
                continue;
            };
            let Some(artifact) = canonical_artifact(&indicator.artifact) else {
                continue;
            };
            let entry = by_artifact.entry(artifact).or_default();
            if !entry.iter().any(|(j, _)| *j == i) {
                entry.push((
                    i,
                    IndicatorInfo {
                        source: indicator.source,
                        first_seen: indicator.first_seen,
                        last_seen: indicator.last_seen,
                    },
                ));
                entry.sort_by_key(|(j, _)| *j);
            }
        }
        ProfileIndex {
            profiles,
            by_artifact,
            by_name,
        }
    }

    /// Everything `intel_profiles` and `intel_profile_indicators` hold.
    pub async fn load<S: ProfileStore>(store: &S) -> Result<ProfileIndex, S::Error> {
        let (profiles, indicators) = store.intel_profile_rows().await?;
        Ok(ProfileIndex::from_records(profiles, indicators))
    }

    /// The profiles listing `artifact` (canonical form) as an indicator, with what each says
    /// of it.
    pub fn lookup(&self, artifact: &str) -> Vec<(&ProfileInfo, &IndicatorInfo)> {
        self.by_artifact
            .get(artifact)
            .map(|entries| {
                entries
                    .iter()
                    .map(|(i, info)| (&self.profiles[*i], info))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The profile whose title or one of whose aliases is `name` (case-insensitive, trimmed).
    pub fn profile_named(&self, name: &str) -> Option<&ProfileInfo> {
        self.by_name
            .get(&name_key(name))
            .map(|&i| &self.profiles[i])
    }

    pub fn profiles(&self) -> &[ProfileInfo] {
        &self.profiles
    }

    /// Distinct indicator artifacts.
    pub fn artifact_count(&self) -> usize {
        self.by_artifact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

/// What a profile sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    /// Actor profiles stored.
    pub profiles: usize,
    /// Profiles of other kinds (tools), and profiles without an id or title, left out.
    pub skipped_profiles: usize,
    /// Indicators stored (distinct per profile).
    pub indicators: usize,
    /// Indicators whose artifact is not a host or IP, left out.
    pub skipped_indicators: usize,
    /// Stored profiles that Graph no longer lists, deleted.
    pub pruned_profiles: u64,
    pub graph_requests: u64,
    /// Listings a page cap cut (their stale rows are then kept, not pruned).
    pub truncated: Vec<String>,
    /// Indicator artifacts this sync added (canonical, each once): what is matched back
    /// against the observables already stored (see [`super::retro`]).
    pub new_indicators: Vec<String>,
}

/// [`sync_profiles_with`] every page, 1,000 items a page.
pub async fn sync_profiles(
    graph: &GraphClient,
    store: &impl ProfileStore,
) -> Result<SyncSummary, ChainError> {
    let limits = PageLimits {
        page_size: Some(1000),
        max_pages: None,
    };
    sync_profiles_with(graph, store, limits).await
}

/// Page `intelProfiles`, keep kind `actor`, page each one's `indicators`, and upsert them into
/// `intel_profiles` and `intel_profile_indicators`, one transaction per profile. Indicators a
/// complete listing no longer holds are deleted; so are profiles a complete, non-empty profile
/// listing no longer holds (an empty listing is more likely a licence problem than no actors).
pub async fn sync_profiles_with(
    graph: &GraphClient,
    store: &impl ProfileStore,
    limits: PageLimits,
) -> Result<SyncSummary, ChainError> {
    let graph = graph.tracked();
    let mut summary = SyncSummary::default();
    let listing = graph.intel_profiles(limits).await?;
    if listing.truncated {
        summary
            .truncated
            .push(format!("intelProfiles after {} page(s)", listing.pages));
    }
    let mut kept: Vec<String> = Vec::new();
    for profile in listing.items {
        let Some(record) = actor_record(&profile) else {
            summary.skipped_profiles += 1;
            continue;
        };
        let (id, title) = (record.id.as_str(), record.title.as_str());
        let indicators = graph.intel_profile_indicators(id, limits).await?;
        let complete = indicators.found && !indicators.truncated;
        if indicators.truncated {
            summary.truncated.push(format!(
                "indicators of {title} after {} page(s)",
                indicators.pages
            ));
        }
        let (rows, skipped) = indicator_rows(&indicators.items);
        summary.skipped_indicators += skipped;
        summary.indicators += rows.len();
        let added = store
            .save_intel_profile(&record, &rows, complete)
            .await
            .map_err(StorageError::new)?;
        summary.new_indicators.extend(added);
        summary.profiles += 1;
        kept.push(record.id);
    }
    if !listing.truncated && !kept.is_empty() {
        summary.pruned_profiles = store
            .prune_intel_profiles(&kept)
            .await
            .map_err(StorageError::new)?;
    }
    store
        .mark_profile_sync_completed()
        .await
        .map_err(StorageError::new)?;
    summary.new_indicators.sort_unstable();
    summary.new_indicators.dedup();
    summary.graph_requests = graph.requests();
    tracing::info!(
        profiles = summary.profiles,
        indicators = summary.indicators,
        requests = summary.graph_requests,
        "intelligence profiles synced"
    );
    Ok(summary)
}

/// The record of an actor profile; none for profiles of other kinds (tools) and profiles
/// without an id or title.
fn actor_record(profile: &IntelligenceProfile) -> Option<IntelProfileRecord> {
    let is_actor = profile
        .kind
        .as_deref()
        .is_some_and(|k| k.trim().eq_ignore_ascii_case("actor"));
    let id = profile.id.as_deref().map(str::trim).unwrap_or_default();
    let title = profile.title.as_deref().map(str::trim).unwrap_or_default();
    if !is_actor || id.is_empty() || title.is_empty() {
        return None;
    }
    Some(IntelProfileRecord {
        id: id.to_owned(),
        title: title.to_owned(),
        aliases: profile
            .aliases
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        first_active: profile.first_active_date_time,
    })
}

/// Canonical, one row per artifact (seen times widened over duplicates); and how many were left
/// out.
fn indicator_rows(items: &[IntelligenceProfileIndicator]) -> (Vec<ProfileIndicatorRecord>, usize) {
    let mut rows: Vec<ProfileIndicatorRecord> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut skipped = 0;
    for item in items {
        let artifact = item.artifact.as_ref();
        let Some(value) = artifact
            .and_then(|a| a.id.as_deref())
            .and_then(canonical_artifact)
        else {
            skipped += 1;
            continue;
        };
        let artifact_type = artifact
            .and_then(|a| a.odata_type.as_deref())
            .map(|t| t.rsplit('.').next().unwrap_or(t).to_ascii_lowercase());
        match at.get(&value) {
            Some(&i) => {
                let row = &mut rows[i];
                row.first_seen = super::earliest(row.first_seen, item.first_seen_date_time);
                row.last_seen = super::latest(row.last_seen, item.last_seen_date_time);
            }
            None => {
                at.insert(value.clone(), rows.len());
                rows.push(ProfileIndicatorRecord {
                    artifact: value,
                    artifact_type,
                    source: item.source.clone(),
                    first_seen: item.first_seen_date_time,
                    last_seen: item.last_seen_date_time,
                });
            }
        }
    }
    (rows, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id: &str, title: &str, aliases: &[&str]) -> IntelProfileRecord {
        IntelProfileRecord {
            id: id.into(),
            title: title.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            first_active: None,
        }
    }

    fn indicator(artifact: &str) -> ProfileIndicatorRecord {
        ProfileIndicatorRecord {
            artifact: artifact.into(),
            artifact_type: None,
            source: Some("osint".into()),
            first_seen: None,
            last_seen: None,
        }
    }

    #[test]
    fn names_and_artifacts_are_matched_loosely() {
        let index = ProfileIndex::from_records(
            vec![
                profile("b", "Volt Typhoon", &["Vanguard Panda"]),
                profile("a", "Aqua Blizzard", &["ACTINIUM", "Volt Typhoon"]),
            ],
            vec![
                ("a".into(), indicator("EVIL.Example.com.")),
                ("b".into(), indicator("evil.example.com")),
                ("zz".into(), indicator("other.example.com")),
            ],
        );
        assert_eq!(index.profile_named(" actinium ").unwrap().id, "a");
        // A title wins over another profile's alias.
        assert_eq!(index.profile_named("volt typhoon").unwrap().id, "b");
        assert!(index.profile_named("nobody").is_none());
        let hits = index.lookup("evil.example.com");
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].0.id, "a");
        assert!(index.lookup("other.example.com").is_empty());
        assert_eq!(index.artifact_count(), 1);
    }
}
