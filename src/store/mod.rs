//! Postgres persistence: what the worker enriched, what it cost, and what it rejected.
//!
//! The schema is in `migrations/` (embedded at compile time, applied by [`Store::migrate`]).
//! Every write is an idempotent upsert keyed on what the input determines, so a redelivered
//! message leaves the same rows; everything one message produced is written by
//! [`Store::commit_results`] in one transaction (shared, under load, with the other messages
//! that finished meanwhile: see `group_commit.rs`), with a fixed number of statements however
//! many observables it holds (rows travel as arrays and are expanded with `UNNEST`).
//!
//! Queries are checked at run time, not compile time: building the crate needs no database.

mod actors;
mod answers;
mod attributions;
mod cache;
mod error;
mod export;
mod group_commit;
mod leases;
mod outbox;
mod pg_text;
mod reads;
mod recent;
mod report;
mod status;
mod summary;
mod taxii;
mod write;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashSet, HashSetExt};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

pub use attributions::OwedAttribution;
pub use error::StoreError;
pub use export::{ExportFilter, ExportHit, ExportRow};
pub use group_commit::{GroupCommitStats, Pending};
pub use leases::{HeartbeatDecision, LeaseHolder, LeaseView, TenantRate, TenantThrottles};
pub use outbox::{ClaimedEvents, OutboxBacklog, OwedEvent};
pub use recent::KeptRowsStats;
pub use report::{DailyLine, LaneBacklog, RecentHit, RejectionCount, Report, TopActor};
pub use status::{MessageSizes, Publication, SourceActivity};
pub use summary::Summary;
pub use write::EXTRACT_MAX_BYTES;

use crate::enrich::{EnricherKind, Enrichment, Extract, ExtractKind, Reputation};
use crate::lane::Lane;
use crate::model::{CachedLeads, LookupClaims};
pub use crate::model::{StoredLinks, WalkHits};
use crate::observable::{Observable, ObservableKind};
use crate::secret::{redact_url, scrub_url};
use crate::service::{causes, Problem, Service, Unavailable, FIRST_ANSWER_WITHIN};

/// How long [`Store`] waits for a pooled connection before giving up with a transient error.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection idle this long is pinged before it is handed out; one idle for less
/// is used as it is. sqlx pings every connection as it goes back to the pool, and by default
/// again as it comes out: two round trips, and two wake-ups of a waiting worker, around every
/// statement. The second proves little about a connection that answered a moment ago, and one
/// that has died since fails its statement with an I/O error, which is transient (the message
/// is tried again) and drops the connection. A connection idle longer may have been cut by a
/// server restart or a firewall's idle timeout without a word; that one is still pinged.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

/// At most this many characters of a rejected input are kept.
pub const REJECTED_INPUT_MAX_CHARS: usize = 1_000;

/// Namespace of the UUIDv5 run ids (fixed forever: changing it would break idempotency across
/// an upgrade).
const RUN_NAMESPACE: Uuid = Uuid::from_u128(0x8497460a_0b95_41e4_82e9_ded79f503aa9);

/// The id of the run for item `item_index` of message `message_id`: the same for every delivery
/// of that message.
pub fn run_id(message_id: &str, item_index: i32) -> Uuid {
    // The index first: it contains no '/', so the name is unambiguous whatever the message id.
    Uuid::new_v5(
        &RUN_NAMESPACE,
        format!("{item_index}/{message_id}").as_bytes(),
    )
}

/// What the worker did with one item of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Graph was called.
    Enriched,
    /// Every enricher was fresh in the store: Graph was not called.
    Cached,
    /// Not enriched; [`RunRecord::detail`] says why.
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Enriched => "enriched",
            RunStatus::Cached => "cached",
            RunStatus::Skipped => "skipped",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "enriched" => Ok(RunStatus::Enriched),
            "cached" => Ok(RunStatus::Cached),
            "skipped" => Ok(RunStatus::Skipped),
            other => Err(format!("unknown run status {other:?}")),
        }
    }
}

/// One item of a message, as processed.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub message_id: String,
    /// Position of the item in the message.
    pub item_index: i32,
    pub source: Option<String>,
    pub context: Option<serde_json::Value>,
    pub observable: Observable,
    pub status: RunStatus,
    /// Why it was skipped, or any other note.
    pub detail: Option<String>,
    /// The enrichers asked for.
    pub enrichers: Vec<EnricherKind>,
    pub graph_requests: u64,
    pub duration: Duration,
    /// What Graph returned: `Some` for [`RunStatus::Enriched`].
    pub enrichment: Option<Enrichment>,
    /// The lane the message came through.
    pub lane: Lane,
}

