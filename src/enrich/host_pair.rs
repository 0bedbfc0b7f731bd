//! Host pairs: parent and child hosts, each host once however many pairs name it.

use super::extract::Extracts;
use super::{EnricherResult, Extract};
use crate::graph::model;
use crate::graph::{GraphClient, GraphError, PageLimits};

pub(super) async fn fetch(
    graph: &GraphClient,
    key: &str,
    limits: PageLimits,
    result: &mut EnricherResult,
) -> Result<(), GraphError> {
    let page = graph.host_pairs(key, limits).await?;
    (result.found, result.truncated) = (page.found, page.truncated);
    result.extracts = host_pairs(&page.items);
    Ok(())
}

/// Host pairs: parent and child hosts, each host once however many pairs name it.
pub fn host_pairs(pairs: &[model::HostPair]) -> Vec<Extract> {
    let mut extracts = Extracts::default();
    for pair in pairs {
        extracts.push_host_once(
            pair.parent_host.as_ref().and_then(|h| h.id.as_deref()),
            "parentHost.id",
        );
        extracts.push_host_once(
            pair.child_host.as_ref().and_then(|h| h.id.as_deref()),
            "childHost.id",
        );
    }
    extracts.into_vec()
}
