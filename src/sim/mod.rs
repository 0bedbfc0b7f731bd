//! A Microsoft Graph threat intelligence simulator: it serves the documented shapes and
//! misbehaves the way Graph does (throttling, 5xx, slow and truncated answers, expired tokens).
//!
//! It builds every JSON body on its own with `serde_json::json!` and imports nothing from
//! [`crate::graph`] or [`crate::enrich`], so a wrong field name in the client is caught, not
//! mirrored.
//!
//! # Endpoints
//!
//! - `POST /{tenant}/oauth2/v2.0/token`: OAuth2 client credentials (form encoded). Any tenant.
//!   `grant_type` missing or not `client_credentials` → 400; `scope` missing or not ending in
//!   `/.default` → 400 `invalid_scope`; wrong `client_id` or `client_secret` → 401
//!   `invalid_client` with an AADSTS body.
//! - `GET /v1.0/security/threatIntelligence/...`: `hosts/{id}` and its `whois`, `passiveDns`,
//!   `passiveDnsReverse`, `hostPairs`, `parentHostPairs`, `childHostPairs`, `subdomains`,
//!   `reputation`; `intelProfiles`, `intelProfiles/{id}`, `intelProfiles/{id}/indicators`.
//!   The `{id}` segment is percent-decoded (IPv6 keys carry `%3A`); bad encoding → 400.
//! - `GET /_sim/counters`: the counters as a JSON object; `DELETE /_sim/counters` resets them.
//!
//! Every Graph request needs `Authorization: Bearer <token>` with a token this simulator issued,
//! not expired and not revoked by [`SimControl::expire_tokens`], else 401
//! `InvalidAuthenticationToken`. Misbehaviour is applied in this order: auth check → `fail_all`
//! → injected 429s → rate limit → `error_ratio` → latency/slow → answer (maybe truncated).
//!
//! Collections are paged with `$top` (default [`SimConfig::page_size`], capped at
//! [`SimConfig::max_page_size`]) and `$skip`; `@odata.nextLink` is an absolute URL built from the
//! request's `Host` header, carries both, and is absent on the last page. `$count=true` adds
//! `@odata.count`. `$select`, `$filter` (`path eq 'value'` clauses joined by `and`), `$search`
//! (case-insensitive substring of the item's JSON) and `$orderby` (`path [asc|desc]`) are
//! honoured on every collection, which is more than Graph documents but harmless. A bad `$top`,
//! `$skip`, `$count` or `$filter` → 400 with a Graph error body.
//!
//! # Data rules (tests may rely on these)
//!
//! Data is a pure function of the host key (lower-cased, trailing dot removed, IPs in canonical
//! form): same host, same answer, in every run and process, whatever [`SimConfig::seed`] (which
//! only drives misbehaviour). The returned `id` echoes the key as sent.
//!
//! - **Unknown hosts**: a hostname whose first label is `unknown` (`unknown.contoso.com`) or any
//!   key containing `nxdomain` → 404 (`NotFound`) on every `hosts/{id}*` endpoint. Keys that
//!   cannot be a host (illegal characters, empty labels, URLs) → 404 as well.
//! - **Popular hosts**: a hostname whose first label is `popular`, and about 2 % of all hosts
//!   (by hash), have hundreds of passive DNS records (250-450 forward, 200-300 reverse), host
//!   pairs and subdomains: many pages. Other hosts have 3-30 forward passive DNS records (one
//!   more for a name that resolves to a shared host).
//! - **Evil hosts**: a hostname whose first label is `evil` is malicious, and at least 3 of its
//!   passive DNS counterparts (forward and reverse) are malicious pool entries.
//! - **Shared pool**: counterparts other than the shared hosts below come from 300 IPv4
//!   addresses in 20.0.0.0/8 and 40.0.0.0/8, 60 IPv6 addresses in 2603:1000::/24 and 300
//!   hostnames like `cdn-0.edge-example.net` (never private, reserved or documentation
//!   ranges). About 10 % of them are malicious.
//! - **Malicious hosts** (evil ones and malicious pool entries): reputation `malicious`, score
//!   75-100, a rule named `Cyber Threat Intelligence` whose `description` names one actor
//!   group (`Aqua Blizzard`, `Forest Blizzard`, `Mint Sandstorm`, `Storm-0558`, `Volt Typhoon`,
//!   `Lace Tempest`) as a string, or in about a quarter of hosts as a JSON list of strings; in
//!   about 70 % also a `Microsoft Defender Threat Intelligence Intel Article` rule. Other hosts
//!   are `unknown`, `neutral` or `suspicious` with `Name server`, `Registrar` or
//!   `Resolving IP Address` rules, or none.
//! - **Shared hosts** ([`shared_hosts`]): four counterparts that thousands of unrelated names
//!   sit behind, outside the pool: a CDN edge `104.18.32.7` (reputation `malicious`, names
//!   `Forest Blizzard`), a parking host `185.53.178.14` (`malicious`, `Lace Tempest`), the
//!   public resolver `8.8.8.8` (`neutral`, no rule) and a CDN name `edge.sharedcdn-sim.net`
//!   (`suspicious`, `Mint Sandstorm`). Their actor rule has the shape and `high` severity of a
//!   malicious pool entry's, but no profile lists them: they are evidence of the weak kind.
//!   Each one's `passiveDns` and `passiveDnsReverse` list the same 1,500-4,000 distinct names
//!   (fixed per host, [`shared_host_names`]; several pages at `$top=1000`): the pool names
//!   that resolve to it, then generated ones, each a registrable domain of its own
//!   (`shop17-edgecust.com`), record type `A` for the addresses and `CNAME` for the name.
//! - **Names resolving to shared hosts** ([`shared_host_for`]): about one hostname in four
//!   (by hash; never addresses, unknown names or the shared hosts themselves), and every
//!   generated name listed behind a shared host, has one more forward passive DNS record, the
//!   last one, to a shared host (`A` to an address, `CNAME` to the name). The records it had
//!   otherwise are unchanged. An evil host can resolve to one, so not every malicious
//!   counterpart of an evil host is a profile indicator.
//! - **Intel profiles**: six actors (the groups above) and one tool (`Cobalt Strike`). An actor's
//!   indicators include every malicious pool entry its reputation names, so host → passive DNS
//!   → reputation → profile indicators chains close. Shared hosts are in no profile's
//!   indicators.
//! - **Runtime indicators**: [`SimControl::add_profile_indicator`] lists one more indicator of
//!   a profile, after its synthetic ones (source `microsoft`, first and last seen in the same
//!   fixed window, `@odata.type` `ipAddress`, or a hostname type as for any name), until
//!   [`SimControl::clear_added_indicators`]: new intelligence for a profile re-sync to find.
//! - **Whois**: about 1 in 25 records, and every hostname whose first label is `placeholder`,
//!   carries `"String (timestamp)"` in one date field; date fields are sometimes null.
//! - About one hostname in ten is typed `#microsoft.graph.security.hostName` (odd casing).
//!
//! # Overrides
//!
//! [`SimControl::set_override`] replaces the answer of one path (relative to
//! `/security/threatIntelligence/`, compared case-insensitively after percent-decoding): an
//! array is served as a paged collection, an object as is, `null` as 404. Overrides bypass the
//! unknown-host rule but not auth or misbehaviour.
//!
//! # Counters
//!
//! `token` (every token request), one per Graph endpoint (`host`, `whois`, `passiveDns`,
//! `passiveDnsReverse`, `hostPairs`, `parentHostPairs`, `childHostPairs`, `subdomains`,
//! `reputation`, `intelProfiles`, `intelProfileIndicators`: every request routed there, whatever
//! its answer), `graph` (every request under `/v1.0`, including 401/429/5xx ones), `throttled`
//! (429s sent), `errors` (injected 5xx and `fail_all` answers) and `unauthorized` (401s sent,
//! Graph and token endpoint).

