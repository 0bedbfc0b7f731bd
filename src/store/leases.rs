//! Worker leases and the shared 429 hold of a tenant (`migrations/0005_worker_leases.sql`):
//! the rows a fleet of workers sharing one Graph tenant coordinates through. Every time is the
//! database's `now()`, so workers with skewed clocks agree. What the rows mean for the rate
//! limiter is decided by the fleet coordinator, not here.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::Row;
use uuid::Uuid;

use super::{ttl_seconds, Store, StoreError};

/// The notification channel of [`Store::cut_tenant_rate`]; the payload is the tenant's id.
const THROTTLE_CHANNEL: &str = "mdti_tenant_throttled";

/// Throttles announced by the workers of every tenant sharing the database.
pub struct TenantThrottles {
    listener: PgListener,
}

impl TenantThrottles {
    /// The tenant of the next throttle announced. After a lost connection it reconnects (what
    /// was announced meanwhile is lost: the heartbeat reads the hold anyway); an error means
    /// Postgres is unreachable.
    pub async fn next(&mut self) -> Result<String, StoreError> {
        Ok(self.listener.recv().await?.payload().to_owned())
    }
}

/// Who holds a lease: enough to find the process from a `SELECT * FROM worker_leases`.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    pub id: Uuid,
    pub tenant_id: String,
    pub host: String,
    pub pid: u32,
}

/// What a heartbeat saw of its tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseView {
    /// Leases renewed within the expiry, this one included.
    pub live_workers: u32,
    /// The shares the other live workers recorded at their last heartbeat (requests per
    /// second; a worker that has not computed one yet counts as zero).
    pub others_share: f64,
    /// How much longer the tenant is throttled, if it is.
    pub throttled_for: Option<Duration>,
    /// The rate the fleet has learnt for the tenant, if it learnt one yet.
    pub learnt: Option<TenantRate>,
}

/// A tenant's learnt rate, and how long ago it last changed and was last cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantRate {
    pub requests_per_second: f64,
    pub since_change: Duration,
    pub since_cut: Option<Duration>,
}

/// What a heartbeat decided: this worker's share, and the tenant's rate if it changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeartbeatDecision {
    pub share: f64,
    pub tenant_rate: Option<f64>,
}

/// Reads a tenant's learnt rate from the columns `learnt_rate`, `since_change` and
/// `since_cut` (seconds) of `row`.
fn tenant_rate(row: &sqlx::postgres::PgRow) -> Result<Option<TenantRate>, sqlx::Error> {
    let rate: Option<f64> = row.try_get("learnt_rate")?;
    let since_change: Option<f64> = row.try_get("since_change")?;
    let since_cut: Option<f64> = row.try_get("since_cut")?;
    Ok(rate
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|rate| TenantRate {
            requests_per_second: rate,
            since_change: elapsed(since_change),
            since_cut: since_cut.map(|s| elapsed(Some(s))),
        }))
}

/// Seconds elapsed by the database's clock; a clock stepped back reads as none.
fn elapsed(seconds: Option<f64>) -> Duration {
    positive_seconds(seconds).unwrap_or(Duration::ZERO)
}

/// The tenant's learnt-rate columns, as `tenant_rate` reads them, for a query over `q`.
const TENANT_RATE_COLUMNS: &str = "q.learnt_rate, \
    extract(epoch FROM now() - q.learnt_at)::float8 AS since_change, \
    extract(epoch FROM now() - q.cut_at)::float8 AS since_cut";

