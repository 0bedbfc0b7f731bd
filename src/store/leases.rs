//! Worker leases and the shared 429 hold of a tenant (`migrations/0005_worker_leases.sql`):
//! the rows a fleet of workers sharing one Graph tenant coordinates through. Every time is the
//! database's `now()`, so workers with skewed clocks agree. What the rows mean for the rate
//! limiter is decided by the fleet coordinator, not here.

use std::time::Duration;

use sqlx::Row;
use uuid::Uuid;

use super::{ttl_seconds, Store, StoreError};

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
}

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
        decide: impl FnOnce(&LeaseView) -> f64,
    ) -> Result<(LeaseView, f64), StoreError> {
        let expiry = ttl_seconds(expiry);
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('mdti.worker_leases:' || $1, 0))",
        )
        .bind(&holder.tenant_id)
        .execute(&mut *tx)
        .await?;
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
        let row = sqlx::query(
            "SELECT count(l.id) AS others, \
               coalesce(sum(l.share), 0)::float8 AS others_share, \
               (SELECT extract(epoch FROM q.throttled_until - now())::float8 \
                  FROM tenant_quotas q WHERE q.tenant_id = $2) AS throttled_seconds \
             FROM worker_leases l \
             WHERE l.tenant_id = $2 AND l.id <> $1 \
               AND l.heartbeat_at > now() - make_interval(secs => $3::float8)",
        )
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
        };
        let share = decide(&view);
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
        Ok((view, share))
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

fn positive_seconds(seconds: Option<f64>) -> Option<Duration> {
    seconds
        .filter(|s| s.is_finite() && *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}