mod data;
pub(crate) use data::{NAME_DOMAINS, NAME_PREFIXES};
mod server;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

pub use tls::TlsIdentity;

/// The shared hosts (see "Data rules"), each with the actor its reputation's
/// `Cyber Threat Intelligence` rule names (`None`: no actor). No profile lists them.
pub fn shared_hosts() -> Vec<(String, Option<&'static str>)> {
    data::shared_hosts()
}

/// The shared host `name` resolves to (its extra forward passive DNS record), or `None`: for
/// addresses, unknown names, the shared hosts themselves, and the three names in four that do
/// not. A pure function of the name, like all synthetic data.
pub fn shared_host_for(name: &str) -> Option<String> {
    data::shared_host_for(name)
}

/// How many distinct names a shared host's `passiveDns` (and `passiveDnsReverse`) lists;
/// `None` for a host that is not shared.
pub fn shared_host_names(host: &str) -> Option<usize> {
    data::shared_host_names(host)
}

/// How a 429's `Retry-After` is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RetryAfterFormat {
    /// Seconds with milliseconds, like `0.350` (Graph sends fractional seconds).
    #[default]
    Seconds,
    /// An HTTP-date (whole seconds, rounded up so the client never retries early).
    HttpDate,
}

/// Simulator settings; the misbehaviour knobs can also be changed at runtime via [`SimControl`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Items per page when the client gives no `$top`.
    pub page_size: usize,
    /// `$top` is capped to this.
    pub max_page_size: usize,
    /// Requests per second over all Graph endpoints (token bucket, burst `max(1, rate)`);
    /// beyond it 429 with `Retry-After`. `None`, zero, negative or non-finite: no limit.
    pub rate_limit: Option<f64>,
    pub retry_after_format: RetryAfterFormat,
    /// Share of Graph requests answered 500/502/503/504.
    pub error_ratio: f64,
    /// Added to every Graph answer that gets past the error stages.
    pub latency: Duration,
    /// Share of answers that take `slow_latency` instead of `latency`.
    pub slow_ratio: f64,
    pub slow_latency: Duration,
    /// Share of 200 answers whose JSON body is cut in half.
    pub truncate_ratio: f64,
    pub token_ttl: Duration,
    pub client_id: String,
    pub client_secret: String,
    /// Seeds the misbehaviour PRNG (the synthetic data does not depend on it).
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            page_size: 50,
            max_page_size: 1000,
            rate_limit: None,
            retry_after_format: RetryAfterFormat::Seconds,
            error_ratio: 0.0,
            latency: Duration::ZERO,
            slow_ratio: 0.0,
            slow_latency: Duration::from_secs(30),
            truncate_ratio: 0.0,
            token_ttl: Duration::from_secs(3599),
            client_id: "sim-client".to_string(),
            client_secret: "sim-secret".to_string(),
            seed: 0,
        }
    }
}

