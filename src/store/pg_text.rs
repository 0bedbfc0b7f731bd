//! What Postgres can hold: text without NUL characters, and jsonb whose strings and keys have
//! none either. Every writer cleans what it binds through these.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::{to_raw_value, RawValue};
use serde_json::Value;
use sqlx::types::Json;

/// A `jsonb` parameter: JSON text, bound as it is (sqlx's `Json` adds only jsonb's version byte).
pub(super) type Jsonb = Json<Box<RawValue>>;

/// `text` without NUL characters, which Postgres text cannot hold.
pub(super) fn pg_text(text: &str) -> String {
    pg_str(text).into_owned()
}

/// [`pg_text`], borrowed when there is no NUL to drop: most text is bound as it is, uncopied.
pub(super) fn pg_str(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', ""))
    } else {
        Cow::Borrowed(text)
    }
}

/// [`pg_text`] of each text: a list bound as one `text[]` parameter.
pub(super) fn pg_texts(texts: &[String]) -> Vec<String> {
    texts.iter().map(|text| pg_text(text)).collect()
}

/// `value` without NUL characters in its strings and keys, which jsonb cannot hold.
fn pg_json(value: &Value) -> Value {
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

/// `value` as a [`Jsonb`] parameter without NUL characters, serialised once straight from its
/// type: no `Value` tree built, copied and serialised again for each of the thousands of rows a
/// result transaction binds.
pub(super) fn jsonb<T: Serialize + ?Sized>(value: &T) -> Jsonb {
    match to_raw_value(value) {
        // serde_json writes a NUL as `\u0000`, so text without those six characters holds none.
        // (A string holding them literally is written `\\u0000` and takes the slower way too.)
        Ok(raw) if !raw.get().contains(r"\u0000") => Json(raw),
        _ => {
            // serde_json fails only on a map whose keys are not strings; none is stored.
            let cleaned = pg_json(&serde_json::to_value(value).unwrap_or(Value::Null));
            Json(to_raw_value(&cleaned).unwrap_or_else(|_| RawValue::NULL.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonb_is_the_json_of_the_value_without_nuls() {
        #[derive(Serialize)]
        struct Evidence {
            source: &'static str,
            names: Vec<&'static str>,
        }
        let plain = Evidence {
            source: "passive \"dns\"",
            names: vec!["a.example"],
        };
        assert_eq!(
            jsonb(&plain).0.get(),
            r#"{"source":"passive \"dns\"","names":["a.example"]}"#
        );
        let nul = Evidence {
            source: "pass\u{0}ive",
            names: vec!["a\u{0}.example"],
        };
        assert_eq!(
            jsonb(&nul).0.get(),
            r#"{"names":["a.example"],"source":"passive"}"#
        );
        // The six characters themselves are text, not a NUL: they are kept.
        let literal = serde_json::json!({"k\u{0}": "\\u0000"});
        assert_eq!(jsonb(&literal).0.get(), r#"{"k":"\\u0000"}"#);
    }
}
