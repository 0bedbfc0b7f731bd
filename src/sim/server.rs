//! HTTP side of the simulator: routing, auth, misbehaviour, OData query options and paging.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};

use super::data::{self, HostKey, PairFilter};
use super::{RetryAfterFormat, Shared, TokenProblem, Verdict};

/// The content type Graph sends with JSON answers.
const GRAPH_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sim/counters", get(counters).delete(reset_counters))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .fallback(graph)
        .with_state(shared)
}

async fn counters(State(sh): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(sh.control.counters()))
}

async fn reset_counters(State(sh): State<Arc<Shared>>) -> StatusCode {
    sh.control.reset_counters();
    StatusCode::NO_CONTENT
}

// ---------------------------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------------------------

/// An Entra ID (AADSTS) error answer.
fn aad_error(status: StatusCode, error: &str, code: u32, description: String) -> Response {
    let now = chrono::Utc::now();
    let body = json!({
        "error": error,
        "error_description": format!(
            "{description}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            now.format("%Y-%m-%d %H:%M:%SZ")
        ),
        "error_codes": [code],
        "timestamp": now.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, Json(body)).into_response()
}

async fn token(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let c = &sh.control;
    c.bump("token");
    // Parsed by hand rather than with axum's Form so that odd bodies get AADSTS errors, not
    // axum's plain-text rejections. Later duplicates win, like most form parsers.
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if let Some(refusal) = token_refusal(&sh, field) {
        return refusal;
    }
    issue_token(&sh, field("client_id").unwrap_or(""))
}

/// The AADSTS error for a token request that is not a valid client-credentials request of the
/// configured client.
fn token_refusal<'a>(sh: &Shared, field: impl Fn(&str) -> Option<&'a str>) -> Option<Response> {
    let c = &sh.control;
    match field("grant_type") {
        None => return Some(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'."
                .to_string(),
        )),
        Some("client_credentials") => {}
        Some(other) => {
            return Some(aad_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
            ))
        }
    }
    let client_id = field("client_id").unwrap_or("");
    if client_id != sh.config.client_id {
        c.bump("unauthorized");
        return Some(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700016,
            format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
            ),
        ));
    }
    if field("client_secret") != Some(sh.config.client_secret.as_str()) {
        c.bump("unauthorized");
        return Some(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            format!(
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the \
                 request is the client secret value, not the client secret ID, for a secret added to \
                 app '{client_id}'."
            ),
        ));
    }
    let scope = field("scope").unwrap_or("");
    if !scope.ends_with("/.default") {
        return Some(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "AADSTS1002012: The provided value for scope '{scope}' is not valid. Client credential \
                 flows must have a scope value with /.default suffixed to the resource identifier."
            ),
        ));
    }
    None
}

/// A new access token for `client_id`, remembered until it expires.
fn issue_token(sh: &Shared, client_id: &str) -> Response {
    let ttl = sh.config.token_ttl;
    // JWT-shaped (unsigned) so that a client which peeks at the token finds what it expects;
    // the simulator itself only compares the whole string.
    let exp = chrono::Utc::now().timestamp() + ttl.as_secs() as i64;
    let header = data::base64(br#"{"typ":"JWT","alg":"none"}"#, true);
    let claims = json!({
        "aud": "https://graph.microsoft.com",
        "appid": client_id,
        "exp": exp,
        "roles": ["ThreatIntelligence.Read.All"],
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    let access_token = format!(
        "{header}.{}.sim",
        data::base64(claims.to_string().as_bytes(), true)
    );
    sh.control.issue_token(access_token.clone(), ttl);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "ext_expires_in": ttl.as_secs(),
        "access_token": access_token,
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Graph errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
}

/// The Graph error code usually seen with a status.
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "InvalidAuthenticationToken",
        403 => "Forbidden",
        404 => "NotFound",
        429 => "TooManyRequests",
        500 => "generalException",
        502 => "BadGateway",
        503 => "serviceNotAvailable",
        504 => "gatewayTimeout",
        _ => "UnknownError",
    }
}

fn message_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "Too many requests. Retry after the period given in Retry-After.",
        500 => "An internal server error occurred.",
        502 => "Bad gateway.",
        503 => "The service is temporarily unavailable. Please retry later.",
        504 => "The upstream service did not answer in time.",
        _ => "The request failed.",
    }
}

