//! Host: the id, country, netblock, AS number, registrar, registrant and hosting provider.

use super::extract::{non_empty, ExtractKind, Extracts};
use super::{EnricherResult, Extract};
use crate::graph::model;
use crate::graph::{GraphClient, GraphError, PageLimits};

pub(super) async fn fetch(
    graph: &GraphClient,
    key: &str,
    _limits: PageLimits,
    result: &mut EnricherResult,
) -> Result<(), GraphError> {
    match graph.host(key).await? {
        Some(record) => result.extracts = host(&record),
        None => result.found = false,
    }
    Ok(())
}

/// Host: the id, country, netblock, AS number, registrar, registrant and hosting provider.
pub fn host(record: &model::Host) -> Vec<Extract> {
    let mut extracts = Extracts::default();
    extracts.push_host(record.id.as_deref(), "id");
    extracts.push(
        ExtractKind::Country,
        record.country_or_region.as_deref(),
        "countryOrRegion",
    );
    if let Some(netblock) = non_empty(&record.netblock) {
        let kind = if netblock.contains(':') {
            ExtractKind::Ipv6Cidr
        } else {
            ExtractKind::Ipv4Cidr
        };
        extracts.push(kind, Some(netblock), "netblock");
    }
    if let Some(number) = record.autonomous_system.as_ref().and_then(|a| a.number()) {
        extracts.push(
            ExtractKind::Asn,
            Some(&format!("AS{number}")),
            "autonomousSystem.number",
        );
    }
    extracts.push(
        ExtractKind::Registrar,
        record.registrar.as_deref(),
        "registrar",
    );
    extracts.push(
        ExtractKind::Organization,
        record.registrant.as_deref(),
        "registrant",
    );
    extracts.push(
        ExtractKind::Organization,
        record.hosting_provider.as_deref(),
        "hostingProvider",
    );
    extracts.into_vec()
}