/// An input the worker could not use.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedInput {
    pub message_id: String,
    /// `-1` for a whole message that could not be decoded.
    pub item_index: i32,
    /// What was sent; only the first [`REJECTED_INPUT_MAX_CHARS`] characters are stored.
    pub input: String,
    /// A stable machine-readable code, for grouping.
    pub code: String,
    pub reason: String,
    pub source: Option<String>,
    pub context: Option<serde_json::Value>,
    pub attempts: i32,
    /// The lane the message came through.
    pub lane: Lane,
}

impl RejectedInput {
    /// Item `item_index` of message `message_id` (`-1`: the message as a whole), refused with
    /// `code` on its delivery `attempts` through `lane`. Only the first
    /// [`REJECTED_INPUT_MAX_CHARS`] characters of `input` are kept.
    pub fn new(
        message_id: &str,
        item_index: i32,
        input: &str,
        code: &str,
        reason: String,
        attempts: u32,
        lane: Lane,
    ) -> Self {
        RejectedInput {
            message_id: message_id.to_owned(),
            item_index,
            input: input.chars().take(REJECTED_INPUT_MAX_CHARS).collect(),
            code: code.to_owned(),
            reason,
            source: None,
            context: None,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            lane,
        }
    }

    /// A whole message (item `-1`), its input the start of its body: the first
    /// [`REJECTED_INPUT_MAX_CHARS`] bytes, read as UTF-8 with anything invalid replaced.
    pub fn whole_message(
        message_id: &str,
        body: &[u8],
        code: &str,
        reason: String,
        attempts: u32,
        lane: Lane,
    ) -> Self {
        let start = String::from_utf8_lossy(&body[..body.len().min(REJECTED_INPUT_MAX_CHARS)]);
        RejectedInput::new(message_id, -1, &start, code, reason, attempts, lane)
    }

    /// Where the item came from, as its message said.
    pub fn with_origin(
        mut self,
        source: Option<String>,
        context: Option<serde_json::Value>,
    ) -> Self {
        self.source = source;
        self.context = context;
        self
    }
}

/// Everything one message produced, to be committed together: the runs of its items, the
/// items it rejected, and the actor hits of its walks.
#[derive(Debug, Clone, Default)]
pub struct MessageResults {
    pub runs: Vec<RunRecord>,
    pub rejected: Vec<RejectedInput>,
    pub walks: Vec<WalkHits>,
}

impl MessageResults {
    /// The lane of the message, as its runs and rejections record it; a message that names none
    /// is bulk work (see `queue::lane_of`).
    pub fn lane(&self) -> Lane {
        let recorded = self.runs.first().map(|run| run.lane);
        recorded
            .or_else(|| self.rejected.first().map(|rejected| rejected.lane))
            .unwrap_or(Lane::Bulk)
    }

    fn part(&self) -> write::Part<'_> {
        write::Part {
            runs: &self.runs,
            rejected: &self.rejected,
            walks: &self.walks,
        }
    }
}

/// The Postgres store. Cheap to clone (the pools, and the group commit if any, are shared).
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// Sessions whose commits do not wait for the WAL flush (`synchronous_commit = off`), for
    /// writes a crash may lose without losing anything: the reputation cache (a lost row is
    /// asked of Graph again) and event marks (a lost mark announces a hit again, which
    /// at-least-once events allow). Results never go through here: their commit is what an ack
    /// waits for. Set per session rather than per transaction, each such write is one
    /// statement and one round trip, not four (BEGIN, SET LOCAL, the write, COMMIT).
    relaxed: PgPool,
    group: Option<Arc<group_commit::GroupCommit>>,
    reads: Arc<Reads>,
    /// The cache rows read lately (see `recent.rs`); nothing unless [`Store::remembering_leads`].
    recent: Arc<recent::Recent>,
}

/// The reads that concurrent messages ask often, each kind answered in batches (see
/// `reads.rs`).
struct Reads {
    fresh: reads::Batched<reads::FreshAsk, bool>,
    reputations: reads::Batched<reads::HostAsk, recent::Aged<Reputation>>,
    fanouts: reads::Batched<reads::HostAsk, recent::Aged<crate::model::Fanout>>,
    leads: reads::Batched<reads::HostAsk, reads::AgedLeads>,
}