fn graph_error(err: ApiError, request_id: &str) -> Response {
    let body = json!({
        "error": {
            "code": err.code,
            "message": err.message,
            "innerError": {
                "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    });
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = err.status;
    set_graph_headers(resp.headers_mut(), request_id);
    resp
}

fn set_graph_headers(h: &mut HeaderMap, request_id: &str) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(GRAPH_JSON));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("request-id", v.clone());
        h.insert("client-request-id", v);
    }
}

fn retry_after_value(format: RetryAfterFormat, wait: Duration) -> String {
    match format {
        RetryAfterFormat::Seconds => format!("{:.3}", wait.as_secs_f64().max(0.001)),
        RetryAfterFormat::HttpDate => {
            // HTTP-dates have whole seconds: round up (at least one), never tell a client to
            // come back before the bucket has refilled.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs.max(1)))
        }
    }
}

fn with_retry_after(mut resp: Response, format: RetryAfterFormat, wait: Duration) -> Response {
    if let Ok(v) = HeaderValue::from_str(&retry_after_value(format, wait)) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostSub {
    Entity,
    Whois,
    PassiveDns,
    PassiveDnsReverse,
    HostPairs,
    ParentHostPairs,
    ChildHostPairs,
    Subdomains,
    Reputation,
}

impl HostSub {
    fn from_segment(seg: &str) -> Option<HostSub> {
        const ALL: [(&str, HostSub); 8] = [
            ("whois", HostSub::Whois),
            ("passiveDns", HostSub::PassiveDns),
            ("passiveDnsReverse", HostSub::PassiveDnsReverse),
            ("hostPairs", HostSub::HostPairs),
            ("parentHostPairs", HostSub::ParentHostPairs),
            ("childHostPairs", HostSub::ChildHostPairs),
            ("subdomains", HostSub::Subdomains),
            ("reputation", HostSub::Reputation),
        ];
        ALL.iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(seg))
            .map(|(_, s)| *s)
    }

    fn counter(self) -> &'static str {
        match self {
            HostSub::Entity => "host",
            HostSub::Whois => "whois",
            HostSub::PassiveDns => "passiveDns",
            HostSub::PassiveDnsReverse => "passiveDnsReverse",
            HostSub::HostPairs => "hostPairs",
            HostSub::ParentHostPairs => "parentHostPairs",
            HostSub::ChildHostPairs => "childHostPairs",
            HostSub::Subdomains => "subdomains",
            HostSub::Reputation => "reputation",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Host(String, HostSub),
    Profiles,
    Profile(String),
    Indicators(String),
    /// No such resource; carries the first segment that did not match.
    Unknown(String),
}

impl Route {
    fn counter(&self) -> Option<&'static str> {
        match self {
            Route::Host(_, sub) => Some(sub.counter()),
            Route::Profiles | Route::Profile(_) => Some("intelProfiles"),
            Route::Indicators(_) => Some("intelProfileIndicators"),
            Route::Unknown(_) => None,
        }
    }

    /// The `$metadata#...` fragment of `@odata.context`.
    fn context(&self) -> &'static str {
        match self {
            Route::Host(_, sub) => match sub {
                HostSub::Entity => "security/threatIntelligence/hosts/$entity",
                HostSub::Whois => "security/threatIntelligence/whoisRecords/$entity",
                HostSub::PassiveDns | HostSub::PassiveDnsReverse => {
                    "Collection(microsoft.graph.security.passiveDnsRecord)"
                }
                HostSub::HostPairs | HostSub::ParentHostPairs | HostSub::ChildHostPairs => {
                    "Collection(microsoft.graph.security.hostPair)"
                }
                HostSub::Subdomains => "Collection(microsoft.graph.security.subdomain)",
                HostSub::Reputation => "microsoft.graph.security.hostReputation",
            },
            Route::Profiles => "security/threatIntelligence/intelProfiles",
            Route::Profile(_) => "security/threatIntelligence/intelProfiles/$entity",
            Route::Indicators(_) => {
                "Collection(microsoft.graph.security.intelligenceProfileIndicator)"
            }
            Route::Unknown(_) => "Collection(Edm.Untyped)",
        }
    }
}