/// Runtime switches and counters, usable while the server runs (all methods take `&self`).
pub struct SimControl {
    state: Mutex<ControlState>,
    counters: Mutex<BTreeMap<String, u64>>,
    tokens: Mutex<TokenStore>,
    /// Indicators added at runtime: (profile id, canonical artifact), in the order added.
    added_indicators: Mutex<Vec<(String, String)>>,
}

struct ControlState {
    rate_limit: Option<f64>,
    /// Token bucket level and when it was last refilled.
    bucket: f64,
    bucket_at: Instant,
    error_ratio: f64,
    latency: Duration,
    slow_ratio: f64,
    slow_latency: Duration,
    truncate_ratio: f64,
    fail_all: Option<u16>,
    /// Remaining injected 429s and their Retry-After.
    inject: Option<(u32, Duration)>,
    overrides: HashMap<String, Value>,
    /// Paths (override keys) that answer this status, whatever else is set.
    failing: HashMap<String, u16>,
    rng: data::Rng,
}

#[derive(Default)]
struct TokenStore {
    /// Bumped by `expire_tokens`: tokens issued under an older epoch are invalid.
    epoch: u64,
    issued: HashMap<String, (Instant, u64)>,
}

/// What the misbehaviour stages decided for one Graph request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    FailAll(u16),
    Throttle(Duration),
    Error(u16),
    Proceed { delay: Duration, truncate: bool },
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenProblem {
    Missing,
    Unknown,
    Expired,
}

/// Every counter name, so that `/_sim/counters` always lists all of them (zeros included).
pub(crate) const COUNTER_NAMES: [&str; 18] = [
    "token",
    "graph",
    "host",
    "whois",
    "passiveDns",
    "passiveDnsReverse",
    "hostPairs",
    "parentHostPairs",
    "childHostPairs",
    "subdomains",
    "reputation",
    "intelProfiles",
    "intelProfileIndicators",
    "throttled",
    "errors",
    "unauthorized",
    // Answers the misbehaviour knobs slowed down or cut short, so a chaos test can tell that
    // the chaos happened.
    "slow",
    "truncated",
];