impl Reads {
    fn new(pool: &PgPool) -> Reads {
        Reads {
            fresh: reads::Batched::new(pool.clone(), reads::read_fresh),
            reputations: reads::Batched::new(pool.clone(), reads::read_reputations),
            fanouts: reads::Batched::new(pool.clone(), reads::read_fanouts),
            leads: reads::Batched::new(pool.clone(), reads::read_leads),
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("size", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .finish()
    }
}

impl Store {
    /// Pools of at most `max_connections` connections to `database_url` in all (at least one
    /// each): a fifth serve the cache writes and event marks, the rest everything else. Lazy:
    /// nothing is connected until the first query, and a pool waits up to [`ACQUIRE_TIMEOUT`]
    /// for a connection, so a running worker rides out an outage (queries fail with a transient
    /// error meanwhile). Fails only on a malformed URL. A command's start goes through
    /// [`Store::open`], which says at once when Postgres is not there.
    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(database_url)?;
        Ok(Store::pools(options, max_connections))
    }

    /// [`Store::connect`], once a first connection to `database_url` succeeded within `limit`:
    /// an unreachable server, refused credentials or a missing database are an [`Unavailable`]
    /// (PostgreSQL, its URL, the cause once, the way forward) in a few seconds, rather than a
    /// pool timeout that names neither after [`ACQUIRE_TIMEOUT`].
    pub async fn open(
        database_url: &str,
        max_connections: u32,
        limit: Duration,
    ) -> Result<Store, Unavailable> {
        let options = connect_options(database_url)?;
        let first = first_connection(&options, database_url, limit).await?;
        first.close().await.ok();
        Ok(Store::pools(options, max_connections))
    }

    /// Whether the server `database_url` names takes a connection now (to its `postgres`
    /// database, which every server has), within [`FIRST_ANSWER_WITHIN`]: for a command that
    /// creates its own database later, to fail before its other work.
    pub async fn reach_server(database_url: &str) -> Result<(), Unavailable> {
        let server = connect_options(database_url)?.database("postgres");
        let first = first_connection(&server, database_url, FIRST_ANSWER_WITHIN).await?;
        first.close().await.ok();
        Ok(())
    }

    fn pools(options: PgConnectOptions, max_connections: u32) -> Store {
        let relaxed = (max_connections / 5).max(1);
        let pool = |max: u32, options: PgConnectOptions| {
            PgPoolOptions::new()
                .max_connections(max.max(1))
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
                .before_acquire(|connection, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_AFTER_IDLE {
                            connection.ping().await?;
                        }
                        Ok(true)
                    })
                })
                .connect_lazy_with(options)
        };
        let main = pool(max_connections.saturating_sub(relaxed), options.clone());
        Store {
            reads: Arc::new(Reads::new(&main)),
            pool: main,
            relaxed: pool(relaxed, options.options([("synchronous_commit", "off")])),
            group: None,
            recent: Arc::new(recent::Recent::new(0, Arc::default())),
        }
    }

    /// This store, keeping the reputation and fanout rows it reads in memory for its walks (up
    /// to [`recent::BUDGET`] bytes; see `recent.rs`): a worker's walks read the same
    /// counterparts over and over. What the memory does is counted in `stats`.
    pub fn remembering_leads(self, stats: Arc<KeptRowsStats>) -> Store {
        Store {
            recent: Arc::new(recent::Recent::new(recent::BUDGET, stats)),
            ..self
        }
    }

    /// This store, with [`Store::commit_results`] writing the results of up to `max_messages`
    /// messages per transaction (see `group_commit.rs`), a transaction of bulk messages waiting
    /// up to `bulk_linger` for more; 1 or less leaves every message its own transaction. Starts
    /// writer tasks on the current runtime. Its counters go to `stats`.
    pub fn with_group_commit(
        self,
        max_messages: usize,
        bulk_linger: Duration,
        stats: Arc<GroupCommitStats>,
    ) -> Store {
        let group = (max_messages > 1).then(|| {
            Arc::new(group_commit::GroupCommit::spawn(
                self.pool.clone(),
                group_commit::Batching {
                    max_messages,
                    bulk_linger,
                },
                stats,
            ))
        });
        Store { group, ..self }
    }

    /// What group commit has done, if it is on.
    pub fn group_commit_stats(&self) -> Option<Arc<GroupCommitStats>> {
        self.group.as_ref().map(|group| Arc::clone(group.stats()))
    }

    /// Create the database `database_url` names if it does not exist, connecting to the
    /// `postgres` database of the same server to do so. Safe to race with another worker. Any
    /// failure is the server's (unreachable, or refusing the user or the `CREATE DATABASE`),
    /// and said as such.
    pub async fn create_database_if_missing(database_url: &str) -> Result<(), Unavailable> {
        let options = connect_options(database_url)?;
        let name = options
            .get_database()
            .unwrap_or(options.get_username())
            .to_owned();
        let server = options.clone().database("postgres");
        let mut conn = first_connection(&server, database_url, FIRST_ANSWER_WITHIN).await?;
        let created = create_database(&mut conn, &name).await;
        conn.close().await.ok();
        created.map_err(|error| unavailable(database_url, &error))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply the embedded migrations that are not applied yet. Workers may race: sqlx holds an
    /// advisory lock while migrating.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// Whether every one of `enrichers` was fetched for this observable within `ttl` (a "not
    /// found" counts as fetched). True for an empty list; false for a zero `ttl`.
    pub async fn is_fresh(
        &self,
        observable: &Observable,
        enrichers: &[EnricherKind],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        if enrichers.is_empty() {
            return Ok(true);
        }
        if ttl.is_zero() {
            return Ok(false);
        }
        let mut wanted: Vec<&str> = enrichers.iter().map(|e| e.as_str()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let ask = reads::FreshAsk {
            kind: kind_name(observable.kind()),
            value: observable.value().to_owned(),
            wanted: wanted.join(","),
            wanted_count: wanted.len() as i64,
            ttl_seconds: ttl_seconds(ttl),
        };
        self.reads.fresh.ask(ask).await
    }

    /// Everything one message produced, in one transaction: observables, runs, and for enriched
    /// runs the enricher results, whois indicator, reputation and extracts; and the rejected
    /// inputs. Idempotent: a redelivered message rewrites the same rows. A run recorded for an
    /// item supersedes an earlier rejection of that item, which is deleted. A redelivery that
    /// finds the item cached or skipped does not overwrite a run that enriched it (the Graph
    /// requests it cost stay counted).
    pub async fn record_message(
        &self,
        runs: &[RunRecord],
        rejected: &[RejectedInput],
    ) -> Result<(), StoreError> {
        let part = write::Part {
            runs,
            rejected,
            walks: &[],
        };
        write::record_batch(&self.pool, &[part]).await?;
        Ok(())
    }

    /// [`Store::record_message`] and the actor hits of the message's walks, committed
    /// together: no state where the runs are stored but their hits are not. With group commit
    /// the transaction may hold other messages' results too; either way this returns only once
    /// the transaction holding these committed (or failed). Returns the results, and each
    /// walk's attributions left owed an event (see [`Store::record_actor_hits`]) in the order of `walks`.
    pub async fn commit_results(
        &self,
        results: MessageResults,
    ) -> (MessageResults, Result<Pending, StoreError>) {
        match &self.group {
            Some(group) => group.commit(results).await,
            None => {
                let outcome = write::record_batch(&self.pool, &[results.part()])
                    .await
                    .map(|mut pending| pending.pop().unwrap_or_default());
                (results, outcome)
            }
        }
    }

    /// Record one rejected input (same as `record_message(&[], &[rejected])`).
    pub async fn record_rejection(&self, rejected: &RejectedInput) -> Result<(), StoreError> {
        self.record_message(&[], std::slice::from_ref(rejected))
            .await
    }

    /// The reputation of `host` if it was fetched within `ttl`; see [`Store::cached_reputations`].
    pub async fn cached_reputation(
        &self,
        host: &str,
        ttl: Duration,
    ) -> Result<Option<Reputation>, StoreError> {
        let mut found = self.cached_reputations(&[host.to_owned()], ttl).await?;
        Ok(found.remove(&pg_text::pg_text(host)))
    }

    /// The reputations of `hosts` fetched within `ttl`, keyed by host, in one query (shared with
    /// other walks asking meanwhile): a walk asks for a whole level of counterparts at once
    /// rather than one round trip each. A stored value this build cannot read is treated as a
    /// miss.
    pub async fn cached_reputations(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, Reputation>, StoreError> {
        let (mut found, missing) = self.recent.reputations(&pg_text::pg_texts(hosts), ttl);
        let read = self.reads.reputations.ask_hosts(missing, ttl).await?;
        self.recent.keep_read_reputations(&read);
        found.extend(recent::unaged(read));
        Ok(found)
    }

    /// The reputations and the fanouts of `hosts` fetched within `ttl`, in one statement
    /// (with whatever else is asked meanwhile); none when `ttl` is zero.
    pub async fn cached_leads(
        &self,
        hosts: &[String],
        ttl: Duration,
    ) -> Result<CachedLeads, StoreError> {
        let (mut found, missing) = self.recent.leads(&pg_text::pg_texts(hosts), ttl);
        let read = self.reads.leads.ask_hosts(missing, ttl).await?;
        self.recent.keep_read_reputations(&read.reputations);
        self.recent.keep_read_fanouts(&read.fanouts);
        found.reputations.extend(recent::unaged(read.reputations));
        found.fanouts.extend(recent::unaged(read.fanouts));
        Ok(found)
    }

    /// Store the reputation of `host` (an observable or a counterpart), fetched now.
    pub async fn save_reputation(
        &self,
        host: &str,
        reputation: &Reputation,
    ) -> Result<(), StoreError> {
        self.save_reputations([(host, reputation)]).await
    }

    /// Store reputations fetched now, in one statement (rows locked in host order, so concurrent
    /// walks saving overlapping hosts do not deadlock).
    pub async fn save_reputations<'r>(
        &self,
        reputations: impl IntoIterator<Item = (&'r str, &'r Reputation)>,
    ) -> Result<(), StoreError> {
        let mut rows = write::ReputationRows::default();
        for (host, reputation) in reputations {
            rows.push(host, reputation);
        }
        if rows.is_empty() {
            return Ok(());
        }
        rows.execute(&self.relaxed).await?;
        self.recent.forget(rows.hosts());
        Ok(())
    }

    /// Claim the Graph lookups of `hosts` for `hold` on behalf of this worker (see
    /// `migrations/0007_reputation_claims.sql`). Returns the hosts now held by this call: those
    /// nobody held, and those whose holder's claim ran out. The others are another worker's
    /// to look up.
    pub async fn claim_reputation_lookups(
        &self,
        hosts: &[String],
        hold: Duration,
    ) -> Result<LookupClaims, StoreError> {
        let mut claims = LookupClaims::default();
        if hosts.is_empty() {
            return Ok(claims);
        }
        let mut sorted = pg_text::pg_texts(hosts);
        // Sorted and distinct: concurrent claims lock their rows in the same order.
        sorted.sort();
        sorted.dedup();
        let claimed: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO reputation_claims AS c (host, claimed_until) \
             SELECT h, now() + make_interval(secs => $2) FROM UNNEST($1::text[]) AS h \
             ON CONFLICT (host) DO UPDATE SET claimed_until = excluded.claimed_until \
             WHERE c.claimed_until < now() \
             RETURNING c.host, c.claimed_until",
        )
        .bind(&sorted)
        .bind(hold.as_secs_f64())
        .fetch_all(&self.relaxed)
        .await?;
        for (host, until) in claimed {
            claims.hosts.insert(host);
            claims.until = Some(until);
        }
        Ok(claims)
    }

    /// Which of `hosts` some worker still holds a claim on.
    pub async fn held_reputation_lookups(
        &self,
        hosts: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if hosts.is_empty() {
            return Ok(HashSet::new());
        }
        let hosts = pg_text::pg_texts(hosts);
        let held: Vec<String> = sqlx::query_scalar(
            "SELECT host FROM reputation_claims WHERE host = ANY($1) AND claimed_until > now()",
        )
        .bind(&hosts)
        .fetch_all(&self.relaxed)
        .await?;
        Ok(held.into_iter().collect())
    }

    /// The lookups of `claims` are over (their answers are in the cache, or they failed). A
    /// claim that ran out and was taken over by another worker is left to that worker.
    pub async fn release_reputation_lookups(
        &self,
        claims: &LookupClaims,
    ) -> Result<(), StoreError> {
        let Some(until) = claims.until else {
            return Ok(());
        };
        let hosts: Vec<&String> = claims.hosts.iter().collect();
        sqlx::query("DELETE FROM reputation_claims WHERE host = ANY($1) AND claimed_until = $2")
            .bind(&hosts)
            .bind(until)
            .execute(&self.relaxed)
            .await?;
        Ok(())
    }

    /// The distinct extracts stored for `observable`, whatever enricher found them: the first
    /// stored first, those stored together by kind, value and field.
    pub async fn extracts_for(&self, observable: &Observable) -> Result<Vec<Extract>, StoreError> {
        let rows = sqlx::query(
            "SELECT x.kind, x.value, x.field, max(x.country_code) AS country_code \
             FROM extracts x JOIN observables o ON o.id = x.observable_id \
             WHERE o.kind = $1 AND o.value = $2 \
             GROUP BY x.kind, x.value, x.field \
             ORDER BY min(x.first_seen_at), x.kind, x.value, x.field",
        )
        .bind(kind_name(observable.kind()))
        .bind(observable.value())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(extract_from_row).collect()
    }

    /// The extracts stored for `observable`, with the enricher that found each, ordered by
    /// enricher and then as first stored.
    pub async fn enricher_extracts_for(
        &self,
        observable: &Observable,
    ) -> Result<Vec<(EnricherKind, Extract)>, StoreError> {
        let rows = sqlx::query(
            "SELECT x.enricher, x.kind, x.value, x.field, x.country_code \
             FROM extracts x JOIN observables o ON o.id = x.observable_id \
             WHERE o.kind = $1 AND o.value = $2 ORDER BY x.enricher, x.first_seen_at, x.kind, x.value, x.field",
        )
        .bind(kind_name(observable.kind()))
        .bind(observable.value())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let enricher: String = row.try_get("enricher")?;
                let enricher = enricher.parse().map_err(|detail| StoreError::Decode {
                    what: "enricher",
                    detail,
                })?;
                Ok((enricher, extract_from_row(row)?))
            })
            .collect()
    }

    /// How many runs are stored.
    pub async fn run_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM enrichment_runs")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Record what waits in each lane's queues, as the broker just counted it: one statement
    /// for all the lanes counted.
    pub async fn record_lane_backlog(&self, counted: &[(Lane, u64)]) -> Result<(), StoreError> {
        let lanes: Vec<&str> = counted.iter().map(|(lane, _)| lane.as_str()).collect();
        let ready: Vec<i64> = counted
            .iter()
            .map(|(_, ready)| i64::try_from(*ready).unwrap_or(i64::MAX))
            .collect();
        sqlx::query(
            "INSERT INTO lane_backlog (lane, ready_messages, observed_at) \
             SELECT lane, ready, now() FROM UNNEST($1::text[], $2::bigint[]) AS u(lane, ready) \
             ON CONFLICT (lane) DO UPDATE SET ready_messages = excluded.ready_messages, \
                 observed_at = excluded.observed_at",
        )
        .bind(&lanes)
        .bind(&ready)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every rejected input, oldest first.
    pub async fn rejected(&self) -> Result<Vec<RejectedInput>, StoreError> {
        let rows = sqlx::query(
            "SELECT message_id, item_index, input, code, reason, source, context, attempts, lane \
             FROM rejected_inputs ORDER BY rejected_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RejectedInput {
                    message_id: row.try_get("message_id")?,
                    item_index: row.try_get("item_index")?,
                    input: row.try_get("input")?,
                    code: row.try_get("code")?,
                    reason: row.try_get("reason")?,
                    source: row.try_get("source")?,
                    context: row.try_get("context")?,
                    attempts: row.try_get("attempts")?,
                    lane: stored_lane(row.try_get("lane")?),
                })
            })
            .collect()
    }

    /// `SELECT 1`: whether Postgres answers now (readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Close the pools, waiting for connections in use to be returned. sqlx's `Pool::close` can
    /// return with one connection still open: one on its way back (pinged as it returns) when
    /// the pool closed lands in the idle queue afterwards, and nothing closes it. So the pools
    /// are closed again, briefly, until none holds a connection.
    pub async fn close(&self) {
        for pool in [&self.pool, &self.relaxed] {
            pool.close().await;
            for _ in 0..CLOSE_RETRIES {
                if pool.size() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                pool.close().await;
            }
        }
    }
}

