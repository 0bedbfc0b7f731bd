//! Serde types for the Graph threat intelligence records the enrichers read.
//!
//! Parsing is tolerant on purpose: Graph adds fields (ignored), sends `null` almost anywhere
//! (every field is optional), varies the case of type names (`hostName` beside `hostname`), and a
//! documentation example even carries `"String (timestamp)"` where a date belongs. One bad
//! timestamp becomes `None` for that field and never sinks the record.

use std::borrow::Cow;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Visitor methods for the JSON shapes a lenient visitor does not take: each is read through to
/// its end (a nested array or object included, so the rest of the document still parses) and
/// gives `Self::Value::default()`, what Graph sending a field in an unexpected shape reads as.
macro_rules! absent_otherwise {
    ($($shape:ident)*) => { $(absent_otherwise!(@ $shape);)* };
    (@ bool) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (@ i64) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (@ u64) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (@ f64) => {
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (@ str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (@ unit) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (@ seq) => {
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
    (@ map) => {
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map
                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                .is_some()
            {}
            Ok(Default::default())
        }
    };
}

/// A JSON scalar as Graph sent it, read without building a `serde_json::Value`: a string is
/// borrowed from the answer where it has no escapes, so a field that is only looked at (a
/// timestamp) costs no allocation.
#[derive(Default)]
enum Scalar<'de> {
    Str(Cow<'de, str>),
    Number(serde_json::Number),
    Bool(bool),
    /// `null`, an array or an object.
    #[default]
    Other,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    // The numbers a `serde_json::Value` would hold, so they print as they always did.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Scalar::Other, Scalar::Number))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    absent_otherwise!(unit seq map);
}

/// A timestamp that is `None` when absent, `null` or unparsable.
fn lenient_time<'de, D>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Str(text) => parse_time(&text),
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
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Str(text) => Some(text.into_owned()),
        Scalar::Number(n) => Some(n.to_string()),
        Scalar::Bool(b) => Some(b.to_string()),
        Scalar::Other => None,
    })
}

/// A navigation stub: `{"id": "contoso.com"}`, sometimes with an `@odata.type`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct EntityRef {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    #[serde(rename = "@odata.type", default, deserialize_with = "type_name")]
    pub odata_type: Option<Cow<'static, str>>,
}

/// The `@odata.type`s Graph sends on nearly every artifact, held as constants rather than a
/// copy per record.
const TYPE_NAMES: [&str; 3] = [
    "#microsoft.graph.security.ipAddress",
    "#microsoft.graph.security.hostname",
    "#microsoft.graph.security.hostName",
];

/// An `@odata.type`, read as [`lenient_string`] reads text.
fn type_name<'de, D>(deserializer: D) -> Result<Option<Cow<'static, str>>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Str(text) => Some(match TYPE_NAMES.iter().find(|known| **known == text) {
            Some(known) => Cow::Borrowed(*known),
            None => Cow::Owned(text.into_owned()),
        }),
        Scalar::Number(n) => Some(Cow::Owned(n.to_string())),
        Scalar::Bool(b) => Some(Cow::Owned(b.to_string())),
        Scalar::Other => None,
    })
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
    let short = name.rsplit('.').next().unwrap_or(name);
    if short.eq_ignore_ascii_case("ipaddress") {
        ArtifactType::IpAddress
    } else if short.eq_ignore_ascii_case("hostname") {
        ArtifactType::Hostname
    } else {
        ArtifactType::Other
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

/// A passive DNS record as far as the worker reads it: the mapping and the walk take the
/// artifact and the seen times, so its `id`, `collectedDateTime` and `recordType` are left out
/// (enrichment holds these records while the walk runs). `parentHost` stays, so a record whose
/// parent is not a host reference is still skipped.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PassiveDnsRecord {
    #[serde(default, deserialize_with = "lenient_time")]
    pub first_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_seen_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub parent_host: Option<EntityRef>,
    #[serde(default)]
    pub artifact: Option<EntityRef>,
}

