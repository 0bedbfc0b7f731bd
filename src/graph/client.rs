//! The request loop: token, budget, send, classify, wait, repeat; and paging on top of it.

use crate::progress::{self, point};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::auth::TokenSource;
use super::body::{read_capped, size, BodyError, MAX_ERROR_BODY, MAX_GRAPH_BODY};
use super::model;
use super::path::SEGMENT;
use super::retry::{classify_status, classify_transport, RetryAfter, Verdict};
use super::throttle::Throttle;
use super::GraphError;
use crate::backoff::backoff_delay;
use crate::metrics::Histogram;
use crate::secret::{redact_url, Secret};

const TI: &str = "security/threatIntelligence";

/// `Debug` shows the URLs through [`redact_url`] and the secret as `[redacted]`.
#[derive(Clone)]
pub struct GraphSettings {
    pub graph_base_url: String,
    pub login_base_url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Sustained requests per second for the whole process, retries and pages included: where
    /// the learnt rate starts, and (without `rate_ceiling`) the most it climbs to.
    pub requests_per_second: f64,
    /// The most the learnt rate climbs to, when that is not `requests_per_second`
    /// (`--graph-rate auto`).
    pub rate_ceiling: Option<f64>,
    pub burst: u32,
    /// The part of the rate bulk requests leave to live ones (see [`crate::lane`]).
    pub live_reserve: f64,
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The longest `Retry-After` held; Graph asking for more fails the request at once, as
    /// transient, instead of freezing every request (and with a fleet, every worker) that long.
    pub max_retry_after: Duration,
    pub request_timeout: Duration,
    pub token_refresh_margin: Duration,
    pub page_limits: PageLimits,
    /// Bytes of one answer read at most; a longer one fails its request.
    pub max_body_bytes: usize,
    /// Extra CA certificate (PEM) trusted beside the system roots.
    pub ca_cert_file: Option<PathBuf>,
    pub tls_verify: bool,
}

impl std::fmt::Debug for GraphSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured whole, so a new field cannot be left out (or printed raw) unnoticed.
        let GraphSettings {
            graph_base_url,
            login_base_url,
            tenant_id,
            client_id,
            client_secret,
            requests_per_second,
            rate_ceiling,
            burst,
            live_reserve,
            max_in_flight,
            max_attempts,
            backoff_base,
            backoff_cap,
            max_retry_after,
            request_timeout,
            token_refresh_margin,
            page_limits,
            max_body_bytes,
            ca_cert_file,
            tls_verify,
        } = self;
        f.debug_struct("GraphSettings")
            .field("graph_base_url", &redact_url(graph_base_url))
            .field("login_base_url", &redact_url(login_base_url))
            .field("tenant_id", tenant_id)
            .field("client_id", client_id)
            .field("client_secret", client_secret)
            .field("requests_per_second", requests_per_second)
            .field("rate_ceiling", rate_ceiling)
            .field("burst", burst)
            .field("live_reserve", live_reserve)
            .field("max_in_flight", max_in_flight)
            .field("max_attempts", max_attempts)
            .field("backoff_base", backoff_base)
            .field("backoff_cap", backoff_cap)
            .field("max_retry_after", max_retry_after)
            .field("request_timeout", request_timeout)
            .field("token_refresh_margin", token_refresh_margin)
            .field("page_limits", page_limits)
            .field("max_body_bytes", max_body_bytes)
            .field("ca_cert_file", ca_cert_file)
            .field("tls_verify", tls_verify)
            .finish()
    }
}

impl Default for GraphSettings {
    fn default() -> Self {
        GraphSettings {
            graph_base_url: "https://graph.microsoft.com/v1.0".into(),
            login_base_url: "https://login.microsoftonline.com".into(),
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            requests_per_second: 10.0,
            rate_ceiling: None,
            burst: 10,
            live_reserve: 0.0,
            max_in_flight: 32,
            max_attempts: 6,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            token_refresh_margin: Duration::from_secs(300),
            page_limits: PageLimits::default(),
            max_body_bytes: MAX_GRAPH_BODY,
            ca_cert_file: None,
            tls_verify: true,
        }
    }
}

/// How far a collection walk may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// `$top` on the first request; `None` leaves the page size to Graph.
    pub page_size: Option<u32>,
    /// Stop after this many pages; `None` walks to the end.
    pub max_pages: Option<u32>,
}