/// How many times [`Store::close`] closes a pool again for a straggling connection, 10 ms
/// apart.
const CLOSE_RETRIES: usize = 50;

/// `CREATE DATABASE name` unless it exists.
async fn create_database(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(());
    }
    let statement = format!("CREATE DATABASE {}", quote_identifier(name));
    match sqlx::query(&statement).execute(&mut *conn).await {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // Another worker created it between our check and our CREATE.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04") | Some("23505")) => {}
        Err(error) => return Err(error),
    }
    Ok(())
}

/// The connection settings `database_url` gives, or why it gives none.
fn connect_options(database_url: &str) -> Result<PgConnectOptions, Unavailable> {
    PgConnectOptions::from_str(database_url).map_err(|error| unavailable(database_url, &error))
}

/// One connection with `options` within `limit`, failures told about `database_url` (the URL
/// as configured, even when `options` name another database of its server). Not through a
/// pool: a pool retries a refused connection until its acquire timeout and then reports only
/// that it timed out.
async fn first_connection(
    options: &PgConnectOptions,
    database_url: &str,
    limit: Duration,
) -> Result<PgConnection, Unavailable> {
    match tokio::time::timeout(limit, PgConnection::connect_with(options)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(unavailable(database_url, &error)),
        Err(_) => {
            let shown = redact_url(database_url);
            Err(Unavailable::no_answer(Service::Postgres, shown, limit))
        }
    }
}

