//! Reads that many messages ask at once, answered by one statement: whether an observable is
//! fresh, and the reputation and fanout caches of the walks.
//!
//! Each message asks these once or twice, each a statement of its own: under load they were
//! nearly all of Postgres's transactions (about 2.5 per message against one group commit per
//! fifty messages), and a statement's fixed cost (planning, executor start, the round trip) is
//! several times that of the index lookups it makes. So, as for the group commit, the asks
//! wait in a queue and a runner task takes whatever is waiting (up to [`MAX_ASKS`]) into
//! one statement. Nothing waits for a batch to fill: a runner that finds one ask reads one.
//!
//! Every statement starts after the asks it answers were made, so an ask sees every commit
//! that finished before it (what a repeat waiting for its first's commit relies on). A batch
//! that fails for a reason that may be one ask's (anything but the database being unreachable)
//! is read again one ask per statement, so that one bad ask fails alone.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use futures::future::BoxFuture;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use tokio::sync::oneshot;

use super::recent::Aged;
use super::{ttl_seconds, StoreError};
use crate::enrich::{Reputation, ReputationRule};
use crate::model::Fanout;

/// At most this many asks in one statement.
const MAX_ASKS: usize = 256;

/// Statements of one kind running at once. One: asks made while it runs wait for it (a few
/// milliseconds) and go together in the next; with two, the walks' cache reads, which come
/// less often than the freshness checks, mostly found a runner free and went one by one.
const RUNNERS: usize = 1;

/// One statement answering every ask of a batch, an answer per ask in order.
type ReadFn<A, B> = for<'a> fn(&'a PgPool, &'a [A]) -> BoxFuture<'a, Result<Vec<B>, StoreError>>;

type Reply<B> = oneshot::Sender<Result<B, StoreError>>;

struct Queue<A, B> {
    waiting: Vec<(A, Reply<B>)>,
    runners: usize,
}

/// Asks of one kind, read together.
pub(super) struct Batched<A, B> {
    pool: PgPool,
    read: ReadFn<A, B>,
    queue: Arc<Mutex<Queue<A, B>>>,
}

impl<A: Send + Sync + 'static, B: Send + 'static> Batched<A, B> {
    pub(super) fn new(pool: PgPool, read: ReadFn<A, B>) -> Self {
        Batched {
            pool,
            read,
            queue: Arc::new(Mutex::new(Queue {
                waiting: Vec::new(),
                runners: 0,
            })),
        }
    }

    /// The answer to `ask`, read with whatever else is asked meanwhile. Starts a runner on the
    /// current runtime when fewer than [`RUNNERS`] are at work.
    pub(super) async fn ask(&self, ask: A) -> Result<B, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = lock(&self.queue);
            queue.waiting.push((ask, reply));
            let start = queue.runners < RUNNERS;
            queue.runners += usize::from(start);
            start
        };
        if start {
            let runner = Runner {
                queue: Arc::clone(&self.queue),
                armed: true,
            };
            tokio::spawn(runner.run(self.pool.clone(), self.read));
        }
        // A runner that went away (its task panicked, the runtime is stopping) dropped the
        // reply: nothing was read, so the ask fails as if the pool were gone, to be retried.
        answer
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }
}

fn lock<A, B>(queue: &Mutex<Queue<A, B>>) -> MutexGuard<'_, Queue<A, B>> {
    // Nothing panics while holding the lock; if something did, the queue is still whole.
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A runner's place among the [`RUNNERS`]: given back under the lock when the queue is empty
/// (so an ask made meanwhile either is taken or starts a runner), or on a panic.
struct Runner<A, B> {
    queue: Arc<Mutex<Queue<A, B>>>,
    armed: bool,
}

impl<A, B> Drop for Runner<A, B> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.queue).runners -= 1;
        }
    }
}

impl<A: Send + Sync + 'static, B: Send + 'static> Runner<A, B> {
    async fn run(mut self, pool: PgPool, read: ReadFn<A, B>) {
        loop {
            let batch: Vec<(A, Reply<B>)> = {
                let mut queue = lock(&self.queue);
                if queue.waiting.is_empty() {
                    queue.runners -= 1;
                    self.armed = false;
                    return;
                }
                let n = queue.waiting.len().min(MAX_ASKS);
                queue.waiting.drain(..n).collect()
            };
            let (asks, replies): (Vec<A>, Vec<Reply<B>>) = batch.into_iter().unzip();
            answer(&pool, read, &asks, replies).await;
        }
    }
}