impl Default for PageLimits {
    fn default() -> Self {
        PageLimits {
            page_size: Some(100),
            max_pages: Some(50),
        }
    }
}

/// The items of a paged collection, and how the walk ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Collection<T> {
    pub items: Vec<T>,
    pub pages: u32,
    /// A page cap stopped the walk while Graph still offered a next page, or Graph offered a
    /// page already read (a loop).
    pub truncated: bool,
    /// False when Graph answered 404: MDTI knows nothing about the host.
    pub found: bool,
    /// Items that did not parse and were left out (logged).
    pub skipped: u32,
}

impl<T> Default for Collection<T> {
    fn default() -> Self {
        Collection {
            items: Vec::new(),
            pages: 0,
            truncated: false,
            found: true,
            skipped: 0,
        }
    }
}

/// How a collection walk ended, without its items: what [`GraphClient::for_each_page`] returns.
/// The fields mean what [`Collection`]'s do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paged {
    pub pages: u32,
    pub truncated: bool,
    pub found: bool,
    pub skipped: u32,
}

/// Counters for benchmarks and metrics; cheap atomics bumped on the request path.
#[derive(Debug, Default)]
pub struct GraphStats {
    pub requests: AtomicU64,
    /// Requests by the lane that made them ([`crate::lane::Lane::index`]).
    pub requests_by_lane: [AtomicU64; 2],
    /// Answers that asked the client to wait (429, or 503/504 with `Retry-After`).
    pub throttled: AtomicU64,
    pub retries: AtomicU64,
    /// What those answers asked for, summed.
    pub retry_after_micros: AtomicU64,
    pub gave_up: AtomicU64,
    /// Requests sent and not yet answered (or failed).
    pub in_flight: AtomicU64,
    /// Send to last byte of the body (or failure), one observation per request.
    pub latency: Histogram,
    /// Requests by endpoint and answer; see [`GraphStats::responses`].
    responses: Mutex<BTreeMap<(&'static str, Option<u16>), u64>>,
}

impl GraphStats {
    /// Requests per `(endpoint, HTTP status)`, the status `None` when no answer came (timeout,
    /// connection failure). Retries count once per attempt.
    pub fn responses(&self) -> Vec<(&'static str, Option<u16>, u64)> {
        self.responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((endpoint, status), count)| (*endpoint, *status, *count))
            .collect()
    }

    /// The one place every request's result is recorded, answered or not.
    fn record(&self, endpoint: &'static str, status: Option<u16>, took: Duration) {
        self.latency.observe(took);
        *self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint, status))
            .or_insert(0) += 1;
    }
}

/// Counts a request in flight until dropped, so a cancelled request is not counted forever.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a AtomicU64) -> InFlight<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Inner {
    settings: GraphSettings,
    /// The Graph base URL, parsed once: each request's URL is this one with its path and query
    /// set, so its scheme and host are not parsed again for every request.
    graph_base: Url,
    http: reqwest::Client,
    tokens: TokenSource,
    throttle: Throttle,
    stats: GraphStats,
}

/// Cheap to clone; clones share the token cache, the rate limiter and the in-flight cap.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
    /// Requests made through this handle and its clones; see [`GraphClient::tracked`].
    tally: Arc<AtomicU64>,
}

