//! Reputation: classification, score and rules kept whole.

use super::{EnricherResult, Reputation, ReputationRule};
use crate::graph::model;
use crate::graph::{GraphClient, GraphError, PageLimits};

pub(super) async fn fetch(
    graph: &GraphClient,
    key: &str,
    _limits: PageLimits,
    result: &mut EnricherResult,
) -> Result<(), GraphError> {
    match graph.reputation(key).await? {
        Some(record) => result.reputation = Some(reputation(&record)),
        None => result.found = false,
    }
    Ok(())
}

/// Reputation: classification, score and rules kept whole.
pub fn reputation(record: &model::HostReputation) -> Reputation {
    Reputation {
        classification: record.classification.clone(),
        score: record.score(),
        rules: record
            .rules
            .iter()
            .map(|rule| ReputationRule {
                name: rule.name.clone(),
                description: rule.description.clone(),
                severity: rule.severity.clone(),
                related_details_url: rule.related_details_url.clone(),
            })
            .collect(),
    }
}