/// A Graph path, routed. `key` is the override key (decoded, lower case, relative to
/// `/security/threatIntelligence/`).
#[derive(Debug)]
struct Parsed {
    route: Route,
    key: String,
}

/// Routes a raw request path under `/v1.0`. Segments are split before decoding, so an encoded
/// `/` inside a host key stays part of the key (and then fails the host-name check → 404).
fn parse_path(path: &str) -> Result<Parsed, ApiError> {
    let rest = path.strip_prefix("/v1.0").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let raw: Vec<&str> = rest.split('/').collect();
    let mut segs = Vec::with_capacity(raw.len());
    for s in &raw {
        let decoded = percent_decode_str(s).decode_utf8().map_err(|_| {
            ApiError::bad_request(format!("Invalid percent-encoding in path segment '{s}'."))
        })?;
        segs.push(decoded.into_owned());
    }
    let ti = segs.len() >= 2
        && segs[0].eq_ignore_ascii_case("security")
        && segs[1].eq_ignore_ascii_case("threatIntelligence");
    if !ti {
        let first = segs.first().cloned().unwrap_or_default();
        return Ok(Parsed {
            route: Route::Unknown(first),
            key: String::new(),
        });
    }
    let rest = &segs[2..];
    let key = rest.join("/").to_lowercase();
    let is = |s: &String, name: &str| s.eq_ignore_ascii_case(name);
    let route = match rest {
        [h, id] if is(h, "hosts") => Route::Host(id.clone(), HostSub::Entity),
        [h, id, sub] if is(h, "hosts") => match HostSub::from_segment(sub) {
            Some(sub) => Route::Host(id.clone(), sub),
            None => Route::Unknown(sub.clone()),
        },
        [p] if is(p, "intelProfiles") => Route::Profiles,
        [p, id] if is(p, "intelProfiles") => Route::Profile(id.clone()),
        [p, id, i] if is(p, "intelProfiles") && is(i, "indicators") => {
            Route::Indicators(id.clone())
        }
        [] => Route::Unknown("threatIntelligence".to_string()),
        [first, ..] => Route::Unknown(first.clone()),
    };
    Ok(Parsed { route, key })
}

// ---------------------------------------------------------------------------------------------
// OData query options
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Query {
    top: Option<usize>,
    skip: usize,
    count: bool,
    select: Option<Vec<String>>,
    filter: Vec<(Vec<String>, Value)>,
    search: Option<String>,
    orderby: Vec<(Vec<String>, bool)>,
}

/// The option name without `$`, lower case (Graph v1.0 accepts both `$top` and `top`).
fn option_name(k: &str) -> String {
    k.trim_start_matches('$').to_ascii_lowercase()
}

fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let v = v.trim();
        match option_name(&k).as_str() {
            "top" => q.top = Some(non_negative("$top", v)?),
            "skip" => q.skip = non_negative("$skip", v)?,
            "count" => q.count = parse_count(v)?,
            "select" => {
                q.select = Some(
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            }
            "filter" => q.filter = parse_filter(v)?,
            "search" => {
                let term = v.trim_matches('"').trim();
                q.search = (!term.is_empty()).then(|| term.to_lowercase());
            }
            "orderby" => q.orderby = parse_orderby(v)?,
            // `$skiptoken` is never issued here, `$format`, `$expand` and unknown options are
            // ignored (Graph ignores some unknown options too).
            _ => {}
        }
    }
    Ok(q)
}

/// `$top` or `$skip`.
fn non_negative(option: &str, v: &str) -> Result<usize, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid value '{v}' for {option}: expected a non-negative integer."
        ))
    })
}

fn parse_count(v: &str) -> Result<bool, ApiError> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value '{v}' for $count: expected true or false."
        ))),
    }
}