impl GraphClient {
    pub fn new(settings: GraphSettings) -> Result<Self, GraphError> {
        let missing: Vec<&str> = [
            ("tenant id (MDTI_TENANT_ID)", settings.tenant_id.is_empty()),
            ("client id (MDTI_CLIENT_ID)", settings.client_id.is_empty()),
            (
                "client secret (MDTI_CLIENT_SECRET or MDTI_CLIENT_SECRET_FILE)",
                settings.client_secret.is_empty(),
            ),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(GraphError::Config(format!(
                "missing credentials: {}",
                missing.join(", ")
            )));
        }
        let graph_base = check_base_url("Graph base URL", &settings.graph_base_url)?;
        check_base_url("login base URL", &settings.login_base_url)?;

        if !settings.tls_verify {
            tracing::warn!(
                "TLS certificate verification is OFF for Graph and login: anyone on the path can read the client secret and tokens; use a CA certificate file instead"
            );
        }
        let http = build_http(http_builder(&settings)?)?;
        // The token request carries the client secret in its body, and a 307 or 308 would send
        // that body again to wherever the answer points: the token client follows no redirect.
        let token_http =
            build_http(http_builder(&settings)?.redirect(reqwest::redirect::Policy::none()))?;
        let tokens = TokenSource::new(
            token_http,
            &settings.login_base_url,
            &settings.tenant_id,
            &settings.client_id,
            settings.client_secret.clone(),
            settings.token_refresh_margin,
        );
        let throttle = Throttle::with_live_reserve(
            settings.requests_per_second,
            settings
                .rate_ceiling
                .unwrap_or(settings.requests_per_second),
            settings.burst,
            settings.max_in_flight,
            settings.max_retry_after,
            settings.live_reserve,
        );
        Ok(GraphClient {
            inner: Arc::new(Inner {
                settings,
                graph_base,
                http,
                tokens,
                throttle,
                stats: GraphStats::default(),
            }),
            tally: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A handle sharing everything with this one but counting its own requests, so one
    /// observable's enrichment can report what it cost.
    pub fn tracked(&self) -> GraphClient {
        GraphClient {
            inner: Arc::clone(&self.inner),
            tally: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Requests sent through this handle (and its clones) so far, retries included.
    pub fn requests(&self) -> u64 {
        self.tally.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &GraphStats {
        &self.inner.stats
    }

    /// The process-wide budget every clone shares: its rate can be changed and its 429 holds
    /// watched and shared (what a fleet of workers on one tenant needs).
    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }

    /// Microseconds spent waiting on the rate limiter and on 429 holds, process-wide.
    pub fn wait_micros(&self) -> (u64, u64) {
        let throttle = &self.inner.throttle;
        (
            throttle.limiter_wait_micros.load(Ordering::Relaxed),
            throttle.hold_wait_micros.load(Ordering::Relaxed),
        )
    }

    pub fn settings(&self) -> &GraphSettings {
        &self.inner.settings
    }

    /// `{base}/{TI}/{path}?{query}`; `path` comes escaped ([`host_path`](Self::host_path)).
    fn url(&self, path: &str, query: Option<&str>) -> Url {
        let mut url = self.inner.graph_base.clone();
        let base_path = url.path().trim_end_matches('/');
        let path = format!("{base_path}/{TI}/{path}");
        url.set_path(&path);
        url.set_query(query);
        url
    }

    /// `hosts/{key}` or `hosts/{key}/{leaf}`, the key escaped as one path segment.
    pub fn host_path(key: &str, leaf: Option<&str>) -> String {
        let key = percent_encoding::utf8_percent_encode(key, SEGMENT);
        match leaf {
            Some(leaf) => format!("hosts/{key}/{leaf}"),
            None => format!("hosts/{key}"),
        }
    }

    pub async fn host(&self, key: &str) -> Result<Option<model::Host>, GraphError> {
        self.entity("host", &Self::host_path(key, None)).await
    }

    pub async fn whois(&self, key: &str) -> Result<Option<model::WhoisRecord>, GraphError> {
        self.entity("whois", &Self::host_path(key, Some("whois")))
            .await
    }

    pub async fn reputation(&self, key: &str) -> Result<Option<model::HostReputation>, GraphError> {
        self.entity("reputation", &Self::host_path(key, Some("reputation")))
            .await
    }

    pub async fn passive_dns(
        &self,
        key: &str,
        limits: PageLimits,
    ) -> Result<Collection<model::PassiveDnsRecord>, GraphError> {
        self.collection(
            "passiveDns",
            &Self::host_path(key, Some("passiveDns")),
            limits,
        )
        .await
    }

    /// [`passive_dns`](Self::passive_dns) a page at a time, each record read as `T` (a whole
    /// [`model::PassiveDnsRecord`], or only what the caller needs); see
    /// [`for_each_page`](Self::for_each_page).
    pub async fn passive_dns_pages<T, F>(
        &self,
        key: &str,
        limits: PageLimits,
        on_page: F,
    ) -> Result<Paged, GraphError>
    where
        T: DeserializeOwned,
        F: FnMut(Vec<T>),
    {
        self.for_each_page(
            "passiveDns",
            &Self::host_path(key, Some("passiveDns")),
            limits,
            on_page,
        )
        .await
    }

    pub async fn passive_dns_reverse(
        &self,
        key: &str,
        limits: PageLimits,
    ) -> Result<Collection<model::PassiveDnsRecord>, GraphError> {
        self.collection(
            "passiveDnsReverse",
            &Self::host_path(key, Some("passiveDnsReverse")),
            limits,
        )
        .await
    }

    pub async fn host_pairs(
        &self,
        key: &str,
        limits: PageLimits,
    ) -> Result<Collection<model::HostPair>, GraphError> {
        self.collection(
            "hostPairs",
            &Self::host_path(key, Some("hostPairs")),
            limits,
        )
        .await
    }

    pub async fn subdomains(
        &self,
        key: &str,
        limits: PageLimits,
    ) -> Result<Collection<model::Subdomain>, GraphError> {
        self.collection(
            "subdomains",
            &Self::host_path(key, Some("subdomains")),
            limits,
        )
        .await
    }

    pub async fn intel_profiles(
        &self,
        limits: PageLimits,
    ) -> Result<Collection<model::IntelligenceProfile>, GraphError> {
        self.collection("intelProfiles", "intelProfiles", limits)
            .await
    }

    pub async fn intel_profile_indicators(
        &self,
        profile_id: &str,
        limits: PageLimits,
    ) -> Result<Collection<model::IntelligenceProfileIndicator>, GraphError> {
        let id = percent_encoding::utf8_percent_encode(profile_id, SEGMENT);
        self.collection(
            "intelProfileIndicators",
            &format!("intelProfiles/{id}/indicators"),
            limits,
        )
        .await
    }

    /// One entity; `None` when Graph has nothing on it (404).
    pub async fn entity<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
    ) -> Result<Option<T>, GraphError> {
        self.get(endpoint, &self.url(path, None), |body| {
            serde_json::from_slice(body)
        })
        .await
    }

    /// Every page of a collection, following `@odata.nextLink` exactly as given, within `limits`;
    /// all items held at once (see [`for_each_page`](Self::for_each_page) for a walk that holds
    /// one page at a time).
    pub async fn collection<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        limits: PageLimits,
    ) -> Result<Collection<T>, GraphError> {
        let mut items = Vec::new();
        let paged = self
            .for_each_page(endpoint, path, limits, |page: Vec<T>| items.extend(page))
            .await?;
        Ok(Collection {
            items,
            pages: paged.pages,
            truncated: paged.truncated,
            found: paged.found,
            skipped: paged.skipped,
        })
    }

    /// The pages of a collection one at a time: each page's items are handed to `on_page` (once
    /// per page read, in order, an empty page included) before the next page is asked for, and
    /// are not kept here, so the walk holds one page however long the collection is. Follows
    /// `@odata.nextLink` exactly as given, within `limits`; returns how the walk ended, as
    /// [`collection`](Self::collection) reports it.
    pub async fn for_each_page<T, F>(
        &self,
        endpoint: &'static str,
        path: &str,
        limits: PageLimits,
        mut on_page: F,
    ) -> Result<Paged, GraphError>
    where
        T: DeserializeOwned,
        F: FnMut(Vec<T>),
    {
        let top = limits.page_size.map(|top| format!("$top={top}"));
        let mut url = self.url(path, top.as_deref());
        let mut out = Paged {
            pages: 0,
            truncated: false,
            found: true,
            skipped: 0,
        };
        // Every link asked for in this walk: one offered again would loop until the page cap.
        // Links only (one per page read), never items.
        let mut followed = HashSet::from([url.clone()]);
        loop {
            let Some(page) = self.get(endpoint, &url, model::Page::<T>::read).await? else {
                // A 404 on a later page would be odd; treat the walk as ended either way.
                out.found = out.pages > 0;
                return Ok(out);
            };
            out.pages += 1;
            for error in &page.unreadable {
                out.skipped += 1;
                tracing::warn!(endpoint, %error, "skipping an unreadable collection item");
            }
            on_page(page.items);
            match page.next_link {
                None => return Ok(out),
                Some(_) if limits.max_pages.is_some_and(|cap| out.pages >= cap) => {
                    out.truncated = true;
                    tracing::debug!(
                        endpoint,
                        pages = out.pages,
                        "page cap reached; walk cut short"
                    );
                    return Ok(out);
                }
                Some(next) => {
                    // The bearer token goes wherever the link points: only ever to Graph itself.
                    let next = match Url::parse(&next) {
                        Ok(next) if same_origin(&next, &self.inner.graph_base) => next,
                        _ => return Err(GraphError::ForeignNextLink),
                    };
                    if !followed.insert(next.clone()) {
                        // What was read stands; the walk says it did not reach the end.
                        out.truncated = true;
                        tracing::warn!(
                            endpoint,
                            pages = out.pages,
                            "Graph offered a next link already followed; walk cut short"
                        );
                        return Ok(out);
                    }
                    url = next;
                }
            }
        }
    }

    /// One GET with the whole retry discipline, its body read by `decode`; `Ok(None)` for 404.
    async fn get<P>(
        &self,
        endpoint: &'static str,
        url: &Url,
        decode: Decode<P>,
    ) -> Result<Option<P>, GraphError> {
        let stats = &self.inner.stats;
        let mut refreshed = false;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let verdict = match self.attempt(endpoint, url, decode).await {
                Attempt::Done(body) => return Ok(Some(body)),
                Attempt::NotFound => return Ok(None),
                Attempt::Shape(reason) => {
                    return Err(GraphError::GaveUp {
                        endpoint,
                        attempts: attempt,
                        reason,
                        transient: false,
                    })
                }
                Attempt::Unauthorized(generation) if !refreshed => {
                    // One refresh and one retry: a second 401 means the credentials or the
                    // permission are wrong, which waiting will not fix.
                    refreshed = true;
                    self.inner.tokens.invalidate(generation).await;
                    attempt -= 1;
                    continue;
                }
                Attempt::Unauthorized(_) => Verdict::GiveUp(
                    "HTTP 401 after a token refresh: check the app's ThreatIntelligence.Read.All permission".into(),
                ),
                Attempt::Token(error) if !error.is_transient() => {
                    stats.gave_up.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(endpoint, attempt, %error, "giving up on a Graph request");
                    return Err(error);
                }
                Attempt::Token(error) => Verdict::Backoff(error.to_string()),
                Attempt::Verdict(verdict) => verdict,
            };
            let (wait, reason) = match self.settle(verdict, attempt) {
                Ok(retry) => retry,
                Err((reason, transient)) => {
                    return Err(self.give_up(endpoint, attempt, reason, transient))
                }
            };
            if attempt >= self.inner.settings.max_attempts {
                return Err(self.give_up(endpoint, attempt, reason, true));
            }
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(endpoint, attempt, %reason, ?wait, "retrying a Graph request");
            tokio::time::sleep(wait).await;
        }
    }

    /// How long to wait before the next attempt and why, or why to stop now (and whether the
    /// failure may pass).
    fn settle(&self, verdict: Verdict, attempt: u32) -> Result<(Duration, String), (String, bool)> {
        let settings = &self.inner.settings;
        let stats = &self.inner.stats;
        match verdict {
            Verdict::RetryAfter(wait) => {
                stats.throttled.fetch_add(1, Ordering::Relaxed);
                stats
                    .retry_after_micros
                    .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
                // The tenant is throttled, not this task: everyone holds back.
                self.inner.throttle.hold_for(wait);
                Ok((
                    Duration::ZERO,
                    format!("throttled, Graph asked for {wait:?}"),
                ))
            }
            Verdict::WaitTooLong(reason) => {
                stats.throttled.fetch_add(1, Ordering::Relaxed);
                Err((reason, true))
            }
            Verdict::Backoff(reason) => Ok((
                backoff_delay(attempt - 1, settings.backoff_base, settings.backoff_cap),
                reason,
            )),
            Verdict::GiveUp(reason) => Err((reason, false)),
            // attempt() answers these itself; should one slip through, fail loudly but
            // without a panic on the request path.
            other @ (Verdict::Success | Verdict::NotFound | Verdict::RefreshToken) => {
                Err((format!("unexpected verdict {other:?}"), false))
            }
        }
    }

    fn give_up(
        &self,
        endpoint: &'static str,
        attempts: u32,
        reason: String,
        transient: bool,
    ) -> GraphError {
        self.inner.stats.gave_up.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(endpoint, attempt = attempts, %reason, transient, "giving up on a Graph request");
        GraphError::GaveUp {
            endpoint,
            attempts,
            reason,
            transient,
        }
    }

    /// One request: token, budget, then the exchange, whose result is recorded whatever it was.
    async fn attempt<P>(&self, endpoint: &'static str, url: &Url, decode: Decode<P>) -> Attempt<P> {
        let bearer = match progress::wait_at(point::GRAPH_TOKEN, self.inner.tokens.bearer()).await {
            Ok(bearer) => bearer,
            Err(error) => return Attempt::Token(error),
        };
        // The lane of the message this request is for: it decides the request's place in the
        // limiter's queue.
        let lane = crate::lane::Lane::current();
        let admission = self.inner.throttle.admit(lane).await;
        let stats = &self.inner.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.requests_by_lane[lane.index()].fetch_add(1, Ordering::Relaxed);
        self.tally.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight::enter(&stats.in_flight);
        let started = Instant::now();
        let (attempt, status) =
            progress::wait_at(point::GRAPH_ANSWER, self.exchange(url, &bearer, decode)).await;
        if status.is_some() {
            progress::global().advanced();
        }
        stats.record(endpoint, status, started.elapsed());
        if status == Some(429) {
            // Graph's word that the rate is too high: the learner cuts it (once for all the
            // requests sent at that rate).
            self.inner.throttle.throttled(admission.generation);
        }
        attempt
    }

    /// Send, classify, read the body; with the HTTP status when an answer came.
    async fn exchange<P>(
        &self,
        url: &Url,
        bearer: &super::auth::BearerToken,
        decode: Decode<P>,
    ) -> (Attempt<P>, Option<u16>) {
        let response = match self
            .inner
            .http
            .get(url.clone())
            .header(reqwest::header::AUTHORIZATION, bearer.authorization.clone())
            .header("Accept", "application/json")
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => return (Attempt::Verdict(classify_transport(&error)), None),
        };
        let status = response.status();
        let answered = Some(status.as_u16());
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| RetryAfter::read(v, SystemTime::now()));
        let max_wait = self.inner.settings.max_retry_after;
        match classify_status(status, retry_after.as_ref(), max_wait) {
            Verdict::Success => {}
            Verdict::NotFound => return (Attempt::NotFound, answered),
            Verdict::RefreshToken => return (Attempt::Unauthorized(bearer.generation), answered),
            other => {
                let code = graph_error_code(response).await;
                let verdict = match (other, code) {
                    (Verdict::GiveUp(reason), Some(code)) => {
                        Verdict::GiveUp(format!("{reason} ({code})"))
                    }
                    (other, _) => other,
                };
                return (Attempt::Verdict(verdict), answered);
            }
        }
        // Reading and parsing belong to the attempt: a body cut off mid-way is a transient
        // failure like any other, and is retried.
        let cap = self.inner.settings.max_body_bytes;
        let attempt = match read_capped(response, cap).await {
            Ok(bytes) => match decode(&bytes) {
                Ok(body) => Attempt::Done(body),
                Err(error) if error.is_data() => Attempt::Shape(format!(
                    "answer does not have the documented shape: {error}"
                )),
                Err(error) => Attempt::Verdict(Verdict::Backoff(format!(
                    "unreadable JSON in a {} answer: {error}",
                    status.as_u16()
                ))),
            },
            // Permanent: the same request would bring the same answer, so a retry would only
            // spend quota and memory again; a smaller --page-size is what helps a long page.
            Err(BodyError::TooLarge) => Attempt::Verdict(Verdict::GiveUp(format!(
                "answer larger than {}, the most read of one Graph answer",
                size(cap)
            ))),
            Err(BodyError::Read(error)) => Attempt::Verdict(classify_transport(&error)),
        };
        (attempt, answered)
    }
}

