//! Settings: command-line flags over environment variables over an optional env file.
//!
//! Every setting has a flag and an `MDTI_*` variable (clap reads both); `--config FILE` (or
//! `MDTI_CONFIG`) names a file of `KEY=VALUE` lines that fills in variables not already set, so
//! a flag beats the environment and the environment beats the file. Secrets are held as
//! [`Secret`] and URLs with passwords are printed through [`redact_url`], so neither `Debug`
//! output nor a log line can carry them.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::enrich::EnricherKind;
use crate::graph::adaptive::GraphRate;
use crate::graph::throttle::GraphBurst;
use crate::graph::{GraphSettings, PageLimits};
use crate::secret::Secret;
use crate::setting::number_or_auto;

/// Load `KEY=VALUE` lines into the environment where the variable is not set yet. Runs before
/// any thread is spawned (from `main`), which is what makes `set_var` sound here.
pub fn load_env_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "config file {} line {}: expected KEY=VALUE",
                path.display(),
                number + 1
            ));
        };
        let key = key.trim().trim_start_matches("export ").trim();
        let value = value.trim().trim_matches('"');
        if std::env::var_os(key).is_none() {
            // SAFETY: called from main before the runtime or any other thread starts.
            unsafe { std::env::set_var(key, value) };
        }
    }
    Ok(())
}

/// `30s`, `500ms`, `5m`, `24h`, `2d` or plain seconds (fractions allowed).
/// A live reserve: a fraction from 0 to 0.9, or a percentage (`10%`).
pub fn parse_reserve(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(number) => (number, 100.0),
        None => (text, 1.0),
    };
    let fraction = number
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{text:?} is not a fraction (0.1) or a percentage (10%)"))?
        / scale;
    if (0.0..=0.9).contains(&fraction) {
        Ok(fraction)
    } else {
        Err(format!(
            "the live reserve must be between 0 and 0.9 (90%), got {text}"
        ))
    }
}

/// `--bulk-commit-linger`'s default. Throttled at 50 requests/s a worker finishes some eight
/// messages a second, one by one; each transaction costs the worker and Postgres a fixed price
/// (its round trips, its commit), so the window sets how many messages share it. Measured with
/// the bench's throttled worker-alone command (README, Benchmark): 1 s gave some ten messages a
/// transaction, 4 s some twenty-five, and ×0.91 of the worker's CPU and ×0.81 of Postgres's.
/// Bulk work has no latency to keep, a live message ends the wait, and so does a batch that no
/// message in hand may still join, so a worker's slots are never all held waiting.
pub const BULK_COMMIT_LINGER: &str = "4s";

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 500ms, 30s, 5m, 24h)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is too long a duration"))
}

/// A comma-separated enricher list as one setting (`whois,passive_dns` or `all`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnricherList(pub Vec<EnricherKind>);

impl std::str::FromStr for EnricherList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_enrichers(text).map(EnricherList)
    }
}

pub fn parse_enrichers(text: &str) -> Result<Vec<EnricherKind>, String> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.eq_ignore_ascii_case("all") {
            return Ok(EnricherKind::ALL.to_vec());
        }
        let kind = name.parse::<EnricherKind>()?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    if out.is_empty() {
        return Err("no enricher named".into());
    }
    Ok(out)
}

pub use crate::secret::redact_url;

/// Graph requests per second that one runtime thread serves with room to spare. One thread did
/// 1,700-1,900 a second (340-390 observables) in the benchmark with the machine's other core
/// busy with Postgres; two threads did some 10 % more, at a sixth more CPU per observable while
/// waiting for a small quota, spent on the threads waking each other.
pub const ONE_THREAD_SERVES: f64 = 1000.0;

/// `--runtime-threads`: how many threads run the async runtime's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeThreads {
    /// One for a worker whose Graph rate one thread serves ([`ONE_THREAD_SERVES`]); otherwise
    /// tokio's default (`TOKIO_WORKER_THREADS`, else one per CPU).
    Auto,
    Fixed(NonZeroUsize),
}