async fn answer<A, B>(pool: &PgPool, read: ReadFn<A, B>, asks: &[A], replies: Vec<Reply<B>>) {
    match read(pool, asks).await {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answers) => {
            let error = Arc::new(StoreError::Decode {
                what: "batched read",
                detail: format!("{} answers to {} asks", answers.len(), replies.len()),
            });
            for reply in replies {
                let _ = reply.send(Err(StoreError::Shared(Arc::clone(&error))));
            }
        }
        Err(error) if asks.len() > 1 && error.may_be_one_writes() => {
            tracing::debug!(%error, asks = asks.len(), "a batched read failed; reading its asks one by one");
            for (ask, reply) in asks.chunks(1).zip(replies) {
                let outcome = read(pool, ask)
                    .await
                    .and_then(|mut answers| answers.pop().ok_or_else(no_answer));
                let _ = reply.send(outcome);
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for reply in replies {
                let _ = reply.send(Err(StoreError::Shared(Arc::clone(&error))));
            }
        }
    }
}

fn no_answer() -> StoreError {
    StoreError::Decode {
        what: "batched read",
        detail: "no answer to an ask".to_owned(),
    }
}

/// Whether an observable's enrichers were all fetched within a TTL.
pub(super) struct FreshAsk {
    pub kind: &'static str,
    pub value: String,
    /// Distinct enricher names, comma-joined (no name holds a comma).
    pub wanted: String,
    pub wanted_count: i64,
    pub ttl_seconds: f64,
}

/// For each ask, whether as many of its enrichers as it wants are fresh.
pub(super) fn read_fresh<'a>(
    pool: &'a PgPool,
    asks: &'a [FreshAsk],
) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
    Box::pin(async move {
        let kinds: Vec<&str> = asks.iter().map(|a| a.kind).collect();
        let values: Vec<&str> = asks.iter().map(|a| a.value.as_str()).collect();
        let wanted: Vec<&str> = asks.iter().map(|a| a.wanted.as_str()).collect();
        let ttls: Vec<f64> = asks.iter().map(|a| a.ttl_seconds).collect();
        let counts: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT u.i, (SELECT count(*) FROM enricher_results e \
                 JOIN observables o ON o.id = e.observable_id \
                 WHERE o.kind = u.kind AND o.value = u.value \
                   AND e.enricher = ANY(string_to_array(u.wanted, ',')) \
                   AND e.fetched_at > now() - make_interval(secs => u.ttl)) \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::float8[]) \
                 WITH ORDINALITY AS u(kind, value, wanted, ttl, i) \
             ORDER BY u.i",
        )
        .bind(&kinds)
        .bind(&values)
        .bind(&wanted)
        .bind(&ttls)
        .fetch_all(pool)
        .await?;
        Ok(asks
            .iter()
            .zip(counts)
            .map(|(ask, (_, fresh))| fresh == ask.wanted_count)
            .collect())
    })
}

impl<B: Default + Send + 'static> Batched<HostAsk, B> {
    /// What this cache holds for `hosts` (as stored, see `pg_text`) within `ttl`; nothing,
    /// unread, when `ttl` is zero.
    pub(super) async fn ask_hosts(
        &self,
        hosts: Vec<String>,
        ttl: Duration,
    ) -> Result<B, StoreError> {
        if ttl.is_zero() || hosts.is_empty() {
            return Ok(B::default());
        }
        self.ask(HostAsk {
            hosts,
            ttl_seconds: ttl_seconds(ttl),
        })
        .await
    }
}

/// Rows of a cache keyed by host, younger than a TTL.
pub(super) struct HostAsk {
    /// As stored (see `pg_text`).
    pub hosts: Vec<String>,
    pub ttl_seconds: f64,
}

/// The rows of `table` for every host asked, younger than the longest TTL asked, each with
/// its age in seconds; then each ask's hosts younger than its own TTL.
async fn read_by_host<T: Clone>(
    pool: &PgPool,
    asks: &[HostAsk],
    sql: &'static str,
    decode: fn(&PgRow) -> Result<Option<T>, StoreError>,
) -> Result<Vec<Aged<T>>, StoreError> {
    let rows = fetch_by_host(pool, asks, sql).await?;
    let found = aged(&rows, "age", decode)?;
    Ok(asks.iter().map(|ask| younger(ask, &found)).collect())
}

/// The rows `sql` reads for the distinct hosts of `asks` (`$1`) and their longest TTL (`$2`).
async fn fetch_by_host(
    pool: &PgPool,
    asks: &[HostAsk],
    sql: &'static str,
) -> Result<Vec<PgRow>, StoreError> {
    let mut hosts: Vec<&str> = asks
        .iter()
        .flat_map(|a| a.hosts.iter().map(String::as_str))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let longest = asks.iter().map(|a| a.ttl_seconds).fold(0.0, f64::max);
    Ok(sqlx::query(sql)
        .bind(&hosts)
        .bind(longest)
        .fetch_all(pool)
        .await?)
}