/// Locks, ignoring poisoning: the guarded data stays consistent (every critical section is a
/// few assignments), and a panicking test thread must not take the server down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sane_rate(rate: Option<f64>) -> Option<f64> {
    rate.filter(|r| r.is_finite() && *r > 0.0)
}

fn ratio(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

/// Normalises an override path: percent-decoded, no surrounding slashes, lower case.
fn override_key(path: &str) -> String {
    percent_encoding::percent_decode_str(path.trim_matches('/'))
        .decode_utf8_lossy()
        .to_lowercase()
}

impl SimControl {
    fn new(config: &SimConfig) -> Self {
        let rate = sane_rate(config.rate_limit);
        SimControl {
            state: Mutex::new(ControlState {
                rate_limit: rate,
                bucket: rate.map_or(0.0, |r| r.max(1.0)),
                bucket_at: Instant::now(),
                error_ratio: ratio(config.error_ratio),
                latency: config.latency,
                slow_ratio: ratio(config.slow_ratio),
                slow_latency: config.slow_latency,
                truncate_ratio: ratio(config.truncate_ratio),
                fail_all: None,
                inject: None,
                overrides: HashMap::new(),
                failing: HashMap::new(),
                rng: data::Rng::new(config.seed),
            }),
            counters: Mutex::new(COUNTER_NAMES.iter().map(|n| (n.to_string(), 0)).collect()),
            tokens: Mutex::new(TokenStore::default()),
            added_indicators: Mutex::new(Vec::new()),
        }
    }

    /// Sets (or clears) the rate limit; the bucket starts full.
    pub fn set_rate_limit(&self, rate: Option<f64>) {
        let mut st = lock(&self.state);
        st.rate_limit = sane_rate(rate);
        st.bucket = st.rate_limit.map_or(0.0, |r| r.max(1.0));
        st.bucket_at = Instant::now();
    }

    /// Share (0..=1) of Graph requests answered 500/502/503/504.
    pub fn set_error_ratio(&self, r: f64) {
        lock(&self.state).error_ratio = ratio(r);
    }

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Share of answers that take `latency` instead of the normal latency.
    pub fn set_slow(&self, share: f64, latency: Duration) {
        let mut st = lock(&self.state);
        st.slow_ratio = ratio(share);
        st.slow_latency = latency;
    }

    /// Share of 200 answers whose body is cut in half.
    pub fn set_truncate_ratio(&self, r: f64) {
        lock(&self.state).truncate_ratio = ratio(r);
    }

    /// Every Graph request (past auth) answers `status` with a Graph error body until cleared
    /// with `None`. A status outside 100..=999 is sent as 500.
    pub fn set_fail_all(&self, status: Option<u16>) {
        lock(&self.state).fail_all = status;
    }

    /// Requests for `path` (relative like [`SimControl::set_override`]'s) answer `status` with a
    /// Graph error body, until cleared with `None`: one host failing while the rest serve.
    pub fn fail_path(&self, path: &str, status: Option<u16>) {
        let key = override_key(path);
        let mut st = lock(&self.state);
        match status {
            Some(status) => st.failing.insert(key, status),
            None => st.failing.remove(&key),
        };
    }

    /// The next `n` Graph requests (past auth and `fail_all`) answer 429 with this
    /// `Retry-After`. Replaces any injection still pending.
    pub fn inject_429(&self, n: u32, retry_after: Duration) {
        lock(&self.state).inject = (n > 0).then_some((n, retry_after));
    }

    /// Invalidates every token issued so far: Graph answers 401 until a new one is fetched.
    pub fn expire_tokens(&self) {
        lock(&self.tokens).epoch += 1;
    }

    /// Serves `body` for `path` (relative to `/security/threatIntelligence/`, e.g.
    /// `hosts/evil.example/passiveDns`): an array as a paged collection, an object as is,
    /// `Value::Null` as 404.
    pub fn set_override(&self, path: &str, body: Value) {
        lock(&self.state).overrides.insert(override_key(path), body);
    }

    /// Removes one override: the path is served from synthetic data again.
    pub fn remove_override(&self, path: &str) {
        lock(&self.state).overrides.remove(&override_key(path));
    }

    pub fn clear_overrides(&self) {
        lock(&self.state).overrides.clear();
    }

    /// New intelligence: `artifact` (an IP or a host name) is listed among the indicators of
    /// the profile whose title (case-insensitively) or id is `profile_title_or_id`, after its
    /// synthetic ones, until [`SimControl::clear_added_indicators`]. The artifact is listed in
    /// canonical form (lower case, no trailing dot, canonical IP); adding the same one twice
    /// lists it once. Returns the profile id, `None` (nothing added) when no profile matches.
    pub fn add_profile_indicator(
        &self,
        profile_title_or_id: &str,
        artifact: &str,
    ) -> Option<String> {
        let id = data::find_profile_id(profile_title_or_id)?;
        let artifact = data::canonical_artifact(artifact);
        let mut added = lock(&self.added_indicators);
        if !added.iter().any(|(p, a)| *p == id && *a == artifact) {
            added.push((id.clone(), artifact));
        }
        Some(id)
    }

    /// Forgets every indicator added with [`SimControl::add_profile_indicator`].
    pub fn clear_added_indicators(&self) {
        lock(&self.added_indicators).clear();
    }

    /// The artifacts added to profile `profile_id` (compared case-insensitively), in order.
    pub(crate) fn added_indicators(&self, profile_id: &str) -> Vec<String> {
        lock(&self.added_indicators)
            .iter()
            .filter(|(p, _)| p.eq_ignore_ascii_case(profile_id))
            .map(|(_, a)| a.clone())
            .collect()
    }

    pub fn reset_counters(&self) {
        for v in lock(&self.counters).values_mut() {
            *v = 0;
        }
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        lock(&self.counters).clone()
    }

    pub fn count(&self, endpoint: &str) -> u64 {
        lock(&self.counters).get(endpoint).copied().unwrap_or(0)
    }

    pub(crate) fn bump(&self, name: &str) {
        *lock(&self.counters).entry(name.to_string()).or_insert(0) += 1;
    }

    pub(crate) fn override_for(&self, key: &str) -> Option<Value> {
        lock(&self.state).overrides.get(key).cloned()
    }

    pub(crate) fn issue_token(&self, token: String, ttl: Duration) {
        let now = Instant::now();
        let mut t = lock(&self.tokens);
        let epoch = t.epoch;
        // Forget dead tokens so a long benchmark does not grow the map forever.
        t.issued.retain(|_, (exp, ep)| *exp > now && *ep == epoch);
        t.issued.insert(token, (now + ttl, epoch));
    }

    pub(crate) fn check_token(&self, token: Option<&str>) -> Result<(), TokenProblem> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(TokenProblem::Missing)?;
        let t = lock(&self.tokens);
        match t.issued.get(token) {
            None => Err(TokenProblem::Unknown),
            Some((exp, epoch)) if *epoch != t.epoch || *exp <= Instant::now() => {
                Err(TokenProblem::Expired)
            }
            Some(_) => Ok(()),
        }
    }

    /// Runs the misbehaviour stages, in the documented order, for one Graph request.
    pub(crate) fn judge(&self, key: Option<&str>) -> Verdict {
        let mut guard = lock(&self.state);
        // Reborrow through a plain reference so that fields can be borrowed separately.
        let st = &mut *guard;
        if let Some(status) = st.fail_all {
            return Verdict::FailAll(status);
        }
        if let Some(&status) = key.and_then(|key| st.failing.get(key)) {
            return Verdict::FailAll(status);
        }
        if let Some((n, after)) = st.inject {
            st.inject = (n > 1).then_some((n - 1, after));
            return Verdict::Throttle(after);
        }
        if let Some(rate) = st.rate_limit {
            let now = Instant::now();
            let burst = rate.max(1.0);
            let refill = now.duration_since(st.bucket_at).as_secs_f64() * rate;
            st.bucket = (st.bucket + refill).min(burst);
            st.bucket_at = now;
            if st.bucket >= 1.0 {
                st.bucket -= 1.0;
            } else {
                // A throttled request does not take a token: the client that waits exactly
                // Retry-After gets through.
                let wait = ((1.0 - st.bucket) / rate).max(0.001);
                let wait = Duration::try_from_secs_f64(wait)
                    .unwrap_or(Duration::from_secs(86_400))
                    .min(Duration::from_secs(86_400));
                return Verdict::Throttle(wait);
            }
        }
        if st.error_ratio > 0.0 && st.rng.chance(st.error_ratio) {
            let status = *st.rng.pick(&[500u16, 502, 503, 504]);
            return Verdict::Error(status);
        }
        let delay = if st.slow_ratio > 0.0 && st.rng.chance(st.slow_ratio) {
            self.bump("slow");
            st.slow_latency
        } else {
            st.latency
        };
        let truncate = st.truncate_ratio > 0.0 && st.rng.chance(st.truncate_ratio);
        Verdict::Proceed { delay, truncate }
    }
}