impl RuntimeThreads {
    /// The threads for a command whose worker makes at most `rate_ceiling` Graph requests a
    /// second (`None`: it runs no worker); `None` leaves tokio's default.
    pub fn for_rate(self, rate_ceiling: Option<f64>) -> Option<usize> {
        match self {
            RuntimeThreads::Fixed(threads) => Some(threads.get()),
            RuntimeThreads::Auto => rate_ceiling
                .is_some_and(|rate| rate <= ONE_THREAD_SERVES)
                .then_some(1),
        }
    }
}

impl std::str::FromStr for RuntimeThreads {
    type Err = String;

    fn from_str(text: &str) -> Result<RuntimeThreads, String> {
        let threads = number_or_auto(text, "threads", |text| text.parse::<NonZeroUsize>().ok())?;
        Ok(threads.map_or(RuntimeThreads::Auto, RuntimeThreads::Fixed))
    }
}

/// Microsoft Graph and the login endpoint. `Debug` shows the URLs through [`redact_url`].
#[derive(Args, Clone)]
pub struct GraphArgs {
    /// Graph base URL (sovereign clouds and the simulator differ)
    #[arg(
        long,
        env = "MDTI_GRAPH_URL",
        default_value = "https://graph.microsoft.com/v1.0"
    )]
    pub graph_url: String,
    /// Login (token) base URL
    #[arg(
        long,
        env = "MDTI_LOGIN_URL",
        default_value = "https://login.microsoftonline.com"
    )]
    pub login_url: String,
    /// Directory (tenant) id of the app registration
    #[arg(long, env = "MDTI_TENANT_ID", default_value = "")]
    pub tenant_id: String,
    /// Application (client) id
    #[arg(long, env = "MDTI_CLIENT_ID", default_value = "")]
    pub client_id: String,
    /// Client secret (prefer MDTI_CLIENT_SECRET_FILE; a flag shows in `ps`)
    #[arg(
        long,
        env = "MDTI_CLIENT_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub client_secret: Secret,
    /// File holding the client secret (first line)
    #[arg(long, env = "MDTI_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// Graph requests per second for this process, retries and pages included: where the rate
    /// starts and the most it climbs back to after Graph's 429s cut it; `auto` starts at 10 and
    /// climbs until Graph says no
    #[arg(long, env = "MDTI_GRAPH_RATE", default_value = "10")]
    pub graph_rate: GraphRate,
    /// Requests the limiter lets through at once after a quiet spell, or `auto`: half a second
    /// of the rate --graph-rate starts at, at least 10 (with --tenant-quota, of the quota)
    #[arg(long, env = "MDTI_GRAPH_BURST", default_value = "auto")]
    pub graph_burst: GraphBurst,
    /// Part of the Graph rate that bulk work leaves unspent for live bursts, from 0 to 0.9
    /// (0: bulk uses whatever live work leaves; live requests always go first)
    #[arg(long, env = "MDTI_LIVE_RESERVE", default_value_t = 0.0, value_parser = parse_reserve)]
    pub live_reserve: f64,
    /// Graph requests open at once, per lane
    #[arg(long, env = "MDTI_GRAPH_MAX_IN_FLIGHT", default_value_t = 32)]
    pub graph_max_in_flight: usize,
    /// Attempts per Graph request before giving up
    #[arg(long, env = "MDTI_GRAPH_MAX_ATTEMPTS", default_value_t = 6)]
    pub graph_max_attempts: u32,
    /// Timeout of one Graph request
    #[arg(long, env = "MDTI_GRAPH_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub graph_timeout: Duration,
    /// Longest Retry-After waited out; Graph asking for more fails the request as transient
    #[arg(long, env = "MDTI_GRAPH_MAX_RETRY_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub graph_max_retry_after: Duration,
    /// Items per page asked of Graph ($top)
    #[arg(long, env = "MDTI_PAGE_SIZE", default_value_t = 100)]
    pub page_size: u32,
    /// Pages read per collection at most (0 = no cap)
    #[arg(long, env = "MDTI_MAX_PAGES", default_value_t = 50)]
    pub max_pages: u32,
    /// Extra CA certificate (PEM) to trust, e.g. for a TLS-inspecting proxy
    #[arg(long, env = "MDTI_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Turn TLS certificate verification off (dangerous; logs a warning)
    #[arg(long, env = "MDTI_INSECURE_SKIP_TLS_VERIFY", default_value_t = false)]
    pub insecure_skip_tls_verify: bool,
}

