//! The message contract: decoding a delivery body into observable requests.
//!
//! A body is one of:
//!
//! - a JSON object `{"value": "evil[.]com", "kind": "domain", "enrichers": ["whois"],
//!   "force": false, "chain": {"depth": 2}, "source": "feed-x", "context": {...}}` where only
//!   `value` is required and unknown fields are ignored; `chain` is `true`, `false` or an object
//!   with `enabled` and/or `depth`;
//! - a JSON array of such objects (one message, many observables);
//! - `text/plain`, one observable a line; blank lines and lines starting with `#` are skipped.
//!
//! The content type decides (`application/json`, `text/plain`, parameters such as `charset`
//! ignored); without one the body is sniffed: a first non-whitespace byte `{` or `[` means JSON.
//! Problems with the whole body are a [`DecodeError`] (the message is rejected whole); problems
//! with one element are an [`Item::Invalid`], so the valid elements of a mixed array still get
//! processed. Nothing here panics on any input, and input is only ever echoed truncated.

use serde_json::Value;

/// The routing key `publish` sends under when given no source, and the source that items
/// without one are counted under.
pub const DEFAULT_ROUTING_KEY: &str = "publish";

/// How much of an offending input an error message echoes, in characters.
pub const ECHO_CHARS: usize = 200;

/// Limits applied before and while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Bodies over this many bytes are rejected whole (default 1 MiB).
    pub max_body_bytes: usize,
    /// Messages with more observables (valid or not) are rejected whole (default 10 000).
    pub max_items: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_body_bytes: 1024 * 1024,
            max_items: 10_000,
        }
    }
}

/// One observable asked for by a message. Nothing is validated beyond the JSON types: the
/// worker normalises `value` and parses `kind` and `enrichers`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservableRequest {
    /// Position in the message: the array index, 0 for a single object, and for text the
    /// ordinal of the observable among the non-blank, non-comment lines.
    pub index: usize,
    /// Raw value, not normalised (see `crate::observable::normalise`).
    pub value: String,
    /// Raw kind text.
    pub kind: Option<String>,
    /// Raw enricher names.
    pub enrichers: Option<Vec<String>>,
    pub force: bool,
    /// The message's say on infrastructure chaining; empty means the worker's defaults.
    pub chain: ChainRequest,
    pub source: Option<String>,
    /// Free-form context, any JSON, passed through.
    pub context: Option<Value>,
}

/// `"chain": true | false | {"enabled": bool, "depth": n}` of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChainRequest {
    pub enabled: Option<bool>,
    pub depth: Option<u32>,
}

/// Deepest walk a message may ask for: each hop multiplies the Graph requests.
pub const MAX_CHAIN_DEPTH: u32 = 3;

/// One element of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Request(ObservableRequest),
    /// An element that cannot be a request. `input` is the element, truncated; `code` is one of
    /// `not_an_object`, `missing_value`, `empty_value`, `wrong_type`, `out_of_range`; `reason`
    /// says what was wrong. It does not name the item: `index` does, and whoever reports it
    /// (the `rejected_inputs` row, the dead-letter reason) names it once, as it does for items
    /// the normaliser refuses.
    Invalid {
        index: usize,
        input: String,
        code: &'static str,
        reason: String,
    },
}

impl Item {
    pub fn index(&self) -> usize {
        match self {
            Item::Request(request) => request.index,
            Item::Invalid { index, .. } => *index,
        }
    }
}

/// Why a whole message was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("body is {size} bytes, more than the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("body is not valid UTF-8 (invalid byte sequence at byte {offset})")]
    NotUtf8 { offset: usize },
    #[error("unsupported content type {content_type:?}: expected application/json or text/plain")]
    UnsupportedContentType { content_type: String },
    #[error("body is not valid JSON: {message}")]
    InvalidJson { message: String },
    #[error("body must be a JSON object or an array of objects, got {found}")]
    WrongShape { found: &'static str },
    #[error("body holds no observables")]
    Empty,
    #[error("body holds {count} observables, more than the limit of {max}")]
    TooManyItems { count: usize, max: usize },
}

impl DecodeError {
    /// A short stable code for headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotUtf8 { .. } => "not_utf8",
            DecodeError::UnsupportedContentType { .. } => "unsupported_content_type",
            DecodeError::InvalidJson { .. } => "invalid_json",
            DecodeError::WrongShape { .. } => "wrong_shape",
            DecodeError::Empty => "empty",
            DecodeError::TooManyItems { .. } => "too_many_items",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Lines,
}

/// Decode a delivery body. See the module documentation for the contract.
pub fn decode(
    body: &[u8],
    content_type: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Vec<Item>, DecodeError> {
    if body.len() > limits.max_body_bytes {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            max: limits.max_body_bytes,
        });
    }
    let declared = content_type.and_then(format_of).transpose()?;
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let format = declared.unwrap_or_else(|| sniff(text));
    let items = match format {
        Format::Json => decode_json(text, limits)?,
        Format::Lines => decode_lines(text, limits)?,
    };
    if items.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(items)
}

/// The format a content type asks for; `None` when it is blank (then we sniff).
fn format_of(content_type: &str) -> Option<Result<Format, DecodeError>> {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "" => None,
        "application/json" => Some(Ok(Format::Json)),
        "text/plain" => Some(Ok(Format::Lines)),
        _ => Some(Err(DecodeError::UnsupportedContentType {
            content_type: truncate_chars(content_type, ECHO_CHARS),
        })),
    }
}

