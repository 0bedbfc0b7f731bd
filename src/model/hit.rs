//! What a walk finds: actors linked to artifacts, why, how much each link is worth, and how
//! shared the infrastructure is.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a confidence falls: what a SOC does with it (see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    Low,
    Medium,
    High,
}

impl Band {
    /// Lowest confidence of the medium band.
    pub const MEDIUM: u8 = 40;
    /// Lowest confidence of the high band.
    pub const HIGH: u8 = 70;

    /// The band of a confidence. The migration's `confidence_band` SQL function says the same
    /// (a test compares them).
    pub fn of(confidence: u8) -> Band {
        if confidence >= Band::HIGH {
            Band::High
        } else if confidence >= Band::MEDIUM {
            Band::Medium
        } else {
            Band::Low
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Band::Low => "low",
            Band::Medium => "medium",
            Band::High => "high",
        }
    }

    pub const ALL: [Band; 3] = [Band::Low, Band::Medium, Band::High];

    /// The band named `name` (as [`Band::as_str`] writes it).
    pub fn named(name: &str) -> Option<Band> {
        Band::ALL.into_iter().find(|band| band.as_str() == name)
    }
}

impl std::fmt::Display for Band {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a hit scored what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Factor {
    /// `link`, `agreement`, `corroboration`, `sharing`, `time`, `reputation`.
    pub factor: String,
    /// What was seen, in words.
    pub detail: String,
    pub points: i32,
}

/// How many distinct hosts a host's passive DNS names: counted up to a page, `more` when the
/// listing went on (so `names` is a lower bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fanout {
    pub names: u32,
    pub more: bool,
}

impl Fanout {
    /// The wider of two.
    pub fn wider(a: Option<Fanout>, b: Option<Fanout>) -> Option<Fanout> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if (a.more, a.names) >= (b.more, b.names) {
                a
            } else {
                b
            }),
            (a, b) => a.or(b),
        }
    }
}

/// Why an actor is linked to an artifact. Serialised with a `source` tag:
/// `{"source": "reputation_rule", "rule": ..., ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Evidence {
    /// A `Cyber Threat Intelligence` reputation rule naming the group.
    ReputationRule {
        rule: String,
        severity: Option<String>,
        score: Option<i32>,
        classification: Option<String>,
    },
    /// A `Microsoft Defender Threat Intelligence Intel Article` rule on the same artifact.
    IntelArticle {
        title: Option<String>,
        article_id: Option<String>,
        url: Option<String>,
    },
    /// The artifact is an indicator of the actor's intelligence profile. The indicator's own
    /// source (`microsoft`, `osint`, `public`) is serialised as `indicator_source`: `source` is
    /// the tag.
    ProfileIndicator {
        profile_id: String,
        #[serde(rename = "indicator_source")]
        source: Option<String>,
        /// When the profile says the actor used the artifact (an indicator without a last-seen
        /// time is still in use).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_seen: Option<DateTime<Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<DateTime<Utc>>,
    },
}

impl Evidence {
    /// The `source` tag: `reputation_rule`, `intel_article` or `profile_indicator`.
    pub fn kind(&self) -> &'static str {
        match self {
            Evidence::ReputationRule { .. } => "reputation_rule",
            Evidence::IntelArticle { .. } => "intel_article",
            Evidence::ProfileIndicator { .. } => "profile_indicator",
        }
    }
}

/// One actor linked to one artifact (the IOC itself or a counterpart), evidence merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorHit {
    /// The group's name: the profile's title when the name matched a profile, else as the rule
    /// named it (trimmed).
    pub actor: String,
    pub profile_id: Option<String>,
    pub aliases: Vec<String>,
    /// The linking domain or IP.
    pub artifact: String,
    /// IOC → ... → artifact (just the IOC when the IOC itself is attributed).
    pub path: Vec<String>,
    pub evidence: Vec<Evidence>,
    /// Earliest `firstSeenDateTime` and latest `lastSeenDateTime` of the passive DNS records
    /// linking the artifact to the previous host of the path (none for the IOC itself).
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// 0-100: how much the hit is worth (see [`confidence`]).
    pub confidence: u8,
    /// What made the confidence, in order.
    pub factors: Vec<Factor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_split_at_forty_and_seventy() {
        assert_eq!(Band::of(0), Band::Low);
        assert_eq!(Band::of(39), Band::Low);
        assert_eq!(Band::of(40), Band::Medium);
        assert_eq!(Band::of(69), Band::Medium);
        assert_eq!(Band::of(70), Band::High);
        assert_eq!(Band::of(100), Band::High);
    }
}