impl std::fmt::Debug for GraphArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured whole, so a new field cannot be left out (or printed raw) unnoticed.
        let GraphArgs {
            graph_url,
            login_url,
            tenant_id,
            client_id,
            client_secret,
            client_secret_file,
            graph_rate,
            graph_burst,
            live_reserve,
            graph_max_in_flight,
            graph_max_attempts,
            graph_timeout,
            graph_max_retry_after,
            page_size,
            max_pages,
            ca_cert,
            insecure_skip_tls_verify,
        } = self;
        f.debug_struct("GraphArgs")
            .field("graph_url", &redact_url(graph_url))
            .field("login_url", &redact_url(login_url))
            .field("tenant_id", tenant_id)
            .field("client_id", client_id)
            .field("client_secret", client_secret)
            .field("client_secret_file", client_secret_file)
            .field("graph_rate", graph_rate)
            .field("graph_burst", graph_burst)
            .field("live_reserve", live_reserve)
            .field("graph_max_in_flight", graph_max_in_flight)
            .field("graph_max_attempts", graph_max_attempts)
            .field("graph_timeout", graph_timeout)
            .field("graph_max_retry_after", graph_max_retry_after)
            .field("page_size", page_size)
            .field("max_pages", max_pages)
            .field("ca_cert", ca_cert)
            .field("insecure_skip_tls_verify", insecure_skip_tls_verify)
            .finish()
    }
}

impl GraphArgs {
    /// The limiter's burst: `--graph-burst` at the rate `--graph-rate` starts at.
    pub fn burst(&self) -> u32 {
        self.graph_burst.at_rate(self.graph_rate.start())
    }

    pub fn page_limits(&self) -> PageLimits {
        PageLimits {
            page_size: Some(self.page_size.max(1)),
            max_pages: (self.max_pages > 0).then_some(self.max_pages),
        }
    }

    pub fn has_credentials(&self) -> bool {
        !self.tenant_id.is_empty()
            || !self.client_id.is_empty()
            || !self.client_secret.is_empty()
            || self.client_secret_file.is_some()
    }

    pub fn to_settings(&self) -> Result<GraphSettings, String> {
        let client_secret = match &self.client_secret_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("client secret file {}: {e}", path.display()))?;
                Secret::new(text.lines().next().unwrap_or("").trim())
            }
            None => self.client_secret.clone(),
        };
        Ok(GraphSettings {
            graph_base_url: self.graph_url.clone(),
            login_base_url: self.login_url.clone(),
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            client_secret,
            requests_per_second: self.graph_rate.start(),
            rate_ceiling: Some(self.graph_rate.ceiling()),
            burst: self.burst(),
            live_reserve: self.live_reserve,
            max_in_flight: self.graph_max_in_flight,
            max_attempts: self.graph_max_attempts.max(1),
            request_timeout: self.graph_timeout,
            max_retry_after: self.graph_max_retry_after,
            page_limits: self.page_limits(),
            ca_cert_file: self.ca_cert.clone(),
            tls_verify: !self.insecure_skip_tls_verify,
            ..GraphSettings::default()
        })
    }

    /// Point at an in-process simulator with its own credentials.
    pub fn use_simulator(&mut self, graph_url: String, login_url: String) {
        self.graph_url = graph_url;
        self.login_url = login_url;
        self.tenant_id = "sim-tenant".into();
        self.client_id = "sim-client".into();
        self.client_secret = Secret::new("sim-secret");
        self.client_secret_file = None;
    }
}