/// How a body becomes what the caller asked for, straight from its bytes: broken JSON is a
/// broken answer (retried), JSON of another shape is permanent.
type Decode<P> = fn(&[u8]) -> Result<P, serde_json::Error>;

enum Attempt<P> {
    Done(P),
    NotFound,
    /// Valid JSON that is not what the endpoint documents: asking again would bring it again.
    Shape(String),
    Unauthorized(u64),
    Token(GraphError),
    Verdict(Verdict),
}

/// The `error.code` of a Graph error body, for the log; never the message, which may change.
async fn graph_error_code(response: reqwest::Response) -> Option<String> {
    let body = read_capped(response, MAX_ERROR_BODY).await.ok()?;
    let body: Value = serde_json::from_slice(&body).ok()?;
    body.pointer("/error/code")?
        .as_str()
        .map(|code| code.chars().take(80).collect())
}

/// The HTTP settings Graph and the token client share: timeouts, pool, TLS trust.
fn http_builder(settings: &GraphSettings) -> Result<reqwest::ClientBuilder, GraphError> {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.request_timeout)
        .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(settings.max_in_flight)
        .user_agent(concat!("mdti-worker/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &settings.ca_cert_file {
        let given = super::tls::read_certificates(path)?;
        // With verification off nothing is checked anyway; the file was still read, so a
        // wrong path is reported either way.
        if settings.tls_verify {
            builder = builder.use_preconfigured_tls(super::tls::client_config(path, given)?);
        }
    }
    if !settings.tls_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

fn build_http(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, GraphError> {
    builder
        .build()
        .map_err(|e| GraphError::Config(format!("HTTP client: {e}")))
}

/// A base URL must parse and carry no user or password: the client authenticates with its
/// token, and a password in a URL would travel into logs and next links.
fn check_base_url(what: &str, raw: &str) -> Result<Url, GraphError> {
    let url = Url::parse(raw).map_err(|e| GraphError::Config(format!("{what}: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(GraphError::Config(format!(
            "{what} {} carries a user or password; Graph takes none",
            redact_url(raw)
        )));
    }
    Ok(url)
}

fn same_origin(link: &Url, base: &Url) -> bool {
    link.scheme() == base.scheme()
        && link.host_str() == base.host_str()
        && link.port_or_known_default() == base.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_key_is_always_one_path_segment() {
        assert_eq!(
            GraphClient::host_path("2001:db8::1", Some("whois")),
            "hosts/2001%3Adb8%3A%3A1/whois"
        );
        assert_eq!(
            GraphClient::host_path("../x?y#z/w", None),
            "hosts/..%2Fx%3Fy%23z%2Fw"
        );
    }

    #[test]
    fn next_links_are_followed_only_within_graph() {
        let base = Url::parse("https://graph.microsoft.com/v1.0").unwrap();
        let within = |link: &str| same_origin(&Url::parse(link).unwrap(), &base);
        assert!(within(
            "https://graph.microsoft.com/v1.0/security/x?$skip=10"
        ));
        assert!(within("https://graph.microsoft.com:443/beta/x"));
        assert!(!within("https://evil.example/v1.0/x"));
        assert!(!within("http://graph.microsoft.com/v1.0/x"));
        assert!(!within("https://graph.microsoft.com:8443/v1.0/x"));
    }

    fn client_at(graph_base_url: &str) -> GraphClient {
        GraphClient::new(GraphSettings {
            graph_base_url: graph_base_url.into(),
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: Secret::new("s"),
            ..GraphSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn a_request_url_is_the_base_the_service_path_and_the_query_as_one_url_would_parse() {
        for base in [
            "https://graph.microsoft.com/v1.0",
            "https://graph.microsoft.com/v1.0/",
            "http://127.0.0.1:18081/v1.0",
            "http://localhost:8080",
        ] {
            let client = client_at(base);
            for (path, query) in [
                (GraphClient::host_path("contoso.com", Some("whois")), None),
                (
                    GraphClient::host_path("2001:db8::1", Some("passiveDns")),
                    Some("$top=1000"),
                ),
                (GraphClient::host_path("../x?y#z/w", None), None),
                (
                    GraphClient::host_path("bücher.example", Some("reputation")),
                    None,
                ),
                ("intelProfiles".to_owned(), Some("$top=50")),
            ] {
                let whole = match query {
                    Some(query) => format!("{}/{TI}/{path}?{query}", base.trim_end_matches('/')),
                    None => format!("{}/{TI}/{path}", base.trim_end_matches('/')),
                };
                assert_eq!(
                    client.url(&path, query),
                    Url::parse(&whole).unwrap(),
                    "{whole}"
                );
            }
        }
    }

    #[test]
    fn missing_credentials_are_named() {
        let error = GraphClient::new(GraphSettings::default()).err().unwrap();
        let text = error.to_string();
        assert!(text.contains("MDTI_TENANT_ID"), "{text}");
        assert!(text.contains("MDTI_CLIENT_SECRET"), "{text}");
    }
}
