//! Subdomains: each subdomain's host.

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
    let page = graph.subdomains(key, limits).await?;
    (result.found, result.truncated) = (page.found, page.truncated);
    result.extracts = subdomains(&page.items);
    Ok(())
}

/// Subdomains: each subdomain's host.
pub fn subdomains(items: &[model::Subdomain]) -> Vec<Extract> {
    let mut extracts = Extracts::default();
    for item in items {
        extracts.push_host(item.host.as_ref().and_then(|h| h.id.as_deref()), "host.id");
    }
    extracts.into_vec()
}