/// RabbitMQ.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// AMQP URL of RabbitMQ
    #[arg(
        long,
        env = "MDTI_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Secret,
    /// Prefix of every exchange and queue name
    #[arg(long, env = "MDTI_QUEUE_PREFIX", default_value = "mdti")]
    pub queue_prefix: String,
    /// Delay before a transiently failed message is tried again
    #[arg(long, env = "MDTI_RETRY_DELAY", default_value = "30s", value_parser = parse_duration)]
    pub retry_delay: Duration,
}

impl WorkerArgs {
    /// The chaining settings these flags describe; a walk reads every passive DNS page, in
    /// pages of 1,000, so that "as long as it has been active" holds.
    pub fn chain_settings(&self) -> crate::chain::ChainSettings {
        crate::chain::ChainSettings {
            depth: self.chain_depth,
            max_artifacts: self.chain_max_artifacts,
            request_budget: self.chain_request_budget,
            reputation_ttl: self.reputation_ttl,
            share_lookups: self.share_lookups,
            measure_sharing: self.measure_sharing,
            min_event_confidence: self.min_event_confidence,
            ..crate::chain::ChainSettings::default()
        }
    }
}

impl BrokerArgs {
    pub fn topology(&self) -> crate::queue::topology::Topology {
        crate::queue::topology::Topology {
            prefix: self.queue_prefix.clone(),
            retry_delay: self.retry_delay,
        }
    }
}

/// Postgres.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL
    #[arg(
        long,
        env = "MDTI_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/mdti"
    )]
    pub database_url: Secret,
    /// Postgres connections in all (a fifth, at least one, for cache writes and event marks)
    #[arg(long, env = "MDTI_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
}

/// The worker's own behaviour.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Bulk messages processed at once (the bulk lane's broker prefetch)
    #[arg(long, env = "MDTI_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Live messages processed at once, beside the bulk ones (the live lane's broker prefetch)
    #[arg(long, env = "MDTI_LIVE_PREFETCH", default_value_t = 16)]
    pub live_prefetch: u16,
    /// Enrichers run when a message names none (comma-separated, or `all`)
    #[arg(long, env = "MDTI_ENRICHERS", default_value = "all")]
    pub enrichers: EnricherList,
    /// An observable enriched this recently is answered from Postgres unless the message says force
    #[arg(long, env = "MDTI_CACHE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// Enrich private, loopback, reserved addresses and internal names instead of skipping them
    #[arg(long, env = "MDTI_ALLOW_NON_PUBLIC", default_value_t = false)]
    pub allow_non_public: bool,
    /// Deliveries of one message before it is dead-lettered
    #[arg(long, env = "MDTI_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,
    /// Largest message body accepted
    #[arg(long, env = "MDTI_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Observables of one message enriched at once
    #[arg(long, env = "MDTI_ITEM_CONCURRENCY", default_value_t = 8)]
    pub item_concurrency: usize,
    /// Messages whose results may share one Postgres transaction when they finish together
    /// (1 = a transaction per message); each is still acked only after its commit
    #[arg(long, env = "MDTI_GROUP_COMMIT", default_value_t = 64)]
    pub group_commit: usize,
    /// How long a transaction of bulk messages' results waits for more to join it (0: not at
    /// all); a live message ends the wait. Under a throttled quota, messages finish one by one,
    /// and each transaction's fixed cost is shared by the messages of this window
    #[arg(long, env = "MDTI_BULK_COMMIT_LINGER", default_value = BULK_COMMIT_LINGER, value_parser = parse_duration)]
    pub bulk_commit_linger: Duration,
    /// Time given to in-flight messages on SIGTERM before they are handed back to the broker
    #[arg(long, env = "MDTI_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// With messages in hand and no Graph answer, commit or ack for this long, the worker
    /// reports itself unhealthy and logs what each message waits on
    #[arg(long, env = "MDTI_STALL_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub stall_after: Duration,
    /// Apply database migrations at start
    #[arg(long, env = "MDTI_MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// Chain every observable's infrastructure unless its message says otherwise
    #[arg(long, env = "MDTI_CHAIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub chain: bool,
    /// Passive DNS hops of a chaining walk (1 as the MDTI Actor Lookup; a message may ask up to 3)
    #[arg(long, env = "MDTI_CHAIN_DEPTH", default_value_t = 1)]
    pub chain_depth: u32,
    /// Distinct counterparts one walk looks at, at most
    #[arg(long, env = "MDTI_CHAIN_MAX_ARTIFACTS", default_value_t = 500)]
    pub chain_max_artifacts: usize,
    /// Graph requests one walk may spend, at most
    #[arg(long, env = "MDTI_CHAIN_REQUEST_BUDGET", default_value_t = 2000)]
    pub chain_request_budget: u64,
    /// A counterpart's reputation cached this recently is not asked again
    #[arg(long, env = "MDTI_REPUTATION_TTL", default_value = "24h", value_parser = parse_duration)]
    pub reputation_ttl: Duration,
    /// Wait for a reputation another worker on this database is asking Graph about instead of
    /// asking too (claims in Postgres); always on with --tenant-quota
    #[arg(long, env = "MDTI_SHARE_LOOKUPS", default_value_t = false, action = clap::ArgAction::Set)]
    pub share_lookups: bool,
    /// Read one page of the passive DNS of each counterpart that links an actor, to discount
    /// links through shared infrastructure (one request per such host per --reputation-ttl)
    #[arg(long, env = "MDTI_MEASURE_SHARING", default_value_t = true, action = clap::ArgAction::Set)]
    pub measure_sharing: bool,
    /// Attributions below this confidence (0-100) are stored but not announced as events
    /// (40: medium and high are announced, low is not)
    #[arg(long, env = "MDTI_MIN_EVENT_CONFIDENCE", default_value_t = 40,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub min_event_confidence: u8,
    /// Resync intel profiles and their indicators this often (0 = never)
    #[arg(long, env = "MDTI_PROFILE_SYNC_INTERVAL", default_value = "6h", value_parser = parse_duration)]
    pub profile_sync_interval: Duration,
    /// Exit once both lanes' work and retry queues have been empty with nothing in flight this long
    #[arg(long, env = "MDTI_EXIT_WHEN_IDLE", value_parser = parse_duration)]
    pub exit_when_idle: Option<Duration>,
}

