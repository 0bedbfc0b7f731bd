//! Pulling STIX objects from a TAXII 2.1 collection, for `publish --taxii`, and adding them
//! to one, for `export --taxii`.
//!
//! [`Client::pull`] asks `GET {api_root}/collections/{id}/objects/` with
//! `Accept: application/taxii+json;version=2.1`, HTTP basic auth from `MDTI_TAXII_USER` and
//! `MDTI_TAXII_PASSWORD` ([`Credentials::from_env`]), `limit=` on every page and `added_after=`
//! from the stored cursor. It follows the envelope's `more` and `next` (or, from a server that
//! says `more` without a `next`, `added_after=` the newest date added so far) up to
//! [`Limits::max_pages`] pages.
//!
//! The cursor is the newest *date added* the server reported: the `X-TAXII-Date-Added-Last`
//! header of each page (the objects' own `date_added`, where a server puts one there instead).
//! It is never the objects' `created` or `modified`: an object published today may have been
//! created last year, and only the date the server added it orders the collection.
//!
//! At least once, never lost: [`Client::pull`] does not store anything. The caller handles the
//! objects (publishes them and sees the broker confirm), and only then calls
//! `Store::advance_taxii_cursor` with [`Pull::added_after`]. A crash in between leaves the old
//! cursor, and the next pull fetches the same objects again; the worker's writes are idempotent,
//! so a repeat costs Graph requests but no duplicate rows. The store never moves a cursor back,
//! so two pulls finishing out of order keep the newer one.
//!
//! Everything the server sends is hostile: a page is read up to [`Limits::max_page_bytes`] and
//! refused past it, a pull stops at [`Limits::max_pull_bytes`], every request has a timeout,
//! redirects are not followed (they would carry the credentials elsewhere), and a non-2xx
//! status, another content type, a body that is not a TAXII envelope, or a date added that is
//! not an RFC 3339 timestamp each end the pull with an error that says which. The password
//! appears in no error and no log: it is held as a [`Secret`], the URL may not carry
//! credentials, and an error body echoing it is masked.
//!
//! [`Client::add`] posts objects (`POST .../objects/`, an envelope of at most
//! [`Limits::post_objects`] objects a request) and adds up what each request's status resource
//! says: how many objects the server took, refused (with its reason) or still has pending.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use crate::http_body::{read_capped, BodyError};
use crate::message::truncate_chars;
use crate::secret::{redact_url, Secret};

/// The media type TAXII 2.1 requests and answers carry.
pub const TAXII_MEDIA_TYPE: &str = "application/taxii+json;version=2.1";

/// The environment variables basic auth is read from.
pub const USER_VAR: &str = "MDTI_TAXII_USER";
pub const PASSWORD_VAR: &str = "MDTI_TAXII_PASSWORD";

const DATE_ADDED_LAST: &str = "x-taxii-date-added-last";

/// At most this many characters of an error response's body are quoted in the error.
const EXCERPT_CHARS: usize = 200;

/// A `next` token longer than this is refused rather than sent back.
const NEXT_MAX_CHARS: usize = 1_024;

/// Why a pull failed. No variant holds the password.
#[derive(Debug, thiserror::Error)]
pub enum TaxiiError {
    #[error("TAXII settings: {0}")]
    Settings(String),
    #[error("TAXII request to {url} failed: {detail}")]
    Transport { url: String, detail: String },
    #[error("TAXII server answered {status} to {url}: {excerpt:?}")]
    Status {
        url: String,
        status: StatusCode,
        excerpt: String,
    },
    #[error("TAXII server answered {url} with content type {found:?}, not {TAXII_MEDIA_TYPE}")]
    ContentType { url: String, found: String },
    #[error("TAXII page from {url} is larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("TAXII page from {url} is not a TAXII envelope: {detail}")]
    Envelope { url: String, detail: String },
    #[error("TAXII server answered the objects posted to {url} with no status resource: {detail}")]
    StatusResource { url: String, detail: String },
    #[error("TAXII server gave a date added that is not an RFC 3339 timestamp: {0:?}")]
    Cursor(String),
}

