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

/// The names of a mapped contact's fields, role first (`registrant.address.city`), spelled out
/// at compile time: a record carries some thirty of them, and formatting each was a tenth of
/// what mapping a Whois record cost.
struct ContactFields {
    email: &'static str,
    name: &'static str,
    organization: &'static str,
    telephone: &'static str,
    country: &'static str,
    city: &'static str,
    postcode: &'static str,
    street: &'static str,
}

macro_rules! contact_fields {
    ($role:literal) => {
        ContactFields {
            email: concat!($role, ".email"),
            name: concat!($role, ".name"),
            organization: concat!($role, ".organization"),
            telephone: concat!($role, ".telephone"),
            country: concat!($role, ".address.countryOrRegion"),
            city: concat!($role, ".address.city"),
            postcode: concat!($role, ".address.postalCode"),
            street: concat!($role, ".address.street"),
        }
    };
}

/// The contacts the specification maps, in the record's order below; `billing`, `noc` and
/// `zone` are not among them.
const MAPPED_CONTACTS: [ContactFields; 5] = [
    contact_fields!("abuse"),
    contact_fields!("admin"),
    contact_fields!("registrar"),
    contact_fields!("registrant"),
    contact_fields!("technical"),
];

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
    for (fields, contact) in MAPPED_CONTACTS.iter().zip(contacts) {
        if let Some(contact) = contact {
            map_contact(fields, contact, &mut extracts, &mut labels);
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
    fields: &ContactFields,
    contact: &WhoisContact,
    extracts: &mut Extracts,
    labels: &mut Vec<String>,
) {
    // `Extracts::push` trims the value and skips an empty one.
    let mut push = |kind: ExtractKind, value: &Option<String>, field: &str| {
        extracts.push(kind, value.as_deref(), field);
    };
    push(ExtractKind::Email, &contact.email, fields.email);
    push(ExtractKind::Name, &contact.name, fields.name);
    push(ExtractKind::Organization, &contact.organization, fields.organization);
    push(ExtractKind::Telephone, &contact.telephone, fields.telephone);
    if let Some(address) = &contact.address {
        push(ExtractKind::Country, &address.country_or_region, fields.country);
        push(ExtractKind::City, &address.city, fields.city);
        push(ExtractKind::Postcode, &address.postal_code, fields.postcode);
        push(ExtractKind::Street, &address.street, fields.street);
        if let Some(state) = non_empty(&address.state) {
            let label = format!("state:{state}");
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
    }
}