/// Several workers sharing one tenant's Graph quota (see `crate::fleet`).
#[derive(Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Graph requests per second for the whole tenant, shared by every worker with the same
    /// setting through leases in Postgres (unset: `--graph-rate` per process, no lease)
    #[arg(long, env = "MDTI_TENANT_QUOTA")]
    pub tenant_quota: Option<f64>,
    /// How often a worker renews its lease and recomputes its share of the tenant quota
    #[arg(long, env = "MDTI_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A worker whose lease was not renewed this long no longer counts (killed or cut off)
    #[arg(long, env = "MDTI_LEASE_EXPIRY", default_value = "10s", value_parser = parse_duration)]
    pub lease_expiry: Duration,
}

impl FleetArgs {
    /// The fleet settings for `tenant_id`, or `None` without `--tenant-quota`. `graph_burst`, at
    /// the quota, becomes the tenant's burst, split among the workers like the quota.
    pub fn settings(
        &self,
        tenant_id: &str,
        graph_burst: GraphBurst,
    ) -> Result<Option<crate::fleet::FleetSettings>, String> {
        let Some(quota) = self.tenant_quota else {
            return Ok(None);
        };
        if !(quota.is_finite() && quota > 0.0) {
            return Err(format!(
                "--tenant-quota must be a positive number of requests per second, not {quota}"
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err("--heartbeat-interval must be longer than zero".into());
        }
        if self.lease_expiry <= self.heartbeat_interval {
            return Err(format!(
                "--lease-expiry ({:?}) must be longer than --heartbeat-interval ({:?}), or live workers would be counted out between heartbeats",
                self.lease_expiry, self.heartbeat_interval
            ));
        }
        Ok(Some(crate::fleet::FleetSettings {
            tenant_id: tenant_id.to_owned(),
            tenant_quota: quota,
            tenant_burst: graph_burst.at_rate(quota),
            heartbeat_interval: self.heartbeat_interval,
            lease_expiry: self.lease_expiry,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_threads_are_a_positive_number_or_auto() {
        assert_eq!("auto".parse(), Ok(RuntimeThreads::Auto));
        assert_eq!(" AUTO ".parse(), Ok(RuntimeThreads::Auto));
        let two = RuntimeThreads::Fixed(NonZeroUsize::new(2).unwrap());
        assert_eq!("2".parse(), Ok(two));
        for bad in ["0", "-1", "1.5", "many", ""] {
            assert!(bad.parse::<RuntimeThreads>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn auto_gives_one_thread_to_a_worker_one_thread_serves_and_leaves_the_rest_to_tokio() {
        assert_eq!(RuntimeThreads::Auto.for_rate(Some(50.0)), Some(1));
        assert_eq!(
            RuntimeThreads::Auto.for_rate(Some(ONE_THREAD_SERVES)),
            Some(1)
        );
        assert_eq!(RuntimeThreads::Auto.for_rate(Some(1e6)), None);
        assert_eq!(RuntimeThreads::Auto.for_rate(None), None);
        let three = RuntimeThreads::Fixed(NonZeroUsize::new(3).unwrap());
        assert_eq!(three.for_rate(Some(50.0)), Some(3));
        assert_eq!(three.for_rate(None), Some(3));
    }

    #[test]
    fn a_live_reserve_is_a_fraction_or_a_percentage_and_leaves_bulk_work_a_tenth() {
        assert_eq!(parse_reserve("0.1"), Ok(0.1));
        assert_eq!(parse_reserve(" 25% "), Ok(0.25));
        assert_eq!(parse_reserve("0"), Ok(0.0));
        for bad in ["0.95", "95%", "-0.1", "NaN", "a lot", ""] {
            assert!(parse_reserve(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("999999999999999999999d").is_err());
    }

    #[test]
    fn enricher_lists_accept_all_and_graph_spellings() {
        assert_eq!(parse_enrichers("all").unwrap().len(), 6);
        assert_eq!(
            parse_enrichers("whois, passiveDns,whois").unwrap(),
            vec![EnricherKind::Whois, EnricherKind::PassiveDns]
        );
        assert!(parse_enrichers("whois,bogus")
            .unwrap_err()
            .contains("bogus"));
    }

    #[test]
    fn fleet_settings_name_the_setting_that_is_wrong() {
        let fleet = |quota: f64, heartbeat: &str, expiry: &str| FleetArgs {
            tenant_quota: Some(quota),
            heartbeat_interval: parse_duration(heartbeat).unwrap(),
            lease_expiry: parse_duration(expiry).unwrap(),
        };
        assert_eq!(
            FleetArgs::default().settings("t", GraphBurst::Exactly(10)),
            Ok(None)
        );
        let settings = fleet(30.0, "2s", "10s")
            .settings("t", GraphBurst::Exactly(10))
            .unwrap()
            .unwrap();
        assert_eq!((settings.tenant_quota, settings.tenant_burst), (30.0, 10));
        // `auto`: half a second of the tenant's quota.
        let settings = fleet(80.0, "2s", "10s").settings("t", GraphBurst::Auto);
        assert_eq!(settings.unwrap().unwrap().tenant_burst, 40);
        assert!(fleet(0.0, "2s", "10s")
            .settings("t", GraphBurst::Exactly(10))
            .unwrap_err()
            .contains("--tenant-quota"));
        assert!(fleet(30.0, "0s", "10s")
            .settings("t", GraphBurst::Exactly(10))
            .unwrap_err()
            .contains("--heartbeat-interval"));
        assert!(fleet(30.0, "10s", "10s")
            .settings("t", GraphBurst::Exactly(10))
            .unwrap_err()
            .contains("--lease-expiry"));
    }
}