/// `$orderby`: comma-separated property paths, each optionally `asc` or `desc`.
fn parse_orderby(v: &str) -> Result<Vec<(Vec<String>, bool)>, ApiError> {
    v.split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            let mut parts = c.split_whitespace();
            let path = parts.next().unwrap_or("");
            let desc = match parts.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid $orderby direction '{other}'."
                    )))
                }
            };
            Ok((split_path(path), desc))
        })
        .collect()
}

fn split_path(p: &str) -> Vec<String> {
    p.trim().split('/').map(str::to_string).collect()
}

/// Splits `s` on `sep` (ASCII, compared case-insensitively) outside single-quoted literals.
fn split_outside_quotes<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let lower = s.to_ascii_lowercase();
    let mut parts = Vec::new();
    let (mut start, mut in_quote) = (0, false);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            in_quote = !in_quote;
        } else if !in_quote && lower.as_bytes()[i..].starts_with(sep.as_bytes()) {
            parts.push(&s[start..i]);
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// `path eq 'value' [and path eq 'value' ...]`: the subset Graph documents for host pairs.
fn parse_filter(s: &str) -> Result<Vec<(Vec<String>, Value)>, ApiError> {
    let invalid = || ApiError::bad_request(format!("Invalid $filter clause: '{s}'."));
    if s.is_empty() {
        return Ok(Vec::new());
    }
    split_outside_quotes(s, " and ")
        .into_iter()
        .map(|clause| {
            let parts = split_outside_quotes(clause, " eq ");
            let [path, value] = parts.as_slice() else {
                return Err(invalid());
            };
            let path = path.trim();
            let value = value.trim();
            let path_ok = !path.is_empty()
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/@._".contains(c));
            if !path_ok {
                return Err(invalid());
            }
            let value = if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
                Value::String(value[1..value.len() - 1].replace("''", "'"))
            } else {
                // null, true, false, numbers.
                serde_json::from_str(value).map_err(|_| invalid())?
            };
            Ok((split_path(path), value))
        })
        .collect()
}

fn at_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, seg| cur.get(seg.as_str()))
}

fn matches_filter(item: &Value, filter: &[(Vec<String>, Value)]) -> bool {
    filter.iter().all(|(path, want)| {
        let got = at_path(item, path).unwrap_or(&Value::Null);
        match (got, want) {
            // Case-insensitive like most Graph string comparisons.
            (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        }
    })
}

fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        // Missing and null sort first; mixed types keep their order.
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// `$select`: keep the listed properties plus `id` and `@odata.type`.
fn apply_select(v: Value, select: &Option<Vec<String>>) -> Value {
    let (Some(fields), Value::Object(map)) = (select, &v) else {
        return v;
    };
    let kept: Map<String, Value> = map
        .iter()
        .filter(|(k, _)| {
            *k == "id" || *k == "@odata.type" || fields.iter().any(|f| f.eq_ignore_ascii_case(k))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept)
}

// ---------------------------------------------------------------------------------------------
// Graph handler
// ---------------------------------------------------------------------------------------------

/// What an answer needs to know about its request.
struct Ctx<'a> {
    /// `http://host:port` (or `https`), from the Host header.
    origin: String,
    path: &'a str,
    raw_query: Option<&'a str>,
    page_size: usize,
    max_page_size: usize,
}

impl Ctx<'_> {
    fn metadata(&self, fragment: &str) -> String {
        format!("{}/v1.0/$metadata#{fragment}", self.origin)
    }

    /// The request URL with `$top`/`$skip` replaced; other options are kept byte for byte.
    fn next_link(&self, top: usize, skip: usize) -> String {
        let mut parts: Vec<&str> = self
            .raw_query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let k = p.split('=').next().unwrap_or("");
                let k = percent_decode_str(k).decode_utf8_lossy();
                !matches!(option_name(&k).as_str(), "top" | "skip")
            })
            .collect();
        let paging = format!("$top={top}&$skip={skip}");
        parts.push(&paging);
        format!("{}{}?{}", self.origin, self.path, parts.join("&"))
    }
}

