//! The enrichers: whois, passive DNS, host, host pairs, subdomains and reputation, each for
//! ipv4, ipv6, domain and host observables, and their mapping to indicators and extracts.
//!
//! [`enrich`] runs the chosen enrichers for one observable concurrently (they share the client's
//! rate limiter, so concurrency here only overlaps waiting) and returns one [`EnricherResult`]
//! each. This module knows no broker and no database.
//!
//! Each enricher is a module of its own (its Graph call and its mapping), listed once in the
//! `enrichers!` table below, from which [`EnricherKind`] and the dispatch follow.

pub mod country;
pub mod extract;
pub mod mapping;
pub mod table;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use extract::{Extract, ExtractKind};

use crate::graph::model::PassiveDnsRecord;
use crate::graph::{Collection, GraphClient, GraphError, PageLimits};
use crate::observable::Observable;

/// Builds [`EnricherKind`] and everything that follows from the list of enrichers: each
/// enricher's module, its name, the other spellings it is known by, and the dispatch to the
/// module's `fetch`.
macro_rules! enrichers {
    ($($variant:ident => $module:ident as $name:literal $(, also $($alias:literal),+)?;)+) => {
        $(mod $module;)+

        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum EnricherKind {
            $(#[serde(rename = $name)] $variant,)+
        }

        /// Every enricher's name, in the order of the list.
        const NAMES: &[&str] = &[$($name),+];

        impl EnricherKind {
            pub const ALL: [EnricherKind; NAMES.len()] = [$(EnricherKind::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EnricherKind::$variant => $name,)+
                }
            }

            /// The spellings accepted besides the name.
            fn aliases(self) -> &'static [&'static str] {
                match self {
                    $(EnricherKind::$variant => &[$($($alias),+)?],)+
                }
            }

            /// Ask Graph and fill `result` with what this enricher maps from the answer.
            async fn fetch(
                self,
                graph: &GraphClient,
                key: &str,
                limits: PageLimits,
                result: &mut EnricherResult,
            ) -> Result<(), GraphError> {
                match self {
                    $(EnricherKind::$variant => $module::fetch(graph, key, limits, result).await,)+
                }
            }
        }
    };
}

// The enrichers, in the order `ALL` lists them. Each line: the variant, the module under
// `src/enrich/` with its `fetch` and its mapping, the name it is stored and serialised under,
// and the other spellings `--enrichers` accepts (compared as names are: case, `_` and `-`
// aside). A new enricher is its module and one line here.
enrichers! {
    Whois => whois as "whois";
    PassiveDns => passive_dns as "passive_dns", also "pdns";
    Host => host as "host";
    HostPair => host_pair as "host_pair", also "hostpairs";
    Subdomains => subdomains as "subdomains", also "subdomain";
    Reputation => reputation as "reputation";
}

impl fmt::Display for EnricherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A spelling of an enricher as it is compared: trimmed, lowercase, without `_` or `-`.
fn fold(text: &str) -> String {
    text.trim()
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

impl FromStr for EnricherKind {
    type Err = String;

    /// Accepts the snake_case names and the Graph-style spellings (`passiveDns`, `hostPairs`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let folded = fold(text);
        let spelled = |kind: &EnricherKind| {
            fold(kind.as_str()) == folded || kind.aliases().iter().any(|a| fold(a) == folded)
        };
        EnricherKind::ALL.into_iter().find(spelled).ok_or_else(|| {
            format!(
                "unknown enricher {:?}; expected one of {}",
                text.chars().take(40).collect::<String>(),
                NAMES.join(", ")
            )
        })
    }
}

/// The whois indicator, with the fields the specification names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Indicator {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    pub threat_start_time: Option<DateTime<Utc>>,
    pub threat_end_time: Option<DateTime<Utc>>,
    pub observed_time: Option<DateTime<Utc>>,
    pub timestamp: Option<DateTime<Utc>>,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReputationRule {
    pub name: Option<String>,
    /// Kept as Graph sent it: a string, or for `Cyber Threat Intelligence` sometimes a list.
    pub description: Option<serde_json::Value>,
    pub severity: Option<String>,
    pub related_details_url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    pub classification: Option<String>,
    pub score: Option<i32>,
    /// Shared, not copied: a walk hands the same reputation to every hit it links, to the
    /// walks that follow its lookup and to the worker's kept rows.
    pub rules: Arc<[ReputationRule]>,
}

/// What one enricher found for one observable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnricherResult {
    pub enricher: EnricherKind,
    /// False when MDTI has nothing on the host (Graph's 404).
    pub found: bool,
    /// A page cap cut the walk: more records exist than were read.
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indicator: Option<Indicator>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extracts: Vec<Extract>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<Reputation>,
    /// The passive DNS records read, kept for the chaining walk of the same observable so it
    /// does not page them again; not part of the output.
    #[serde(skip)]
    pub passive_dns: Option<Collection<PassiveDnsRecord>>,
}

impl EnricherResult {
    fn empty(enricher: EnricherKind, found: bool) -> Self {
        EnricherResult {
            enricher,
            found,
            truncated: false,
            indicator: None,
            extracts: Vec::new(),
            reputation: None,
            passive_dns: None,
        }
    }
}

/// Every chosen enricher's result for one observable, and what it cost in Graph requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrichment {
    pub observable: Observable,
    pub results: Vec<EnricherResult>,
    pub graph_requests: u64,
}

/// Run `enrichers` for `observable`. All or nothing: the first failure is returned, so the
/// caller can retry the observable whole rather than store half an answer.
pub async fn enrich(
    graph: &GraphClient,
    observable: &Observable,
    enrichers: &[EnricherKind],
    limits: PageLimits,
) -> Result<Enrichment, GraphError> {
    let graph = graph.tracked();
    let runs = enrichers
        .iter()
        .map(|&kind| run_one(&graph, observable.value(), kind, limits));
    let results = futures::future::try_join_all(runs).await?;
    Ok(Enrichment {
        observable: observable.clone(),
        results,
        graph_requests: graph.requests(),
    })
}

async fn run_one(
    graph: &GraphClient,
    key: &str,
    enricher: EnricherKind,
    limits: PageLimits,
) -> Result<EnricherResult, GraphError> {
    let mut result = EnricherResult::empty(enricher, true);
    enricher.fetch(graph, key, limits, &mut result).await?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_serialise_as_stored() {
        for kind in EnricherKind::ALL {
            assert_eq!(kind.as_str().parse::<EnricherKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EnricherKind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn graph_spellings_and_aliases_are_accepted() {
        let parsed = |text: &str| text.parse::<EnricherKind>();
        assert_eq!(parsed("passiveDns"), Ok(EnricherKind::PassiveDns));
        assert_eq!(parsed(" PDNS "), Ok(EnricherKind::PassiveDns));
        assert_eq!(parsed("hostPairs"), Ok(EnricherKind::HostPair));
        assert_eq!(parsed("host-pair"), Ok(EnricherKind::HostPair));
        assert_eq!(parsed("subdomain"), Ok(EnricherKind::Subdomains));
        assert_eq!(
            parsed("dns"),
            Err(
                "unknown enricher \"dns\"; expected one of whois, passive_dns, host, \
                 host_pair, subdomains, reputation"
                    .to_owned()
            )
        );
    }
}
