//! Passive DNS: each record's artifact, as IPV4/IPV6 (ipAddress) or HOST (hostname). The
//! records read are kept on the result for the chaining walk of the same observable.

use super::extract::Extracts;
use super::{EnricherResult, Extract};
use crate::graph::model::{self, ArtifactType};
use crate::graph::{GraphClient, GraphError, PageLimits};

pub(super) async fn fetch(
    graph: &GraphClient,
    key: &str,
    limits: PageLimits,
    result: &mut EnricherResult,
) -> Result<(), GraphError> {
    let page = graph.passive_dns(key, limits).await?;
    (result.found, result.truncated) = (page.found, page.truncated);
    result.extracts = passive_dns(&page.items);
    result.passive_dns = Some(page);
    Ok(())
}

/// Passive DNS: each record's artifact, as IPV4/IPV6 (ipAddress) or HOST (hostname).
pub fn passive_dns(records: &[model::PassiveDnsRecord]) -> Vec<Extract> {
    let mut extracts = Extracts::default();
    for artifact in records.iter().filter_map(|r| r.artifact.as_ref()) {
        let id = artifact.id.as_deref();
        match artifact.artifact_type() {
            ArtifactType::IpAddress => {
                // An ipAddress artifact whose id does not parse as an IP is not trusted as a host.
                if id.is_some_and(|v| v.trim().parse::<std::net::IpAddr>().is_ok()) {
                    extracts.push_host(id, "artifact.id");
                }
            }
            ArtifactType::Hostname => extracts.push_host(id, "artifact.id"),
            ArtifactType::Other => extracts.push_host(id, "artifact.id"),
        }
    }
    extracts.into_vec()
}