fn entity(mut v: Value, q: &Query, ctx: &Ctx, fragment: &str) -> Value {
    if let Value::Object(map) = &mut v {
        map.insert(
            "@odata.context".to_string(),
            Value::String(ctx.metadata(fragment)),
        );
    }
    apply_select(v, &q.select)
}

fn collection(mut items: Vec<Value>, q: &Query, ctx: &Ctx, fragment: &str) -> Value {
    if !q.filter.is_empty() {
        items.retain(|i| matches_filter(i, &q.filter));
    }
    if let Some(term) = &q.search {
        items.retain(|i| i.to_string().to_lowercase().contains(term));
    }
    if !q.orderby.is_empty() {
        items.sort_by(|a, b| {
            q.orderby
                .iter()
                .map(|(path, desc)| {
                    let o = cmp_values(at_path(a, path), at_path(b, path));
                    if *desc {
                        o.reverse()
                    } else {
                        o
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    let total = items.len();
    let top = page_top(q, ctx);
    let page: Vec<Value> = items
        .into_iter()
        .skip(q.skip)
        .take(top)
        .map(|i| apply_select(i, &q.select))
        .collect();
    page_body(page, total, top, q, ctx, fragment)
}

/// A collection whose items are built by index (a shared host's thousands of passive DNS
/// records): only the requested page is built, unless a filter, search or order needs them
/// all. Answers exactly what [`collection`] would for the same items.
fn indexed_collection(
    total: usize,
    item: impl Fn(usize) -> Value,
    q: &Query,
    ctx: &Ctx,
    fragment: &str,
) -> Value {
    if !q.filter.is_empty() || q.search.is_some() || !q.orderby.is_empty() {
        return collection((0..total).map(item).collect(), q, ctx, fragment);
    }
    let top = page_top(q, ctx);
    let end = q.skip.saturating_add(top).min(total);
    let page: Vec<Value> = (q.skip.min(end)..end)
        .map(|i| apply_select(item(i), &q.select))
        .collect();
    page_body(page, total, top, q, ctx, fragment)
}

/// The page size of a request: `$top`, else the default, capped.
fn page_top(q: &Query, ctx: &Ctx) -> usize {
    // A zero page size would make nextLink loop forever.
    q.top
        .unwrap_or(ctx.page_size.max(1))
        .min(ctx.max_page_size.max(1))
}

/// A collection answer: `page` is the page of `total` items that starts at `$skip`.
fn page_body(
    page: Vec<Value>,
    total: usize,
    top: usize,
    q: &Query,
    ctx: &Ctx,
    fragment: &str,
) -> Value {
    let end = q.skip.saturating_add(top).min(total);
    let mut out = Map::new();
    out.insert(
        "@odata.context".to_string(),
        Value::String(ctx.metadata(fragment)),
    );
    if q.count {
        out.insert("@odata.count".to_string(), json!(total));
    }
    out.insert("value".to_string(), Value::Array(page));
    // $top=0 asks for nothing (e.g. only the count): no next page, or it would never advance.
    if top > 0 && end < total {
        out.insert(
            "@odata.nextLink".to_string(),
            Value::String(ctx.next_link(top, end)),
        );
    }
    Value::Object(out)
}

/// The answer proper, once auth and misbehaviour have let the request through.
fn answer(
    sh: &Shared,
    method: &Method,
    parsed: Result<Parsed, ApiError>,
    ctx: &Ctx,
) -> Result<Value, ApiError> {
    if method != Method::GET {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("The method {method} is not supported here: threat intelligence is read-only."),
        ));
    }
    let parsed = parsed?;
    let q = parse_query(ctx.raw_query)?;
    let fragment = parsed.route.context();

    if let Some(body) = sh.control.override_for(&parsed.key) {
        return match body {
            Value::Null => Err(ApiError::not_found(format!(
                "Resource '{}' was not found.",
                parsed.key
            ))),
            Value::Array(items) => Ok(collection(items, &q, ctx, fragment)),
            other => Ok(apply_select(other, &q.select)),
        };
    }

    match parsed.route {
        Route::Host(id, sub) => host_answer(&id, sub, &q, ctx, fragment),
        Route::Profiles => Ok(collection(data::intel_profiles(), &q, ctx, fragment)),
        Route::Profile(id) => data::intel_profile(&id)
            .map(|v| entity(v, &q, ctx, fragment))
            .ok_or_else(|| {
                ApiError::not_found(format!("Intelligence profile '{id}' was not found."))
            }),
        Route::Indicators(id) => data::profile_indicators(&id)
            .map(|mut items| {
                let pid = id.to_ascii_lowercase();
                items.extend(
                    sh.control
                        .added_indicators(&pid)
                        .iter()
                        .map(|artifact| data::added_indicator(&pid, artifact)),
                );
                collection(items, &q, ctx, fragment)
            })
            .ok_or_else(|| {
                ApiError::not_found(format!("Intelligence profile '{id}' was not found."))
            }),
        Route::Unknown(seg) => Err(ApiError::bad_request(format!(
            "Resource not found for the segment '{seg}'."
        ))),
    }
}

/// A host or one of its sub-resources.
fn host_answer(
    id: &str,
    sub: HostSub,
    q: &Query,
    ctx: &Ctx,
    fragment: &str,
) -> Result<Value, ApiError> {
    let key = HostKey::parse(id)
        .filter(|k| !k.is_unknown())
        .ok_or_else(|| ApiError::not_found(format!("Host '{id}' was not found.")))?;
    let pairs = |filter: PairFilter| collection(data::host_pairs(&key, filter), q, ctx, fragment);
    Ok(match sub {
        HostSub::Entity => entity(data::host_entity(&key), q, ctx, fragment),
        HostSub::Whois => entity(data::whois(&key), q, ctx, fragment),
        HostSub::Reputation => entity(data::reputation(&key), q, ctx, fragment),
        HostSub::PassiveDns => passive_dns(&key, false, q, ctx, fragment),
        HostSub::PassiveDnsReverse => passive_dns(&key, true, q, ctx, fragment),
        HostSub::HostPairs => pairs(PairFilter::All),
        HostSub::ParentHostPairs => pairs(PairFilter::HostIsChild),
        HostSub::ChildHostPairs => pairs(PairFilter::HostIsParent),
        HostSub::Subdomains => collection(data::subdomains(&key), q, ctx, fragment),
    })
}

/// A host's passive DNS records (`reverse`: its reverse view); a shared host's come from its
/// listing, record by record.
fn passive_dns(key: &HostKey, reverse: bool, q: &Query, ctx: &Ctx, fragment: &str) -> Value {
    match data::shared_listing(key, reverse) {
        Some(listing) => indexed_collection(listing.len(), |i| listing.record(i), q, ctx, fragment),
        None if reverse => collection(data::passive_dns_reverse(key), q, ctx, fragment),
        None => collection(data::passive_dns(key), q, ctx, fragment),
    }
}

/// `scheme://host` for links: the Host header if it looks like one, else the bound address.
fn origin(headers: &HeaderMap, sh: &Shared) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| sh.local.to_string());
    format!("{}://{host}", sh.scheme())
}

/// The bearer token of the Authorization header, if there is one.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// Graph's 401 for a token it does not accept.
fn unauthorized(problem: TokenProblem, request_id: &str) -> Response {
    let message = match problem {
        TokenProblem::Missing => "Access token is empty.",
        TokenProblem::Unknown => "Invalid JWT token. The token is not known to this service.",
        TokenProblem::Expired => "Access token has expired or is not yet valid.",
    };
    let mut resp = graph_error(
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        ),
        request_id,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"",
        ),
    );
    resp
}