/// `error`, met connecting to `database_url`, as PostgreSQL's [`Unavailable`].
fn unavailable(database_url: &str, error: &sqlx::Error) -> Unavailable {
    let problem = match error {
        sqlx::Error::Configuration(_) => Problem::BadUrl,
        // Connection exceptions, insufficient resources (too many clients), the server starting
        // up or shutting down: it is not there to use yet.
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|code| ["08", "53", "57"].iter().any(|c| code.starts_with(c))) =>
        {
            Problem::Unreachable
        }
        // Authentication, a missing database, no right to create it.
        sqlx::Error::Database(_) => Problem::Refused,
        _ => Problem::Unreachable,
    };
    let cause = scrub_url(&causes(error), database_url);
    Unavailable::new(Service::Postgres, redact_url(database_url), problem, &cause)
}

fn extract_from_row(row: &sqlx::postgres::PgRow) -> Result<Extract, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(Extract {
        kind: parse_extract_kind(&kind)?,
        value: row.try_get("value")?,
        field: row.try_get("field")?,
        country_code: row.try_get("country_code")?,
    })
}

fn parse_extract_kind(text: &str) -> Result<ExtractKind, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|error| {
        StoreError::Decode {
            what: "extract kind",
            detail: format!("{text:?}: {error}"),
        }
    })
}

