//! `misp`: a MISP event (`{"Event": {...}}`, as MISP exports it and as a MISP feed serves each
//! event file), read whole: the attributes in `Event.Attribute` and in each
//! `Event.Object[].Attribute`, numbered in that order.
//!
//! Attribute types read: `ip-src`, `ip-dst`, `ip-src|port` and `ip-dst|port` (the address),
//! `domain` and `hostname` (declared domain and host), `domain|ip` (both parts) and `url` (left
//! to the normaliser, which keeps its host). Other types are skipped, with the type in the
//! reason; with [`FeedOptions::misp_to_ids_only`] so are attributes whose `to_ids` is not true.
//! The context of a record is the event's `uuid` and `info` and the attribute's `uuid`.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{Entry, FeedOptions, Flow, Position, Record};
use crate::message::truncate_chars;
use crate::observable::ObservableKind;

#[derive(Deserialize)]
struct Document<'a> {
    #[serde(rename = "Event", borrow)]
    event: Event<'a>,
}

#[derive(Deserialize)]
struct Event<'a> {
    uuid: Option<String>,
    info: Option<String>,
    #[serde(rename = "Attribute", default, borrow)]
    attributes: Vec<&'a RawValue>,
    #[serde(rename = "Object", default, borrow)]
    objects: Vec<MispObject<'a>>,
}

#[derive(Deserialize)]
struct MispObject<'a> {
    #[serde(rename = "Attribute", default, borrow)]
    attributes: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Attribute {
    uuid: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    value: String,
    #[serde(default)]
    to_ids: Value,
}