/// A passive DNS record as a count of the names behind a host reads it: the artifact alone.
/// Its times and parent are skipped unread rather than parsed.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PassiveDnsArtifact {
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

/// A list whose elements that do not parse are dropped instead of failing the parent record;
/// a list in another shape is empty.
fn lenient_list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    deserializer.deserialize_any(ListVisitor(PhantomData))
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: DeserializeOwned> Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        // Each element is cut out whole first, so one that does not parse leaves the reader at
        // the next one.
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            if let Ok(item) = serde_json::from_str(raw.get()) {
                items.push(item);
            }
        }
        Ok(items)
    }

    absent_otherwise!(bool i64 u64 f64 str unit map);
}

/// One page of a collection as Graph answered it: the items that parsed, why the others did
/// not, and the link to the next page.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// One error per item left out.
    pub unreadable: Vec<serde_json::Error>,
    pub next_link: Option<String>,
}

impl<T: DeserializeOwned> Page<T> {
    /// Reads a page straight from the answer's bytes. Only a body that is not JSON (nor UTF-8,
    /// as JSON must be) fails: a body of another shape is an empty last page, a `value` that is
    /// not a list holds no items, a next link that is not a string is none, and an item that
    /// does not parse is left out on its own.
    pub fn read(body: &[u8]) -> Result<Page<T>, serde_json::Error> {
        let text = std::str::from_utf8(body).map_err(|e| {
            <serde_json::Error as de::Error>::custom(format_args!("the answer is not UTF-8: {e}"))
        })?;
        // Items almost always all parse, so the page is first read in one pass. Any error means
        // reading it again item by item, which finds what the one pass would have and which
        // items to leave out.
        match serde_json::from_str::<PageParts<Items<T>>>(text) {
            Ok(parts) => Ok(Page {
                items: parts.items.0,
                unreadable: Vec::new(),
                next_link: parts.next_link,
            }),
            Err(_) => Self::read_item_by_item(text),
        }
    }

    /// [`read`](Self::read) with each item cut out whole before it is parsed, so that one that
    /// does not parse leaves the reader at the next.
    fn read_item_by_item(text: &str) -> Result<Page<T>, serde_json::Error> {
        let raw: PageParts<Items<&RawValue>> = serde_json::from_str(text)?;
        let mut page = Page {
            items: Vec::with_capacity(raw.items.0.len()),
            unreadable: Vec::new(),
            next_link: raw.next_link,
        };
        for item in raw.items.0 {
            match serde_json::from_str(item.get()) {
                Ok(parsed) => page.items.push(parsed),
                Err(error) => page.unreadable.push(error),
            }
        }
        Ok(page)
    }
}

/// A page's items as `I` (parsed, or cut out unparsed) and its next link.
#[derive(Default)]
struct PageParts<I> {
    items: I,
    next_link: Option<String>,
}

impl<'de, I: Deserialize<'de> + Default> Deserialize<'de> for PageParts<I> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PageVisitor(PhantomData))
    }
}

struct PageVisitor<I>(PhantomData<I>);

impl<'de, I: Deserialize<'de> + Default> Visitor<'de> for PageVisitor<I> {
    type Value = PageParts<I>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a collection page")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut page = PageParts::default();
        // A key given twice counts as its last value, as in any JSON object read whole.
        while let Some(key) = map.next_key::<PageKey>()? {
            match key {
                PageKey::Value => page.items = map.next_value::<I>()?,
                PageKey::NextLink => page.next_link = map.next_value::<NextLink>()?.0,
                PageKey::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(page)
    }

    absent_otherwise!(bool i64 u64 f64 str unit seq);
}

enum PageKey {
    Value,
    NextLink,
    Other,
}

