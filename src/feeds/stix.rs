//! `stix`: a STIX 2.1 bundle (`{"type": "bundle", "objects": [...]}`), read whole.
//!
//! - An `indicator` whose `pattern_type` is `stix` (or absent) and whose pattern is one of
//!   [`pattern`]'s shapes gives one record per comparison; its context is the indicator's id,
//!   and its `labels` and `indicator_types` when present. Any other pattern skips the indicator,
//!   with the reason (`pattern uses AND`, `pattern_type is sigma, not stix`).
//! - A `domain-name`, `ipv4-addr`, `ipv6-addr` or `url` object gives its `value`; its context
//!   is its id.
//!
//! Other objects (reports, malware, relationships, other observables) hold nothing read here
//! and are passed over. Each object is decoded on its own, so one malformed indicator is
//! rejected with the reason and the rest of the bundle is still read.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::pattern::{self, PatternError, OBJECT_TYPES};
use super::{bounded_strings, Entry, Flow, Position, Record};
use crate::message::truncate_chars;

/// Labels and indicator types kept in a context, at most.
const MAX_CONTEXT_LIST: usize = 20;

#[derive(Deserialize)]
struct Bundle<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    objects: Vec<&'a RawValue>,
}

/// What every object has, read first to know what else to read.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

#[derive(Deserialize)]
struct Indicator {
    pattern: Option<String>,
    pattern_type: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    indicator_types: Vec<String>,
}

#[derive(Deserialize)]
struct Observable {
    value: String,
}