/// fail_all, injected 429s, rate limit, error ratio; then latency. `Ok(truncate)` lets the
/// request through (the answer to be cut when `truncate`), `Err` is the answer instead.
async fn let_through(sh: &Shared, key: Option<&str>, request_id: &str) -> Result<bool, Response> {
    let c = &sh.control;
    let format = sh.config.retry_after_format;
    match c.judge(key) {
        Verdict::FailAll(status) | Verdict::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match status.as_u16() {
                429 => c.bump("throttled"),
                401 => c.bump("unauthorized"),
                _ => c.bump("errors"),
            }
            let resp = graph_error(
                ApiError::new(status, code_for(status), message_for(status)),
                request_id,
            );
            // Graph sends Retry-After with 429 and sometimes with 503: keep it short, the
            // point is that the client honours it, not that it waits.
            Err(match status.as_u16() {
                429 => with_retry_after(resp, format, Duration::from_secs(1)),
                503 => with_retry_after(resp, format, Duration::from_millis(100)),
                _ => resp,
            })
        }
        Verdict::Throttle(wait) => {
            c.bump("throttled");
            let resp = graph_error(
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    message_for(StatusCode::TOO_MANY_REQUESTS),
                ),
                request_id,
            );
            Err(with_retry_after(resp, format, wait))
        }
        Verdict::Proceed { delay, truncate } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(truncate)
        }
    }
}