impl Store {
    /// One heartbeat, in one transaction: renew (or take, the first time or after it was
    /// expired and deleted) the lease, read what the other live workers of the tenant hold, let
    /// `decide` pick this worker's share from that, record it, and delete the tenant's expired
    /// leases (their workers were killed or cut off; one that comes back takes a new lease).
    ///
    /// Heartbeats of one tenant are serialised by a transaction-scoped advisory lock, so each
    /// sees the shares the others last recorded and two joining at once cannot both take the
    /// same headroom. The lock is held for four short statements every heartbeat interval.
    pub async fn heartbeat_lease(
        &self,
        holder: &LeaseHolder,
        expiry: Duration,
        decide: impl FnOnce(&LeaseView) -> HeartbeatDecision,
    ) -> Result<(LeaseView, HeartbeatDecision), StoreError> {
        let expiry = ttl_seconds(expiry);
        let mut tx = self.pool().begin().await?;
        lock_tenant(&mut tx, &holder.tenant_id).await?;
        sqlx::query(
            "INSERT INTO worker_leases (id, tenant_id, host, pid, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, now(), now()) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(holder.id)
        .bind(&holder.tenant_id)
        .bind(&holder.host)
        .bind(holder.pid as i32)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(&format!(
            "WITH others AS ( \
               SELECT count(l.id) AS others, coalesce(sum(l.share), 0)::float8 AS others_share \
               FROM worker_leases l \
               WHERE l.tenant_id = $2 AND l.id <> $1 \
                 AND l.heartbeat_at > now() - make_interval(secs => $3::float8)) \
             SELECT o.others, o.others_share, \
               extract(epoch FROM q.throttled_until - now())::float8 AS throttled_seconds, \
               {TENANT_RATE_COLUMNS} \
             FROM others o LEFT JOIN tenant_quotas q ON q.tenant_id = $2"
        ))
        .bind(holder.id)
        .bind(&holder.tenant_id)
        .bind(expiry)
        .fetch_one(&mut *tx)
        .await?;
        let others: i64 = row.try_get("others")?;
        let throttled: Option<f64> = row.try_get("throttled_seconds")?;
        let view = LeaseView {
            live_workers: u32::try_from(others).unwrap_or(u32::MAX).saturating_add(1),
            others_share: row.try_get("others_share")?,
            throttled_for: positive_seconds(throttled),
            learnt: tenant_rate(&row)?,
        };
        let decision = decide(&view);
        if let Some(rate) = decision.tenant_rate {
            set_tenant_rate(&mut tx, &holder.tenant_id, rate, false).await?;
        }
        let share = decision.share;
        sqlx::query(
            "WITH expired AS ( \
               DELETE FROM worker_leases \
               WHERE tenant_id = $2 AND id <> $1 \
                 AND heartbeat_at <= now() - make_interval(secs => $5::float8)) \
             UPDATE worker_leases SET share = $3, live_workers = $4 WHERE id = $1",
        )
        .bind(holder.id)
        .bind(&holder.tenant_id)
        .bind(share)
        .bind(i32::try_from(view.live_workers).unwrap_or(i32::MAX))
        .bind(expiry)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((view, decision))
    }

    /// A worker of the tenant was throttled: let `decide` pick the tenant's new rate from the
    /// learnt one (`None` if it learnt none yet), and record it as a cut. Serialised with the
    /// heartbeats, so a heartbeat's growth never overwrites a cut. Returns the rate recorded.
    pub async fn cut_tenant_rate(
        &self,
        tenant_id: &str,
        decide: impl FnOnce(Option<TenantRate>) -> Option<f64>,
    ) -> Result<Option<f64>, StoreError> {
        let mut tx = self.pool().begin().await?;
        lock_tenant(&mut tx, tenant_id).await?;
        let row = sqlx::query(&format!(
            "SELECT {TENANT_RATE_COLUMNS} FROM (SELECT 1) AS one \
             LEFT JOIN tenant_quotas q ON q.tenant_id = $1"
        ))
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        let cut = decide(tenant_rate(&row)?);
        if let Some(rate) = cut {
            set_tenant_rate(&mut tx, tenant_id, rate, true).await?;
        }
        // Delivered at the commit, with the hold raised before it already in place: the other
        // workers of the tenant take both at once instead of at their next heartbeat.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(THROTTLE_CHANNEL)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(cut)
    }

    /// The tenants whose workers were throttled from now on, as [`Store::cut_tenant_rate`]
    /// announces them, on a connection of their own.
    pub async fn tenant_throttles(&self) -> Result<TenantThrottles, StoreError> {
        // A pool of one for the listener, which holds its connection for good: taken from the
        // worker's pool, it would leave the work one connection fewer.
        let options = (*self.pool().connect_options()).clone();
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&own).await?;
        listener.listen(THROTTLE_CHANNEL).await?;
        Ok(TenantThrottles { listener })
    }

    /// Give the lease back (a clean shutdown): the others count one worker fewer at their next
    /// heartbeat.
    pub async fn release_lease(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM worker_leases WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Graph throttled the tenant for `wait` from now: raise the tenant's hold to at least
    /// `now() + wait` (never lower it) and return how long it now lasts.
    pub async fn raise_tenant_hold(
        &self,
        tenant_id: &str,
        wait: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let seconds: f64 = sqlx::query_scalar(
            "INSERT INTO tenant_quotas AS q (tenant_id, throttled_until) \
             VALUES ($1, now() + make_interval(secs => $2::float8)) \
             ON CONFLICT (tenant_id) DO UPDATE \
               SET throttled_until = greatest(q.throttled_until, EXCLUDED.throttled_until) \
             RETURNING extract(epoch FROM throttled_until - now())::float8",
        )
        .bind(tenant_id)
        .bind(ttl_seconds(wait))
        .fetch_one(self.pool())
        .await?;
        Ok(positive_seconds(Some(seconds)))
    }
}

/// Heartbeats and rate cuts of one tenant run one at a time: a transaction-scoped advisory lock.
async fn lock_tenant(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('mdti.worker_leases:' || $1, 0))")
        .bind(tenant_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Record the tenant's learnt rate, and when it changed (and was cut, if `cut`).
async fn set_tenant_rate(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: &str,
    rate: f64,
    cut: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tenant_quotas AS q (tenant_id, throttled_until, learnt_rate, learnt_at, cut_at) \
         VALUES ($1, now(), $2, now(), CASE WHEN $3 THEN now() END) \
         ON CONFLICT (tenant_id) DO UPDATE \
           SET learnt_rate = EXCLUDED.learnt_rate, learnt_at = now(), \
               cut_at = coalesce(EXCLUDED.cut_at, q.cut_at)",
    )
    .bind(tenant_id)
    .bind(rate)
    .bind(cut)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn positive_seconds(seconds: Option<f64>) -> Option<Duration> {
    seconds
        .filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}
