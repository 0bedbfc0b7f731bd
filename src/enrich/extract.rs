//! Extracts: the observables and attributes an enricher pulls out of a Graph record.

use std::hash::BuildHasher;
use std::net::IpAddr;

use foldhash::fast::RandomState;
use foldhash::HashSet;
use serde::{Deserialize, Serialize};

use super::country;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExtractKind {
    Ipv4,
    Ipv6,
    Host,
    Ipv4Cidr,
    Ipv6Cidr,
    Asn,
    Country,
    City,
    Postcode,
    Street,
    Email,
    Name,
    Organization,
    Telephone,
    Registrar,
}

impl ExtractKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExtractKind::Ipv4 => "IPV4",
            ExtractKind::Ipv6 => "IPV6",
            ExtractKind::Host => "HOST",
            ExtractKind::Ipv4Cidr => "IPV4_CIDR",
            ExtractKind::Ipv6Cidr => "IPV6_CIDR",
            ExtractKind::Asn => "ASN",
            ExtractKind::Country => "COUNTRY",
            ExtractKind::City => "CITY",
            ExtractKind::Postcode => "POSTCODE",
            ExtractKind::Street => "STREET",
            ExtractKind::Email => "EMAIL",
            ExtractKind::Name => "NAME",
            ExtractKind::Organization => "ORGANIZATION",
            ExtractKind::Telephone => "TELEPHONE",
            ExtractKind::Registrar => "REGISTRAR",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Extract {
    pub kind: ExtractKind,
    pub value: String,
    /// The Graph field it came from, e.g. `registrant.email`, so an abuse mailbox can be told
    /// from a registrant's.
    pub field: String,
    /// ISO 3166-1 alpha-2, for COUNTRY extracts whose text is recognisable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_code: Option<String>,
}

/// Collects extracts in order, dropping empty values and exact repeats.
///
/// Repeats are found through hashes of what was kept rather than copies of it: a hash not seen
/// before is a new extract for certain, and only a hash seen before (a repeat, or rarely a
/// collision) is checked against the extracts themselves. The hash keys are random per
/// collection, so crafted values cannot make every push a scan.
#[derive(Debug, Default)]
pub struct Extracts {
    items: Vec<Extract>,
    hasher: RandomState,
    /// Hashes of (kind, value, field) kept.
    seen: HashSet<u64>,
    /// Hashes of (kind, value) kept, for [`Extracts::push_host_once`].
    seen_values: HashSet<u64>,
}

impl Extracts {
    pub fn push(&mut self, kind: ExtractKind, value: Option<&str>, field: &str) {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return;
        };
        let new = self.seen.insert(self.hasher.hash_one((kind, value, field)))
            || !self
                .items
                .iter()
                .any(|e| e.kind == kind && e.value == value && e.field == field);
        if !new {
            return;
        }
        self.seen_values.insert(self.hasher.hash_one((kind, value)));
        let country_code = match kind {
            ExtractKind::Country => country::iso_code(value).map(str::to_owned),
            _ => None,
        };
        self.items.push(Extract {
            kind,
            value: value.to_owned(),
            field: field.to_owned(),
            country_code,
        });
    }

    /// Whether an extract of this kind and value is kept, whatever its field.
    fn has_value(&self, kind: ExtractKind, value: &str) -> bool {
        self.seen_values
            .contains(&self.hasher.hash_one((kind, value)))
            && self
                .items
                .iter()
                .any(|e| e.kind == kind && e.value == value)
    }

    /// A host key (IP or name) as IPV4, IPV6 or HOST, by what the value is.
    pub fn push_host(&mut self, value: Option<&str>, field: &str) {
        if let Some((kind, canonical)) = value.and_then(host_extract) {
            self.push(kind, Some(&canonical), field);
        }
    }

    /// Like [`push_host`](Self::push_host) but deduplicated on the value alone, whatever field
    /// carried it (host pairs name the same host as parent in one pair and child in the next).
    pub fn push_host_once(&mut self, value: Option<&str>, field: &str) {
        if let Some((kind, canonical)) = value.and_then(host_extract) {
            if !self.has_value(kind, &canonical) {
                self.push(kind, Some(&canonical), field);
            }
        }
    }

    pub fn into_vec(self) -> Vec<Extract> {
        self.items
    }
}

/// IPV4 / IPV6 for addresses (in canonical form), HOST for names (lowercase, no trailing dot).
pub fn host_extract(value: &str) -> Option<(ExtractKind, String)> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    match value.parse::<IpAddr>() {
        // std reads only the canonical dotted quad (no leading zeros, no shorter forms), so a
        // value that parses is already what formatting the address would give, at a fraction
        // of the cost: most of a page's hosts are IPv4 addresses.
        Ok(IpAddr::V4(_)) => Some((ExtractKind::Ipv4, value.to_owned())),
        Ok(IpAddr::V6(ip)) => Some(match ip.to_ipv4_mapped() {
            Some(v4) => (ExtractKind::Ipv4, v4.to_string()),
            None => (ExtractKind::Ipv6, ip.to_string()),
        }),
        Err(_) => Some((
            ExtractKind::Host,
            value.trim_end_matches('.').to_ascii_lowercase(),
        )),
    }
}

/// A Graph text field with something in it, trimmed.
pub(super) fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_value_is_kept_only_in_its_canonical_form() {
        for value in [
            "8.8.8.8",
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.168.100.20",
        ] {
            let canonical = value.parse::<std::net::Ipv4Addr>().unwrap().to_string();
            assert_eq!(
                host_extract(value),
                Some((ExtractKind::Ipv4, canonical)),
                "{value}"
            );
        }
        // Forms that name an address but are not canonical are not read as IPv4 at all.
        for value in ["010.0.0.1", "10.1", "10.0.0.256", "0x0a.0.0.1", "1.2.3.4.5"] {
            assert_eq!(
                host_extract(value).map(|(kind, _)| kind),
                Some(ExtractKind::Host),
                "{value}"
            );
        }
    }

    #[test]
    fn host_values_are_classified_by_what_they_are() {
        assert_eq!(
            host_extract("8.8.8.8"),
            Some((ExtractKind::Ipv4, "8.8.8.8".into()))
        );
        assert_eq!(
            host_extract("2001:4860:4860:0:0:0:0:8888"),
            Some((ExtractKind::Ipv6, "2001:4860:4860::8888".into()))
        );
        assert_eq!(
            host_extract("NS1.Contoso.COM."),
            Some((ExtractKind::Host, "ns1.contoso.com".into()))
        );
        assert_eq!(host_extract("  "), None);
    }

    #[test]
    fn empty_values_and_repeats_are_dropped() {
        let mut extracts = Extracts::default();
        extracts.push(ExtractKind::Email, Some("a@b.c"), "abuse.email");
        extracts.push(ExtractKind::Email, Some("a@b.c"), "abuse.email");
        extracts.push(ExtractKind::Email, Some("a@b.c"), "admin.email");
        extracts.push(ExtractKind::Email, Some(" "), "admin.email");
        extracts.push(ExtractKind::Email, None, "admin.email");
        assert_eq!(extracts.into_vec().len(), 2);
    }

    #[test]
    fn countries_keep_their_text_and_gain_a_code() {
        let mut extracts = Extracts::default();
        extracts.push(
            ExtractKind::Country,
            Some("united states"),
            "admin.address.countryOrRegion",
        );
        let extract = &extracts.into_vec()[0];
        assert_eq!(extract.value, "united states");
        assert_eq!(extract.country_code.as_deref(), Some("US"));
    }
}