async fn graph(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let path = uri.path();
    if path != "/v1.0" && !path.starts_with("/v1.0/") {
        return graph_error(
            ApiError::not_found(format!("No resource at '{path}'.")),
            &request_id,
        );
    }
    let c = &sh.control;
    c.bump("graph");
    let parsed = parse_path(path);
    if let Some(name) = parsed.as_ref().ok().and_then(|p| p.route.counter()) {
        c.bump(name);
    }

    // 1. Auth.
    if let Err(problem) = c.check_token(bearer_token(&headers)) {
        c.bump("unauthorized");
        return unauthorized(problem, &request_id);
    }

    // 2-5. Misbehaviour.
    let key = parsed.as_ref().ok().map(|p| p.key.as_str());
    let truncate = match let_through(&sh, key, &request_id).await {
        Ok(truncate) => truncate,
        Err(resp) => return resp,
    };

    // 6. The answer.
    let ctx = Ctx {
        origin: origin(&headers, &sh),
        path,
        raw_query: uri.query(),
        page_size: sh.config.page_size,
        max_page_size: sh.config.max_page_size,
    };
    match answer(&sh, &method, parsed, &ctx) {
        Ok(body) => {
            let mut bytes = body.to_string().into_bytes();
            if truncate {
                c.bump("truncated");
                // Cut in half: the client sees a 200 whose JSON does not parse.
                bytes.truncate(bytes.len() / 2);
            }
            let mut resp = Response::new(Body::from(bytes));
            set_graph_headers(resp.headers_mut(), &request_id);
            resp
        }
        Err(err) => graph_error(err, &request_id),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn filter_parses_quotes_and_and() {
        let f = parse_filter("linkKind eq 'it''s and more' and parentHost/id eq 'a.com'").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].1, json!("it's and more"));
        assert_eq!(f[1].0, vec!["parentHost".to_string(), "id".to_string()]);
        assert!(parse_filter("linkKind ne 'x'").is_err());
        assert!(parse_filter("linkKind eq x").is_err());
        // Multi-byte characters must not split a char (byte-wise scanning).
        assert!(parse_filter("é eq 'ü' and ö").is_err());
        assert_eq!(
            parse_filter("a eq 'ü and é'").unwrap()[0].1,
            json!("ü and é")
        );
    }

    #[test]
    fn path_routing() {
        let p =
            parse_path("/v1.0/security/threatIntelligence/hosts/2001%3Adb8%3A%3A1/whois").unwrap();
        assert_eq!(p.route, Route::Host("2001:db8::1".into(), HostSub::Whois));
        assert_eq!(p.key, "hosts/2001:db8::1/whois");
        assert!(parse_path("/v1.0/security/threatIntelligence/hosts/%FF").is_err());
        let p = parse_path("/v1.0/security/threatIntelligence/articles").unwrap();
        assert_eq!(p.route, Route::Unknown("articles".into()));
    }

    #[test]
    fn retry_after_formats() {
        let s = retry_after_value(RetryAfterFormat::Seconds, Duration::from_millis(350));
        assert_eq!(s, "0.350");
        let d = retry_after_value(RetryAfterFormat::HttpDate, Duration::from_millis(350));
        assert!(httpdate::parse_http_date(&d).is_ok());
    }
}
