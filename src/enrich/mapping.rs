//! Graph records → indicators and extracts, field by field as the enricher specification gives.
//! Pure functions: no I/O, so every rule is pinned by a unit test on a literal payload.

use chrono::SecondsFormat;
use uuid::Uuid;

use super::extract::{ExtractKind, Extracts};
use super::{Indicator, Reputation, ReputationRule};
use crate::graph::model::{self, ArtifactType, WhoisContact};

/// `{https://graph.microsoft.com}Indicator-` + UUIDv5(NAMESPACE_X500, whois record id): the same
/// string Python's `uuid.uuid5(uuid.NAMESPACE_X500, id)` gives, so ids agree across tools.
pub fn indicator_id(whois_record_id: &str) -> String {
    let uuid = Uuid::new_v5(&Uuid::NAMESPACE_X500, whois_record_id.as_bytes());
    format!("{{https://graph.microsoft.com}}Indicator-{uuid}")
}

/// The contacts the specification maps; `billing`, `noc` and `zone` are not among them.
const MAPPED_CONTACTS: [&str; 5] = ["abuse", "admin", "registrar", "registrant", "technical"];

/// Whois: one indicator per record (when the record has an id), and the contact, nameserver and
/// host extracts.
pub fn whois(record: &model::WhoisRecord) -> (Option<Indicator>, Vec<super::Extract>) {
    let mut extracts = Extracts::default();
    let mut labels = Vec::new();
    if let Some(time) = record.registration_date_time {
        labels.push(format!(
            "registrationDateTime: {}",
            time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        ));
    }
    if let Some(server) = non_empty(&record.whois_server) {
        labels.push(format!("whoisServer: {server}"));
    }
    if let Some(status) = non_empty(&record.domain_status) {
        labels.push(format!("domainStatus: {status}"));
    }
    let contacts = [
        &record.abuse,
        &record.admin,
        &record.registrar,
        &record.registrant,
        &record.technical,
    ];
    for (role, contact) in MAPPED_CONTACTS.iter().zip(contacts) {
        if let Some(contact) = contact {
            map_contact(role, contact, &mut extracts, &mut labels);
        }
    }
    for nameserver in &record.nameservers {
        let id = nameserver.host.as_ref().and_then(|h| h.id.as_deref());
        extracts.push_host(id, "nameservers.host.id");
    }
    extracts.push_host(
        record.host.as_ref().and_then(|h| h.id.as_deref()),
        "host.id",
    );

    let indicator = non_empty(&record.id).map(|id| Indicator {
        id: indicator_id(id),
        title: id.to_owned(),
        description: record.raw_whois_text.clone(),
        threat_start_time: record.first_seen_date_time,
        threat_end_time: record.expiration_date_time,
        observed_time: record.last_seen_date_time,
        timestamp: record.last_update_date_time,
        labels,
    });
    if indicator.is_none() {
        tracing::warn!("whois record without an id: no indicator, extracts kept");
    }
    (indicator, extracts.into_vec())
}

fn map_contact(
    role: &str,
    contact: &WhoisContact,
    extracts: &mut Extracts,
    labels: &mut Vec<String>,
) {
    let field = |name: &str| format!("{role}.{name}");
    extracts.push(
        ExtractKind::Email,
        contact.email.as_deref(),
        &field("email"),
    );
    extracts.push(ExtractKind::Name, contact.name.as_deref(), &field("name"));
    extracts.push(
        ExtractKind::Organization,
        contact.organization.as_deref(),
        &field("organization"),
    );
    extracts.push(
        ExtractKind::Telephone,
        contact.telephone.as_deref(),
        &field("telephone"),
    );
    if let Some(address) = &contact.address {
        extracts.push(
            ExtractKind::Country,
            address.country_or_region.as_deref(),
            &field("address.countryOrRegion"),
        );
        extracts.push(
            ExtractKind::City,
            address.city.as_deref(),
            &field("address.city"),
        );
        extracts.push(
            ExtractKind::Postcode,
            address.postal_code.as_deref(),
            &field("address.postalCode"),
        );
        extracts.push(
            ExtractKind::Street,
            address.street.as_deref(),
            &field("address.street"),
        );
        if let Some(state) = non_empty(&address.state) {
            let label = format!("state:{state}");
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
    }
}

/// Passive DNS: each record's artifact, as IPV4/IPV6 (ipAddress) or HOST (hostname).
pub fn passive_dns(records: &[model::PassiveDnsRecord]) -> Vec<super::Extract> {
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

/// Host: the id, country, netblock, AS number, registrar, registrant and hosting provider.
pub fn host(record: &model::Host) -> Vec<super::Extract> {
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

/// Host pairs: parent and child hosts, each host once however many pairs name it.
pub fn host_pairs(pairs: &[model::HostPair]) -> Vec<super::Extract> {
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

/// Subdomains: each subdomain's host.
pub fn subdomains(items: &[model::Subdomain]) -> Vec<super::Extract> {
    let mut extracts = Extracts::default();
    for item in items {
        extracts.push_host(item.host.as_ref().and_then(|h| h.id.as_deref()), "host.id");
    }
    extracts.into_vec()
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

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}