fn sniff(text: &str) -> Format {
    match text.trim_start().as_bytes().first() {
        Some(b'{') | Some(b'[') => Format::Json,
        _ => Format::Lines,
    }
}

fn decode_lines(text: &str, limits: &DecodeLimits) -> Result<Vec<Item>, DecodeError> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    if lines.len() > limits.max_items {
        return Err(DecodeError::TooManyItems {
            count: lines.len(),
            max: limits.max_items,
        });
    }
    Ok(lines
        .into_iter()
        .enumerate()
        .map(|(index, line)| {
            Item::Request(ObservableRequest {
                index,
                value: line.to_string(),
                kind: None,
                enrichers: None,
                force: false,
                chain: ChainRequest::default(),
                source: None,
                context: None,
            })
        })
        .collect())
}

fn decode_json(text: &str, limits: &DecodeLimits) -> Result<Vec<Item>, DecodeError> {
    if text.trim().is_empty() {
        return Err(DecodeError::Empty);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson {
        message: truncate_chars(&e.to_string(), ECHO_CHARS),
    })?;
    match value {
        Value::Object(_) => Ok(vec![item_of(0, &value)]),
        Value::Array(elements) => {
            if elements.len() > limits.max_items {
                return Err(DecodeError::TooManyItems {
                    count: elements.len(),
                    max: limits.max_items,
                });
            }
            Ok(elements
                .iter()
                .enumerate()
                .map(|(index, element)| item_of(index, element))
                .collect())
        }
        other => Err(DecodeError::WrongShape {
            found: type_name(&other),
        }),
    }
}

fn item_of(index: usize, element: &Value) -> Item {
    match request_of(index, element) {
        Ok(request) => Item::Request(request),
        Err((code, problem)) => Item::Invalid {
            index,
            input: echo(element),
            code,
            reason: problem,
        },
    }
}

fn request_of(index: usize, element: &Value) -> Result<ObservableRequest, (&'static str, String)> {
    let Value::Object(fields) = element else {
        return Err((
            "not_an_object",
            format!("must be an object, got {}", type_name(element)),
        ));
    };
    let value = match fields.get("value") {
        None | Some(Value::Null) => {
            return Err(("missing_value", "`value` is required".to_string()));
        }
        Some(Value::String(value)) if value.trim().is_empty() => {
            return Err(("empty_value", "`value` is empty".to_string()));
        }
        Some(Value::String(value)) => value.clone(),
        Some(other) => return Err(wrong_type("value", "a string", other)),
    };
    let kind = optional_string(fields.get("kind"), "kind")?;
    let source = optional_string(fields.get("source"), "source")?;
    let force = match fields.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(other) => return Err(wrong_type("force", "a boolean", other)),
    };
    let enrichers = match fields.get("enrichers") {
        None | Some(Value::Null) => None,
        Some(Value::Array(names)) => {
            let mut out = Vec::with_capacity(names.len());
            for (n, name) in names.iter().enumerate() {
                match name {
                    Value::String(name) => out.push(name.clone()),
                    other => {
                        return Err((
                            "wrong_type",
                            format!(
                                "`enrichers` must be an array of strings, element {n} is {}",
                                type_name(other)
                            ),
                        ))
                    }
                }
            }
            Some(out)
        }
        Some(other) => return Err(wrong_type("enrichers", "an array of strings", other)),
    };
    let chain = chain_of(fields.get("chain"))?;
    let context = match fields.get("context") {
        None | Some(Value::Null) => None,
        Some(context) => Some(context.clone()),
    };
    Ok(ObservableRequest {
        index,
        value,
        kind,
        enrichers,
        force,
        chain,
        source,
        context,
    })
}

fn chain_of(field: Option<&Value>) -> Result<ChainRequest, (&'static str, String)> {
    let expected = "a boolean or an object with `enabled` and `depth`";
    match field {
        None | Some(Value::Null) => Ok(ChainRequest::default()),
        Some(Value::Bool(enabled)) => Ok(ChainRequest {
            enabled: Some(*enabled),
            depth: None,
        }),
        Some(Value::Object(options)) => {
            let enabled = match options.get("enabled") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(enabled)) => Some(*enabled),
                Some(other) => return Err(wrong_type("chain.enabled", "a boolean", other)),
            };
            let depth = match options.get("depth") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(depth @ 1..) if depth <= u64::from(MAX_CHAIN_DEPTH) => Some(depth as u32),
                    _ => {
                        return Err((
                            "out_of_range",
                            format!("`chain.depth` must be a whole number from 1 to {MAX_CHAIN_DEPTH}, got {n}"),
                        ))
                    }
                },
                Some(other) => return Err(wrong_type("chain.depth", "a whole number", other)),
            };
            Ok(ChainRequest { enabled, depth })
        }
        Some(other) => Err(wrong_type("chain", expected, other)),
    }
}

fn optional_string(
    field: Option<&Value>,
    name: &str,
) -> Result<Option<String>, (&'static str, String)> {
    match field {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(wrong_type(name, "a string", other)),
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> (&'static str, String) {
    (
        "wrong_type",
        format!("`{field}` must be {expected}, got {}", type_name(got)),
    )
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn echo(value: &Value) -> String {
    truncate_chars(&value.to_string(), ECHO_CHARS)
}

/// Cut `text` to at most `max` characters (not bytes), marking the cut with `…`. Used for
/// everything that echoes untrusted input or ends up in a header.
pub(crate) fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => {
            let mut out = String::with_capacity(cut + 3);
            out.push_str(&text[..cut]);
            out.push('…');
            out
        }
    }
}