/// The value `decode` reads from each row whose column `age_column` is not null, by host,
/// with that age.
fn aged<T>(
    rows: &[PgRow],
    age_column: &str,
    decode: fn(&PgRow) -> Result<Option<T>, StoreError>,
) -> Result<Aged<T>, StoreError> {
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let Some(age) = row.try_get::<Option<f64>, _>(age_column)? else {
            continue;
        };
        if let Some(value) = decode(row)? {
            found.insert(row.try_get("host")?, (age, value));
        }
    }
    Ok(found)
}

/// The hosts of `ask` found younger than its TTL, with their ages.
fn younger<T: Clone>(ask: &HostAsk, found: &Aged<T>) -> Aged<T> {
    ask.hosts
        .iter()
        .filter_map(|host| match found.get(host) {
            Some((age, value)) if *age < ask.ttl_seconds => {
                Some((host.clone(), (*age, value.clone())))
            }
            _ => None,
        })
        .collect()
}

/// The reputation cache. A stored value this build cannot read is a miss.
pub(super) fn read_reputations<'a>(
    pool: &'a PgPool,
    asks: &'a [HostAsk],
) -> BoxFuture<'a, Result<Vec<Aged<Reputation>>, StoreError>> {
    Box::pin(read_by_host(
        pool,
        asks,
        "SELECT host, classification, score, rules, \
             EXTRACT(EPOCH FROM now() - fetched_at)::float8 AS age \
         FROM reputations \
         WHERE host = ANY($1::text[]) AND fetched_at > now() - make_interval(secs => $2::float8)",
        decode_reputation,
    ))
}

fn decode_reputation(row: &PgRow) -> Result<Option<Reputation>, StoreError> {
    // Straight into the rules: through a `serde_json::Value` first, this cost twice as much.
    match row.try_get::<Json<Vec<ReputationRule>>, _>("rules") {
        Ok(Json(rules)) => Ok(Some(Reputation {
            classification: row.try_get("classification")?,
            score: row.try_get("score")?,
            rules: rules.into(),
        })),
        Err(sqlx::Error::ColumnDecode { source: error, .. }) => {
            let host: String = row.try_get("host")?;
            tracing::warn!(host, %error, "stored reputation rules unreadable; treating as a miss");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// The fanout cache.
pub(super) fn read_fanouts<'a>(
    pool: &'a PgPool,
    asks: &'a [HostAsk],
) -> BoxFuture<'a, Result<Vec<Aged<Fanout>>, StoreError>> {
    Box::pin(read_by_host(
        pool,
        asks,
        "SELECT host, names, more, EXTRACT(EPOCH FROM now() - fetched_at)::float8 AS age \
         FROM host_fanout \
         WHERE host = ANY($1::text[]) AND fetched_at > now() - make_interval(secs => $2::float8)",
        decode_fanout,
    ))
}

fn decode_fanout(row: &PgRow) -> Result<Option<Fanout>, StoreError> {
    let names: i32 = row.try_get("names")?;
    Ok(Some(Fanout {
        names: names.max(0) as u32,
        more: row.try_get("more")?,
    }))
}

/// The reputations and the fanouts a cache holds, each with its age.
#[derive(Default)]
pub(super) struct AgedLeads {
    pub reputations: Aged<Reputation>,
    pub fanouts: Aged<Fanout>,
}

/// The reputation and the fanout caches together, in one statement: what a walk knows of its
/// counterparts before it asks Graph (see [`crate::model::WalkCache::cached_leads`]).
pub(super) fn read_leads<'a>(
    pool: &'a PgPool,
    asks: &'a [HostAsk],
) -> BoxFuture<'a, Result<Vec<AgedLeads>, StoreError>> {
    Box::pin(async move {
        let rows = fetch_by_host(
            pool,
            asks,
            "WITH r AS (SELECT host, classification, score, rules, \
                     EXTRACT(EPOCH FROM now() - fetched_at)::float8 AS reputation_age \
                 FROM reputations WHERE host = ANY($1::text[]) \
                   AND fetched_at > now() - make_interval(secs => $2::float8)), \
             f AS (SELECT host, names, more, \
                     EXTRACT(EPOCH FROM now() - fetched_at)::float8 AS fanout_age \
                 FROM host_fanout WHERE host = ANY($1::text[]) \
                   AND fetched_at > now() - make_interval(secs => $2::float8)) \
             SELECT COALESCE(r.host, f.host) AS host, r.classification, r.score, r.rules, \
                 r.reputation_age, f.names, f.more, f.fanout_age \
             FROM r FULL JOIN f ON f.host = r.host",
        )
        .await?;
        let reputations = aged(&rows, "reputation_age", decode_reputation)?;
        let fanouts = aged(&rows, "fanout_age", decode_fanout)?;
        Ok(asks
            .iter()
            .map(|ask| AgedLeads {
                reputations: younger(ask, &reputations),
                fanouts: younger(ask, &fanouts),
            })
            .collect())
    })
}
