//! What Postgres can hold: text without NUL characters, and jsonb whose strings and keys have
//! none either. Every writer cleans what it binds through these.

use serde_json::Value;

/// `text` without NUL characters, which Postgres text cannot hold.
pub(super) fn pg_text(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "")
    } else {
        text.to_owned()
    }
}

/// [`pg_text`] of each text: a list bound as one `text[]` parameter.
pub(super) fn pg_texts(texts: &[String]) -> Vec<String> {
    texts.iter().map(|text| pg_text(text)).collect()
}

/// `value` without NUL characters in its strings and keys, which jsonb cannot hold.
pub(super) fn pg_json(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(pg_text(text)),
        Value::Array(items) => Value::Array(items.iter().map(pg_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (pg_text(key), pg_json(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}
