//! The actor-hit outbox: an `actor_hits` row with `notified_at IS NULL` is an event still owed
//! to the events exchange. The row is written in the transaction of the message that found the
//! hit, so the promise of an event is exactly as durable as the hit; [`crate::outbox`] keeps it.

use serde_json::Value;
use sqlx::{Postgres, Row, Transaction};

use super::actors::hit_from_row;
use super::{Store, StoreError};
use crate::chain::ActorHit;

/// One owed event: the hit, the observable it belongs to, and the producer's context.
#[derive(Debug, Clone, PartialEq)]
pub struct OwedEvent {
    /// The `actor_hits` row.
    pub hit_id: i64,
    /// The observable's kind, as stored (`ipv4`, `domain`, ...).
    pub kind: String,
    pub value: String,
    pub hit: ActorHit,
    pub context: Option<Value>,
}

/// Owed events claimed by one relay: their rows stay locked (other relays skip them) until
/// [`ClaimedEvents::mark_announced`] commits or the claim is dropped, which gives them back.
pub struct ClaimedEvents {
    tx: Transaction<'static, Postgres>,
    pub events: Vec<OwedEvent>,
}

/// How far the outbox is behind, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxBacklog {
    pub pending: i64,
    /// Seconds since the oldest owed event's hit was stored; 0 when none is owed.
    pub oldest_age_seconds: f64,
}

impl Store {
    /// Claim up to `limit` owed events, oldest first, skipping rows another relay holds.
    pub async fn claim_owed_events(&self, limit: i64) -> Result<ClaimedEvents, StoreError> {
        let mut tx = self.pool().begin().await?;
        // A mark lost in a crash only means the event is sent again: no need to wait for the
        // WAL flush when the marks commit.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT h.id, o.kind, o.value, h.actor, h.profile_id, h.aliases, h.artifact, \
                 h.path, h.evidence, h.first_seen, h.last_seen, h.context \
             FROM actor_hits h JOIN observables o ON o.id = h.observable_id \
             WHERE h.notified_at IS NULL \
             ORDER BY h.id LIMIT $1 \
             FOR UPDATE OF h SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let events = rows
            .iter()
            .map(|row| {
                Ok(OwedEvent {
                    hit_id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    value: row.try_get("value")?,
                    hit: hit_from_row(row)?,
                    context: row.try_get("context")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(ClaimedEvents { tx, events })
    }

    /// How many events are owed, and since when.
    pub async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS pending, \
                 COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS age \
             FROM actor_hits WHERE notified_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(OutboxBacklog {
            pending: row.try_get("pending")?,
            oldest_age_seconds: row.try_get("age")?,
        })
    }
}

impl ClaimedEvents {
    /// The broker confirmed every claimed event: mark them announced and release the claim.
    pub async fn mark_announced(mut self) -> Result<(), StoreError> {
        let ids: Vec<i64> = self.events.iter().map(|e| e.hit_id).collect();
        sqlx::query("UPDATE actor_hits SET notified_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}
