//! The enrichers: whois, passive DNS, host, host pairs, subdomains and reputation, each for
//! ipv4, ipv6, domain and host observables, and their mapping to indicators and extracts.
//!
//! [`enrich`] runs the chosen enrichers for one observable concurrently (they share the client's
//! rate limiter, so concurrency here only overlaps waiting) and returns one [`EnricherResult`]
//! each. This module knows no broker and no database.

pub mod country;
pub mod extract;
pub mod mapping;
pub mod table;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use extract::{Extract, ExtractKind};

use crate::graph::model::PassiveDnsRecord;
use crate::graph::{Collection, GraphClient, GraphError, PageLimits};
use crate::observable::Observable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnricherKind {
    Whois,
    PassiveDns,
    Host,
    HostPair,
    Subdomains,
    Reputation,
}

impl EnricherKind {
    pub const ALL: [EnricherKind; 6] = [
        EnricherKind::Whois,
        EnricherKind::PassiveDns,
        EnricherKind::Host,
        EnricherKind::HostPair,
        EnricherKind::Subdomains,
        EnricherKind::Reputation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnricherKind::Whois => "whois",
            EnricherKind::PassiveDns => "passive_dns",
            EnricherKind::Host => "host",
            EnricherKind::HostPair => "host_pair",
            EnricherKind::Subdomains => "subdomains",
            EnricherKind::Reputation => "reputation",
        }
    }
}

impl fmt::Display for EnricherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnricherKind {
    type Err = String;

    /// Accepts the snake_case names and the Graph-style spellings (`passiveDns`, `hostPairs`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let folded: String = text
            .trim()
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect();
        Ok(match folded.as_str() {
            "whois" => EnricherKind::Whois,
            "passivedns" | "pdns" => EnricherKind::PassiveDns,
            "host" => EnricherKind::Host,
            "hostpair" | "hostpairs" => EnricherKind::HostPair,
            "subdomains" | "subdomain" => EnricherKind::Subdomains,
            "reputation" => EnricherKind::Reputation,
            _ => {
                return Err(format!(
                    "unknown enricher {:?}; expected one of whois, passive_dns, host, host_pair, subdomains, reputation",
                    text.chars().take(40).collect::<String>()
                ))
            }
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
    pub rules: Vec<ReputationRule>,
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
    match enricher {
        EnricherKind::Whois => match graph.whois(key).await? {
            Some(record) => (result.indicator, result.extracts) = mapping::whois(&record),
            None => result.found = false,
        },
        EnricherKind::Host => match graph.host(key).await? {
            Some(record) => result.extracts = mapping::host(&record),
            None => result.found = false,
        },
        EnricherKind::Reputation => match graph.reputation(key).await? {
            Some(record) => result.reputation = Some(mapping::reputation(&record)),
            None => result.found = false,
        },
        EnricherKind::PassiveDns => {
            let page = graph.passive_dns(key, limits).await?;
            (result.found, result.truncated) = (page.found, page.truncated);
            result.extracts = mapping::passive_dns(&page.items);
            result.passive_dns = Some(page);
        }
        EnricherKind::HostPair => {
            let page = graph.host_pairs(key, limits).await?;
            (result.found, result.truncated) = (page.found, page.truncated);
            result.extracts = mapping::host_pairs(&page.items);
        }
        EnricherKind::Subdomains => {
            let page = graph.subdomains(key, limits).await?;
            (result.found, result.truncated) = (page.found, page.truncated);
            result.extracts = mapping::subdomains(&page.items);
        }
    }
    Ok(result)
}