/// Read the event `document` holds, handing each entry to `sink`.
pub fn read(
    document: &[u8],
    options: &FeedOptions,
    sink: &mut dyn FnMut(Entry) -> Flow,
) -> Result<(), String> {
    let document: Document = serde_json::from_slice(document)
        .map_err(|e| format!("not a MISP event (expected {{\"Event\": {{...}}}}): {e}"))?;
    let event = document.event;
    let context = event_context(&event);
    let objects = event.objects.iter().flat_map(|object| &object.attributes);
    for (index, attribute) in event.attributes.iter().chain(objects).enumerate() {
        for entry in entries(index + 1, attribute, &context, options.misp_to_ids_only) {
            if sink(entry) == Flow::Stop {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The event's part of every context: its uuid and info, when it has them.
fn event_context(event: &Event) -> Map<String, Value> {
    let mut context = Map::new();
    if let Some(uuid) = &event.uuid {
        context.insert("misp_event_uuid".into(), truncate_chars(uuid, 100).into());
    }
    if let Some(info) = &event.info {
        context.insert("misp_event_info".into(), truncate_chars(info, 200).into());
    }
    context
}

/// What attribute `number` holds.
fn entries(
    number: usize,
    raw: &RawValue,
    event: &Map<String, Value>,
    to_ids_only: bool,
) -> Vec<Entry> {
    let attribute: Attribute = match serde_json::from_str(raw.get()) {
        Ok(attribute) => attribute,
        Err(error) => {
            let name = format!("attribute #{number}");
            let position = Position::Object { number, name };
            return vec![Entry::rejected(
                position,
                raw.get(),
                format!("not a MISP attribute: {error}"),
            )];
        }
    };
    let uuid = attribute
        .uuid
        .as_deref()
        .map(|uuid| truncate_chars(uuid, 100));
    let name = format!(
        "attribute {}",
        uuid.clone().unwrap_or_else(|| format!("#{number}"))
    );
    let position = Position::Object { number, name };
    if to_ids_only && !is_true(&attribute.to_ids) {
        return vec![skipped(position, "to_ids is not true".into())];
    }
    let values = match values(&attribute) {
        Ok(values) => values,
        Err(Unread::Type) => {
            let reason = format!(
                "type {} is not an address, name or URL",
                truncate_chars(&attribute.kind, 40)
            );
            return vec![skipped(position, reason)];
        }
        Err(Unread::Shape(reason)) => {
            return vec![Entry::rejected(position, &attribute.value, reason)]
        }
    };
    let mut context = event.clone();
    if let Some(uuid) = uuid {
        context.insert("misp_attribute_uuid".into(), uuid.into());
    }
    let context = Value::Object(context);
    values
        .into_iter()
        .map(|(value, kind)| {
            Entry::Record(Record {
                value: value.to_string(),
                kind,
                context: Some(context.clone()),
                position: position.clone(),
            })
        })
        .collect()
}

/// Why an attribute gives no values.
enum Unread {
    /// Not a type read here.
    Type,
    /// A composite value without its `|`.
    Shape(String),
}

/// The values an attribute's type says it holds, with the kinds it declares.
fn values(attribute: &Attribute) -> Result<Vec<(&str, Option<ObservableKind>)>, Unread> {
    let value = attribute.value.as_str();
    let halves = || {
        value.split_once('|').ok_or_else(|| {
            Unread::Shape(format!(
                "a {} value has no `|` between its parts",
                attribute.kind
            ))
        })
    };
    Ok(match attribute.kind.as_str() {
        "ip-src" | "ip-dst" | "url" => vec![(value, None)],
        "ip-src|port" | "ip-dst|port" => vec![(halves()?.0, None)],
        "domain" => vec![(value, Some(ObservableKind::Domain))],
        "hostname" => vec![(value, Some(ObservableKind::Host))],
        "domain|ip" => {
            let (domain, ip) = halves()?;
            vec![(domain, Some(ObservableKind::Domain)), (ip, None)]
        }
        _ => return Err(Unread::Type),
    })
}

fn skipped(position: Position, reason: String) -> Entry {
    Entry::Skipped {
        position,
        what: "attribute",
        reason,
    }
}

/// `to_ids` as MISP writes it: `true`, or in older exports `"1"`, `1` or `"true"`.
fn is_true(to_ids: &Value) -> bool {
    match to_ids {
        Value::Bool(flag) => *flag,
        Value::Number(n) => n.as_u64() == Some(1),
        Value::String(text) => matches!(text.as_str(), "1" | "true" | "True"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(event: &str, to_ids_only: bool) -> Result<Vec<Entry>, String> {
        let options = FeedOptions {
            misp_to_ids_only: to_ids_only,
            ..FeedOptions::default()
        };
        let mut out = Vec::new();
        read(event.as_bytes(), &options, &mut |entry| {
            out.push(entry);
            Flow::Continue
        })?;
        Ok(out)
    }

    /// Each entry as `value kind` or `skipped: reason` / `rejected: reason`.
    fn shown(found: &[Entry]) -> Vec<String> {
        found
            .iter()
            .map(|entry| match entry {
                Entry::Record(r) => format!("{} {:?}", r.value, r.kind),
                Entry::Skipped { reason, .. } => format!("skipped: {reason}"),
                Entry::Rejected { reason, .. } => format!("rejected: {reason}"),
            })
            .collect()
    }

    const EVENT: &str = r#"{"Event": {"uuid": "e-1", "info": "Campaign", "Attribute": [
        {"uuid": "a-1", "type": "domain|ip", "value": "a.com|45.1.2.3", "to_ids": true},
        {"uuid": "a-2", "type": "ip-dst|port", "value": "45.1.2.4|443", "to_ids": "1"},
        {"uuid": "a-3", "type": "hostname", "value": "www.a.com", "to_ids": false},
        {"uuid": "a-4", "type": "domain|ip", "value": "b.com", "to_ids": true},
        {"uuid": "a-5", "type": "sha1", "value": "00", "to_ids": true}],
      "Object": [{"name": "url", "Attribute": [
        {"type": "url", "value": "https://c.com/x", "to_ids": 1}]}]}}"#;

    #[test]
    fn composite_values_give_their_parts_and_other_types_are_skipped() {
        assert_eq!(
            shown(&entries(EVENT, false).unwrap()),
            [
                "a.com Some(Domain)",
                "45.1.2.3 None",
                "45.1.2.4 None",
                "www.a.com Some(Host)",
                "rejected: a domain|ip value has no `|` between its parts",
                "skipped: type sha1 is not an address, name or URL",
                "https://c.com/x None",
            ]
        );
    }

    #[test]
    fn to_ids_only_skips_what_is_not_for_detection() {
        let found = entries(EVENT, true).unwrap();
        assert_eq!(shown(&found)[3], "skipped: to_ids is not true");
        assert_eq!(found.len(), 7);
    }

    #[test]
    fn the_context_names_the_event_and_the_attribute() {
        let found = entries(EVENT, false).unwrap();
        let Entry::Record(first) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!(
            first.context,
            Some(
                serde_json::json!({"misp_event_uuid": "e-1", "misp_event_info": "Campaign",
                                    "misp_attribute_uuid": "a-1"})
            )
        );
        assert_eq!(first.position.to_string(), "attribute a-1");
        let Entry::Record(last) = &found[6] else {
            panic!("{found:?}")
        };
        assert_eq!(last.position.to_string(), "attribute #6");
        assert_eq!(
            last.context,
            Some(serde_json::json!({"misp_event_uuid": "e-1", "misp_event_info": "Campaign"}))
        );
    }

    #[test]
    fn what_is_not_an_event_stops_the_input() {
        let error = entries(r#"{"response": []}"#, false).unwrap_err();
        assert!(error.starts_with("not a MISP event"), "{error}");
    }
}
