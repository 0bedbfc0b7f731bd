//! Whois: one indicator per record (when the record has an id), and the contact, nameserver
//! and host extracts.

use chrono::SecondsFormat;
use uuid::Uuid;

use super::extract::{non_empty, ExtractKind, Extracts};
use super::{EnricherResult, Extract, Indicator};
use crate::graph::model::{self, WhoisContact};
use crate::graph::{GraphClient, GraphError, PageLimits};

pub(super) async fn fetch(
    graph: &GraphClient,
    key: &str,
    _limits: PageLimits,
    result: &mut EnricherResult,
) -> Result<(), GraphError> {
    match graph.whois(key).await? {
        Some(record) => (result.indicator, result.extracts) = whois(&record),
        None => result.found = false,
    }
    Ok(())
}

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
pub fn whois(record: &model::WhoisRecord) -> (Option<Indicator>, Vec<Extract>) {
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
    // The field's name is only spelled out for a value that is there: most contacts leave
    // most of their fields empty.
    let mut push = |kind: ExtractKind, value: &Option<String>, name: &str| {
        if let Some(value) = non_empty(value) {
            extracts.push(kind, Some(value), &format!("{role}.{name}"));
        }
    };
    push(ExtractKind::Email, &contact.email, "email");
    push(ExtractKind::Name, &contact.name, "name");
    push(ExtractKind::Organization, &contact.organization, "organization");
    push(ExtractKind::Telephone, &contact.telephone, "telephone");
    if let Some(address) = &contact.address {
        push(
            ExtractKind::Country,
            &address.country_or_region,
            "address.countryOrRegion",
        );
        push(ExtractKind::City, &address.city, "address.city");
        push(ExtractKind::Postcode, &address.postal_code, "address.postalCode");
        push(ExtractKind::Street, &address.street, "address.street");
        if let Some(state) = non_empty(&address.state) {
            let label = format!("state:{state}");
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
    }
}