/// The newest date added already handled, sent as `added_after=`: the server's own text, kept
/// as it was sent (servers compare it at their own precision), checked to be a timestamp.
#[derive(Clone, PartialEq, Eq)]
pub struct Cursor {
    text: String,
    at: DateTime<FixedOffset>,
}

impl Cursor {
    pub fn parse(text: &str) -> Result<Cursor, TaxiiError> {
        let text = text.trim();
        let shown = || text.chars().take(EXCERPT_CHARS).collect::<String>();
        if text.len() > 64 {
            return Err(TaxiiError::Cursor(shown()));
        }
        let at = DateTime::parse_from_rfc3339(text).map_err(|_| TaxiiError::Cursor(shown()))?;
        Ok(Cursor {
            text: text.to_owned(),
            at,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The later of two cursors (by time, not by text: servers differ in precision).
    fn max(self, other: Cursor) -> Cursor {
        if other.at > self.at {
            other
        } else {
            self
        }
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", self.text)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One collection of one API root: where objects are pulled from, and the key its cursor is
/// stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    api_root: Url,
    id: String,
}

impl Collection {
    /// `api_root` is the API root's URL (`https://taxii.example/api1/`); credentials belong in
    /// the environment, not in it, and a URL holding any is refused.
    pub fn new(api_root: &str, id: &str) -> Result<Collection, TaxiiError> {
        let shown = redact_url(api_root);
        let mut url = Url::parse(api_root)
            .map_err(|e| TaxiiError::Settings(format!("API root {shown} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(TaxiiError::Settings(format!(
                "API root {shown} is not an http(s) URL"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TaxiiError::Settings(format!(
                "API root {shown} carries credentials: set {USER_VAR} and {PASSWORD_VAR} instead"
            )));
        }
        url.set_query(None);
        url.set_fragment(None);
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let id = id.trim();
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(TaxiiError::Settings(format!(
                "collection id {:?} is empty, too long or holds control characters",
                id.chars().take(EXCERPT_CHARS).collect::<String>()
            )));
        }
        Ok(Collection {
            api_root: url,
            id: id.to_owned(),
        })
    }

    /// The API root, normalised (a trailing `/`, no query): the cursor's first key.
    pub fn api_root(&self) -> &str {
        self.api_root.as_str()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `{api_root}collections/{id}/objects/`, the id percent-encoded as one path segment.
    pub fn objects_url(&self) -> Url {
        let mut url = self.api_root.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(["collections", &self.id, "objects", ""]);
        url
    }
}

/// Basic auth for the TAXII server.
#[derive(Debug, Clone)]
pub struct Credentials {
    user: String,
    password: Secret,
}

impl Credentials {
    pub fn new(user: impl Into<String>, password: Secret) -> Credentials {
        Credentials {
            user: user.into(),
            password,
        }
    }

    /// From `MDTI_TAXII_USER` and `MDTI_TAXII_PASSWORD`: none when neither is set (a server
    /// open to all), an error when only one is.
    pub fn from_env() -> Result<Option<Credentials>, TaxiiError> {
        Credentials::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Credentials::from_env`], with the variables read through `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Credentials>, TaxiiError> {
        let user = lookup(USER_VAR).filter(|v| !v.is_empty());
        let password = lookup(PASSWORD_VAR).filter(|v| !v.is_empty());
        match (user, password) {
            (Some(user), Some(password)) => Ok(Some(Credentials::new(user, Secret::new(password)))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(TaxiiError::Settings(format!(
                "{USER_VAR} is set but {PASSWORD_VAR} is not"
            ))),
            (None, Some(_)) => Err(TaxiiError::Settings(format!(
                "{PASSWORD_VAR} is set but {USER_VAR} is not"
            ))),
        }
    }
}

/// The bounds of one pull.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Objects asked for per page (`limit=`); a server may send fewer.
    pub page_objects: u32,
    /// Pages fetched by one pull at most; [`Pull::more`] says when the server had more.
    pub max_pages: u32,
    /// A page's body larger than this is refused.
    pub max_page_bytes: usize,
    /// A pull stops after the page that brings its bodies to this many bytes, as at
    /// `max_pages`: what one pull holds stays below this plus one page.
    pub max_pull_bytes: usize,
    /// Objects sent per `POST` at most; a server's `max_content_length` may ask for fewer.
    pub post_objects: usize,
    /// For each request, from sending to the last byte of the body.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            page_objects: 500,
            max_pages: 100,
            max_page_bytes: 16 * 1024 * 1024,
            max_pull_bytes: 64 * 1024 * 1024,
            post_objects: 500,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What one pull brought.
#[derive(Debug, Clone)]
pub struct Pull {
    /// The STIX objects, in the order the server sent them (oldest date added first).
    pub objects: Vec<serde_json::Value>,
    /// The cursor to store once the objects are handled: the newest date added seen, or the
    /// cursor the pull started from when the server reported none.
    pub added_after: Option<Cursor>,
    pub pages: u32,
    /// The pull stopped at [`Limits::max_pages`] or [`Limits::max_pull_bytes`] while the server
    /// had more: pull again after advancing the cursor.
    pub more: bool,
}

/// The TAXII envelope (TAXII 2.1, 3.7); every member is optional, an empty collection answers `{}`.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    more: bool,
    next: Option<String>,
    #[serde(default)]
    objects: Vec<serde_json::Value>,
}

/// One page as read.
struct Page {
    envelope: Envelope,
    date_added_last: Option<Cursor>,
    bytes: usize,
}

/// What the server said of the objects posted to it, added up over the requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Added {
    pub requests: u32,
    pub success: u64,
    pub failure: u64,
    pub pending: u64,
    /// `id: reason` of each object refused, as the server gave them.
    pub failures: Vec<String>,
    /// The status resources of requests still pending, for whoever wants to ask again.
    pub pending_statuses: Vec<String>,
}

/// A status resource (TAXII 2.1, 4.3.1): what became of the objects of one `POST`.
#[derive(Deserialize)]
struct Status {
    id: String,
    status: String,
    #[serde(default)]
    success_count: u64,
    #[serde(default)]
    failure_count: u64,
    #[serde(default)]
    pending_count: u64,
    #[serde(default)]
    failures: Vec<StatusDetail>,
}

#[derive(Deserialize)]
struct StatusDetail {
    id: String,
    #[serde(default)]
    message: Option<String>,
}

impl Added {
    fn count(&mut self, status: Status) {
        self.requests += 1;
        self.success += status.success_count;
        self.failure += status.failure_count;
        self.pending += status.pending_count;
        self.failures.extend(status.failures.into_iter().map(|f| {
            let reason = f.message.as_deref().unwrap_or("no reason given");
            format!(
                "{}: {}",
                truncate_chars(&f.id, EXCERPT_CHARS),
                truncate_chars(reason, EXCERPT_CHARS)
            )
        }));
        if status.status != "complete" {
            self.pending_statuses
                .push(truncate_chars(&status.id, EXCERPT_CHARS));
        }
    }
}

/// A TAXII 2.1 client: one HTTP client, the credentials and the bounds.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    credentials: Option<Credentials>,
    limits: Limits,
}

impl Client {
    pub fn new(credentials: Option<Credentials>, limits: Limits) -> Result<Client, TaxiiError> {
        let http = reqwest::Client::builder()
            .timeout(limits.request_timeout)
            .connect_timeout(limits.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mdti-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TaxiiError::Settings(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            credentials,
            limits,
        })
    }

    /// Every object of `collection` added after `added_after` (all of them without one), up to
    /// [`Limits::max_pages`] pages. Stores nothing: see the module's comment on the ordering.
    pub async fn pull(
        &self,
        collection: &Collection,
        added_after: Option<&Cursor>,
    ) -> Result<Pull, TaxiiError> {
        let url = collection.objects_url();
        let mut pull = Pull {
            objects: Vec::new(),
            added_after: added_after.cloned(),
            pages: 0,
            more: false,
        };
        // The filter of the first request is repeated with every `next`: a server may refuse a
        // `next` whose filter changed.
        let mut filter = added_after.cloned();
        let mut next: Option<String> = None;
        let mut bytes = 0usize;
        loop {
            let page = self.page(&url, filter.as_ref(), next.as_deref()).await?;
            pull.pages += 1;
            bytes = bytes.saturating_add(page.bytes);
            let newest = page
                .date_added_last
                .or_else(|| newest_in(&page.envelope.objects));
            let advanced = match (&pull.added_after, &newest) {
                (Some(old), Some(new)) => new.at > old.at,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            if let Some(newest) = newest {
                pull.added_after = Some(match pull.added_after.take() {
                    Some(old) => old.max(newest),
                    None => newest,
                });
            }
            pull.objects.extend(page.envelope.objects);
            if !page.envelope.more {
                return Ok(pull);
            }
            if pull.pages >= self.limits.max_pages || bytes >= self.limits.max_pull_bytes {
                pull.more = true;
                return Ok(pull);
            }
            match page.envelope.next {
                Some(token) if token.len() <= NEXT_MAX_CHARS => next = Some(token),
                Some(_) => {
                    return Err(envelope_error(&url, "its `next` is too long".into()));
                }
                // More, but no token: ask again from the newest date added, which must move on,
                // or the same page would come back for ever.
                None if advanced => filter = pull.added_after.clone(),
                None => {
                    return Err(envelope_error(
                        &url,
                        "it says `more` but gives neither `next` nor a newer date added".into(),
                    ));
                }
            }
        }
    }

    async fn page(
        &self,
        url: &Url,
        added_after: Option<&Cursor>,
        next: Option<&str>,
    ) -> Result<Page, TaxiiError> {
        let mut url = url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", &self.limits.page_objects.to_string());
            if let Some(cursor) = added_after {
                query.append_pair("added_after", cursor.as_str());
            }
            if let Some(next) = next {
                query.append_pair("next", next);
            }
        }
        let shown = url.to_string();
        let request = self.http.get(url);
        let (headers, body) = self
            .exchange(&shown, request, self.limits.max_page_bytes)
            .await?;
        let envelope: Envelope = serde_json::from_slice(&body)
            .map_err(|e| envelope_error_text(&shown, e.to_string()))?;
        let date_added_last = match headers.get(DATE_ADDED_LAST) {
            Some(value) => Some(Cursor::parse(
                value
                    .to_str()
                    .map_err(|_| TaxiiError::Cursor("(not text)".into()))?,
            )?),
            None => None,
        };
        Ok(Page {
            envelope,
            date_added_last,
            bytes: body.len(),
        })
    }

    /// Post `objects` to `collection`, [`Limits::post_objects`] a request, and add up the
    /// status resources. Stops at the first request that fails; what earlier ones added stays.
    pub async fn add(
        &self,
        collection: &Collection,
        objects: &[serde_json::Value],
    ) -> Result<Added, TaxiiError> {
        let url = collection.objects_url();
        let shown = url.to_string();
        let mut added = Added::default();
        for chunk in objects.chunks(self.limits.post_objects.max(1)) {
            let envelope = serde_json::json!({ "objects": chunk }).to_string();
            let request = self
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, TAXII_MEDIA_TYPE)
                .body(envelope);
            let (_, body) = self
                .exchange(&shown, request, self.limits.max_page_bytes)
                .await?;
            let status: Status =
                serde_json::from_slice(&body).map_err(|e| TaxiiError::StatusResource {
                    url: shown.clone(),
                    detail: truncate_chars(&e.to_string(), EXCERPT_CHARS),
                })?;
            added.count(status);
        }
        Ok(added)
    }

    /// Send `request` (the TAXII media type accepted, the credentials added) and read a 2xx
    /// answer of the TAXII media type up to `limit` bytes; anything else is the error that
    /// says which.
    async fn exchange(
        &self,
        shown: &str,
        mut request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<(HeaderMap, Vec<u8>), TaxiiError> {
        request = request.header(ACCEPT, TAXII_MEDIA_TYPE);
        if let Some(credentials) = &self.credentials {
            request = request.basic_auth(&credentials.user, Some(credentials.password.expose()));
        }
        let response = request.send().await.map_err(|e| self.transport(shown, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if !status.is_success() {
            // The excerpt is for the error only: read at most a little of it.
            let body = self.body(shown, response, 4 * 1024).await;
            let excerpt = body.map(|b| self.excerpt(&b)).unwrap_or_default();
            return Err(TaxiiError::Status {
                url: shown.to_owned(),
                status,
                excerpt,
            });
        }
        check_content_type(shown, &headers)?;
        let body = self.body(shown, response, limit).await?;
        Ok((headers, body))
    }

    /// The body, refused once it passes `limit` bytes (see [`read_capped`]).
    async fn body(
        &self,
        url: &str,
        response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, TaxiiError> {
        read_capped(response, limit)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge => TaxiiError::TooLarge {
                    url: url.to_owned(),
                    limit,
                },
                BodyError::Read(error) => self.transport(url, error),
            })
    }

    fn transport(&self, url: &str, error: reqwest::Error) -> TaxiiError {
        let detail = if error.is_timeout() {
            format!(
                "timed out (limit {} s per request)",
                self.limits.request_timeout.as_secs()
            )
        } else {
            // reqwest's own text repeats the URL; its causes say what happened.
            let mut detail = String::new();
            let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&error);
            while let Some(error) = cause {
                if !detail.is_empty() {
                    detail.push_str(": ");
                }
                detail.push_str(&error.to_string());
                cause = error.source();
            }
            if detail.is_empty() {
                error.without_url().to_string()
            } else {
                detail
            }
        };
        TaxiiError::Transport {
            url: url.to_owned(),
            detail: self.mask(&detail),
        }
    }

    /// The start of an error body, printable characters only, the password masked should a
    /// server echo it.
    fn excerpt(&self, body: &[u8]) -> String {
        let text: String = String::from_utf8_lossy(body)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(EXCERPT_CHARS)
            .collect();
        self.mask(text.trim())
    }

    fn mask(&self, text: &str) -> String {
        match &self.credentials {
            Some(c) if !c.password.is_empty() => text.replace(c.password.expose(), "***"),
            _ => text.to_owned(),
        }
    }
}

/// `application/taxii+json`, with `version=2.1` or no version.
fn check_content_type(url: &str, headers: &HeaderMap) -> Result<(), TaxiiError> {
    let found = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let mut parts = found.split(';').map(str::trim);
    let media_type = parts.next().unwrap_or_default();
    let version_ok = parts.all(|parameter| match parameter.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("version") => {
            value.trim().trim_matches('"') == "2.1"
        }
        _ => true,
    });
    if media_type.eq_ignore_ascii_case("application/taxii+json") && version_ok {
        Ok(())
    } else {
        Err(TaxiiError::ContentType {
            url: url.to_owned(),
            found: found.chars().take(EXCERPT_CHARS).collect(),
        })
    }
}

/// The newest `date_added` the objects carry themselves, for a server that sends no
/// `X-TAXII-Date-Added-Last`. A value that is not a timestamp is not a cursor: it is ignored.
fn newest_in(objects: &[serde_json::Value]) -> Option<Cursor> {
    objects
        .iter()
        .filter_map(|object| object.get("date_added")?.as_str())
        .filter_map(|text| Cursor::parse(text).ok())
        .reduce(Cursor::max)
}

fn envelope_error(url: &Url, detail: String) -> TaxiiError {
    envelope_error_text(url.as_str(), detail)
}

fn envelope_error_text(url: &str, detail: String) -> TaxiiError {
    TaxiiError::Envelope {
        url: url.to_owned(),
        detail: detail.chars().take(EXCERPT_CHARS).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn content_type(value: &str) -> Result<(), TaxiiError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        check_content_type("http://taxii.example/", &headers)
    }

    #[test]
    fn taxii_json_of_version_2_1_or_no_version_is_accepted() {
        assert!(content_type("application/taxii+json;version=2.1").is_ok());
        assert!(content_type("application/taxii+json; version=2.1; charset=utf-8").is_ok());
        assert!(content_type("application/TAXII+json").is_ok());
    }

    #[test]
    fn other_content_types_and_versions_are_refused() {
        for wrong in [
            "application/json",
            "text/html; charset=utf-8",
            "application/taxii+json;version=2.0",
        ] {
            let error = content_type(wrong).unwrap_err().to_string();
            assert!(error.contains(wrong), "{error}");
        }
        assert!(check_content_type("u", &HeaderMap::new()).is_err());
    }

    #[test]
    fn a_collection_url_is_the_api_root_and_the_encoded_id() {
        let collection = Collection::new("https://taxii.example/api1", "91a7b528 x/y").unwrap();
        assert_eq!(collection.api_root(), "https://taxii.example/api1/");
        assert_eq!(
            collection.objects_url().as_str(),
            "https://taxii.example/api1/collections/91a7b528%20x%2Fy/objects/"
        );
    }

    #[test]
    fn an_api_root_with_credentials_is_refused_without_showing_them() {
        let error = Collection::new("https://reader:hunter2@taxii.example/api1/", "c")
            .unwrap_err()
            .to_string();
        assert!(error.contains(USER_VAR), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        assert!(Collection::new("ftp://taxii.example/", "c").is_err());
        assert!(Collection::new("https://taxii.example/", " ").is_err());
    }

    #[test]
    fn credentials_need_both_variables_or_neither() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        let both = Credentials::from_lookup(env(&[(USER_VAR, "u"), (PASSWORD_VAR, "hunter2")]))
            .unwrap()
            .unwrap();
        assert_eq!(both.user, "u");
        assert!(!format!("{both:?}").contains("hunter2"));
        assert!(Credentials::from_lookup(env(&[])).unwrap().is_none());
        let half = Credentials::from_lookup(env(&[(PASSWORD_VAR, "hunter2")])).unwrap_err();
        assert!(half.to_string().contains(USER_VAR));
        assert!(!half.to_string().contains("hunter2"));
    }

    #[test]
    fn a_cursor_is_an_rfc_3339_timestamp_kept_as_sent() {
        let cursor = Cursor::parse("2026-01-02T00:00:01.123456789Z").unwrap();
        assert_eq!(cursor.as_str(), "2026-01-02T00:00:01.123456789Z");
        assert!(Cursor::parse("yesterday").is_err());
        assert!(Cursor::parse(&"9".repeat(1000)).is_err());
    }

    #[test]
    fn the_later_cursor_wins_whatever_the_precision() {
        let a = Cursor::parse("2026-01-02T00:00:01.5Z").unwrap();
        let b = Cursor::parse("2026-01-02T00:00:01.000000Z").unwrap();
        assert_eq!(a.clone().max(b.clone()), a);
        assert_eq!(b.max(a.clone()), a);
    }

    #[test]
    fn without_the_header_the_newest_date_added_of_the_objects_is_the_cursor() {
        let objects = vec![
            serde_json::json!({"id": "a", "date_added": "2026-01-02T00:00:03Z"}),
            serde_json::json!({"id": "b", "date_added": "2026-01-02T00:00:09Z"}),
            serde_json::json!({"id": "c", "date_added": "not a date"}),
            serde_json::json!({"id": "d"}),
        ];
        assert_eq!(
            newest_in(&objects).unwrap().as_str(),
            "2026-01-02T00:00:09Z"
        );
        assert!(newest_in(&[]).is_none());
    }

    #[test]
    fn status_resources_add_up_with_each_refusal_and_what_is_still_pending() {
        let mut added = Added::default();
        let status = |text: &str| serde_json::from_str::<Status>(text).unwrap();
        added.count(status(
            r#"{"id": "s1", "status": "complete", "total_count": 3, "success_count": 2,
                "failure_count": 1, "pending_count": 0,
                "failures": [{"id": "indicator--1", "version": "v", "message": "bad pattern"}]}"#,
        ));
        added.count(status(
            r#"{"id": "s2", "status": "pending", "total_count": 2, "success_count": 1,
                "pending_count": 1, "failures": [{"id": "indicator--2"}]}"#,
        ));
        assert_eq!(
            added,
            Added {
                requests: 2,
                success: 3,
                failure: 1,
                pending: 1,
                failures: vec![
                    "indicator--1: bad pattern".into(),
                    "indicator--2: no reason given".into()
                ],
                pending_statuses: vec!["s2".into()],
            }
        );
    }
}