/// The stored name of an observable kind (lowercase, as in serde).
pub(crate) fn kind_name(kind: ObservableKind) -> &'static str {
    kind.as_str()
}

/// A TTL in seconds, capped at a century so `now() - ttl` stays a valid timestamp.
fn ttl_seconds(ttl: Duration) -> f64 {
    const CENTURY: f64 = 100.0 * 365.25 * 24.0 * 3600.0;
    ttl.as_secs_f64().min(CENTURY)
}

/// `name` as a Postgres identifier, quoted.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A stored lane name; the column's check admits only the two, and anything else read back
/// (a row written by hand) counts as bulk, the lane of everything from before lanes.
fn stored_lane(name: &str) -> Lane {
    name.parse().unwrap_or(Lane::Bulk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_deterministic_and_distinct() {
        assert_eq!(run_id("m-1", 0), run_id("m-1", 0));
        assert_ne!(run_id("m-1", 0), run_id("m-1", 1));
        assert_ne!(run_id("m-1", 0), run_id("m-2", 0));
        assert_ne!(run_id("1/a", 2), run_id("a", 21));
        assert_eq!(run_id("m-1", 0).get_version_num(), 5);
    }

    #[test]
    fn extract_kinds_round_trip_through_their_names() {
        for kind in [
            ExtractKind::Ipv4,
            ExtractKind::Ipv4Cidr,
            ExtractKind::Email,
            ExtractKind::Registrar,
        ] {
            assert_eq!(parse_extract_kind(kind.as_str()).unwrap(), kind);
        }
        assert!(parse_extract_kind("NOPE").is_err());
    }

    #[test]
    fn kind_names_are_lowercase() {
        assert_eq!(kind_name(ObservableKind::Ipv4), "ipv4");
        assert_eq!(kind_name(ObservableKind::Domain), "domain");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("mdti"), "\"mdti\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
