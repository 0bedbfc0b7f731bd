//! Serde types for the Graph threat intelligence records the enrichers read.
//!
//! Parsing is tolerant on purpose: Graph adds fields (ignored), sends `null` almost anywhere
//! (every field is optional), varies the case of type names (`hostName` beside `hostname`), and a
//! documentation example even carries `"String (timestamp)"` where a date belongs. One bad
//! timestamp becomes `None` for that field and never sinks the record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};

/// A timestamp that is `None` when absent, `null` or unparsable.
fn lenient_time<'de, D>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(match raw {
        Some(serde_json::Value::String(text)) => parse_time(&text),
        _ => None,
    })
}

/// Graph writes UTC with `Z`, with or without fractional seconds; RFC 3339 covers both.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    match DateTime::parse_from_rfc3339(text.trim()) {
        Ok(time) => Some(time.with_timezone(&Utc)),
        Err(_) => {
            tracing::debug!(value = %text.chars().take(64).collect::<String>(), "ignoring unparsable timestamp");
            None
        }
    }
}

/// A string field that may also arrive as a number or a bool; anything else becomes `None`.
fn lenient_string<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(match raw {
        Some(serde_json::Value::String(text)) => Some(text),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    })
}

/// A navigation stub: `{"id": "contoso.com"}`, sometimes with an `@odata.type`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct EntityRef {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(rename = "@odata.type", default, deserialize_with = "lenient_string")]
    pub odata_type: Option<String>,
}

/// What an `@odata.type` says an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactType {
    IpAddress,
    Hostname,
    Other,
}

impl EntityRef {
    pub fn artifact_type(&self) -> ArtifactType {
        artifact_type(self.odata_type.as_deref())
    }
}

/// Compared case-insensitively: Graph has shipped both `hostname` and `hostName`.
pub fn artifact_type(odata_type: Option<&str>) -> ArtifactType {
    let Some(name) = odata_type else {
        return ArtifactType::Other;
    };
    let short = name.rsplit('.').next().unwrap_or(name).to_ascii_lowercase();
    match short.as_str() {
        "ipaddress" => ArtifactType::IpAddress,
        "hostname" => ArtifactType::Hostname,
        _ => ArtifactType::Other,
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    #[serde(default, deserialize_with = "lenient_string")]
    pub city: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub country_or_region: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub postal_code: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub state: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub street: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WhoisContact {
    #[serde(default, deserialize_with = "lenient_string")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub fax: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub organization: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub telephone: Option<String>,
    #[serde(default)]
    pub address: Option<Address>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WhoisNameserver {
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub host: Option<EntityRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WhoisRecord {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub expiration_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub registration_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_update_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub whois_server: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub domain_status: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub raw_whois_text: Option<String>,
    #[serde(default)]
    pub abuse: Option<WhoisContact>,
    #[serde(default)]
    pub admin: Option<WhoisContact>,
    #[serde(default)]
    pub billing: Option<WhoisContact>,
    #[serde(default)]
    pub noc: Option<WhoisContact>,
    #[serde(default)]
    pub registrant: Option<WhoisContact>,
    #[serde(default)]
    pub registrar: Option<WhoisContact>,
    #[serde(default)]
    pub technical: Option<WhoisContact>,
    #[serde(default)]
    pub zone: Option<WhoisContact>,
    #[serde(default, deserialize_with = "lenient_list")]
    pub nameservers: Vec<WhoisNameserver>,
    #[serde(default)]
    pub host: Option<EntityRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutonomousSystem {
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: Option<String>,
    #[serde(default)]
    pub number: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub organization: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub value: Option<String>,
}

impl AutonomousSystem {
    /// The AS number, whether Graph sent it as the documented integer or as a string.
    pub fn number(&self) -> Option<u64> {
        match self.number.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().trim_start_matches("AS").parse().ok(),
            _ => None,
        }
    }
}

/// `hosts/{id}`: a `hostname` or an `ipAddress`; the fields of both live here, all optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    #[serde(rename = "@odata.type", default, deserialize_with = "lenient_string")]
    pub odata_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub registrar: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub registrant: Option<String>,
    #[serde(default)]
    pub autonomous_system: Option<AutonomousSystem>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub country_or_region: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub hosting_provider: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub netblock: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PassiveDnsRecord {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub collected_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub record_type: Option<String>,
    #[serde(default)]
    pub parent_host: Option<EntityRef>,
    #[serde(default)]
    pub artifact: Option<EntityRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostPair {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub link_kind: Option<String>,
    #[serde(default)]
    pub parent_host: Option<EntityRef>,
    #[serde(default)]
    pub child_host: Option<EntityRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subdomain {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub host: Option<EntityRef>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReputationRule {
    #[serde(default, deserialize_with = "lenient_string")]
    pub name: Option<String>,
    /// Usually a string; the `Cyber Threat Intelligence` rule has been seen with a list of actor
    /// names here, so the raw JSON is kept and read by the chaining.
    #[serde(default)]
    pub description: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub severity: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub related_details_url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostReputation {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub classification: Option<String>,
    #[serde(default)]
    pub score: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "lenient_list")]
    pub rules: Vec<ReputationRule>,
}

impl HostReputation {
    /// The 0-100 score, whether sent as a number or a numeric string.
    pub fn score(&self) -> Option<i32> {
        match self.score.as_ref()? {
            serde_json::Value::Number(n) => n.as_f64().map(|f| f.round() as i32),
            serde_json::Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f.round() as i32),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IntelligenceProfile {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "lenient_strings")]
    pub aliases: Vec<String>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_active_date_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IntelligenceProfileIndicator {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub source: Option<String>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub artifact: Option<EntityRef>,
}

/// A list whose elements that do not parse are dropped instead of failing the parent record.
fn lenient_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let raw = Option::<Vec<serde_json::Value>>::deserialize(deserializer).unwrap_or_default();
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| serde_json::from_value(item).ok())
        .collect())
}

fn lenient_strings<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(match raw {
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s],
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_with_and_without_milliseconds() {
        assert!(parse_time("2009-09-02T03:29:10.000Z").is_some());
        assert!(parse_time("2022-04-18T10:31:12Z").is_some());
    }

    #[test]
    fn one_bad_timestamp_does_not_sink_the_record() {
        let record: WhoisRecord = serde_json::from_value(serde_json::json!({
            "id": "abc",
            "expirationDateTime": "String (timestamp)",
            "firstSeenDateTime": "2022-04-18T10:31:12Z",
            "unknownField": {"nested": true},
            "nameservers": null,
            "abuse": null
        }))
        .unwrap();
        assert_eq!(record.id.as_deref(), Some("abc"));
        assert_eq!(record.expiration_date_time, None);
        assert!(record.first_seen_date_time.is_some());
        assert!(record.nameservers.is_empty());
    }

    #[test]
    fn type_names_compare_case_insensitively() {
        assert_eq!(
            artifact_type(Some("#microsoft.graph.security.hostName")),
            ArtifactType::Hostname
        );
        assert_eq!(
            artifact_type(Some("#microsoft.graph.security.ipAddress")),
            ArtifactType::IpAddress
        );
        assert_eq!(artifact_type(None), ArtifactType::Other);
    }

    #[test]
    fn a_malformed_list_element_is_dropped_not_fatal() {
        let rep: HostReputation = serde_json::from_value(serde_json::json!({
            "classification": "malicious",
            "score": "87",
            "rules": [{"name": "Registrar"}, 42]
        }))
        .unwrap();
        assert_eq!(rep.rules.len(), 1);
        assert_eq!(rep.score(), Some(87));
    }
}