/// Read the bundle `document` holds, handing each entry to `sink`.
pub fn read(document: &[u8], sink: &mut dyn FnMut(Entry) -> Flow) -> Result<(), String> {
    let bundle: Bundle =
        serde_json::from_slice(document).map_err(|e| format!("not a STIX bundle: {e}"))?;
    if bundle.kind != "bundle" {
        return Err(format!(
            "not a STIX bundle: its type is {:?}",
            truncate_chars(&bundle.kind, 40)
        ));
    }
    for (index, object) in bundle.objects.iter().enumerate() {
        for entry in entries(index + 1, object) {
            if sink(entry) == Flow::Stop {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What object `number` holds.
fn entries(number: usize, object: &RawValue) -> Vec<Entry> {
    let head: Head = match serde_json::from_str(object.get()) {
        Ok(head) => head,
        Err(error) => {
            let position = Position::Object {
                number,
                name: format!("object {number}"),
            };
            return vec![Entry::rejected(
                position,
                object.get(),
                format!("not a STIX object: {error}"),
            )];
        }
    };
    let id = head
        .id
        .as_deref()
        .map_or_else(|| format!("#{number}"), |id| truncate_chars(id, 100));
    let position = Position::Object {
        number,
        name: format!("{} {id}", truncate_chars(&head.kind, 40)),
    };
    let context = json!({ "stix_id": id });
    match head.kind.as_str() {
        "indicator" => indicator(position, object, context),
        kind if OBJECT_TYPES.contains(&kind) => {
            match serde_json::from_str::<Observable>(object.get()) {
                Ok(observable) => vec![Entry::Record(Record {
                    kind: pattern::declared_kind(kind),
                    value: observable.value,
                    context: Some(context),
                    position,
                })],
                Err(error) => vec![Entry::rejected(
                    position,
                    object.get(),
                    format!("no string value: {error}"),
                )],
            }
        }
        _ => Vec::new(),
    }
}

/// The records an indicator's pattern gives, or why it gives none.
fn indicator(position: Position, object: &RawValue, mut context: Value) -> Vec<Entry> {
    let indicator: Indicator = match serde_json::from_str(object.get()) {
        Ok(indicator) => indicator,
        Err(error) => {
            return vec![Entry::rejected(
                position,
                object.get(),
                format!("not a STIX indicator: {error}"),
            )]
        }
    };
    let skipped = |reason: String| {
        vec![Entry::Skipped {
            position: position.clone(),
            what: "indicator",
            reason,
        }]
    };
    if let Some(kind) = indicator
        .pattern_type
        .as_deref()
        .filter(|kind| *kind != "stix")
    {
        return skipped(format!(
            "pattern_type is {}, not stix",
            truncate_chars(kind, 40)
        ));
    }
    let Some(text) = indicator.pattern.as_deref() else {
        return vec![Entry::rejected(
            position,
            object.get(),
            "the indicator has no pattern",
        )];
    };
    let comparisons = match pattern::parse(text) {
        Ok(comparisons) => comparisons,
        Err(PatternError::Unsupported(reason)) => return skipped(reason),
        Err(PatternError::Invalid(reason)) => {
            return vec![Entry::rejected(
                position,
                text,
                format!("pattern is not valid STIX: {reason}"),
            )]
        }
    };
    add_lists(&mut context, &indicator);
    comparisons
        .into_iter()
        .map(|comparison| {
            Entry::Record(Record {
                kind: comparison.kind(),
                value: comparison.value,
                context: Some(context.clone()),
                position: position.clone(),
            })
        })
        .collect()
}

/// The indicator's labels and types into its context, when it has them.
fn add_lists(context: &mut Value, indicator: &Indicator) {
    let Some(fields) = context.as_object_mut() else {
        return;
    };
    if !indicator.labels.is_empty() {
        let labels = bounded_strings(&indicator.labels, MAX_CONTEXT_LIST);
        fields.insert("labels".into(), labels);
    }
    if !indicator.indicator_types.is_empty() {
        let types = bounded_strings(&indicator.indicator_types, MAX_CONTEXT_LIST);
        fields.insert("indicator_types".into(), types);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(bundle: &str) -> Result<Vec<Entry>, String> {
        let mut out = Vec::new();
        read(bundle.as_bytes(), &mut |entry| {
            out.push(entry);
            Flow::Continue
        })?;
        Ok(out)
    }

    fn position(kind: &str, id: &str, number: usize) -> Position {
        Position::Object {
            number,
            name: format!("{kind} {id}"),
        }
    }

    #[test]
    fn an_or_pattern_gives_one_record_per_value_with_the_indicator_context() {
        let found = entries(
            r#"{"type": "bundle", "objects": [{"type": "indicator", "id": "indicator--1",
                "labels": ["c2"], "pattern_type": "stix",
                "pattern": "[ipv4-addr:value = '45.1.2.3'] OR [domain-name:value = 'a.com']"}]}"#,
        )
        .unwrap();
        let context = json!({"stix_id": "indicator--1", "labels": ["c2"]});
        let record = |value: &str, kind| {
            Entry::Record(Record {
                value: value.into(),
                kind,
                context: Some(context.clone()),
                position: position("indicator", "indicator--1", 1),
            })
        };
        assert_eq!(
            found,
            [
                record("45.1.2.3", Some(crate::observable::ObservableKind::Ipv4)),
                record("a.com", None)
            ]
        );
    }

    #[test]
    fn unread_patterns_are_skipped_and_broken_ones_rejected() {
        let found = entries(
            r#"{"type": "bundle", "objects": [
                {"type": "indicator", "id": "indicator--2", "pattern_type": "yara", "pattern": "rule x {}"},
                {"type": "indicator", "id": "indicator--3", "pattern": "[domain-name:value = 'a.com'"},
                {"type": "indicator", "id": "indicator--4"},
                {"type": "url", "id": "url--5", "value": 7},
                {"type": "note", "id": "note--6", "content": "not read"},
                "not an object"
            ]}"#,
        )
        .unwrap();
        let reasons: Vec<(String, String)> = found
            .iter()
            .map(|entry| match entry {
                Entry::Skipped {
                    position, reason, ..
                } => (position.to_string(), format!("skipped: {reason}")),
                Entry::Rejected {
                    position, reason, ..
                } => (position.to_string(), format!("rejected: {reason}")),
                Entry::Record(record) => panic!("{record:?}"),
            })
            .collect();
        let cut = |s: &str| s.split(':').take(2).collect::<Vec<_>>().join(":");
        let reasons: Vec<(String, String)> =
            reasons.into_iter().map(|(p, r)| (p, cut(&r))).collect();
        let expected = [
            (
                "indicator indicator--2",
                "skipped: pattern_type is yara, not stix",
            ),
            (
                "indicator indicator--3",
                "rejected: pattern is not valid STIX",
            ),
            (
                "indicator indicator--4",
                "rejected: the indicator has no pattern",
            ),
            ("url url--5", "rejected: no string value"),
            ("object 6", "rejected: not a STIX object"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(p, r)| (p.to_string(), r.to_string()))
            .collect();
        assert_eq!(reasons, expected);
    }

    #[test]
    fn what_is_not_a_bundle_stops_the_input() {
        assert!(entries(r#"{"type": "indicator"}"#)
            .unwrap_err()
            .contains("its type is \"indicator\""));
        assert!(entries("[1, 2]")
            .unwrap_err()
            .starts_with("not a STIX bundle"));
    }
}