/// State shared by the handlers and the handle.
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) control: SimControl,
    /// Used for links when a request has no `Host` header.
    pub(crate) local: SocketAddr,
    /// Served over HTTPS: links and base URLs say `https`.
    pub(crate) tls: bool,
}

impl Shared {
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// A running simulator. Dropping it (or calling [`SimHandle::shutdown`]) stops the server.
pub struct SimHandle {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// `http://127.0.0.1:PORT/v1.0` (`https` when served over TLS)
    pub fn graph_base_url(&self) -> String {
        format!("{}://{}/v1.0", self.shared.scheme(), self.shared.local)
    }

    /// `http://127.0.0.1:PORT` (`https` when served over TLS); the token path is
    /// `/{tenant}/oauth2/v2.0/token` under it.
    pub fn login_base_url(&self) -> String {
        format!("{}://{}", self.shared.scheme(), self.shared.local)
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.shared.control.counters()
    }

    pub fn count(&self, endpoint: &str) -> u64 {
        self.shared.control.count(endpoint)
    }

    pub fn control(&self) -> &SimControl {
        &self.shared.control
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Stops the server (graceful: requests in flight finish).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a simulator on `127.0.0.1` with an ephemeral port, serving in a tokio task.
pub async fn spawn(config: SimConfig) -> std::io::Result<SimHandle> {
    spawn_with(config, None).await
}

/// [`spawn`], over HTTPS with `identity`: the handle's URLs say `https`, and so do the links
/// the simulator writes.
pub async fn spawn_tls(config: SimConfig, identity: &TlsIdentity) -> std::io::Result<SimHandle> {
    spawn_with(config, Some(identity)).await
}

async fn spawn_with(config: SimConfig, tls: Option<&TlsIdentity>) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let shared = start(config, listener, tls, async {
        // A dropped sender also means stop.
        let _ = stopped.await;
    })?;
    Ok(SimHandle {
        shared,
        stop: Some(stop),
    })
}

/// Serves a simulator on `addr` (over HTTPS with `tls`) until `shutdown` completes (for the
/// `sim` CLI subcommand).
pub async fn serve(
    config: SimConfig,
    addr: SocketAddr,
    tls: Option<&TlsIdentity>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let (done, finished) = oneshot::channel::<()>();
    let shared = start(config, listener, tls, async move {
        shutdown.await;
        let _ = done.send(());
    })?;
    tracing::info!(local = %shared.local, tls = shared.tls, "graph simulator listening");
    let _ = finished.await;
    Ok(())
}

/// Serve on `listener` in a task until `shutdown` completes (graceful: requests in flight
/// finish).
fn start(
    config: SimConfig,
    listener: tokio::net::TcpListener,
    tls: Option<&TlsIdentity>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Arc<Shared>> {
    let local = listener.local_addr()?;
    let shared = Arc::new(Shared {
        control: SimControl::new(&config),
        config,
        local,
        tls: tls.is_some(),
    });
    let app = server::router(shared.clone());
    // Either the TLS listener (Ok) or the plain one (Err): two listener types, one task.
    let tls_or_plain = match tls {
        Some(identity) => Ok(tls::TlsListener::new(listener, identity)?),
        None => Err(listener),
    };
    tokio::spawn(async move {
        let served = match tls_or_plain {
            Ok(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Err(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::warn!(error = %e, "graph simulator stopped with an error");
        }
    });
    Ok(shared)
}