impl<'de> Deserialize<'de> for PageKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = PageKey;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<PageKey, E> {
                Ok(match key {
                    "value" => PageKey::Value,
                    "@odata.nextLink" => PageKey::NextLink,
                    _ => PageKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A page's `value`: its items as `Item` (each parsed, or cut out unparsed as a `&RawValue`), or
/// none when it is not a list. An element that does not read as `Item` fails the whole value.
struct Items<Item>(Vec<Item>);

impl<Item> Default for Items<Item> {
    fn default() -> Self {
        Items(Vec::new())
    }
}

impl<'de, Item: Deserialize<'de>> Deserialize<'de> for Items<Item> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor<Item>(PhantomData<Item>);
        impl<'de, Item: Deserialize<'de>> Visitor<'de> for ItemsVisitor<Item> {
            type Value = Items<Item>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of items")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element::<Item>()? {
                    items.push(item);
                }
                Ok(Items(items))
            }

            absent_otherwise!(bool i64 u64 f64 str unit map);
        }
        deserializer.deserialize_any(ItemsVisitor(PhantomData))
    }
}

/// A page's `@odata.nextLink`, or none when it is not a string.
#[derive(Default)]
struct NextLink(Option<String>);

impl<'de> Deserialize<'de> for NextLink {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LinkVisitor;
        impl<'de> Visitor<'de> for LinkVisitor {
            type Value = NextLink;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a link")
            }

            fn visit_str<E: de::Error>(self, link: &str) -> Result<NextLink, E> {
                Ok(NextLink(Some(link.to_owned())))
            }

