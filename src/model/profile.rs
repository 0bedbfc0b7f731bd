//! Intelligence profiles of actors and their indicators, as synced from Graph and stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An actor profile as stored in `intel_profiles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntelProfileRecord {
    pub id: String,
    pub title: String,
    pub aliases: Vec<String>,
    pub first_active: Option<DateTime<Utc>>,
}

/// One indicator of a profile as stored in `intel_profile_indicators`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileIndicatorRecord {
    /// Canonical (lowercase name, canonical IP).
    pub artifact: String,
    /// The `@odata.type`'s last part, lowercase (`ipaddress`, `hostname`).
    pub artifact_type: Option<String>,
    pub source: Option<String>,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
}

/// Every stored profile, and every indicator with the id of its profile.
pub type ProfileRows = (
    Vec<IntelProfileRecord>,
    Vec<(String, ProfileIndicatorRecord)>,
);