            absent_otherwise!(bool i64 u64 f64 unit seq map);
        }
        deserializer.deserialize_any(LinkVisitor)
    }
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
    fn a_record_read_for_its_artifact_reads_the_same_artifact_as_the_whole_record() {
        let body = br##"{"firstSeenDateTime": "2022-04-18T10:31:12Z", "lastSeenDateTime": 7,
            "collectedDateTime": "2023-01-01T00:00:00Z", "recordType": "A",
            "parentHost": {"id": "contoso.com", "@odata.type": "#microsoft.graph.security.hostname"},
            "artifact": {"id": "20.0.0.1", "@odata.type": "#microsoft.graph.security.ipAddress"}}"##;
        let whole: PassiveDnsRecord = serde_json::from_slice(body).unwrap();
        let artifact: PassiveDnsArtifact = serde_json::from_slice(body).unwrap();
        assert_eq!(artifact.artifact, whole.artifact);
        assert_eq!(
            artifact.artifact.map(|a| a.artifact_type()),
            Some(ArtifactType::IpAddress)
        );
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
    fn text_fields_read_numbers_and_bools_as_text_and_other_shapes_as_absent() {
        let body = br#"{"id": 12, "whoisServer": 1.5, "domainStatus": true,
            "rawWhoisText": {"a": [1]}, "registrationDateTime": ["x"],
            "firstSeenDateTime": "2022-04-18T10:31:12Z", "host": {"id": "a\u0062c"}}"#;
        let record: WhoisRecord = serde_json::from_slice(body).unwrap();
        assert_eq!(record.id.as_deref(), Some("12"));
        assert_eq!(record.whois_server.as_deref(), Some("1.5"));
        assert_eq!(record.domain_status.as_deref(), Some("true"));
        assert_eq!(record.raw_whois_text, None);
        assert_eq!(record.registration_date_time, None);
        assert!(record.first_seen_date_time.is_some());
        assert_eq!(record.host.unwrap().id.as_deref(), Some("abc"));
    }

    #[test]
    fn a_list_in_another_shape_is_empty_and_the_record_still_reads() {
        let body = br#"{"rules": {"name": "x"}, "classification": "malicious", "score": 3}"#;
        let rep: HostReputation = serde_json::from_slice(body).unwrap();
        assert!(rep.rules.is_empty());
        assert_eq!(rep.classification.as_deref(), Some("malicious"));
        assert_eq!(rep.score(), Some(3));
    }

    #[test]
    fn a_page_keeps_the_items_that_parse_and_says_why_the_others_did_not() {
        let body = br#"{"@odata.context": "x", "value": [
            {"id": "a", "childHost": {"id": "1.2.3.4"}}, "junk", {"id": "b", "childHost": 7},
            {"id": "c"}], "@odata.nextLink": "https://graph/next"}"#;
        let page = Page::<HostPair>::read(body).unwrap();
        let ids: Vec<_> = page
            .items
            .iter()
            .map(|r| r.id.as_deref().unwrap())
            .collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(page.unreadable.len(), 2);
        assert_eq!(page.next_link.as_deref(), Some("https://graph/next"));
    }

    #[test]
    fn a_page_in_another_shape_is_an_empty_last_page_but_broken_json_fails() {
        for body in [
            &br#"[1, 2]"#[..],
            br#""x""#,
            b"null",
            br#"{"value": {"a": 1}}"#,
        ] {
            let page = Page::<Subdomain>::read(body).unwrap();
            assert!(page.items.is_empty() && page.next_link.is_none());
        }
        let page = Page::<Subdomain>::read(br#"{"value": 3, "@odata.nextLink": "n"}"#).unwrap();
        assert_eq!(page.next_link.as_deref(), Some("n"));
        let page = Page::<Subdomain>::read(br#"{"value": [], "@odata.nextLink": 5}"#).unwrap();
        assert_eq!(page.next_link, None);
        assert!(Page::<Subdomain>::read(br#"{"value": [{"id": "a"}"#).is_err());
        assert!(Page::<Subdomain>::read(b"{\"value\": [\"\xff\"]}").is_err());
    }

    /// Pages whose items all parse are read in one pass; any other page item by item.
    fn assert_one_pass_reads_as_item_by_item<T: DeserializeOwned + std::fmt::Debug>(body: &str) {
        let read = Page::<T>::read(body.as_bytes());
        let by_item = Page::<T>::read_item_by_item(body);
        assert_eq!(format!("{read:?}"), format!("{by_item:?}"), "{body}");
    }

    #[test]
    fn a_page_read_in_one_pass_is_the_page_read_item_by_item() {
        let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
        let pages = [
            r#"{"@odata.context": "x", "value": [{"id": "a", "childHost": {"id": "1.2.3.4"},
                "lastSeenDateTime": "2022-04-18T10:31:12Z", "extra": {"n": [1, {"m": null}]}},
                {"id": "b\u00e9\n", "parentHost": {"id": "hé.example"}}],
                "@odata.nextLink": "https://graph/next"}"#
                .to_owned(),
            r#"{"value": [{"id": "a"}, "junk", {"id": "c", "childHost": 7}]}"#.to_owned(),
            r#"{"value": [{"id": "a"}], "value": [{"id": "b"}], "@odata.nextLink": 5}"#.to_owned(),
            r#"{"value": {"id": "a"}, "@odata.nextLink": "n"}"#.to_owned(),
            r#"[{"id": "a"}]"#.to_owned(),
            r#"{"value": [{"id": "a"}"#.to_owned(),
            // Unmapped values are skipped however deep, in the page or alone.
            format!(r#"{{"value": [{{"id": "a", "x": {deep}}}]}}"#),
        ];
        for page in &pages {
            assert_one_pass_reads_as_item_by_item::<HostPair>(page);
            assert_one_pass_reads_as_item_by_item::<Subdomain>(page);
            assert_one_pass_reads_as_item_by_item::<PassiveDnsRecord>(page);
        }
    }

    #[test]
    fn a_page_that_is_not_utf8_fails_even_where_nothing_is_read() {
        assert!(Page::<Subdomain>::read(b"{\"value\": [], \"note\": \"\xff\"}").is_err());
    }

    #[test]
    fn a_key_given_twice_in_a_page_counts_as_its_last_value() {
        let body = br#"{"value": [{"id": "a"}], "@odata.nextLink": "1",
            "value": [{"id": "b"}], "@odata.nextLink": "2"}"#;
        let page = Page::<Subdomain>::read(body).unwrap();
        assert_eq!(page.items[0].id.as_deref(), Some("b"));
        assert_eq!(page.next_link.as_deref(), Some("2"));
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
